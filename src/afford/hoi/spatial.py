"""Pairwise box geometry: UPT's 36-d spatial encoding and its MLP (hoi.md §3.2).

Boxes are 0-based ``(x1, y1, x2, y2)`` pixel coordinates with torchvision-style widths
``w = x2 - x1`` and heights ``h = y2 - y1`` (no ``+ 1``), as UPT's boxes are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from afford.errors import AffordError

#: UPT ``ops.py::compute_spatial_encodings`` default (``eps: float = 1e-10``), read from
#: fredzzhang/upt; §3.2 leaves the value open.
SPATIAL_EPS = 1e-10


def _check_boxes(name: str, boxes: Tensor) -> None:
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise AffordError(f"{name}: expected boxes of shape (..., 4), got {tuple(boxes.shape)}")


def box_area(boxes: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> ``(...)`` areas ``(x2 - x1) * (y2 - y1)``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """``(N, 4)`` x ``(M, 4)`` -> ``(N, M)`` IoU, torchvision's convention without torchvision.

    Needed for feature 14 of the spatial encoding (§3.2) and for pair/GT matching (§3.3).
    """
    _check_boxes("boxes_a", boxes_a)
    _check_boxes("boxes_b", boxes_b)
    lt = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    rb = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes_a)[:, None] + box_area(boxes_b)[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)  # two zero-area boxes: IoU 0, not 0/0


def paired_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """``(N, 4)`` x ``(N, 4)`` -> ``(N,)`` IoU of row-aligned pairs (the diagonal of :func:`box_iou`)."""
    lt = torch.maximum(boxes_a[:, :2], boxes_b[:, :2])
    rb = torch.minimum(boxes_a[:, 2:], boxes_b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(boxes_a) + box_area(boxes_b) - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)  # a zero-area box with itself: 0, not NaN


def spatial_encoding(boxes_h: Tensor, boxes_o: Tensor, image_size: tuple[float, float],
                     eps: float = SPATIAL_EPS) -> Tensor:
    """``(N, 4)`` human and object boxes in a ``(w, h)`` image -> ``(N, 36)`` = ``[f, log(f + eps)]``.

    ``f`` is UPT's 18 raw features in §3.2's order: centres, sizes, areas and the area ratio
    (relative to the image or the human box), aspect ratios, IoU, then the object's offset from
    the human split by direction (right, left, below, above) in units of the human's size.
    The log half makes small ratios distinguishable for the MLP.
    """
    _check_boxes("boxes_h", boxes_h)
    _check_boxes("boxes_o", boxes_o)
    if boxes_h.dim() != 2 or boxes_h.shape != boxes_o.shape:
        raise AffordError(f"spatial_encoding: boxes_h {tuple(boxes_h.shape)} and boxes_o "
                          f"{tuple(boxes_o.shape)} must both be (N, 4)")
    if len(image_size) != 2 or min(image_size) <= 0:
        raise AffordError(f"image_size: expected a positive (w, h), got {image_size}")
    w, h = float(image_size[0]), float(image_size[1])
    b1, b2 = boxes_h, boxes_o
    c1x, c1y = (b1[:, 0] + b1[:, 2]) / 2, (b1[:, 1] + b1[:, 3]) / 2
    c2x, c2y = (b2[:, 0] + b2[:, 2]) / 2, (b2[:, 1] + b2[:, 3]) / 2
    w1, h1 = b1[:, 2] - b1[:, 0], b1[:, 3] - b1[:, 1]
    w2, h2 = b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
    dx = (c2x - c1x).abs() / (w1 + eps)
    dy = (c2y - c1y).abs() / (h1 + eps)
    f = torch.stack([
        c1x / w, c1y / h, c2x / w, c2y / h,
        w1 / w, h1 / h, w2 / w, h2 / h,
        w1 * h1 / (w * h), w2 * h2 / (w * h), w2 * h2 / (w1 * h1 + eps),
        w1 / (h1 + eps), w2 / (h2 + eps),
        paired_iou(b1, b2),
        (c2x > c1x).to(dx.dtype) * dx, (c2x < c1x).to(dx.dtype) * dx,
        (c2y > c1y).to(dy.dtype) * dy, (c2y < c1y).to(dy.dtype) * dy,
    ], dim=1)
    return torch.cat([f, torch.log(f + eps)], dim=1)


class SpatialMLP(nn.Sequential):
    """36 -> 128 -> 256 -> 512 with ReLU after each layer: UPT's pairwise spatial feature (§3.2)."""

    def __init__(self, in_dim: int = 36, hidden: tuple[int, ...] = (128, 256, 512)) -> None:
        layers: list[nn.Module] = []
        for d in hidden:
            layers += [nn.Linear(in_dim, d), nn.ReLU()]
            in_dim = d
        super().__init__(*layers)
