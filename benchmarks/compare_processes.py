"""How far two data-parallel processes land from one process, beside one process's own noise.

Each method trains the same tiny config (64 px SynthAGD / SynthHOI, a global batch of 4, 2 epochs
x 3 steps, CPU) three times: one process at 1 thread, one process at 2 threads (the same
arithmetic summed in another order: float32 rounding amplified by training) and two processes
(``--nproc 2``, gloo). It prints the largest |weight difference| of each against the first.
LoopTrans and SelectiveCL need the demo's cluster module and tiny CLIP (``afford demo`` first,
``--demo-out``); methods whose prerequisite is missing are left out, with the reason.

Usage::

    python benchmarks/compare_processes.py [--demo-out demo_out] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file


def max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def train(config: str, out: Path, sets: list[str], threads: int, nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "afford.cli", "train", config, "--out", str(out), "--nproc", str(nproc), "--quiet",
           *[x for s in sets for x in ("--set", s)]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{config} failed:\n{r.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-out", default="demo_out")
    ap.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary one)")
    a = ap.parse_args()
    from afford.synthagd import generate

    work = Path(a.work or tempfile.mkdtemp(prefix="afford-compare-"))
    synth, hoi = work / "synth", work / "hoi"
    if not synth.exists():
        generate(synth, split="seen", seed=0, size=64, n_exo=4, n_ego=2, n_test=1)
    if not hoi.exists():
        subprocess.run([sys.executable, "-m", "afford.cli", "data", "synth-hoi", "--out", str(hoi), "--n-train", "32",
                        "--n-test", "8", "--tile", "64", "--quiet"], check=True, capture_output=True)
    steps = ["train.batch_size=4", "train.epochs=2", "train.max_steps_per_epoch=3"]
    agd = [f"data.root={synth}", "data.resize=64", "data.crop=56", "data.test_size=56", "data.feature_cache=false",
           *steps]
    hoi_sets = [f"data.root={hoi}", f"model.detections_train={hoi}/detections_gt_train2015.json",
                f"model.detections_test={hoi}/detections_gt_test2015.json", "model.image_size=64", *steps]
    runs = Path(a.demo_out) / "runs"
    rows = {
        "LOCATE (parts from epoch 2)": ("locate_synthagd_demo", [*agd, "model.train_backbone=true", "model.warm_epoch=0"]),
        "LoopTrans": ("looptrans_synthagd_demo", [*agd, f"model.cluster_weights={runs / 'looptrans_cluster'}"]),
        "WSMA": ("wsma_synthagd_demo", [*agd, "model.grid=7"]),
        "SelectiveCL": ("selectivecl_synthagd_demo", [*agd, f"model.clip_weights={runs / 'synth_clip'}"]),
        "CLIP4HOI, dropout off": ("clip4hoi_synthhoi_demo", [*hoi_sets, "model.dropout=0"]),
        "CLIP4HOI (dropout 0.1, per process)": ("clip4hoi_synthhoi_demo", hoi_sets),
    }
    print("| method | 1 vs 2 threads (one process) | 1 vs 2 processes | largest abs. entry of the state dict |\n|---|---:|---:|---:|")
    for i, (name, (config, sets)) in enumerate(rows.items()):
        needs = [s.split("=", 1)[1] for s in sets if s.startswith(("model.cluster_weights=", "model.clip_weights="))]
        if any(not Path(n).is_dir() for n in needs):
            print(f"| {name} | left out: {needs[0]} missing (run afford demo) | | |")
            continue
        out = work / f"run{i}"
        for tag, threads, nproc in (("p1", 1, 1), ("t2", 2, 1), ("p2", 1, 2)):
            if not (out / tag / "model.safetensors").exists():
                train(config, out / tag, sets, threads, nproc)
        largest = max(float(t.abs().max()) for t in load_file(out / "p1" / "model.safetensors").values())
        print(f"| {name} | {max_diff(out / 'p1', out / 't2'):.2g} | {max_diff(out / 'p1', out / 'p2'):.2g} | "
              f"{largest:.3g} |", flush=True)


if __name__ == "__main__":
    main()
