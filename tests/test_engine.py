"""Engine: exact resume after a kill, non-finite loss handling, model selection, run loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from afford import checkpoint as ckpt
from afford.config import build_config
from afford.engine.trainer import train
from afford.errors import AffordError

TINY = ["model.backbone=tiny_vit", "model.train_backbone=true", "data.resize=64", "data.crop=56",
        "data.test_size=56", "train.batch_size=4", "train.lr=0.01", "train.log_every=1"]


def tiny_cfg(root: Path, *extra: str):
    return build_config("locate", overrides=[f"data.root={root}", *TINY, *extra])


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / ckpt.WEIGHTS))


def test_train_writes_run_and_loads(synth_root, tmp_path):
    import random

    import numpy as np

    run = tmp_path / "run"
    random.seed(999), np.random.seed(999), torch.manual_seed(999)
    want = random.random(), float(np.random.rand()), float(torch.rand(()))
    random.seed(999), np.random.seed(999), torch.manual_seed(999)
    torch.backends.cudnn.deterministic = False
    res = train(tiny_cfg(synth_root, "train.epochs=2", "train.max_steps_per_epoch=2"), run, progress=False)
    # the caller's generators are as they were (training seeded them for itself) and cuDNN's flags too
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == want
    assert torch.backends.cudnn.deterministic is False
    assert res.epochs_done == 2 and res.selection == {"rule": "last-epoch", "epoch": 2}
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == "locate" and info["selection"]["rule"] == "last-epoch"
    # which code made the run (a saved run's figures move when the library changes)
    assert info["software"]["torch"] == torch.__version__ and info["software"]["afford"]
    assert set(info["software"]) >= {"python", "torch", "afford", "transformers"}
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "start" and any(r["kind"] == "epoch" for r in lines)
    groups = {g["group"]: g["lr"] for g in lines[0]["param_groups"]}
    assert groups["aff_fc:weight"] == pytest.approx(0.1) and groups["aff_fc:bias"] == pytest.approx(0.2)
    assert groups["default:bias"] == pytest.approx(0.02)
    # the final weights equal the last epoch's checkpoint
    last = load_file(str(ckpt.epoch_dir(run, 1) / ckpt.WEIGHTS))
    assert all(torch.equal(v, last[k]) for k, v in weights(run).items())
    loaded = ckpt.load_run(run)
    cams = loaded.method.predict(torch.zeros(2, 3, 56, 56), torch.tensor([0, 1]))
    assert cams.shape[0] == 2 and torch.isfinite(cams).all()
    # a finished run without its selected weights is not silently served its last epoch
    (run / ckpt.WEIGHTS).unlink()
    with pytest.raises(AffordError, match=r"model\.safetensors is missing, but the run finished and selected epoch 2"):
        ckpt.load_run(run)


def test_a_run_still_training_is_served_its_last_complete_epoch(synth_root, tmp_path, caplog):
    """No model.safetensors and no selection yet (killed, or still running): load_run takes the newest
    complete epoch, not the first, and says so."""
    import logging

    run = tmp_path / "run"
    train(tiny_cfg(synth_root, "train.epochs=2", "train.max_steps_per_epoch=2"), run, progress=False)
    (run / ckpt.WEIGHTS).unlink()
    info = json.loads((run / "run.json").read_text())
    info.pop("selection"), info.pop("epochs_done")
    (run / "run.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING):
        loaded = ckpt.load_run(run)
    assert "still training" in caplog.text and "last complete epoch, 2" in caplog.text
    second, first = (load_file(str(ckpt.epoch_dir(run, e) / ckpt.WEIGHTS)) for e in (1, 0))
    state = loaded.method.state_dict()
    assert all(torch.equal(state[k], v) for k, v in second.items())
    assert not all(torch.equal(state[k], v) for k, v in first.items())


def test_same_seed_same_weights_and_resume_refuses_other_config(synth_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = tiny_cfg(synth_root, "train.epochs=1", "train.max_steps_per_epoch=2")
    train(cfg, a, progress=False)
    train(cfg, b, progress=False)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(AffordError, match="already holds a run"):
        train(cfg, a, progress=False)
    with pytest.raises(AffordError, match="different config"):
        train(tiny_cfg(synth_root, "train.epochs=1", "train.max_steps_per_epoch=2", "train.lr=0.5"), a,
              resume=True, progress=False)


def test_train_seed_drives_the_batch_order_and_the_step_seeds(synth_root, tmp_path, monkeypatch):
    """Not only the initialisation: another train.seed draws other batches and other per-step seeds (the
    same seed, the same ones), so seeds of a sweep are independent runs."""
    from afford.methods.locate import LOCATE

    seen: list[tuple[str, object]] = []
    real_train, real_seed = LOCATE.forward_train, LOCATE.set_step_seed

    def forward_train(self, batch, epoch):
        seen.append(("batch", round(float(batch["ego"].sum()), 3)))
        return real_train(self, batch, epoch)

    def set_step_seed(self, seed, first_row=0):
        seen.append(("seed", seed))
        return real_seed(self, seed, first_row)

    monkeypatch.setattr(LOCATE, "forward_train", forward_train)
    monkeypatch.setattr(LOCATE, "set_step_seed", set_step_seed)
    logs = []
    for i, seed in enumerate((0, 1, 0)):
        seen.clear()
        train(tiny_cfg(synth_root, "train.epochs=1", "train.max_steps_per_epoch=2", f"train.seed={seed}"),
              tmp_path / str(i), progress=False)
        logs.append(list(seen))
    assert logs[0] == logs[2]
    for kind in ("batch", "seed"):
        assert [v for k, v in logs[0] if k == kind] != [v for k, v in logs[1] if k == kind], kind


_CHILD = """
import sys
from afford.config import build_config
from afford.engine.trainer import train
cfg = build_config("locate", overrides=sys.argv[3:])
train(cfg, sys.argv[1], resume=sys.argv[2] == "1", progress=False)
"""


def test_kill_mid_epoch_then_resume_gives_identical_weights(synth_root, tmp_path):
    """SIGKILL a training process in its 2nd epoch, resume, compare with an uninterrupted run."""
    # step_size=2: the learning rate decays after the 2nd epoch, so a resume that restarted the scheduler's
    # count (the optimizer keeps the decayed rate, not the count) would decay one epoch late
    args = [f"data.root={synth_root}", *TINY, "train.epochs=3", "train.max_steps_per_epoch=3", "train.step_size=2"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-c", _CHILD, str(ref), "0", *args], check=True, env=env)

    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(killed), "0", *args], env=env)
    log = killed / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and any(
            r.get("kind") == "train" and r.get("epoch") == 1 for r in map(json.loads, log.read_text().splitlines())
        ):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-epoch"
    assert ckpt.completed_epochs(killed) == [0]  # epoch 1 was in progress
    assert not (killed / ckpt.WEIGHTS).exists()

    subprocess.run([sys.executable, "-c", _CHILD, str(killed), "1", *args], check=True, env=env)
    wr, wk = weights(ref), weights(killed)
    assert wr.keys() == wk.keys()
    assert all(torch.equal(wr[k], wk[k]) for k in wr)
    # the log holds each step once: the killed epoch's rows were replaced by the resumed ones
    assert train_rows(killed) == train_rows(ref)
    # killed inside its first epoch (no checkpoint yet): resumed from scratch, one start row
    first = tmp_path / "killed_first"
    r = subprocess.run([sys.executable, "-c", _CHILD, str(first), "0", *args], env={**env, "AFFORD_FAULT_AT": "0:1:0"})
    assert r.returncode == -signal.SIGKILL and ckpt.completed_epochs(first) == []
    subprocess.run([sys.executable, "-c", _CHILD, str(first), "1", *args], check=True, env=env)
    assert train_rows(first) == train_rows(ref)
    assert sum('"kind": "start"' in line for line in (first / "log.jsonl").read_text().splitlines()) == 1


def train_rows(run: Path) -> list[tuple[int, int, float]]:
    rows = map(json.loads, (run / "log.jsonl").read_text().splitlines())
    return [(r["epoch"], r["step"], r["loss"]) for r in rows if r["kind"] in ("train", "epoch")]


def test_resume_refuses_fewer_epochs_than_completed(synth_root, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(synth_root, "train.epochs=2", "train.max_steps_per_epoch=1", "train.keep_checkpoints=0"), run,
          progress=False)
    final = weights(run)
    with pytest.raises(AffordError, match=r"train\.epochs: .* completed 2 epochs.* got 1"):
        train(tiny_cfg(synth_root, "train.epochs=1", "train.max_steps_per_epoch=1", "train.keep_checkpoints=0"),
              run, resume=True, progress=False)
    assert all(torch.equal(v, final[k]) for k, v in weights(run).items())  # the final weights are untouched
    res = train(tiny_cfg(synth_root, "train.epochs=2", "train.max_steps_per_epoch=1", "train.keep_checkpoints=0"),
                run, resume=True, progress=False)  # same epochs: nothing to train, the same selection
    assert res.selection == {"rule": "last-epoch", "epoch": 2}
    state = ckpt.epoch_dir(run, 1) / ckpt.STATE
    state.write_bytes(state.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(AffordError, match=r"epoch_001/state\.pt: cannot read the training state.*remove"):
        train(tiny_cfg(synth_root, "train.epochs=3", "train.max_steps_per_epoch=1", "train.keep_checkpoints=0"),
              run, resume=True, progress=False)
    weights_file = ckpt.epoch_dir(run, 1) / ckpt.WEIGHTS
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    with pytest.raises(AffordError, match=r"epoch_001/model\.safetensors: cannot read checkpoint weights .*; remove "
                                          r".*epoch_001 to resume from the epoch before it"):
        train(tiny_cfg(synth_root, "train.epochs=3", "train.max_steps_per_epoch=1", "train.keep_checkpoints=0"),
              run, resume=True, progress=False)


def test_non_finite_loss_stops_with_clear_message(synth_root, tmp_path, monkeypatch):
    from afford.methods.locate import LOCATE

    real = LOCATE.forward_train

    def poisoned(self, batch, epoch):
        out = real(self, batch, epoch)
        if epoch == 1:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(LOCATE, "forward_train", poisoned)
    run = tmp_path / "nan"
    with pytest.raises(AffordError, match=r"non-finite loss \(nan\) at epoch 2 step 1; last good checkpoint: .*epoch_000"):
        train(tiny_cfg(synth_root, "train.epochs=3", "train.max_steps_per_epoch=2"), run, progress=False)
    assert ckpt.completed_epochs(run) == [0]
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["kind"] == "error"


def test_best_on_test_selection_is_labelled(synth_root, tmp_path):
    run = tmp_path / "best"
    res = train(tiny_cfg(synth_root, "train.epochs=2", "train.max_steps_per_epoch=1", "train.select=best-on-test"),
                run, progress=False)
    sel = res.selection
    assert sel["rule"] == "best-epoch-on-test" and "test set" in sel["note"]
    kl = [h["test"]["KLD"] for h in res.history]
    assert sel["test"]["KLD"] == min(kl) and sel["epoch"] == kl.index(min(kl)) + 1


def test_best_on_test_serves_the_chosen_epochs_weights_after_pruning_and_resume(synth_root, tmp_path, monkeypatch):
    """The best epoch (here the first) keeps its checkpoint however many later ones are pruned, a resume
    recomputes it from the history, and model.safetensors holds exactly its weights."""
    from afford.engine.tasks import WSAGTask

    kld = {0: 1.0, 1: 3.0, 2: 2.0, 3: 4.0}  # by epoch: the first is best, the third second best
    calls: list[int] = []

    def scripted(self, model, cfg, device, progress):
        calls.append(len(calls))  # once per epoch, in order, across the resume
        return {"KLD": kld[calls[-1]], "SIM": 0.0, "NSS": 0.0, "n_images": 1}

    monkeypatch.setattr(WSAGTask, "evaluate", scripted)
    run = tmp_path / "best"
    opts = ("train.max_steps_per_epoch=1", "train.select=best-on-test", "train.keep_checkpoints=1")
    train(tiny_cfg(synth_root, "train.epochs=2", *opts), run, progress=False)
    res = train(tiny_cfg(synth_root, "train.epochs=4", *opts), run, resume=True, progress=False)
    assert res.selection["epoch"] == 1 and res.selection["test"]["KLD"] == 1.0 and len(calls) == 4
    assert 0 in ckpt.completed_epochs(run)  # protected from pruning
    first = load_file(str(ckpt.epoch_dir(run, 0) / ckpt.WEIGHTS))
    last = load_file(str(ckpt.epoch_dir(run, 3) / ckpt.WEIGHTS))
    final = weights(run)
    assert all(torch.equal(v, first[k]) for k, v in final.items())
    assert not all(torch.equal(v, last[k]) for k, v in final.items())


def test_load_run_keeps_the_label_space_and_rejects_wrong_classes(synth_root, tmp_path):
    run = tmp_path / "r"
    train(tiny_cfg(synth_root, "train.epochs=1", "train.max_steps_per_epoch=1"), run, progress=False)
    loaded = ckpt.load_run(run)
    info = ckpt.read_run_info(run)
    assert info["labels"] == {"task": "affordance", "names": list(loaded.classes)}
    assert loaded.labels.task == "affordance" and loaded.method.labels == loaded.labels
    with pytest.raises(AffordError, match="classes"):
        ckpt.load_run(run, expect_classes=("a", "b"))
    with pytest.raises(AffordError, match="not an afford run directory"):
        ckpt.load_run(tmp_path)


def test_build_method_swaps_in_a_subclass(synth_root, tmp_path):
    """Experiments (e.g. oracle prototypes) pass their own builder; the engine trains that module."""
    from afford.methods.locate import LOCATE

    calls = []

    class FixedPrototypes(LOCATE):
        def part_prototypes(self, batch, exo_cam_y, exo_desc, ego_desc, ego_sal):
            calls.append(batch["object"])
            b, d = ego_desc.shape[:2]
            return torch.nn.functional.normalize(torch.ones(b, d), dim=1), torch.ones(b, dtype=torch.bool)

    run = tmp_path / "run"
    train(tiny_cfg(synth_root, "train.epochs=2", "train.max_steps_per_epoch=1"), run, progress=False,
          build_method=lambda name, cfg, classes: FixedPrototypes(cfg, classes))
    assert len(calls) == 1 and all(isinstance(o, str) for o in calls[0])  # epoch 2 only: warm epoch first
    steps = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    kept = [r["n_proto"] for r in steps if "n_proto" in r]
    assert kept and all(n == 4.0 for n in kept)  # every sample of the batch kept the fixed prototype


def test_one_process_at_a_time_trains_into_a_run_folder(synth_root, tmp_path):
    # two sweeps into one folder: the second crashed in os.replace, and both wrote the same checkpoints
    import fcntl

    from afford.engine.trainer import RUN_LOCK

    run = tmp_path / "run"
    run.mkdir()
    with open(run / RUN_LOCK, "a") as held:  # another process training there
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(AffordError, match="another afford process is training into this folder"):
            train(tiny_cfg(synth_root, "train.epochs=1"), run, progress=False)
    assert not (run / ckpt.RUN_FILE).exists()
    train(tiny_cfg(synth_root, "train.epochs=1"), run, progress=False)  # free again: trains
    assert (run / ckpt.WEIGHTS).is_file()
    cfg = tiny_cfg(synth_root, "train.epochs=1", "train.batch_size=100000")
    with pytest.raises(AffordError, match="fewer than train.batch_size"):  # a failed start into a new folder ...
        train(cfg, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists()  # ... leaves no folder behind


def test_a_run_that_fails_at_its_first_step_leaves_no_folder_to_block_the_rerun(synth_root, tmp_path) -> None:
    """model.grid set for another input size fails at the first step, after run.json was written: the
    folder then refused the corrected rerun ('already holds a run', and with --resume 'a different
    config'). A folder with a saved epoch is a run and stays."""
    cfg = tiny_cfg(synth_root, "train.epochs=1")
    calls = {"n": 0}

    def failing(name, model_cfg, labels):
        from afford.factory import create_method

        m = create_method(name, model_cfg, labels)
        real = m.forward_train

        def forward_train(batch, epoch):
            calls["n"] += 1
            if calls["n"] == 1:
                raise AffordError("model.grid: the images give a 7x7 feature grid, the model expects 14x14")
            return real(batch, epoch)

        m.forward_train = forward_train
        return m

    with pytest.raises(AffordError, match="model.grid"):
        train(cfg, tmp_path / "run", progress=False, build_method=failing)
    assert not (tmp_path / "run").exists()
    train(cfg, tmp_path / "run", progress=False)  # the corrected rerun trains
    assert (tmp_path / "run" / ckpt.WEIGHTS).is_file()


class _Killed(BaseException):
    """Stands for SIGKILL at a chosen point (nothing after it runs in the training)."""


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_kill_beside_the_checkpoint_write_keeps_each_epoch_row_once(synth_root, tmp_path, monkeypatch, when):
    """Killed right after epoch 0's checkpoint landed, the epoch row (written after it) was lost for good:
    resume starts at epoch 1 and never logs it. Killed right before it lands, the row is dropped and
    logged again by the resumed epoch."""
    extra = ("train.epochs=2", "train.max_steps_per_epoch=2")
    ref = tmp_path / "ref"
    train(tiny_cfg(synth_root, *extra), ref, progress=False)
    real = ckpt.save_epoch_checkpoint

    def kill_at_epoch_0(run_dir, epoch, *args, **kwargs):
        if epoch == 0 and when == "before":
            raise _Killed
        out = real(run_dir, epoch, *args, **kwargs)
        if epoch == 0:
            raise _Killed
        return out

    run = tmp_path / "run"
    monkeypatch.setattr(ckpt, "save_epoch_checkpoint", kill_at_epoch_0)
    with pytest.raises(_Killed):
        train(tiny_cfg(synth_root, *extra), run, progress=False)
    monkeypatch.setattr(ckpt, "save_epoch_checkpoint", real)
    assert ckpt.completed_epochs(run) == ([0] if when == "after" else [])
    train(tiny_cfg(synth_root, *extra), run, resume=True, progress=False)
    assert train_rows(run) == train_rows(ref)
    epochs = [r["epoch"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert epochs == [0, 1]


def test_resume_records_the_settings_it_may_change_and_a_finished_run_logs_nothing(synth_root, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(synth_root, "train.epochs=1", "train.max_steps_per_epoch=1"), run, progress=False)
    train(tiny_cfg(synth_root, "train.epochs=2", "train.max_steps_per_epoch=1", "train.log_every=3"), run,
          resume=True, progress=False)
    info = ckpt.read_run_info(run)
    assert info["config"]["train"]["epochs"] == 2 and info["config"]["train"]["log_every"] == 3
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r for r in rows if r["kind"] == "resume"] == [
        {"kind": "resume", "from_epoch": 1, "processes": 1, "changed": {"train.epochs": [1, 2], "train.log_every": [1, 3]}}]
    # the recorded config resumes (it was refused: "completed 2 epochs ... got 1"), and a finished run logs nothing
    from afford.config import config_from_dict

    before = (run / "log.jsonl").read_text()
    train(config_from_dict(info["config"], run / "run.json"), run, resume=True, progress=False)
    assert (run / "log.jsonl").read_text() == before


def test_sigterm_stops_afford_train_as_ctrl_c_does(synth_root, tmp_path):
    """kill (SIGTERM) left run.json, the log and the lock of a first-epoch run, so the plain rerun was
    refused ("already holds a run"); now it unwinds like Ctrl-C: exit 130, a message, no folder."""
    run = tmp_path / "run"
    sets = [x for a in (f"data.root={synth_root}", *TINY, "train.epochs=3", "data.feature_cache=false")
            for x in ("--set", a)]
    proc = subprocess.Popen([sys.executable, "-m", "afford.cli", "train", "locate_synthagd_demo", "--out", str(run),
                             "--quiet", *sets], stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log = run / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and '"kind": "train"' in log.read_text():
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "afford: interrupted" in err, err
    assert not run.exists()


def test_one_data_folder_spelt_two_ways_is_one_setting(synth_root, tmp_path):
    """--resume (and a sweep's rerun, eval --runs) refused data.root '/d/./data/' against '/d/data'."""
    run = tmp_path / "run"
    train(tiny_cfg(synth_root, "train.epochs=1", "train.max_steps_per_epoch=1"), run, progress=False)
    spelt = f"{synth_root.parent}/./{synth_root.name}/"
    cfg = build_config("locate", overrides=[f"data.root={spelt}", *TINY, "train.epochs=2", "train.max_steps_per_epoch=1"])
    train(cfg, run, resume=True, progress=False)
    assert ckpt.completed_epochs(run)[-1] == 1
    other = build_config("locate", overrides=[f"data.root={tmp_path}", *TINY, "train.epochs=3",
                                              "train.max_steps_per_epoch=1"])
    with pytest.raises(AffordError, match="data.root: run has"):
        train(other, run, resume=True, progress=False)
