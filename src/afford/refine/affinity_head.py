"""AffinityNet head, pair neighbourhoods and affinity matrices (affinity.md §3.4, §4).

Why a separate head: psa learns features whose L1 distance says "same region or not". afford
puts that head on frozen backbone features (``Features.tokens`` / ``.keys`` of chosen layers,
each (B, D_l, h, w)) so any method's heatmaps can be refined without touching the method.

Affinity between grid cells i and j (psa code: MEAN over channels; the paper writes the L1 norm)::

    a_ij = exp(−mean_ch |f_i − f_j|)

Two neighbourhoods of radius γ:

- training: a *half* disc so each unordered pair counts once — (0, 1..γ−1) and (1..γ−1, −(γ−1)..γ−1)
  with dy² + dx² < γ²; γ = 5 gives 34 offsets. "From" cells are rows [0, h−γ+1) and columns
  [γ−1, w−γ+1) so every partner stays inside the grid (psa ``ExtractAffinityLabelInRadius``);
- inference: the symmetric *full* disc plus the cell itself (a_ii = 1), stored banded as
  :class:`DiscAffinity` (B, K, h, w) and convertible to the dense N×N matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from afford.errors import AffordError


def half_disc_offsets(radius: int) -> list[tuple[int, int]]:
    """Training offsets (dy, dx) of psa's half disc; 34 for ``radius=5``."""
    if radius < 2:
        raise AffordError(f"affinity radius: expected >= 2, got {radius}")
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dy * dy + dx * dx < radius * radius:
                offsets.append((dy, dx))
    return offsets


def full_disc_offsets(radius: int) -> list[tuple[int, int]]:
    """Inference offsets: (0, 0) first, then the half disc and its mirror (1 + 68 for radius 5)."""
    half = half_disc_offsets(radius)
    return [(0, 0)] + half + [(-dy, -dx) for dy, dx in half]


def _check_features(f: torch.Tensor, name: str = "affinity features") -> None:
    if f.dim() != 4:
        raise AffordError(f"{name}: expected (B, D, h, w), got shape {tuple(f.shape)}")


def pair_grid(h: int, w: int, radius: int, what: str = "feature") -> tuple[int, int]:
    """``(rows, columns)`` of the cells pairs start from on an ``h x w`` grid (rows ``[0, h - r + 1)``,
    columns ``[r - 1, w - r + 1)``): every half-disc partner stays inside; none is an AffordError."""
    rf = radius - 1
    hf, wf = h - rf, w - 2 * rf
    if hf < 1 or wf < 1:
        raise AffordError(f"affinity radius: {radius} is too large for a {h}x{w} {what} grid")
    return hf, wf


def pair_affinity(f: torch.Tensor, radius: int) -> torch.Tensor:
    """Training affinities ``(B, P, N_from)`` over the half disc; ``f`` (B, E, h, w)."""
    _check_features(f)
    _, _, h, w = f.shape
    rf = radius - 1
    hf, wf = pair_grid(h, w, radius)
    src = f[:, :, :hf, rf : rf + wf]
    out = [
        torch.exp(-(src - f[:, :, dy : dy + hf, rf + dx : rf + dx + wf]).abs().mean(1)).flatten(1)
        for dy, dx in half_disc_offsets(radius)
    ]
    return torch.stack(out, 1)


def pair_labels(labels: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bg_pos, fg_pos, neg) float masks (B, P, N_from) from a (B, h, w) label map (0/1/255).

    Same pairs and order as :func:`pair_affinity` (affinity.md §3.4).
    """
    if labels.dim() != 3:
        raise AffordError(f"affinity labels: expected (B, h, w), got shape {tuple(labels.shape)}")
    h, w = labels.shape[-2:]
    rf = radius - 1
    hf, wf = pair_grid(h, w, radius, "label")
    src = labels[:, :hf, rf : rf + wf].flatten(1).unsqueeze(1)
    dst = torch.stack(
        [labels[:, dy : dy + hf, rf + dx : rf + dx + wf].flatten(1) for dy, dx in half_disc_offsets(radius)], 1
    )
    valid = (src != 255) & (dst != 255)
    same = src == dst
    bg_pos = same & (src == 0)
    fg_pos = same & (src != 0) & valid
    neg = ~same & valid
    return bg_pos.float(), fg_pos.float(), neg.float()


@dataclass
class DiscAffinity:
    """Banded affinity matrix: ``weights[b, k, y, x] = W[(y, x), (y, x) + offsets[k]]``.

    ``weights`` (B, K, h, w) is 0 where the partner is outside the grid; ``offsets[0] = (0, 0)``
    carries the diagonal of 1. Symmetric by construction (a_ij = a_ji).
    """

    offsets: list[tuple[int, int]]
    weights: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.weights.shape[-2]), int(self.weights.shape[-1])

    def to_dense(self) -> torch.Tensor:
        """(B, N, N) dense matrix (row-major cell index), 0 outside the disc."""
        b, _, h, w = self.weights.shape
        n = h * w
        dense = self.weights.new_zeros(b, n, n)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        rows = (ys * w + xs).reshape(-1)
        for k, (dy, dx) in enumerate(self.offsets):
            ty, tx = ys + dy, xs + dx
            inside = ((ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)).reshape(-1)
            cols = (ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1)).reshape(-1)
            dense[:, rows[inside], cols[inside]] = self.weights[:, k].reshape(b, -1)[:, inside]
        return dense


def disc_affinity(f: torch.Tensor, radius: int, kind: str = "l1", scale: float = 1.0) -> DiscAffinity:
    """Inference affinities over the full disc of ``radius`` for features ``f`` (B, E, h, w).

    ``kind="l1"``: ``exp(−scale · mean_ch |f_i − f_j|)`` (psa, ``scale=1``); ``kind="cosine"``:
    ``max(cos(f_i, f_j), 0)`` (affinity.md §12.2 b; clamped so that W^∘β stays defined).
    """
    _check_features(f)
    if kind not in ("l1", "cosine"):
        raise AffordError(f"affinity kind: expected 'l1' or 'cosine', got {kind!r}")
    b, _, h, w = f.shape
    p = radius - 1
    half = half_disc_offsets(radius)
    if kind == "cosine":
        f = F.normalize(f, dim=1)
    padded = F.pad(f, (p, p, p, p))
    ones = F.pad(torch.ones(1, 1, h, w, dtype=f.dtype, device=f.device), (p, p, p, p))
    forward, mirror = [], []
    # One reused (B, E, h, w) temporary keeps the peak at ~2 feature maps; fresh temporaries per
    # offset grew peak RSS by ~300 MiB at 56x56x448 (allocator churn). Autograd needs fresh ones.
    buf = None if (torch.is_grad_enabled() and f.requires_grad) else torch.empty_like(f)
    for dy, dx in half:
        nb = padded[:, :, p + dy : p + dy + h, p + dx : p + dx + w]
        if kind == "l1":
            diff = f - nb if buf is None else torch.sub(f, nb, out=buf)
            dist = diff.abs().mean(1) if buf is None else diff.abs_().mean(1)
            a = torch.exp(-scale * dist)
        else:
            prod = f * nb if buf is None else torch.mul(f, nb, out=buf)
            a = prod.sum(1).clamp(min=0.0)
        a = a * ones[:, 0, p + dy : p + dy + h, p + dx : p + dx + w]
        forward.append(a)
        # W[j, j - o] = W[j - o, j]: read the same value back at the partner, so W is exactly symmetric
        mirror.append(F.pad(a, (p, p, p, p))[:, p - dy : p - dy + h, p - dx : p - dx + w])
    diagonal = torch.ones(b, h, w, dtype=f.dtype, device=f.device)  # self-loops of 1 (affinity.md §11.3)
    weights = torch.stack([diagonal, *forward, *mirror], 1)
    return DiscAffinity(full_disc_offsets(radius), weights)


class AffinityHead(nn.Module):
    """psa's AffinityNet head (affinity.md §4) on a list of backbone feature levels.

    Per level: 1×1 conv (no bias) -> ELU; concatenate; 1×1 conv (no bias) -> ELU. psa maps
    512/1024/4096 channels to 64/128/256 (about 1/8, 1/8, 1/16); here each width defaults to
    ``max(8, D_l // 8)`` so it scales with the input dims (e.g. 384-d DINO keys -> 48). Init as psa:
    Kaiming-normal reducers, Xavier-uniform (gain 4) output conv. Levels at another resolution
    than the first are bilinearly resized to it.
    """

    def __init__(self, in_dims: Sequence[int], widths: Sequence[int] | None = None) -> None:
        super().__init__()
        if not in_dims:
            raise AffordError("affinity head in_dims: expected at least one feature level")
        widths = list(widths) if widths is not None else [max(8, d // 8) for d in in_dims]
        if len(widths) != len(in_dims):
            raise AffordError(f"affinity head widths: expected {len(in_dims)} values, got {len(widths)}")
        self.in_dims = [int(d) for d in in_dims]
        self.widths = [int(c) for c in widths]
        self.reducers = nn.ModuleList(nn.Conv2d(d, c, 1, bias=False) for d, c in zip(self.in_dims, self.widths, strict=True))
        out = sum(self.widths)
        self.fuse = nn.Conv2d(out, out, 1, bias=False)
        for conv in self.reducers:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4.0)

    @property
    def out_dim(self) -> int:
        return sum(self.widths)

    def config(self) -> dict[str, list[int]]:
        """Constructor arguments, stored next to the weights."""
        return {"in_dims": self.in_dims, "widths": self.widths}

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``features``: list of (B, D_l, h_l, w_l) -> (B, sum(widths), h_0, w_0)."""
        if len(features) != len(self.reducers):
            raise AffordError(f"affinity head features: expected {len(self.reducers)} levels, got {len(features)}")
        size = features[0].shape[-2:]
        outs = []
        for f, conv, d in zip(features, self.reducers, self.in_dims, strict=True):
            _check_features(f, "affinity head features")
            if f.shape[1] != d:
                raise AffordError(f"affinity head features: expected {d} channels, got {f.shape[1]}")
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            outs.append(F.elu(conv(f)))
        return F.elu(self.fuse(torch.cat(outs, 1)))
