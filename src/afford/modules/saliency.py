"""Object saliency maps the LOCATE lineage compares parts and clusters with (methods.md §0.2).

The papers read saliency from DINO's CLS attention. Two forms exist: LOCATE's binary map
(per-head binarised, heads [0, 1, 3] averaged, ``> mean``; ``Features.saliency``) and
LoopTrans's continuous one (raw attention of the same heads averaged, then min-max;
:func:`mean_head_saliency`). A backbone whose CLS token never learned to attend to objects (a
random offline ViT) needs a label-free stand-in: :func:`border_contrast` (the classic border
background prior) or :func:`cam_saliency` (the class-agnostic CAM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from afford.backbones.features import SALIENCY_HEADS
from afford.errors import AffordError
from afford.modules.heads import minmax


def binarize_at_mean(m: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` -> bool map of the positions above the map's own spatial mean."""
    return m > m.flatten(1).mean(1)[:, None, None]


def mean_head_saliency(cls_attn: torch.Tensor, heads: tuple[int, ...] = SALIENCY_HEADS) -> torch.Tensor:
    """LoopTrans's continuous saliency: mean of the raw CLS attention of ``heads``, min-max.

    ``cls_attn``: ``(B, heads, h, w)``. Models with fewer heads than ``max(heads) + 1`` (tiny
    test models) average all heads, as :func:`afford.backbones.features.dino_saliency` does.
    """
    idx = list(heads) if cls_attn.shape[1] > max(heads) else list(range(cls_attn.shape[1]))
    return minmax(cls_attn[:, idx].float().mean(1))


def cam_saliency(cams: torch.Tensor) -> torch.Tensor:
    """Class-agnostic object mask ``(B, h, w)`` from CAMs ``(B, C, h, w)``: max over classes,
    min-max, then ``> mean`` (the same binarisation as the DINO saliency of methods.md §0.2)."""
    return binarize_at_mean(minmax(cams.max(1).values))


def border_contrast(desc: torch.Tensor) -> torch.Tensor:
    """Label-free continuous saliency ``(B, h, w)`` in [0, 1] from descriptors ``(B, D, h, w)``:
    one minus a position's mean cosine similarity to the border positions, min-max."""
    b, d, h, w = desc.shape
    n = F.normalize(desc.flatten(2).float(), dim=1)  # (B, D, hw)
    border = torch.ones(h, w, dtype=torch.bool, device=desc.device)
    border[1:-1, 1:-1] = False
    sim = torch.einsum("bdp,bdq->bp", n, n[:, :, border.flatten()]) / int(border.sum())
    return minmax((1 - sim).view(b, h, w))


def border_saliency(desc: torch.Tensor) -> torch.Tensor:
    """Binary form of :func:`border_contrast` (``> mean``, the binarisation of methods.md §0.2)."""
    return binarize_at_mean(border_contrast(desc))


#: PartIoU saliencies (LOCATE, SelectiveCL): ``dino`` is the papers'; the others are label-free
#: stand-ins for backbones whose CLS attention means nothing (not in the papers).
PARTIOU_SALIENCIES: tuple[str, ...] = ("dino", "border", "cam")


def partiou_saliency(kind: str, dino: torch.Tensor, desc: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """The binary egocentric saliency PartIoU compares parts with.

    Args:
        kind: one of :data:`PARTIOU_SALIENCIES`.
        dino: ``(B, h, w)`` binary DINO saliency (``Features.saliency``).
        desc: ``(B, D, h, w)`` frozen descriptors (for ``border``).
        cams: ``(B, C, h, w)`` egocentric CAMs (for ``cam``).
    """
    if kind == "dino":
        return dino
    if kind == "border":
        return border_saliency(desc.detach())
    if kind == "cam":
        return cam_saliency(cams.detach())
    raise AffordError(f"model.saliency: expected one of {PARTIOU_SALIENCIES}, got '{kind}'")
