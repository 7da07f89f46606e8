"""The two data shapes the HOI code passes around: ground truth per image, detections per image.

Coordinates follow hoi.md §12: ground-truth boxes as in the official annotations (1-based pixel
indices, both corners inclusive), detections 0-based as a detector outputs them. Keeping both as
given, and converting only inside the evaluator, is what makes the official +1 rule checkable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageGT:
    """The annotated human–object pairs of one image.

    ``boxes_h``/``boxes_o``: ``(N, 4)`` float64 ``x1, y1, x2, y2``, 1-based inclusive pixel indices;
    ``hoi``: ``(N,)`` int64 HOI class (0..599); ``obj``: ``(N,)`` int64 object class of the pair in the
    dataset's object order; ``verb``: ``(N,)`` int64. One row per (pair, HOI) as in the JSON
    (a pair with two verbs appears twice).
    """

    boxes_h: np.ndarray
    boxes_o: np.ndarray
    hoi: np.ndarray
    obj: np.ndarray
    verb: np.ndarray

    def __len__(self) -> int:
        return int(self.hoi.shape[0])


@dataclass(frozen=True)
class ImageDetections:
    """Scored HOI detections of one image, in the order given.

    ``hoi``: ``(M,)`` int64; ``boxes_h``/``boxes_o``: ``(M, 4)`` float64, 0-based pixel coordinates;
    ``scores``: ``(M,)`` float64.
    """

    hoi: np.ndarray
    boxes_h: np.ndarray
    boxes_o: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.hoi.shape[0])
