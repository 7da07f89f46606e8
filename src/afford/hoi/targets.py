"""Training targets for detected human–object pairs (hoi.md §3.3, last bullet).

A detected pair ``(h, o)`` gets class ``c`` when ``min(IoU(h, gt_h), IoU(o, gt_o)) >= 0.5`` for some
ground-truth pair carrying ``c``; a pair can match several GT rows, so the targets are multi-label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from afford.errors import AffordError
from afford.hoi.spatial import box_iou
from afford.hoi.types import ImageGT

#: §3.3: a pair is positive for a GT pair when both its boxes overlap that pair's boxes this much.
MATCH_IOU = 0.5


def gt_boxes_to_detector(boxes: np.ndarray) -> np.ndarray:
    """1-based inclusive GT boxes -> 0-based xyxy (``x1 - 1, y1 - 1, x2, y2``).

    Detections are 0-based with continuous widths (hoi.md §12); this is the ``fredzzhang/hicodet``
    conversion, so a detector box drawn exactly on an object matches its annotation with IoU 1.
    """
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, :2] -= 1.0
    return out


def pair_targets(boxes_h: Tensor, boxes_o: Tensor, gt: ImageGT, num_classes: int,
                 label: str = "hoi", ignore: Sequence[int] = ()) -> Tensor:
    """``(P, 4)`` human and object boxes (0-based xyxy) -> ``(P, num_classes)`` {0, 1} targets.

    ``label`` picks the GT column: ``"hoi"`` (600-way) or ``"verb"`` (117-way, as UPT trains).
    ``ignore`` lists classes whose columns are zeroed: in zero-shot training (hoi.md §8) unseen
    classes must not be learnt from stray annotations that survive the split filtering.
    IoU is computed in float64 so that the ``>= 0.5`` threshold is exact on hand-made boxes.
    """
    for name, b in (("boxes_h", boxes_h), ("boxes_o", boxes_o)):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            raise AffordError(f"pair_targets: {name} must be a (P, 4) tensor, got {getattr(b, 'shape', type(b))}")
    if boxes_h.shape != boxes_o.shape:
        raise AffordError(f"pair_targets: boxes_h {tuple(boxes_h.shape)} and boxes_o {tuple(boxes_o.shape)} differ")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise AffordError(f"pair_targets: num_classes must be a positive int, got {num_classes!r}")
    if label not in ("hoi", "verb"):
        raise AffordError(f"pair_targets: label must be 'hoi' or 'verb', got {label!r}")
    classes = np.asarray(gt.hoi if label == "hoi" else gt.verb, dtype=np.int64).reshape(-1)
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise AffordError(f"pair_targets: gt.{label} has classes outside 0..{num_classes - 1}")
    ignore = [int(c) for c in ignore]
    if any(c < 0 or c >= num_classes for c in ignore):
        raise AffordError(f"pair_targets: ignore {ignore} has classes outside 0..{num_classes - 1}")

    device = boxes_h.device
    dtype = boxes_h.dtype if boxes_h.is_floating_point() else torch.float32
    num_pairs = boxes_h.shape[0]
    gt_h = gt_boxes_to_detector(gt.boxes_h)
    gt_o = gt_boxes_to_detector(gt.boxes_o)
    if not (gt_h.shape[0] == gt_o.shape[0] == classes.shape[0]):
        raise AffordError(f"pair_targets: ImageGT rows differ: boxes_h {gt_h.shape[0]}, "
                          f"boxes_o {gt_o.shape[0]}, {label} {classes.shape[0]}")
    if num_pairs == 0 or classes.shape[0] == 0:
        return torch.zeros(num_pairs, num_classes, dtype=dtype, device=device)

    f64 = dict(dtype=torch.float64, device=device)
    iou_h = box_iou(boxes_h.to(torch.float64), torch.as_tensor(gt_h, **f64))
    iou_o = box_iou(boxes_o.to(torch.float64), torch.as_tensor(gt_o, **f64))
    match = torch.minimum(iou_h, iou_o) >= MATCH_IOU  # (P, N)
    onehot = torch.zeros(classes.shape[0], num_classes, **f64)
    onehot[torch.arange(classes.shape[0], device=device), torch.as_tensor(classes, device=device)] = 1.0
    targets = (match.to(torch.float64) @ onehot).clamp(max=1.0)
    if ignore:
        targets[:, ignore] = 0.0
    return targets.to(dtype)
