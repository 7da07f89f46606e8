"""Concentration loss L_con (methods.md §0.5; LOCATE and LoopTrans).

A SCOPS-style spatial-variance penalty: each class map is turned into a probability over the
grid and its variance around its own centre of mass is minimised, so activations gather into
one compact blob instead of spreading over the object. Applied to *every* class map (C maps;
LoopTrans passes C + 15 including its noise classes), not only the GT class.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from afford.modules.heads import minmax


def concentration_loss(cams: Tensor, offset: float = 1e-3, eps: float = 1e-10) -> Tensor:
    """Mean spatial variance of the class maps.

    Per map: ``m = minmax(cam) + offset`` (``offset`` keeps a flat map a valid, uniform
    distribution), ``q = m / Σ m``, grid coordinates ``u = 2·i/W − 1`` in ``[-1, 1)``, and
    ``L = Σ q (u_x − μ_x)² + Σ q (u_y − μ_y)²``. Mean over classes, then over the batch.

    Args:
        cams: ``(B, C, h, w)`` raw class activation maps.
        offset: added after min-max (1e-3 in the reference).
        eps: min-max denominator epsilon.

    Returns:
        Scalar loss.
    """
    _, _, h, w = cams.shape
    m = minmax(cams, eps) + offset
    q = m / m.sum(dim=(-2, -1), keepdim=True)
    ux = 2 * torch.arange(w, device=cams.device, dtype=q.dtype) / w - 1  # (w,)
    uy = 2 * torch.arange(h, device=cams.device, dtype=q.dtype) / h - 1  # (h,)
    px = q.sum(-2)  # (B, C, w) marginal over columns
    py = q.sum(-1)  # (B, C, h) marginal over rows
    mx = (px * ux).sum(-1, keepdim=True)
    my = (py * uy).sum(-1, keepdim=True)
    var = (px * (ux - mx) ** 2).sum(-1) + (py * (uy - my) ** 2).sum(-1)  # (B, C)
    return var.mean(1).mean(0)


class ConcentrationLoss(nn.Module):
    """Weighted :func:`concentration_loss`; ``weight = 0.07`` in LOCATE and LoopTrans (§1.3, §3.2)."""

    def __init__(self, weight: float = 0.07) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, cams: Tensor) -> Tensor:
        """``cams``: ``(B, C, h, w)`` -> weighted scalar loss."""
        return self.weight * concentration_loss(cams)
