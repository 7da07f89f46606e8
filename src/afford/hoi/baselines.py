"""Reference scorers on ground-truth boxes.

Both take the test set's annotated (human, object) pairs as if a perfect detector had found them
with confidence 1, so they isolate the interaction part of the problem:

- ``object-prior``: the detector's object confidence only; every HOI valid for the pair's object
  gets the same score (uniform over verbs). What localisation alone is worth.
- ``frequency-prior``: each valid HOI scored by its training frequency given the object,
  ``P(hoi | object)``.

Both give every detection of a class one score, and the official AP ranks a class's detections
only against each other (ties in image order), so both have the same mAP by construction: what
predicting every valid HOI on every annotated pair is worth. Their written detections (scores)
differ, which a pooled or cross-class metric would see. A method's mAP means something only above it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from afford.errors import AffordError
from afford.hoi.types import ImageDetections, ImageGT

HOI_BASELINES: tuple[str, ...] = ("object-prior", "frequency-prior")


def unique_pairs(gt: ImageGT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct annotated pairs of an image (a pair with two verbs appears twice in the JSON):
    ``boxes_h (P, 4)``, ``boxes_o (P, 4)`` (1-based inclusive) and ``obj (P,)``, in first-seen order."""
    if len(gt) == 0:
        return np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    key = np.concatenate([gt.boxes_h, gt.boxes_o, gt.obj[:, None].astype(np.float64)], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    first = np.sort(first)
    return gt.boxes_h[first], gt.boxes_o[first], gt.obj[first]


def training_counts(train: Sequence[ImageGT], num_classes: int) -> np.ndarray:
    """Annotated rows per HOI class in a training set (the frequency prior's statistics)."""
    hoi = np.concatenate([g.hoi for g in train]) if train else np.zeros(0, dtype=np.int64)
    return np.bincount(hoi, minlength=num_classes)[:num_classes]


def prior_scores(hoi_object: np.ndarray, kind: str, counts: np.ndarray | None = None) -> np.ndarray:
    """Score of each HOI class given that its object is present, ``(C,)``."""
    n_obj = int(hoi_object.max()) + 1
    per_obj = np.bincount(hoi_object, minlength=n_obj).astype(np.float64)
    if kind == "object-prior":
        return 1.0 / per_obj[hoi_object]
    if kind == "frequency-prior":
        if counts is None:
            raise AffordError("frequency-prior: needs the training annotations (--train FILE)")
        c = counts.astype(np.float64)
        total = np.bincount(hoi_object, weights=c, minlength=n_obj)
        uniform = 1.0 / per_obj[hoi_object]
        return np.where(total[hoi_object] > 0, c / np.maximum(total[hoi_object], 1.0), uniform)
    raise AffordError(f"HOI baseline: expected one of {', '.join(HOI_BASELINES)}, got {kind!r}")


def baseline_detections(test: Sequence[ImageGT], hoi_object: np.ndarray, kind: str,
                        counts: np.ndarray | None = None) -> list[ImageDetections]:
    """Detections of the ``kind`` scorer on every annotated test pair (0-based boxes)."""
    scores = prior_scores(np.asarray(hoi_object), kind, counts)
    by_obj = {o: np.flatnonzero(hoi_object == o) for o in np.unique(hoi_object)}
    out = []
    for gt in test:
        bh, bo, obj = unique_pairs(gt)
        hoi, h, o = [], [], []
        for p in range(len(obj)):
            cls = by_obj.get(int(obj[p]), np.zeros(0, dtype=np.int64))
            hoi.append(cls)
            h.append(np.repeat(bh[p:p + 1] - [1, 1, 1, 1], len(cls), axis=0))
            o.append(np.repeat(bo[p:p + 1] - [1, 1, 1, 1], len(cls), axis=0))
        if hoi:
            ids = np.concatenate(hoi).astype(np.int64)
            out.append(ImageDetections(ids, np.concatenate(h).astype(np.float64), np.concatenate(o).astype(np.float64),
                                       scores[ids].astype(np.float64)))
        else:
            out.append(ImageDetections(np.zeros(0, dtype=np.int64), np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0)))
    return out
