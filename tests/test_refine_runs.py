"""AffinityNet refinement wired to runs: ``afford refine train`` and ``--refine affinity``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch

from afford.checkpoint import load_run
from afford.cli import main
from afford.refine.runs import REFINER_DIR, refiner_for_run


def test_training_free_refiner_changes_maps_and_keeps_constants(tiny_run):
    run = load_run(tiny_run)
    fn = refiner_for_run(run, radius=2)  # the 56 px test run has a 7x7 grid
    assert fn.params["affinity"] == "training_free"
    images = torch.randn(2, 3, 56, 56)
    cams = run.method.predict(images, torch.tensor([0, 1]))
    out = fn(cams, images)
    assert out.shape == cams.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    const = fn(torch.ones_like(cams), images)
    # a constant map stays constant under a random walk (min-max of a constant is 0)
    assert (const.amax((1, 2)) - const.amin((1, 2))).abs().max() < 1e-6


def test_refine_train_then_eval_and_predict(tiny_run, synth_root, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_run, run_copy)
    assert main(["refine", "train", "--checkpoint", str(run_copy), "--epochs", "1", "--radius", "2", "--quiet"]) == 0
    saved = run_copy / REFINER_DIR
    assert (saved / "refiner.json").is_file()
    losses = [json.loads(x)["loss"] for x in (saved / "log.jsonl").read_text().splitlines()]
    assert losses and all(np.isfinite(losses))
    fn = refiner_for_run(load_run(run_copy))
    assert fn.params["affinity"] == "trained_head"

    out = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(run_copy), "--data", str(synth_root), "--split", "Seen",
                 "--refine", "affinity", "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["refine"]["affinity"] == "trained_head" and np.isfinite(m["KLD"])

    img = next((synth_root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    pred = tmp_path / "pred"
    assert main(["predict", str(img), "--checkpoint", str(run_copy), "--affordance", "hold",
                 "--refine", "affinity", "--out", str(pred)]) == 0
    assert np.load(pred / f"{img.stem}_hold.npy").max() > 0.99
