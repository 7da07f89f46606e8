"""``afford sweep`` and ``afford eval --runs``: several seeds, mean ± std per metric and rule."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from afford.cli import main
from afford.errors import AffordError
from afford.sweep import BEST, LAST, mean_std, parse_seeds
from conftest import TINY_OVERRIDES


def test_seeds_and_sample_std() -> None:
    assert parse_seeds("0,1, 2") == [0, 1, 2]
    for bad in ("0,x", "1,1", ""):
        with pytest.raises(AffordError, match="--seeds"):
            parse_seeds(bad)
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([4.0]) == (4.0, None)


def test_sweep_trains_each_seed_reports_both_rules_and_resumes(synth_root: Path, tmp_path: Path, capsys) -> None:
    sets = [x for o in [f"data.root={synth_root}", *TINY_OVERRIDES, "train.epochs=2", "data.feature_cache=false"]
            for x in ("--set", o)]
    args = ["sweep", "locate_synthagd_demo", "--seeds", "3,4", "--out", str(tmp_path), *sets,
            "--select", "best-on-test", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "seed 3: trained" in out and "seed 4: trained" in out and "± " in out and "best epoch on the test set" in out
    r = json.loads((tmp_path / "summary.json").read_text())
    assert set(r["summary"]) == {LAST, BEST}
    kld = r["summary"][LAST]["KLD"]
    values = [r["runs"][str(tmp_path / f"seed_{s}")][LAST]["KLD"] for s in (3, 4)]
    assert kld["values"] == values and kld["n"] == 2 and values[0] != values[1]  # different seeds, different runs
    assert math.isclose(kld["std"], abs(values[0] - values[1]) / math.sqrt(2))
    for s in (3, 4):  # the best rule never scores worse than the last on the selection metric
        run = r["runs"][str(tmp_path / f"seed_{s}")]
        assert run[BEST]["KLD"] <= run[LAST]["KLD"]
    # the rules read the history: best = the lowest test KLD and its epoch, last = the final epoch (a made-up
    # history where the first epoch is best, so picking the last would show)
    import afford.sweep as sweep_module
    from afford.sweep import evaluate_run

    def row(epoch, kld):
        return {"epoch": epoch, "test": {"KLD": kld, "SIM": 0.5 - kld / 10, "NSS": 1.0, "n_images": 3}}

    history = [row(0, 1.5), row(1, 2.5)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_module.ckpt, "load_epoch_state", lambda *a: {"history": history})
        rules = evaluate_run(tmp_path / "seed_3")
    assert rules[BEST]["KLD"] == 1.5 and rules[BEST]["epoch"] == 1 and rules[LAST]["KLD"] == 2.5
    assert (tmp_path / "summary.md").read_text().startswith("locate_synthagd_demo (2 seeds")

    assert main(args) == 0  # rerun: finished seeds are kept, not retrained
    assert "seed 3: kept (finished)" in capsys.readouterr().out
    assert main([a for a in args if a not in ("--select", "best-on-test")]) == 2  # another config, same folder
    assert "holds a run of another config (train.select: run has 'best-on-test', now 'last')" in capsys.readouterr().err

    assert main(["eval", "--runs", str(tmp_path / "seed_3"), str(tmp_path / "seed_4"), "--quiet", "--json",
                 str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["summary"] == r["summary"]

    # from a review: each run once, however spelt; an unfinished run, another method, settings
    # that do not change results, and a preset with nothing to score
    assert main(["eval", "--runs", str(tmp_path / "seed_3"), f"{tmp_path}/seed_3/", "--quiet"]) == 2
    assert "the same run as" in capsys.readouterr().err
    shutil.copytree(tmp_path / "seed_3", tmp_path / "killed")
    info = json.loads((tmp_path / "killed" / "run.json").read_text())
    del info["epochs_done"]
    (tmp_path / "killed" / "run.json").write_text(json.dumps(info))
    assert main(["eval", "--runs", str(tmp_path / "killed"), "--quiet"]) == 2
    assert "an unfinished run" in capsys.readouterr().err
    # a run without weights listed last is refused before the good runs are scored (they were, first)
    shutil.copytree(tmp_path / "seed_4", tmp_path / "weightless")
    (tmp_path / "weightless" / "model.safetensors").unlink()
    shutil.rmtree(tmp_path / "weightless" / "checkpoints")
    scored: list[Path] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_module, "evaluate_run", lambda run_dir, progress=False: scored.append(run_dir))
        assert main(["eval", "--runs", str(tmp_path / "seed_3"), str(tmp_path / "weightless"), "--quiet"]) == 2
    assert "weightless: model.safetensors is missing" in capsys.readouterr().err and scored == []
    # two configurations are not two seeds (a LOCATE and a WSMA run were averaged), and eval flags that
    # --runs cannot apply are refused, not ignored
    shutil.copytree(tmp_path / "seed_4", tmp_path / "other_lr")
    info = json.loads((tmp_path / "other_lr" / "run.json").read_text())
    info["config"]["train"]["lr"] = 0.5
    (tmp_path / "other_lr" / "run.json").write_text(json.dumps(info))
    assert main(["eval", "--runs", str(tmp_path / "seed_3"), str(tmp_path / "other_lr"), "--quiet"]) == 2
    assert "not a seed of the same configuration" in capsys.readouterr().err
    assert main(["eval", "--runs", str(tmp_path / "seed_3"), "--label-sensitivity", "--refine", "affinity"]) == 2
    assert "--refine, --label-sensitivity would be ignored" in capsys.readouterr().err
    assert main(["sweep", "looptrans_synthagd_demo", "--seeds", "3", "--out", str(tmp_path), "--set",
                 f"data.root={synth_root}", "--quiet"]) == 2
    assert "method: run has 'locate', now 'looptrans'" in capsys.readouterr().err  # was a KeyError traceback
    assert main([*args, "--set", "data.num_workers=1", "--set", "train.log_every=5"]) == 0
    assert "seed 3: kept (finished)" in capsys.readouterr().out
    assert main(["sweep", "looptrans_cluster_synthagd_demo", "--seeds", "0,1", "--out", str(tmp_path / "c"),
                 "--set", f"data.root={synth_root}", "--quiet"]) == 2
    assert "no test evaluation" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_seeds_trained_in_parallel_processes_equal_the_sequential_ones(synth_root: Path, tmp_path: Path) -> None:
    sets = [x for o in [f"data.root={synth_root}", *TINY_OVERRIDES, "data.feature_cache=false"] for x in ("--set", o)]
    for name, jobs in (("seq", "1"), ("par", "2")):
        assert main(["sweep", "locate_synthagd_demo", "--seeds", "5,6", "--out", str(tmp_path / name), *sets,
                     "--jobs", jobs, "--quiet"]) == 0
    seq, par = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("seq", "par"))
    assert par["trained"] == {"5": "trained", "6": "trained"}
    assert [v[LAST] for v in seq["runs"].values()] == [v[LAST] for v in par["runs"].values()]
