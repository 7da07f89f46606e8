"""AffinityNet refinement wired to runs: ``afford refine train`` and ``--refine affinity|affinity-free``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from afford.checkpoint import load_run
from afford.cli import main
from afford.engine.refinement import REFINER_DIR, refiner_for_run
from afford.errors import AffordError
from afford.metrics.saliency import minmax


def _changed(out: torch.Tensor, cams: torch.Tensor) -> float:
    """Largest difference between the refined maps and the min-maxed raw maps (an identity or a
    plain min-max 'refiner' gives 0)."""
    return float((out - minmax(cams.double()).float()).abs().max())


def test_training_free_refiner_propagates_over_the_run_features(tiny_run):
    run = load_run(tiny_run)
    fn = refiner_for_run(run, "affinity-free", radius=2)  # the 56 px test run has a 7x7 grid
    assert fn.params["affinity"] == "training_free" and fn.params["refine"] == "affinity-free"
    # the propagation defaults chosen on held-out images (refine/defaults.py), not the refiner's own t = 256
    assert (fn.params["t"], fn.params["lambda"], fn.params["gamma"]) == (16, 0.5, 2)
    assert (refiner_for_run(run, "affinity-free").params["gamma"]) == 5
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cams = run.method.predict(images, torch.tensor([0, 1]))
    out = fn(cams, images)
    assert out.shape == cams.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    assert _changed(out, cams) > 0.05  # the random walk moved mass
    # The features come from the run: other images (other features) give other refined maps.
    other = fn(cams, torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(1)))
    assert float((other - out).abs().max()) > 1e-3
    const = fn(torch.ones_like(cams), images)
    # a constant map stays constant under a random walk (min-max of a constant is 0)
    assert (const.amax((1, 2)) - const.amin((1, 2))).abs().max() < 1e-6


def test_trained_refiner_is_explicit(tiny_run):
    with pytest.raises(AffordError, match="needs a trained affinity head.*affinity-free"):
        refiner_for_run(load_run(tiny_run), "affinity")
    with pytest.raises(AffordError, match="did you mean: affinity"):
        refiner_for_run(load_run(tiny_run), "afinity")


def test_refine_train_then_eval_and_predict(tiny_run, synth_root, tmp_path, capsys, monkeypatch):
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_run, run_copy)
    assert main(["refine", "train", "--checkpoint", str(run_copy), "--epochs", "1", "--radius", "2", "--quiet"]) == 0
    saved = run_copy / REFINER_DIR
    assert (saved / "refiner.json").is_file() and (saved / "model.safetensors").is_file()
    stored = json.loads((saved / "refiner.json").read_text())["params"]  # what --refine affinity will use
    assert (stored["t"], stored["lambda"], stored["gamma"], stored["affinity"]) == (16, 0.5, 2, "trained_head")
    rows = [json.loads(x) for x in (saved / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert losses and all(np.isfinite(losses)) and rows[0]["config"]["model"]["teacher"] == str(run_copy)
    # the head's training is a run of the engine: a second call refuses, --resume continues it
    assert main(["refine", "train", "--checkpoint", str(run_copy), "--epochs", "1", "--radius", "2", "--quiet"]) == 2
    monkeypatch.chdir(tmp_path)  # resumed from another directory, the run named another way
    assert main(["refine", "train", "--checkpoint", "run/../run", "--epochs", "2", "--radius", "2", "--quiet",
                 "--resume"]) == 0
    assert json.loads((saved / "run.json").read_text())["epochs_done"] == 2
    assert main(["eval", "--checkpoint", str(saved), "--quiet"]) == 2  # was an AttributeError traceback
    assert f"an AffinityNet head, which refines another run's maps; use '--checkpoint {run_copy}" in capsys.readouterr().err
    run = load_run(run_copy)
    fn = refiner_for_run(run)
    assert fn.params["affinity"] == "trained_head" and fn.params["refine"] == "affinity"
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cams = run.method.predict(images, torch.tensor([0, 1]))
    assert _changed(fn(cams, images), cams) > 0.05

    raw, refined = tmp_path / "raw.json", tmp_path / "m.json"
    common = ["eval", "--checkpoint", str(run_copy), "--data", str(synth_root), "--split", "Seen", "--quiet"]
    assert main([*common, "--json", str(raw)]) == 0
    capsys.readouterr()
    assert main([*common, "--refine", "affinity", "--json", str(refined)]) == 0
    assert ", refine=affinity]" in capsys.readouterr().out  # the printed line says the maps were refined
    m, r = json.loads(refined.read_text()), json.loads(raw.read_text())
    assert m["refine"]["affinity"] == "trained_head" and np.isfinite(m["KLD"]) and r["refine"] == "none"
    # how the head's labels were made, as trained (affinity.md §10, §12.4): the stored α were psa's whatever the mode
    assert m["refine"]["labels"] == {"label_mode": "alpha", "alpha_low": 4.0, "alpha_high": 32.0, "crf": None}
    assert m["KLD"] != r["KLD"]  # the refined maps were scored, not the raw ones

    img = next((synth_root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    pred, pred_raw = tmp_path / "pred", tmp_path / "pred_raw"
    assert main(["predict", str(img), "--checkpoint", str(run_copy), "--affordance", "hold",
                 "--refine", "affinity", "--out", str(pred)]) == 0
    assert main(["predict", str(img), "--checkpoint", str(run_copy), "--affordance", "hold", "--out", str(pred_raw)]) == 0
    a, b = np.load(pred / f"{img.stem}_hold.npy"), np.load(pred_raw / f"{img.stem}_hold.npy")
    assert a.max() > 0.99 and np.abs(a - b).max() > 0.05


def test_a_killed_head_training_resumes_to_the_uninterrupted_weights(tiny_run, tmp_path):
    """`afford refine train` killed in its 2nd epoch (SIGKILL, no cleanup), then --resume: the head
    equals an uninterrupted one bit for bit (the per-step poly rate and the order resume exactly)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    runs = {name: tmp_path / name for name in ("whole", "killed")}
    for r in runs.values():
        shutil.copytree(tiny_run, r)
    args = ["--epochs", "2", "--radius", "2", "--batch-size", "4", "--quiet", "--set", "train.max_steps_per_epoch=3"]

    def refine(run, *extra, fault=None):
        env = {k: v for k, v in os.environ.items() if k != "AFFORD_FAULT_AT"} | ({"AFFORD_FAULT_AT": fault} if fault else {})
        return subprocess.run([sys.executable, "-m", "afford.cli", "refine", "train", "--checkpoint", str(run), *args,
                               *extra], env=env, capture_output=True, text=True, timeout=300)

    assert refine(runs["whole"]).returncode == 0
    assert refine(runs["killed"], fault="1:1:0").returncode == -9  # killed after epoch 2's second step
    assert not (runs["killed"] / REFINER_DIR / "refiner.json").exists()  # not a usable refiner yet
    r = refine(runs["killed"], "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (load_file(runs[n] / REFINER_DIR / "model.safetensors") for n in ("whole", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "model.alpha_low=-1", "--set", "model.alpha_high=0.5"], "expected 1 <= alpha_low < alpha_high"),
    (["--set", "model.alpha_low=40"], "expected 1 <= alpha_low < alpha_high"),
    (["--set", "model.label_mode=fixed", "--set", "model.fg_threshold=0.01"], "expected 0 <= bg_threshold < fg_"),
    (["--steps", "-3"], "t >= 0"),
    (["--blend", "2"], r"expected a value in \[0, 1\]"),
    (["--radius", "1"], "model.radius: expected at least 2"),
    (["--radius", "9"], "--radius 9: too large for the teacher's 7x7 feature grid at 56 px.*largest: 4"),
])
def test_refine_train_checks_its_settings_before_it_writes_anything(tiny_run, tmp_path, capsys, args, message):
    """Each of these trained (no foreground labels, or no ignore band) or failed after RUN/affinity/run.json
    existed, so a corrected rerun was refused as 'already holds an affinity head'."""
    import re

    run_copy = tmp_path / "run"
    shutil.copytree(tiny_run, run_copy)
    base = ["refine", "train", "--checkpoint", str(run_copy), "--epochs", "1", "--quiet"]
    radius = [] if "--radius" in args else ["--radius", "2"]
    assert main([*base, *radius, *args]) == 2
    assert re.search(message, capsys.readouterr().err.replace("\n", " "))
    assert not (run_copy / REFINER_DIR).exists()


def test_refine_train_on_a_run_that_makes_no_maps_is_one_line(tiny_run, tmp_path, capsys):
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_run, run_copy)
    assert main(["refine", "train", "--checkpoint", str(run_copy), "--epochs", "1", "--radius", "2", "--quiet"]) == 0
    head = run_copy / REFINER_DIR
    assert main(["refine", "train", "--checkpoint", str(head), "--epochs", "1", "--radius", "2", "--quiet"]) == 2
    assert "an AffinityNet head, which refines another run's maps" in capsys.readouterr().err  # was an AttributeError
    good = json.loads((head / "refiner.json").read_text())
    (head / "refiner.json").write_text(json.dumps({**good, "head": {"in_dims": good["head"]["in_dims"]}}))  # no widths
    with pytest.raises(AffordError, match=r"refiner.json: params/head: missing or malformed entry 'widths'"):
        refiner_for_run(load_run(run_copy))
    config = {**good, "params": {**good["params"], "beta": float("nan")}}
    (head / "refiner.json").write_text(json.dumps(config))
    with pytest.raises(AffordError, match="expected beta > 0"):  # the maps were all nan
        refiner_for_run(load_run(run_copy))


def test_propagate_refuses_maps_off_the_affinity_grid():
    from afford.refine.affinity_head import disc_affinity
    from afford.refine.random_walk import propagate

    aff = disc_affinity(torch.rand(1, 4, 7, 8), 2)
    for solver in ("dense", "iterative"):  # dense scrambled a transposed (1, 8, 7) map silently
        with pytest.raises(AffordError, match=r"expected shape \(B, 7, 8\) on the affinity grid, got \(1, 8, 7\)"):
            propagate(torch.rand(1, 8, 7), aff, steps=2, solver=solver)


def test_a_resumed_head_keeps_its_teacher_known_by_content(tiny_run, tmp_path):
    """--resume accepted a teacher trained on since (the head learnt from two teachers, run.json naming
    the first), and refused the same run moved to another folder (the teacher was known by its path)."""
    from safetensors.torch import load_file, save_file

    from afford import checkpoint as ckpt
    from afford.engine.refinement import train_refiner_for_run
    from afford.errors import AffordError

    kw = {"batch_size": 4, "radius": 2, "progress": False, "overrides": ["train.max_steps_per_epoch=1"]}
    changed, moved = tmp_path / "changed", tmp_path / "moved"
    for r in (changed, moved):
        shutil.copytree(tiny_run, r)
        train_refiner_for_run(r, epochs=1, **kw)
    sd = load_file(changed / ckpt.WEIGHTS)
    first = next(iter(sd))
    sd[first] = sd[first] + 1  # as if the run had been trained on
    save_file(sd, changed / ckpt.WEIGHTS)
    with pytest.raises(AffordError, match=r"changed/affinity: the affinity head was trained on .* sha256 .* now"):
        train_refiner_for_run(changed, epochs=2, resume=True, **kw)
    assert ckpt.completed_epochs(changed / REFINER_DIR) == [0]
    elsewhere = tmp_path / "elsewhere"
    shutil.move(moved, elsewhere)
    train_refiner_for_run(elsewhere, epochs=2, resume=True, **kw)
    info = ckpt.read_run_info(elsewhere / REFINER_DIR)
    assert ckpt.completed_epochs(elsewhere / REFINER_DIR) == [0, 1]
    assert info["config"]["model"]["teacher"] == info["teacher"]["path"] == str(elsewhere.resolve())
