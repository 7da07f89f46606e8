"""Cross-check afford's official HOI rule against the authors' MATLAB function, run in GNU Octave.

The official HICO-DET evaluation is ``VOCevaldet_bboxpair.m`` of ``ywchao/ho-rcnn``
(``evaluation/``). afford does not ship that code: point ``--ho-rcnn`` at a checkout of it. This
script writes the ground truth and detections of every class in the form the function takes
(per class: detection image ids, 1-based boxes — the 0-based detections + 1, as ``eval_one.m``
does — and confidences; ground truth as one box list per image), drives Octave over the classes,
and compares the 600 APs with :func:`afford.hoi.evaluate.evaluate_hoi` (Default mode, and Known
Object with the image sets afford derives from the boxes).

Usage::

    python benchmarks/crosscheck_hoi_matlab.py --ho-rcnn PATH/ho-rcnn --data ROOT_OR_JSON \\
        [--dets FILE] [--mode default|known-object] [--seed 0]

Without ``--dets`` the detections are the test pairs themselves, jittered, re-scored with ties,
duplicated and relabelled (seeded), which exercises every branch of the rule.

Octave and MATLAB differ in one place the function depends on: ``0:0.1:1``. MATLAB builds the
first half of a colon range from the start and the second half from the end (so 0.6 and 0.7 are
``1 - 0.4`` and ``1 - 0.3``); Octave computes ``k * 0.1`` throughout (0.6000000000000001 and
0.7000000000000001). afford follows MATLAB, where the official numbers were computed. To compare
like with like, the script also scores afford with Octave's thresholds and reports both.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import afford.hoi.evaluate as ev
from afford.hoi.detections import read_detections
from afford.hoi.evaluate import evaluate_hoi
from afford.hoi.hicodet import load_hicodet
from afford.hoi.types import ImageDetections

DRIVER = r"""
addpath('{evaluation}');
gt_rows = dlmread('{tmp}/gt.csv');
det_rows = dlmread('{tmp}/det.csv');
keep_rows = dlmread('{tmp}/keep.csv');
num_image = {num_image};
ap = zeros({num_classes}, 1);
for c = 1:{num_classes}
  g = gt_rows(gt_rows(:, 1) == c, :);
  gt = cell(1, num_image);
  for r = 1:size(g, 1)
    gt{{g(r, 2)}} = [gt{{g(r, 2)}}; g(r, 3:10)];
  end
  d = det_rows(det_rows(:, 1) == c, :);
  det_id = d(:, 2); det_bb = d(:, 3:10) + 1; det_conf = d(:, 11);
  if {ko}
    iid = keep_rows(keep_rows(:, 1) == c, 2);
    k = ismember(det_id, iid);
    det_id = det_id(k); det_bb = det_bb(k, :); det_conf = det_conf(k);
  end
  [rec, prec, a] = VOCevaldet_bboxpair(det_id, det_bb, det_conf, gt, 0.5, '', false);
  ap(c) = a;
end
dlmwrite('{tmp}/ap.csv', ap, 'precision', '%.17g');
"""


def perturbed(ds, seed: int) -> list[ImageDetections]:
    """Jittered copies of the test pairs with coarse (tied) scores, duplicates and wrong labels."""
    rng = np.random.default_rng(seed)
    out = []
    for g in ds.annotations:
        n = len(g)
        if n == 0:
            out.append(None)
            continue
        reps = rng.integers(1, 3, n)
        idx = np.repeat(np.arange(n), reps)
        hoi = g.hoi[idx].copy()
        wrong = rng.uniform(size=idx.size) < 0.15
        hoi[wrong] = rng.integers(0, ds.num_classes, int(wrong.sum()))
        boxes = [(b[idx] - 1 + rng.integers(-6, 7, (idx.size, 4))).astype(np.float64) for b in (g.boxes_h, g.boxes_o)]
        out.append(ImageDetections(hoi, boxes[0], boxes[1], np.round(rng.uniform(size=idx.size), 1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ho-rcnn", required=True, type=Path, help="checkout of ywchao/ho-rcnn (its evaluation/ folder)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test2015")
    ap.add_argument("--dets", default=None)
    ap.add_argument("--mode", choices=("default", "known-object"), default="default")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    evaluation = a.ho_rcnn / "evaluation"
    if not (evaluation / "VOCevaldet_bboxpair.m").is_file():
        raise SystemExit(f"{evaluation}: no VOCevaldet_bboxpair.m (pass the ho-rcnn checkout)")
    if shutil.which("octave") is None:
        raise SystemExit("octave: not found (install GNU Octave)")
    ds = load_hicodet(a.data, split=a.split)
    dets = read_detections(a.dets, ds.filenames, ds.num_classes) if a.dets else perturbed(ds, a.seed)
    t0 = time.perf_counter()
    mine = evaluate_hoi(ds.annotations, dets, ds.hoi_object, mode=a.mode, num_classes=ds.num_classes)
    t_afford = time.perf_counter() - t0
    matlab_points = ev.ELEVEN_POINTS
    ev.ELEVEN_POINTS = np.arange(11) * 0.1  # Octave's 0:0.1:1
    try:
        mine_octave = evaluate_hoi(ds.annotations, dets, ds.hoi_object, mode=a.mode, num_classes=ds.num_classes)
    finally:
        ev.ELEVEN_POINTS = matlab_points
    with tempfile.TemporaryDirectory() as tmp:
        gt_rows, det_rows, keep_rows = [], [], []
        for i, (g, d) in enumerate(zip(ds.annotations, dets, strict=True)):
            for r in range(len(g)):  # MATLAB indices: class and image 1-based
                gt_rows.append([g.hoi[r] + 1, i + 1, *g.boxes_h[r], *g.boxes_o[r]])
            if d is not None:
                for r in range(len(d)):
                    det_rows.append([d.hoi[r] + 1, i + 1, *d.boxes_h[r], *d.boxes_o[r], d.scores[r]])
            objs = set(g.obj.tolist())
            keep_rows += [[c + 1, i + 1] for c in range(ds.num_classes) if int(ds.hoi_object[c]) in objs]
        for name, rows in (("gt", gt_rows), ("det", det_rows), ("keep", keep_rows)):
            np.savetxt(Path(tmp) / f"{name}.csv", np.asarray(rows, dtype=np.float64), delimiter=",", fmt="%.17g")
        (Path(tmp) / "driver.m").write_text(DRIVER.format(evaluation=evaluation, tmp=tmp, num_image=len(ds.filenames),
                                                          num_classes=ds.num_classes,
                                                          ko=int(a.mode == "known-object")))
        t0 = time.perf_counter()
        subprocess.run(["octave", "--no-gui", "--quiet", str(Path(tmp) / "driver.m")], check=True)
        t_octave = time.perf_counter() - t0
        theirs = np.loadtxt(Path(tmp) / "ap.csv", delimiter=",").reshape(-1)
    n_det = sum(len(d) for d in dets if d is not None)
    print(f"{len(ds.filenames)} images, {n_det} detections, mode {a.mode}: afford {t_afford:.2f} s, "
          f"MATLAB function in Octave {t_octave:.1f} s")
    for label, result in (("afford with Octave's 0:0.1:1", mine_octave), ("afford (MATLAB's 0:0.1:1)", mine)):
        diff = np.abs(theirs - result.ap)
        print(f"{label}: mAP {100 * result.ap.mean():.6f} against the function in Octave "
              f"{100 * theirs.mean():.6f}; max |AP difference| {diff.max():.3g}; classes differing: "
              f"{int((diff > 0).sum())} of {ds.num_classes}")


if __name__ == "__main__":
    main()
