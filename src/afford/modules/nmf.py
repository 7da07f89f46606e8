"""Hamburger: NMF matrix decomposition over the exocentric views (WSMA, Cross-View-AG's AIM).

WSMA (methods.md §2.1) and Cross-View-AG (§5.1) pass the features of the n = 3 exocentric
images of one sample through ``HamburgerV1``: a 1x1 conv "lower bread" to D channels + ReLU
(NMF needs a non-negative matrix), a non-negative matrix factorisation with R bases of the
D x (n*h*w) matrix of *all* positions of the n images jointly (so the bases capture what the
views have in common), and a 1x1 conv + BatchNorm "upper bread" back to the input width,
added residually. Submodule names match the official checkpoint (checkpoints/wsma.md §6):
``lower_bread.0`` (conv with bias), ``upper_bread.0`` (conv, no bias), ``upper_bread.1`` (BN).

The NMF bases are *not* part of the state dict (wsma.md §3.4): they live in a non-persistent
buffer that starts random and follows an online moving average (η = 0.9) during training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from afford.global_batch import mean_over_processes

NMF_EPS = 1e-6


def update_coef(x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor, eps: float = NMF_EPS) -> torch.Tensor:
    """One Lee-Seung multiplicative update of the coefficients for ``x ≈ bases @ coefᵀ``.

    ``x``: (B, D, N) non-negative; ``bases``: (B, D, R); ``coef``: (B, N, R) -> (B, N, R).
    ``coef ← coef ⊙ (xᵀ bases) / (coef basesᵀbases)``: keeps non-negativity and never increases
    the Frobenius reconstruction error (up to ``eps``).
    """
    numerator = torch.bmm(x.transpose(1, 2), bases)
    denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
    return coef * numerator / (denominator + eps)


def update_bases(x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor, eps: float = NMF_EPS) -> torch.Tensor:
    """One multiplicative update of the bases: ``bases ← bases ⊙ (x coef) / (bases coefᵀcoef)``.

    Shapes as in :func:`update_coef`; returns (B, D, R).
    """
    numerator = torch.bmm(x, coef)
    denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
    return bases * numerator / (denominator + eps)


def nmf(
    x: torch.Tensor, bases: torch.Tensor, steps: int, inv_t: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factorise the non-negative ``x`` (B, D, N) starting from ``bases`` (B, D, R).

    The coefficients start as ``softmax(inv_t · xᵀ bases)`` over the R bases. The ``steps``
    alternating updates run without gradient and one final coefficient update runs with it
    (the Hamburger "one-step gradient": back-propagating through every iteration is unstable
    and unnecessary). Returns ``(bases (B, D, R), coef (B, N, R))``.
    """
    with torch.no_grad():
        coef = F.softmax(inv_t * torch.bmm(x.transpose(1, 2), bases), dim=-1)
        for _ in range(steps):
            coef = update_coef(x, bases, coef)
            bases = update_bases(x, bases, coef)
    coef = update_coef(x, bases, coef)
    return bases, coef


class Hamburger(nn.Module):
    """HamburgerV1 with NMF, run jointly over groups of ``n`` images.

    Defaults are WSMA's (methods.md §2.1: in 384, D = 512, R = 64, 6 train / 7 eval steps,
    η = 0.9, BN momentum 3e-4). Input and output: (B·n, C, h, w), images of one sample
    contiguous along the first axis.
    """

    def __init__(
        self,
        in_channels: int = 384,
        n: int = 3,
        dim: int = 512,
        rank: int = 64,
        train_steps: int = 6,
        eval_steps: int = 7,
        eta: float = 0.9,
        bn_momentum: float = 3e-4,
    ) -> None:
        super().__init__()
        self.n, self.dim, self.rank = n, dim, rank
        self.train_steps, self.eval_steps, self.eta = train_steps, eval_steps, eta
        self.lower_bread = nn.Sequential(nn.Conv2d(in_channels, dim, 1), nn.ReLU(inplace=True))
        self.upper_bread = nn.Sequential(
            nn.Conv2d(dim, in_channels, 1, bias=False), nn.BatchNorm2d(in_channels, momentum=bn_momentum)
        )
        # Non-persistent: follows .to(device) but stays out of the state dict, like the reference.
        self.register_buffer("bases", F.normalize(torch.rand(dim, rank), dim=0), persistent=False)
        # The reference's HamburgerV1 initialisation: He-normal over the fan-out (k·k·out_channels), 2-3x
        # larger than PyTorch's default, so the NMF residual counts as much from the first step.
        for conv in (self.lower_bread[0], self.upper_bread[0]):
            fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))

    @torch.no_grad()
    def _online_update(self, bases: torch.Tensor) -> None:
        """Move the stored bases towards this batch's mean solution: ``b ← b + η (mean − b)``."""
        self.bases += self.eta * (mean_over_processes(bases.mean(0)) - self.bases)  # the global batch's mean
        self.bases.copy_(F.normalize(self.bases, dim=0))

    def decompose(self, z: torch.Tensor) -> torch.Tensor:
        """NMF reconstruction of the non-negative ``z`` (B·n, D, h, w), jointly per group of n."""
        bn, d, h, w = z.shape
        if bn % self.n:
            raise ValueError(f"Hamburger: batch {bn} is not a multiple of n={self.n}")
        b = bn // self.n
        # (B·n, D, h, w) -> (B, D, n·h·w): all positions of the n images form one matrix.
        x = z.view(b, self.n, d, h * w).permute(0, 2, 1, 3).reshape(b, d, self.n * h * w)
        steps = self.train_steps if self.training else self.eval_steps
        # Multiplicative updates divide by small numbers: at least float32, also under autocast.
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=z.device.type, enabled=False):
            bases = self.bases.to(dtype).unsqueeze(0).expand(b, -1, -1).contiguous()
            bases, coef = nmf(x.to(dtype), bases, steps)
            recon = torch.bmm(bases, coef.transpose(1, 2))  # (B, D, n·h·w)
        if self.training:
            self._online_update(bases)
        return recon.view(b, d, self.n, h * w).permute(0, 2, 1, 3).reshape(bn, d, h, w).to(z.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B·n, C, h, w) -> (B·n, C, h, w): ``relu(x + upper(NMF(lower(x))))``."""
        z = self.lower_bread(x)
        return F.relu(x + self.upper_bread(self.decompose(z)))
