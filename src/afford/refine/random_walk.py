"""Random-walk propagation of one affordance map through an affinity matrix (affinity.md §6, §12.3).

Transition (psa ``infer_aff.py``): ``A = W^∘β`` (element-wise power, W with a diagonal of 1),
**column**-normalised ``T = A · diag(1 / Σ_i A_ij)`` so every column sums to 1, and the map is
a **row** vector multiplied from the left::

    c_rw = c · T^t,        c_rw[j] = Σ_i c[i] T_ij = Σ_i A_ij c[i] / Σ_i A_ij

i.e. each step replaces a cell's score by the A-weighted average of its neighbours' scores, so a
constant map stays constant. (The paper's ``D⁻¹ W^∘β`` applied from the right is the transpose of
this T; W is symmetric, so both give the same c_rw.)

Two equivalent solvers:

- dense: T as an N×N matrix and T^t by repeated squaring (``t = 256`` is 8 squarings), cheap for
  small grids (N = 196 at 14×14) but O(N²) memory and O(N³ log t) time;
- iterative: t applications of the banded operator (each cell's K disc neighbours), O(N·K) memory
  and O(N·K·t) time — 56×56 cells with γ = 5 need a few MB instead of several 39 MB matrices.

``propagate`` picks dense for ``N ≤ dense_limit`` (default 256, i.e. the 14×14 grid) and
iterative above (affinity.md §9).
"""

from __future__ import annotations

import torch

from afford.errors import AffordError
from afford.refine.affinity_head import DiscAffinity
from afford.refine.labels import minmax

# Cells; above this propagate() uses the banded iterative form. Dense costs ~N³·log2(t), iterative
# N·K·t, so dense only wins on tiny grids: at 56×56, t = 256 the dense form took 109–174 s/image on
# the 2-core CPU box against 0.17–0.3 s iterative (benchmarks/bench_random_walk.py).
DENSE_LIMIT = 256


def transition_matrix(w: torch.Tensor, beta: float) -> torch.Tensor:
    """Column-normalised transition ``T`` (B, N, N) from a dense affinity ``w`` (B, N, N)."""
    a = w.pow(beta)
    return a / a.sum(dim=-2, keepdim=True)


def matrix_power(t_mat: torch.Tensor, steps: int) -> torch.Tensor:
    """``T^steps`` (B, N, N) by binary exponentiation (pure squarings when steps is a power of 2)."""
    if steps < 0:
        raise AffordError(f"random walk t: expected >= 0, got {steps}")
    result = torch.eye(t_mat.shape[-1], dtype=t_mat.dtype, device=t_mat.device).expand_as(t_mat).clone()
    base = t_mat
    while steps:
        if steps & 1:
            result = result @ base
        steps >>= 1
        if steps:
            base = base @ base
    return result


def random_walk_dense(c: torch.Tensor, w: torch.Tensor, beta: float, steps: int) -> torch.Tensor:
    """``c`` (B, N) row vectors, ``w`` (B, N, N) dense affinity -> ``c · T^steps`` (B, N)."""
    return (c.unsqueeze(1) @ matrix_power(transition_matrix(w, beta), steps)).squeeze(1)


def _neighbour_index(offsets: list[tuple[int, int]], h: int, w: int, device: torch.device) -> torch.Tensor:
    """(K, N) flat index of each cell's k-th neighbour; ``N`` (a zero slot) when outside the grid."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    rows = []
    for dy, dx in offsets:
        ty, tx = ys + dy, xs + dx
        inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        rows.append(torch.where(inside, ty * w + tx, torch.full_like(ty, h * w)).reshape(-1))
    return torch.stack(rows)


def random_walk_iterative(c: torch.Tensor, aff: DiscAffinity, beta: float, steps: int) -> torch.Tensor:
    """``c`` (B, h, w) -> ``c · T^steps`` (B, h, w) with ``steps`` banded mat-vec products.

    Column sum of A at cell j = Σ_{i ∈ disc(j)} A_ij = Σ_k A_jk (symmetry), i.e. the sum of j's own
    banded weights, so T's normalisation needs no transpose.
    """
    if steps < 0:
        raise AffordError(f"random walk t: expected >= 0, got {steps}")
    b, k, h, w = aff.weights.shape
    if c.shape != (b, h, w):
        raise AffordError(f"random walk cams: expected shape {(b, h, w)}, got {tuple(c.shape)}")
    a = aff.weights.pow(beta).reshape(b, k, h * w)
    t_band = a / a.sum(1, keepdim=True)  # (B, K, N): T[j + o_k, j]
    index = _neighbour_index(aff.offsets, h, w, c.device).reshape(-1)  # (K·N,)
    v = c.reshape(b, h * w).to(t_band.dtype)
    zero = v.new_zeros(b, 1)
    for _ in range(steps):
        # index_select is ~10x faster than advanced indexing here (CPU, 56x56, K = 69)
        gathered = torch.cat([v, zero], 1).index_select(1, index).view(b, k, h * w)  # neighbours' scores
        v = (t_band * gathered).sum(1)
    return v.reshape(b, h, w)


def propagate(
    cams: torch.Tensor,
    aff: DiscAffinity,
    *,
    beta: float = 8.0,
    steps: int = 256,
    blend: float = 0.0,
    boundary: torch.Tensor | None = None,
    solver: str = "auto",
    dense_limit: int = DENSE_LIMIT,
) -> torch.Tensor:
    """Single-affordance refinement (affinity.md §12.3): ``cams`` (B, h, w) raw -> (B, h, w) in [0, 1].

    ``c = minmax(cams)`` (times ``1 − boundary`` if given), ``c_rw = c · T^t``, output
    ``minmax(λ·c + (1 − λ)·c_rw)`` with ``λ = blend`` (0 = pure random walk). Only the
    foreground is propagated: there is no argmax, so no background channel is needed.
    """
    if not 0.0 <= blend <= 1.0:
        raise AffordError(f"refine blend: expected a value in [0, 1], got {blend}")
    if solver not in ("auto", "dense", "iterative"):
        raise AffordError(f"refine solver: expected 'auto', 'dense' or 'iterative', got {solver!r}")
    if cams.dim() != 3 or tuple(cams.shape[-2:]) != tuple(aff.grid):
        raise AffordError(f"refine cams: expected shape (B, {aff.grid[0]}, {aff.grid[1]}) on the affinity grid, "
                          f"got {tuple(cams.shape)}")
    c = minmax(cams)
    if boundary is not None:
        c = c * (1.0 - boundary)
    b, h, w = c.shape
    if solver == "dense" or (solver == "auto" and h * w <= dense_limit):
        c_rw = random_walk_dense(c.reshape(b, -1), aff.to_dense(), beta, steps).reshape(b, h, w)
    else:
        c_rw = random_walk_iterative(c, aff, beta, steps)
    return minmax(blend * c + (1.0 - blend) * c_rw)
