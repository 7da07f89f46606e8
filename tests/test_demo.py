"""``afford demo --quick``: the whole pipeline end to end at smoke-test size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from afford.cli import main
from afford.errors import AffordError


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick demo run shared by the tests of this file."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0
    return out


def _per_image(row: dict, key: str = "KLD") -> dict[str, float]:
    return {f"{r['affordance']}/{r['object']}/{r['name']}": r[key] for r in row["per_image"]}


def test_quick_demo_writes_report_metrics_and_overlays(demo_out):
    out = demo_out
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    rows = ["baseline: uniform", "baseline: center", "baseline: object"]
    assert all(r in metrics for r in rows) and any(k.startswith("LOCATE") for k in metrics)
    assert any("AffinityNet" in k for k in metrics)
    assert any(k.startswith("baseline: ego-only CAM") for k in metrics)  # synthagd.md's fourth baseline
    assert list((out / "overlays" / "egocam").glob("*.png"))
    for name, m in metrics.items():
        for key in ("protocol", "split", "n_images", "KLD", "SIM", "NSS", "per_affordance", "per_object", "per_pair"):
            assert key in m, (name, key)
        assert name in report and f"{m['KLD']:.3f}" in report
    n = {m["n_images"] for m in metrics.values()}
    assert len(n) == 1 and n.pop() > 0  # every row scored on the same test images
    # one table line per row, in report order (the plan's, not the order the jobs finished in), with its figures
    table = [line for line in report.splitlines() if line.startswith("| ") and " | standard | " in line]
    assert [line.split(" | ")[0][2:] for line in table] == list(metrics)
    assert list(metrics)[:4] == ["baseline: uniform", "baseline: center", "baseline: object",
                                 next(k for k in metrics if k.startswith("baseline: ego-only CAM"))]
    for line, (name, m) in zip(table, metrics.items(), strict=True):
        assert line.startswith(f"| {name} | standard | {m['nss']} | {m['n_images']} | {m['KLD']:.3f} | {m['SIM']:.3f} | "
                               f"{m['NSS']:.3f} |"), line
    assert list((out / "overlays" / "locate").glob("*.png"))
    # the per-affordance comparison with the whole-object map, one line per method row
    assert "## Per affordance, against the whole-object baseline" in report
    for aff in metrics["baseline: object"]["per_affordance"]:
        assert f"| {aff} | " in report
    assert any(line.startswith("- LOCATE (tiny ViT") and "affordances" in line for line in report.splitlines())
    # whether each trained row's map follows the affordance label (right- against wrong-label scores)
    assert "## Label sensitivity" in report
    for name, m in metrics.items():
        if not name.startswith("baseline: ") or "CAM" in name:
            ls = m["label_sensitivity"]
            assert f"| {name} | {ls['n_images']} | {ls['right']['KLD']:.3f} | {ls['wrong']['KLD']:.3f} |" in report
    # the centre prior is worse than the object mask on SynthAGD: GT sits on parts of objects
    assert metrics["baseline: center"]["KLD"] > metrics["baseline: object"]["KLD"]
    assert metrics["baseline: center"]["SIM"] < metrics["baseline: object"]["SIM"]


def test_quick_demo_method_rows_are_not_constant_maps(demo_out):
    # A constant map (any constant) min-max normalises to the uniform map: its per-image scores equal
    # the uniform baseline's. Every trained row (LOCATE, WSMA when the plan has it, the refined row,
    # the ego-only CAM) must score each image on its own map.
    metrics = json.loads((demo_out / "metrics.json").read_text())
    uniform = _per_image(metrics["baseline: uniform"])
    trained = {n: m for n, m in metrics.items() if not n.startswith("baseline: ") or "CAM" in n}
    assert any(n.startswith("LOCATE (") for n in trained) and any("AffinityNet" in n for n in trained)
    for name, m in trained.items():
        kld = _per_image(m)
        assert kld.keys() == uniform.keys(), name
        assert m["n_constant_pred"] == 0 and m["NSS"] != 0.0, name
        assert max(kld.values()) - min(kld.values()) > 1e-3, name  # not the same score on every image
        assert max(abs(kld[k] - uniform[k]) for k in kld) > 1e-2, name  # not the uniform map
    # the refinement changed the raw LOCATE maps
    raw = _per_image(next(m for n, m in metrics.items() if n.startswith("LOCATE (")))
    refined = _per_image(next(m for n, m in metrics.items() if "AffinityNet" in n))
    assert max(abs(raw[k] - refined[k]) for k in raw) > 1e-3


def test_quick_demo_trains_looptrans_on_the_cluster_module_it_trained_first(demo_out):
    # LoopTrans needs a cluster run (registry: needs); the demo trains it without labels first and
    # the LoopTrans run records that run, with the sha256 of its weights, as its cluster source.
    runs = demo_out / "runs"
    cluster_run = json.loads((runs / "looptrans_cluster" / "run.json").read_text())
    assert cluster_run["method"] == "looptrans_cluster" and cluster_run["task"] == "images"
    source = json.loads((runs / "looptrans" / "run.json").read_text())["cluster"]
    assert source["kind"] == "afford-run" and Path(source["path"]) == runs / "looptrans_cluster"
    assert len(source["sha256"]) == 64 and "afford's recipe" in source["how"]
    metrics = json.loads((demo_out / "metrics.json").read_text())
    assert any(k.startswith("LoopTrans (tiny ViT") for k in metrics)


def test_quick_demo_scores_selectivecl_calibrated_and_raw(demo_out):
    # Two outputs of one run: the calibrated map (b, the default) and the raw CAM (a), compared in the report.
    metrics = json.loads((demo_out / "metrics.json").read_text())
    b = next(m for n, m in metrics.items() if n.startswith("SelectiveCL calibrated (b) (tiny ViT"))
    a = next(m for n, m in metrics.items() if n.startswith("SelectiveCL raw CAM (a) (tiny ViT"))
    assert b["output"] == "calibrated" and a["output"] == "raw"
    assert _per_image(a) != _per_image(b)  # the calibration changed the maps
    report = (demo_out / "report.md").read_text()
    assert "## One method, two outputs" in report
    assert f"calibrated (b) KLD {b['KLD']:.3f}" in report and f"raw CAM (a) {a['KLD']:.3f}" in report
    assert list((demo_out / "overlays" / "selectivecl_raw").glob("*.png"))


def test_demo_refuses_an_out_folder_it_did_not_make(tmp_path, capsys):
    # `afford demo --out .` inside a project must not delete ./data: the check runs before any work
    d = tmp_path / "project"
    (d / "data").mkdir(parents=True)
    (d / "data" / "keep.txt").write_text("user data")
    capsys.readouterr()
    assert main(["demo", "--out", str(d), "--quick", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("afford: error: ") and str(d / "data") in err[0], err
    assert "--out" in err[0] and "--overwrite" in err[0]
    assert (d / "data" / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in d.iterdir()) == ["data"]  # nothing written: no runs/, no marker
    # same for a non-empty runs/ folder
    (d / "data" / "keep.txt").unlink()
    (d / "runs" / "mine").mkdir(parents=True)
    assert main(["demo", "--out", str(d), "--quick", "--quiet"]) == 2
    assert str(d / "runs") in capsys.readouterr().err
    assert (d / "runs" / "mine").is_dir()
    # nor a report of the user's own at the top of --out
    shutil.rmtree(d / "runs")
    (d / "report.md").write_text("my notes")
    assert main(["demo", "--out", str(d), "--quick", "--quiet"]) == 2
    assert str(d / "report.md") in capsys.readouterr().err and (d / "report.md").read_text() == "my notes"


def test_demo_marker_lets_a_rerun_replace_its_own_output(demo_out):
    from afford.demo import MARKER, _claim_output

    marker = json.loads((demo_out / MARKER).read_text())
    assert marker["made_by"] == "afford demo"
    _claim_output(demo_out, overwrite=False)  # a previous demo output: a rerun may replace data/ and runs/
    (demo_out / MARKER).unlink()
    try:
        with pytest.raises(AffordError, match="not an afford demo output"):
            _claim_output(demo_out, overwrite=False)
        _claim_output(demo_out, overwrite=True)  # --overwrite: replace anyway (and mark the folder)
        assert (demo_out / MARKER).is_file()
    finally:
        (demo_out / MARKER).write_text(json.dumps(marker))


def test_quick_demo_reports_clip4hoi_beside_the_hoi_baselines(demo_out):
    hoi = json.loads((demo_out / "hoi" / "metrics.json").read_text())
    rows = hoi["rows"]
    for setting, groups in (("supervised", {"full", "rare", "non_rare"}), ("unseen composition",
                                                                           {"full", "unseen", "seen"})):
        mine = {k: v for k, v in rows.items() if k.startswith(setting + " | ")}
        assert len(mine) == 2 and all(set(v) == groups for v in mine.values())  # the prior and CLIP4HOI
        assert any("CLIP4HOI" in k for k in mine)
        assert all(0.0 <= v["full"] <= 1.0 for v in mine.values())
    assert (demo_out / "runs" / "clip4hoi" / "run.json").is_file()
    assert json.loads((demo_out / "runs" / "clip4hoi_uc" / "run.json").read_text())["unseen"] == hoi["data"]["unseen"]
    assert hoi["drawn"] and all(Path(p).is_file() for p in hoi["drawn"])
    report = (demo_out / "report.md").read_text()
    assert "## HOI detection on SynthHOI" in report and "| baseline: object prior (every valid HOI" in report
    assert "equals it by construction" in report and "fewer than 10 training instances" in report


def test_quick_demo_report_opens_with_the_comparison_picture(demo_out):
    from PIL import Image

    from afford.visualize import TITLE_HEIGHT

    report = (demo_out / "report.md").read_text().splitlines()
    first_table = next(i for i, line in enumerate(report) if line.startswith("| "))
    picture = next(i for i, line in enumerate(report) if line.startswith("!["))
    assert picture < first_table and "(figure.png)" in report[picture]
    metrics = json.loads((demo_out / "metrics.json").read_text())
    trained = [n for n in metrics if not n.startswith("baseline: ") or "CAM" in n]  # the rows with maps
    lines = min(4, len(metrics["baseline: object"]["per_affordance"]))
    with Image.open(demo_out / "figure.png") as im:
        w, h = im.size
    cell, pad = 128, 4
    assert w == (2 + len(trained)) * (cell + pad) + pad  # image, ground truth, one map per trained row
    assert h == lines * (cell + TITLE_HEIGHT + pad) + pad


def test_demo_jobs_are_one_per_core_and_refuse_nonsense(monkeypatch):
    from afford.demo import resolve_jobs

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})  # the cores this process may use
    monkeypatch.setattr("os.cpu_count", lambda: 64)  # the node's: not what the demo may use
    assert resolve_jobs(None, 6) == (2, 1)  # two workers, one torch thread each
    assert resolve_jobs(1, 6) == (1, None)  # in this process, torch's own threads
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert resolve_jobs(None, 6) == (6, 2)  # never more workers than jobs; the cores shared out
    with pytest.raises(AffordError, match="--jobs"):
        resolve_jobs(0, 6)


def test_demo_shares_jobs_out_so_the_busiest_worker_is_least_loaded():
    from afford.demo import partition_jobs

    cost = {"a": 165, "b": 133, "c": 123, "d": 112, "e": 90, "f": 21}
    shares = partition_jobs(list(cost), 2, cost)
    assert sorted(n for s in shares for n in s) == sorted(cost)  # every job once
    assert max(sum(cost[n] for n in s) for s in shares) == 325  # the optimum (longest-first greedy: 346)
    assert all(s == sorted(s) for s in shares)  # report order kept within a worker
    assert partition_jobs(["a", "b"], 1, cost) == [["a", "b"]]
    # beyond the exhaustive search (3 ** 11 > 50,000): longest first, each to the least loaded worker
    big = {f"j{i}": float(c) for i, c in enumerate([50, 40, 30, 30, 20, 20, 10, 10, 10, 5, 5])}
    shares = partition_jobs(list(big), 3, big)
    assert sorted(n for g in shares for n in g) == sorted(big) and all(g == sorted(g, key=list(big).index)
                                                                        for g in shares)
    loads = sorted(sum(big[n] for n in g) for g in shares)
    assert loads == [75.0, 75.0, 80.0]  # longest first, each to the least loaded worker


def test_a_demo_worker_that_dies_ends_the_demo_with_one_clear_error(tmp_path):
    import os
    import signal

    from afford.demo import RUNNING_DIR, _run_jobs, _start_workers

    pool, workers = _start_workers(2, 2)
    try:
        pids = list(pool._processes)  # the workers started at once (they import while data generates)
        os.kill(pids[0], signal.SIGKILL)
        (tmp_path / RUNNING_DIR).mkdir()
        (tmp_path / RUNNING_DIR / str(pids[0])).write_text("wsma")  # what that worker had written
        with pytest.raises(AffordError, match="worker process died.* while the workers ran wsma; .*--jobs 1"):
            _run_jobs(pool, workers, tmp_path, True, 0, ["egocam", "locate"], False)
    finally:
        pool.shutdown(cancel_futures=True)
    assert not (tmp_path / RUNNING_DIR).exists()


def test_a_demo_worker_names_the_job_it_is_running_until_its_share_ends(tmp_path, monkeypatch):
    import time

    import afford.demo as demo

    seen = []

    def job(out, quick, seed, name, progress):
        seen.append((name, demo.running_jobs(out)))
        return demo.JobResult()

    monkeypatch.setattr(demo, "run_job", job)
    demo.run_jobs(tmp_path, True, 0, ["egocam", "locate"], time.time())
    assert seen == [("egocam", ["egocam"]), ("locate", ["locate"])]
    assert demo.running_jobs(tmp_path) == []


def test_a_failing_demo_job_is_named_and_stops_the_other_workers_at_once(tmp_path, monkeypatch):
    import time

    import afford.demo as demo

    def boom(out, quick, seed, name, progress):
        raise RuntimeError("boom")

    monkeypatch.setattr(demo, "run_job", boom)
    with pytest.raises(AffordError, match=r"^demo job egocam failed \(RuntimeError: boom"):
        demo.run_jobs(tmp_path, True, 0, ["egocam", "locate"], time.time())
    pool, _ = demo._start_workers(2, 2)
    procs = list(pool._processes.values())
    busy = pool.submit(time.sleep, 60)  # a worker deep in a long job
    time.sleep(1)
    t0 = time.perf_counter()
    demo._stop_workers(pool)
    assert time.perf_counter() - t0 < 20 and busy.done() and not any(p.is_alive() for p in procs)


@pytest.mark.parametrize("argv", [
    ["demo", "--quick", "--jobs", "2", "--quiet"],
    ["sweep", "locate_synthagd_demo", "--seeds", "0,1", "--jobs", "2", "--quiet"],
])
def test_sigterm_to_the_parent_leaves_no_worker_running(argv, tmp_path):
    # kill -TERM of `afford demo` / `afford sweep --jobs 2` left its workers training, orphaned
    import os
    import signal
    import subprocess
    import sys
    import time

    if argv[0] == "sweep":
        assert main(["data", "synth", "--out", str(tmp_path / "d"), "--size", "64", "--quiet"]) == 0
        argv = [*argv, "--set", f"data.root={tmp_path / 'd'}"]
    proc = subprocess.Popen([sys.executable, "-m", "afford.cli", *argv, "--out", str(tmp_path / "o")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children: set[int] = set()
    deadline = time.time() + 60
    while time.time() < deadline and len(children) < 2 and proc.poll() is None:
        time.sleep(0.5)
        try:
            children |= {int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()}
        except OSError:
            break
    assert len(children) >= 2, "the workers did not start"
    for _ in range(6):  # the rest of them (the demo also has multiprocessing's resource tracker)
        time.sleep(0.5)
        children |= {int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()}
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    time.sleep(1)
    alive = [c for c in children if Path(f"/proc/{c}").exists()
             and "zombie" not in Path(f"/proc/{c}/status").read_text().lower()]
    for c in alive:
        os.kill(c, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived the parent"


def test_the_report_applies_the_non_oracle_criterion() -> None:
    """The report stated synthagd.md's rule but left the reader to apply it: a method passes when it beats
    every non-oracle baseline on KLD (lower) and SIM (higher); the whole-object oracle does not count."""
    from afford.demo import _criterion_text

    rows = {"baseline: uniform": {"KLD": 3.8, "SIM": 0.05}, "baseline: center": {"KLD": 3.5, "SIM": 0.07},
            "baseline: object": {"KLD": 2.0, "SIM": 0.2}, "baseline: ego-only CAM (x)": {"KLD": 4.0, "SIM": 0.08},
            "A": {"KLD": 3.4, "SIM": 0.09}, "B": {"KLD": 3.4, "SIM": 0.075}, "C": {"KLD": 3.6, "SIM": 0.1}}
    text = "\n".join(_criterion_text(rows))
    assert "KLD 3.500, SIM 0.080" in text  # the best of each, the ego-only CAM's SIM included, the oracle's not
    assert "- beat them on both: A\n" in text and "- do not: B, C" in text


def test_demo_workers_hold_no_multiprocessing_lock_a_kill_would_leak() -> None:
    """tqdm's default lock is a multiprocessing semaphore; a demo stopped by Ctrl-C terminated its workers
    holding it, and the resource tracker then warned of 'leaked semaphore objects' after the one-line message."""
    import subprocess
    import sys

    code = ("import threading; from afford.demo import _init_worker; _init_worker(1, 30); from tqdm import tqdm; "
            "print(isinstance(tqdm.get_lock(), type(threading.RLock())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
