"""HICO-DET mAP: the official ho-rcnn rule (hoi.md §7) and the pocket/UPT variant (§7.1), vectorised.

Why: the official MATLAB function takes minutes per run. This module makes the same decision for every
detection with the same arithmetic, so the numbers can be compared with published ones, and it runs
a million detections in seconds.

Conventions (hoi.md §12):

* Ground-truth boxes are 1-based inclusive pixel indices, as in the annotation file. Detections are
  0-based. The **official** rule adds 1 to every detection box and measures IoU with inclusive widths
  (``w = x2 - x1 + 1``), in the same order of operations as the MATLAB code.
* The **pocket** rule (UPT's ``test_hico``) converts the GT as the hicodet detector code does
  (``x1 -= 1, y1 -= 1``: 1-based pixel indices become 0-based continuous corners, ``x2``/``y2`` kept).
  It takes detections as given, uses continuous widths (``w = x2 - x1``, no +1) and the strict
  ``> 0.5`` test. Each detection goes to its max-IoU GT; per GT the highest-scoring such detection is
  the TP. Ties are broken in the stable order below; pocket's own torch sort is not stable, so its
  tie order is unspecified.
* Per class, detections are concatenated in image order (the order of ``gt``/``dets``) and, within an
  image, in the order given. Then a *stable* sort by descending score, as the official code does.
* The 11 recall thresholds are the doubles of MATLAB's ``0:0.1:1`` (:data:`ELEVEN_POINTS`), not
  ``k/10``. MATLAB builds the first half as ``k*0.1`` and the second half as ``1 - k*0.1``, so the
  fourth threshold is ``0.30000000000000004`` and a recall of exactly ``3/10`` does not reach it,
  while ``7/10`` does reach ``0.7``. ``torch.linspace(0, 1, 11, dtype=float64)`` (pocket's 11P)
  gives the same values. ``np.linspace`` does not: it gives ``0.6000000000000001`` and
  ``0.7000000000000001``. GNU Octave 7.3.0 (Debian 12's) builds ``0:0.1:1`` as ``k*0.1`` for every
  k, measured: ``0.30000000000000004``, ``0.60000000000000009``, ``0.70000000000000007``, like
  ``np.linspace``. So a run of the official function in Octave differs from a MATLAB run (and from
  afford) for a class whose final recall is exactly 0.6 or 0.7 (at most 1/11 of that class's AP).
* Known-Object mode: for class c, only the images whose GT has a pair of c's object are kept. The set
  is derived from the box annotations (``ImageGT.obj``), not from image-level labels. Detections
  elsewhere are discarded.
* A class with no GT pair gets AP 0. It is counted in every mean and reported in
  ``n_classes_without_gt``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from afford.errors import AffordError
from afford.hoi.types import ImageDetections, ImageGT

Mode = Literal["default", "known-object"]
Rule = Literal["official", "pocket"]
MODES: tuple[str, ...] = ("default", "known-object")
RULES: tuple[str, ...] = ("official", "pocket")

_MAX_PAIRS = 1 << 18  # detection–GT pairs per IoU chunk: bounds memory to tens of MiB


def _matlab_tenths() -> np.ndarray:
    """MATLAB's ``0:0.1:1``: first half ``k*0.1`` from 0, second half ``1 - k*0.1`` from 1."""
    k = np.arange(11)
    return np.where(k <= 5, k * 0.1, 1.0 - (10 - k) * 0.1)


ELEVEN_POINTS: np.ndarray = _matlab_tenths()
ELEVEN_POINTS.setflags(write=False)


# --------------------------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class HoiResult:
    """Per-class AP and the means, with the counts needed to interpret them."""

    ap: np.ndarray
    n_gt: np.ndarray
    n_dets: np.ndarray
    map: dict[str, float]
    mode: str
    rule: str
    n_classes_without_gt: int
    n_images: int
    n_detections: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain Python types only, so the result can go straight to JSON."""
        out: dict = {
            "mode": self.mode,
            "rule": self.rule,
            "n_images": int(self.n_images),
            "n_detections": int(self.n_detections),
            "mAP": {k: float(v) for k, v in self.map.items()},
            "ap": [float(a) for a in self.ap],
            "n_classes_without_gt": int(self.n_classes_without_gt),
            "classes_without_gt": [int(c) for c in np.flatnonzero(self.n_gt == 0)],  # hoi.md §12: report them
            "n_gt": [int(n) for n in self.n_gt],
        }
        if self.notes:
            out["notes"] = list(self.notes)
        return out


# ------------------------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class _Table:
    """Flat rows over all images: image index, HOI class, boxes, and GT object or detection score."""

    img: np.ndarray
    hoi: np.ndarray
    boxes_h: np.ndarray
    boxes_o: np.ndarray
    extra: np.ndarray  # GT: object class; detections: score

    def take(self, idx: np.ndarray) -> _Table:
        return _Table(self.img[idx], self.hoi[idx], self.boxes_h[idx], self.boxes_o[idx], self.extra[idx])


def _vector(where: str, name: str, value: object, n: int | None, integer: bool) -> np.ndarray:
    """One 1-D field of one image, checked for length and kind."""
    a = np.asarray(value)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = f"({n},)" if n is not None else "1-D"
        raise AffordError(f"{where}: {name} has shape {a.shape}, expected {want}")
    if integer and a.size and a.dtype.kind not in "iu":
        raise AffordError(f"{where}: {name} must hold integers, got dtype {a.dtype}")
    return a


def _boxes(where: str, name: str, value: object, n: int) -> np.ndarray:
    """One (N, 4) box field of one image. An empty image may give any empty array."""
    a = np.asarray(value)
    if a.size == 0 and n == 0:
        return np.zeros((0, 4))
    if a.shape != (n, 4):
        raise AffordError(f"{where}: {name} has shape {a.shape}, expected ({n}, 4)")
    return a


def _gt_fields(i: int, g: ImageGT) -> tuple[np.ndarray, ...]:
    where = f"ground truth of image {i}"
    hoi = _vector(where, "hoi", g.hoi, None, integer=True)
    n = hoi.shape[0]
    obj = _vector(where, "obj", g.obj, n, integer=True)
    return hoi, obj, _boxes(where, "boxes_h", g.boxes_h, n), _boxes(where, "boxes_o", g.boxes_o, n)


def _det_fields(i: int, d: ImageDetections) -> tuple[np.ndarray, ...]:
    where = f"detections of image {i}"
    hoi = _vector(where, "hoi", d.hoi, None, integer=True)
    n = hoi.shape[0]
    scores = _vector(where, "scores", d.scores, n, integer=False)
    return hoi, scores, _boxes(where, "boxes_h", d.boxes_h, n), _boxes(where, "boxes_o", d.boxes_o, n)


def _concat(parts: list[np.ndarray], dtype: type, width: int | None) -> np.ndarray:
    if not parts:
        return np.zeros((0,) if width is None else (0, width), dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


def _stack(per_image: list[tuple[np.ndarray, ...]], extra_dtype: type) -> tuple[_Table, np.ndarray]:
    """Concatenate per-image fields in image order. Also returns each image's row count."""
    counts = np.array([len(f[0]) for f in per_image], dtype=np.int64)
    img = np.repeat(np.arange(len(per_image), dtype=np.int64), counts)
    table = _Table(
        img=img,
        hoi=_concat([f[0] for f in per_image], np.int64, None),
        extra=_concat([f[1] for f in per_image], extra_dtype, None),
        boxes_h=_concat([f[2] for f in per_image], np.float64, 4),
        boxes_o=_concat([f[3] for f in per_image], np.float64, 4),
    )
    return table, counts


def _locate(row: int, counts: np.ndarray) -> tuple[int, int]:
    """(image, entry within image) of a flat row index, for error messages."""
    ends = np.cumsum(counts)
    image = int(np.searchsorted(ends, row, side="right"))
    return image, int(row - (ends[image] - counts[image]))


def _fail_first(bad: np.ndarray, counts: np.ndarray, who: str, what: Callable[[int], str]) -> None:
    """Raise naming the image and entry of the first flagged row, if any."""
    rows = np.flatnonzero(bad)
    if rows.size:
        image, entry = _locate(int(rows[0]), counts)
        raise AffordError(f"{who} of image {image}, entry {entry}: {what(int(rows[0]))}")


def _check_values(t: _Table, counts: np.ndarray, who: str, num_classes: int, is_gt: bool) -> None:
    """Class range, finite boxes, and finite scores or non-negative objects, row by row."""
    _fail_first((t.hoi < 0) | (t.hoi >= num_classes), counts, who,
                lambda r: f"HOI class {t.hoi[r]} is outside 0..{num_classes - 1}")
    for name, b in (("boxes_h", t.boxes_h), ("boxes_o", t.boxes_o)):
        _fail_first(~np.isfinite(b).all(axis=1), counts, who,
                    lambda r, b=b, name=name: f"{name} {b[r].tolist()} is not finite")
    if is_gt:
        _fail_first(t.extra < 0, counts, who, lambda r: f"object class {t.extra[r]} is negative")
    else:
        _fail_first(~np.isfinite(t.extra), counts, who, lambda r: f"score {t.extra[r]} is not finite")


def _gt_table(gt: Sequence[ImageGT], num_classes: int) -> _Table:
    table, counts = _stack([_gt_fields(i, g) for i, g in enumerate(gt)], np.int64)
    _check_values(table, counts, "ground truth", num_classes, is_gt=True)
    return table


def _det_table(dets: Sequence[ImageDetections | None], num_classes: int) -> _Table:
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)), np.zeros((0, 4)))
    fields = [empty if d is None else _det_fields(i, d) for i, d in enumerate(dets)]
    table, counts = _stack(fields, np.float64)
    _check_values(table, counts, "detections", num_classes, is_gt=False)
    return table


# ------------------------------------------------------------------------------------------ options


def _check_options(mode: str, rule: str) -> None:
    if mode not in MODES:
        raise AffordError(f"unknown evaluation mode {mode!r}; expected one of {', '.join(MODES)}")
    if rule not in RULES:
        raise AffordError(f"unknown matching rule {rule!r}; expected one of {', '.join(RULES)}")
    if rule == "pocket" and mode != "default":
        raise AffordError("the pocket rule has no Known-Object mode (UPT evaluates Default only); "
                          "use the official rule (--rule official; rule='official' in Python)")


def _check_hoi_object(hoi_object: np.ndarray, num_classes: int) -> np.ndarray:
    a = np.asarray(hoi_object)
    if a.shape != (num_classes,):
        raise AffordError(f"hoi_object has shape {a.shape}, expected ({num_classes},)")
    if a.dtype.kind not in "iu" or (a.size and a.min() < 0):
        raise AffordError("hoi_object must hold non-negative integer object classes")
    return a.astype(np.int64)


def _check_groups(groups: Mapping[str, Sequence[int]] | None, num_classes: int) -> dict[str, np.ndarray]:
    """Each group a non-empty set of distinct class ids in range. 'full' is reserved."""
    out: dict[str, np.ndarray] = {}
    for name, ids in (groups or {}).items():
        a = np.asarray(ids)
        if name == "full":
            raise AffordError("group name 'full' is reserved for the mean over all classes")
        if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu":
            raise AffordError(f"group {name!r} must be a non-empty list of integer class ids")
        if a.min() < 0 or a.max() >= num_classes:
            raise AffordError(f"group {name!r} has class ids outside 0..{num_classes - 1}")
        if np.unique(a).size != a.size:
            raise AffordError(f"group {name!r} repeats a class id")
        out[name] = a.astype(np.int64)
    return out


# ------------------------------------------------------------------------------------------ overlap


def _iou_official(g: np.ndarray, d: np.ndarray) -> np.ndarray:
    """ho-rcnn IoU: detection +1, inclusive widths, 0 without intersection. Same operation order."""
    d = d + 1.0
    iw = np.minimum(d[:, 2], g[:, 2]) - np.maximum(d[:, 0], g[:, 0]) + 1.0
    ih = np.minimum(d[:, 3], g[:, 3]) - np.maximum(d[:, 1], g[:, 1]) + 1.0
    inter = iw * ih
    ua = ((d[:, 2] - d[:, 0] + 1.0) * (d[:, 3] - d[:, 1] + 1.0)
          + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inter)
    ok = (iw > 0) & (ih > 0) & (ua > 0)
    return np.where(ok, inter / np.where(ok, ua, 1.0), 0.0)


def _iou_pocket(g: np.ndarray, d: np.ndarray) -> np.ndarray:
    """torchvision ``box_iou`` on the GT shifted to 0-based corners (x1-1, y1-1, x2, y2)."""
    gx1, gy1 = g[:, 0] - 1.0, g[:, 1] - 1.0
    w = np.clip(np.minimum(g[:, 2], d[:, 2]) - np.maximum(gx1, d[:, 0]), 0.0, None)
    h = np.clip(np.minimum(g[:, 3], d[:, 3]) - np.maximum(gy1, d[:, 1]), 0.0, None)
    inter = w * h
    union = (g[:, 2] - gx1) * (g[:, 3] - gy1) + (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _pair_overlap(gts: _Table, dets: _Table, gi: np.ndarray, di: np.ndarray, rule: str) -> np.ndarray:
    """min(IoU_h, IoU_o) of GT rows ``gi`` against detection rows ``di``."""
    iou = _iou_official if rule == "official" else _iou_pocket
    return np.minimum(iou(gts.boxes_h[gi], dets.boxes_h[di]), iou(gts.boxes_o[gi], dets.boxes_o[di]))


# ----------------------------------------------------------------------------------------- matching


def _chunks(rows: np.ndarray, reps: np.ndarray, limit: int) -> list[np.ndarray]:
    """Split detection rows so each chunk has about ``limit`` detection–GT pairs."""
    if rows.size == 0:
        return []
    chunk_id = (np.cumsum(reps) - 1) // limit
    return np.split(rows, np.flatnonzero(np.diff(chunk_id)) + 1)


def _segment_first_argmax(ov: np.ndarray, seg: np.ndarray, reps: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per segment: the max and the position of its first occurrence (MATLAB's strict ``>`` scan)."""
    seg_max = np.maximum.reduceat(ov, seg)
    pos = np.arange(ov.size)
    first = np.minimum.reduceat(np.where(ov == np.repeat(seg_max, reps), pos, ov.size), seg)
    return first, seg_max


def _best_gt(gts: _Table, dets: _Table, start: np.ndarray, count: np.ndarray,
             rule: str) -> tuple[np.ndarray, np.ndarray]:
    """For each detection: the best GT row of its (class, image) block and that overlap (-1, 0 if none)."""
    best = np.full(count.size, -1, dtype=np.int64)
    best_ov = np.zeros(count.size)
    todo = np.flatnonzero(count)
    for rows in _chunks(todo, count[todo], _MAX_PAIRS):
        reps = count[rows]
        seg = np.cumsum(reps) - reps
        gi = np.repeat(start[rows] - seg, reps) + np.arange(int(reps.sum()))
        ov = _pair_overlap(gts, dets, gi, np.repeat(rows, reps), rule)
        first, seg_max = _segment_first_argmax(ov, seg, reps)
        best[rows], best_ov[rows] = gi[first], seg_max
    return best, best_ov


def _first_claims(best: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """TP iff the detection is the first, in sorted order, to reach its GT above the threshold.

    Both rules reduce to this. Officially a detection is a TP when its best GT is still free, and
    only TPs mark GTs, so the first claimant wins and later ones are FPs with no fall-back. Under
    pocket the highest-scoring claimant wins, which is the first one in descending-score order.
    """
    rows = np.flatnonzero(hit)
    _, first = np.unique(best[rows], return_index=True)
    tp = np.zeros(best.size, dtype=bool)
    tp[rows[first]] = True
    return tp


def _true_positives(gts: _Table, dets: _Table, rule: str, n_images: int) -> np.ndarray:
    """TP flags of ``dets`` (sorted by class, then score). ``gts`` must be sorted by (class, image)."""
    gt_key = gts.hoi * n_images + gts.img
    det_key = dets.hoi * n_images + dets.img
    start = np.searchsorted(gt_key, det_key, side="left")
    count = np.searchsorted(gt_key, det_key, side="right") - start
    best, ov = _best_gt(gts, dets, start, count, rule)
    hit = (best >= 0) & ((ov >= 0.5) if rule == "official" else (ov > 0.5))
    return _first_claims(best, hit)


def _stable_order(hoi: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """By class, then descending score. Ties keep the input order (image, then within image)."""
    by_score = np.argsort(-scores, kind="stable")
    return by_score[np.argsort(hoi[by_score], kind="stable")]


def _known_object_rows(gts: _Table, dets: _Table, hoi_object: np.ndarray) -> np.ndarray:
    """Detections whose image has a GT pair of their class's object (KO image sets from the boxes)."""
    n_obj = int(max(hoi_object.max(initial=0), gts.extra.max(initial=0))) + 1
    present = np.unique(gts.img * n_obj + gts.extra)
    return np.flatnonzero(np.isin(dets.img * n_obj + hoi_object[dets.hoi], present))


# ---------------------------------------------------------------------------------------------- AP


def eleven_point_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC 11-point AP: sum over :data:`ELEVEN_POINTS` of ``max(prec[rec >= t]) / 11``, 0 if empty.

    The sum runs in threshold order, like MATLAB's ``ap = ap + p/11``, so the result is the same double.
    """
    rec, prec = np.asarray(rec, dtype=np.float64), np.asarray(prec, dtype=np.float64)
    ap = 0.0
    for t in ELEVEN_POINTS:
        p = prec[rec >= t]
        ap += (float(p.max()) if p.size else 0.0) / 11
    return ap


def _average_precisions(tp: np.ndarray, hoi: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """AP per class from TP flags sorted by (class, descending score). AP is 0 where npos = 0."""
    bounds = np.searchsorted(hoi, np.arange(n_gt.size + 1))
    cum_tp = np.concatenate([[0], np.cumsum(tp, dtype=np.int64)])
    ap = np.zeros(n_gt.size)
    for c in np.flatnonzero((n_gt > 0) & (bounds[1:] > bounds[:-1])):
        s, e = bounds[c], bounds[c + 1]
        tp_c = cum_tp[s + 1:e + 1] - cum_tp[s]
        ap[c] = eleven_point_ap(tp_c / n_gt[c], tp_c / np.arange(1, e - s + 1))
    return ap


def _means(ap: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float]:
    out = {"full": float(ap.mean()) if ap.size else 0.0}
    out.update({name: float(ap[ids].mean()) for name, ids in groups.items()})
    return out


# ------------------------------------------------------------------------------------------ public


def evaluate_hoi(
    gt: Sequence[ImageGT],
    dets: Sequence[ImageDetections | None],
    hoi_object: np.ndarray,
    groups: Mapping[str, Sequence[int]] | None = None,
    mode: Mode = "default",
    rule: Rule = "official",
    num_classes: int = 600,
) -> HoiResult:
    """HICO-DET AP per class and mAP over all classes and over each group.

    ``gt[i]`` and ``dets[i]`` describe the same image, in the dataset's image order. ``dets[i]`` is
    None when an image has no detections. ``hoi_object[c]`` is the object class of HOI c. ``groups``
    maps a name to class ids, e.g. ``{"rare": ..., "non_rare": ...}`` or ``{"unseen": ..., "seen": ...}``
    (zero-shot reporting, hoi.md §8.6).
    """
    _check_options(mode, rule)
    hoi_object = _check_hoi_object(hoi_object, num_classes)
    group_ids = _check_groups(groups, num_classes)
    if len(gt) != len(dets):
        raise AffordError(f"gt has {len(gt)} images but dets has {len(dets)}; "
                          "they must be aligned with the dataset's image order")
    gts, table = _gt_table(gt, num_classes), _det_table(dets, num_classes)
    n_detections = table.hoi.size
    if mode == "known-object":
        table = table.take(_known_object_rows(gts, table, hoi_object))
    table = table.take(_stable_order(table.hoi, table.extra))
    gts = gts.take(np.lexsort((gts.img, gts.hoi)))
    tp = _true_positives(gts, table, rule, len(gt))
    n_gt = np.bincount(gts.hoi, minlength=num_classes)
    ap = _average_precisions(tp, table.hoi, n_gt)
    notes = ["known-object image sets derived from the box annotations"] if mode == "known-object" else []
    return HoiResult(
        ap=ap, n_gt=n_gt, n_dets=np.bincount(table.hoi, minlength=num_classes), map=_means(ap, group_ids),
        mode=mode, rule=rule, n_classes_without_gt=int((n_gt == 0).sum()), n_images=len(gt),
        n_detections=int(n_detections), notes=notes,
    )
