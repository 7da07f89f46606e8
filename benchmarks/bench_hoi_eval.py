"""Time ``evaluate_hoi`` on the full HICO-DET test set with about a million detections.

Why: the official MATLAB/Octave function takes about 2 minutes for ~58k detections (hoi.md §12).
afford's vectorised evaluator has to handle detector-sized outputs (~1M) in seconds. The detections
are seeded:

* 80% perturbed GT copies: a random GT pair, corners jittered by up to 10% of the box size,
  converted to 0-based; 10% of these get a wrong class.
* 20% random boxes of random classes.

Scores sit on a 0.001 grid, so there are many ties.

    python benchmarks/bench_hoi_eval.py               # 1,000,000 detections, median of 3
    python benchmarks/bench_hoi_eval.py --n 200000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from afford.hoi.evaluate import evaluate_hoi
from afford.hoi.types import ImageDetections, ImageGT

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "shared/data/hicodet/instances_test2015.json"
SETTINGS = (("default", "official"), ("known-object", "official"), ("default", "pocket"))


def load(path: Path) -> tuple[list[ImageGT], np.ndarray, dict, np.ndarray]:
    """GT per image, hoi -> object, the rare/non-rare groups and image sizes (w, h), read with json."""
    data = json.loads(path.read_text())

    def boxes(v: list) -> np.ndarray:
        return np.asarray(v, dtype=float).reshape(-1, 4)

    gt = [ImageGT(boxes(a["boxes_h"]), boxes(a["boxes_o"]), np.asarray(a["hoi"], dtype=np.int64),
                  np.asarray(a["object"], dtype=np.int64), np.asarray(a["verb"], dtype=np.int64))
          for a in data["annotation"]]
    hoi_object = np.asarray(data["correspondence"], dtype=np.int64)[:, 1]
    groups = {"rare": data["rare"], "non_rare": data["non_rare"]}
    return gt, hoi_object, groups, np.asarray(data["size"], dtype=float)


def _jitter(rng: np.random.Generator, b: np.ndarray) -> np.ndarray:
    wh = np.concatenate([b[:, 2:] - b[:, :2], b[:, 2:] - b[:, :2]], 1)
    return b - 1 + rng.uniform(-0.1, 0.1, b.shape) * wh


def _random_boxes(rng: np.random.Generator, size: np.ndarray) -> np.ndarray:
    xy = rng.uniform(0, 1, (len(size), 2)) * size * 0.8
    return np.concatenate([xy, xy + rng.uniform(0.05, 0.5, (len(size), 2)) * size], 1)


def make_detections(gt: list[ImageGT], sizes: np.ndarray, n: int, seed: int,
                    num_classes: int = 600) -> list[ImageDetections]:
    """``n`` seeded detections, split per image in image order."""
    rng = np.random.default_rng(seed)
    img = np.repeat(np.arange(len(gt)), [len(g) for g in gt])
    hoi = np.concatenate([g.hoi for g in gt])
    bh, bo = np.concatenate([g.boxes_h for g in gt]), np.concatenate([g.boxes_o for g in gt])
    n_copy = int(n * 0.8)
    src = rng.integers(0, hoi.size, n_copy)
    c_hoi = hoi[src].copy()
    wrong = rng.random(n_copy) < 0.1
    c_hoi[wrong] = rng.integers(0, num_classes, int(wrong.sum()))
    r_img = rng.integers(0, len(gt), n - n_copy)
    d_img = np.concatenate([img[src], r_img])
    d_hoi = np.concatenate([c_hoi, rng.integers(0, num_classes, n - n_copy)])
    d_h = np.concatenate([_jitter(rng, bh[src]), _random_boxes(rng, sizes[r_img])])
    d_o = np.concatenate([_jitter(rng, bo[src]), _random_boxes(rng, sizes[r_img])])
    scores = np.round(rng.random(n), 3)
    order = np.argsort(d_img, kind="stable")
    cuts = np.searchsorted(d_img[order], np.arange(1, len(gt)))
    return [ImageDetections(d_hoi[i], d_h[i], d_o[i], scores[i]) for i in np.split(order, cuts)]


def time_one(gt, dets, hoi_object, groups, mode: str, rule: str, repeats: int) -> tuple[float, dict]:
    """Median wall time of ``repeats`` runs, and the last result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = evaluate_hoi(gt, dets, hoi_object, groups, mode=mode, rule=rule, num_classes=len(hoi_object))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result.map


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of detections")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--path", type=Path, default=DEFAULT_PATH)
    args = ap.parse_args()

    t0 = time.perf_counter()
    gt, hoi_object, groups, sizes = load(args.path)
    dets = make_detections(gt, sizes, args.n, args.seed, num_classes=len(hoi_object))
    print(f"{len(gt)} images, {sum(len(g) for g in gt)} GT pairs, {args.n} detections "
          f"(built in {time.perf_counter() - t0:.1f} s); median of {args.repeats}")
    for mode, rule in SETTINGS:
        sec, maps = time_one(gt, dets, hoi_object, groups, mode, rule, args.repeats)
        m = "  ".join(f"{k} {100 * v:.2f}" for k, v in maps.items())
        print(f"{mode:>12} {rule:>8}: {sec:6.2f} s  {args.n / sec / 1e6:5.2f} M det/s   mAP % {m}")


if __name__ == "__main__":
    main()
