"""Random walk (affinity.md §6, §12.3): transition invariants and dense vs iterative agreement."""

from __future__ import annotations

import pytest
import torch

from afford.errors import AffordError
from afford.refine.affinity_head import disc_affinity
from afford.refine.labels import minmax
from afford.refine.random_walk import (
    matrix_power,
    propagate,
    random_walk_dense,
    random_walk_iterative,
    transition_matrix,
)


def _features(h: int = 9, w: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 6, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_transition_columns_sum_to_one_and_w_is_symmetric() -> None:
    aff = disc_affinity(_features(), 3)
    w = aff.to_dense()
    assert torch.equal(w, w.transpose(1, 2))
    assert torch.equal(w.diagonal(dim1=1, dim2=2), torch.ones(2, 99, dtype=w.dtype))
    t = transition_matrix(w, beta=8)
    assert torch.allclose(t.sum(1), torch.ones(2, 99, dtype=t.dtype), atol=1e-12)  # columns
    assert not torch.allclose(t.sum(2), torch.ones(2, 99, dtype=t.dtype))  # rows are not normalised
    # row vector from the left: c_rw[j] = Σ_i c[i] A_ij / Σ_i A_ij, a weighted average
    c = torch.rand(2, 99, dtype=torch.float64)
    a = w.pow(8)
    expected = torch.einsum("bi,bij->bj", c, a) / a.sum(1)
    assert torch.allclose(random_walk_dense(c, w, 8, 1), expected, atol=1e-12)


def test_matrix_power_by_squaring() -> None:
    t = transition_matrix(disc_affinity(_features(4, 5), 2).to_dense(), 2.0)
    for steps in (0, 1, 5, 8, 13):
        ref = torch.eye(20, dtype=t.dtype).expand_as(t)
        for _ in range(steps):
            ref = ref @ t
        assert torch.allclose(matrix_power(t, steps), ref, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 37, 256])
def test_dense_and_iterative_agree(steps: int) -> None:
    aff = disc_affinity(_features(), 3)
    c = torch.rand(2, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dense = random_walk_dense(c.reshape(2, -1), aff.to_dense(), 8, steps).reshape(2, 9, 11)
    iterative = random_walk_iterative(c, aff, 8, steps)
    assert torch.allclose(dense, iterative, atol=1e-10)
    assert not torch.allclose(iterative, c)  # propagation did something
    auto_dense = propagate(c, aff, steps=steps, dense_limit=10_000)
    auto_iter = propagate(c, aff, steps=steps, dense_limit=0)
    assert torch.allclose(auto_dense, auto_iter, atol=1e-9)


def test_constant_map_stays_constant() -> None:
    aff = disc_affinity(_features(), 4)
    c = torch.full((2, 9, 11), 0.37, dtype=torch.float64)
    assert torch.allclose(random_walk_iterative(c, aff, 8, 256), c, atol=1e-12)
    assert torch.allclose(random_walk_dense(c.reshape(2, -1), aff.to_dense(), 8, 256).reshape(c.shape), c, atol=1e-12)


def test_delta_spreads_only_within_its_connected_region() -> None:
    """Left and right halves with features 200 apart: cross affinity exp(-200)^8 = 0 exactly."""
    f = torch.zeros(1, 3, 8, 10, dtype=torch.float64)
    f[:, :, :, 6:] = 200.0
    f += 0.1 * torch.rand(f.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    aff = disc_affinity(f, 3)
    c = torch.zeros(1, 8, 10, dtype=torch.float64)
    c[0, 4, 1] = 1.0
    for out in (
        random_walk_iterative(c, aff, 8, 64),
        random_walk_dense(c.reshape(1, -1), aff.to_dense(), 8, 64).reshape(1, 8, 10),
    ):
        assert (out[0, :, :6] > 0).all()
        assert (out[0, :, 6:] == 0).all()
        # mass is conserved under column normalisation only for a doubly stochastic T; here we
        # check the weaker invariant that scores stay within [min c, max c] (averaging)
        assert out.max() <= 1.0 and out.min() >= 0.0


def test_propagate_blend_and_boundary() -> None:
    aff = disc_affinity(_features(), 3)
    cams = torch.rand(2, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 5 - 1
    assert torch.allclose(propagate(cams, aff, blend=1.0), minmax(minmax(cams)), atol=1e-12)
    out = propagate(cams, aff, steps=4, blend=0.5)
    c = minmax(cams)
    c_rw = random_walk_iterative(c, aff, 8, 4)
    assert torch.allclose(out, minmax(0.5 * c + 0.5 * c_rw), atol=1e-12)
    assert out.min() == 0 and out.max() == pytest.approx(1.0, abs=1e-6)
    gated = propagate(cams, aff, steps=0, boundary=torch.ones_like(cams))
    assert torch.equal(gated, torch.zeros_like(gated))  # a map fully on boundaries vanishes
    with pytest.raises(AffordError, match="blend"):
        propagate(cams, aff, blend=2.0)
    with pytest.raises(AffordError, match="solver"):
        propagate(cams, aff, solver="gpu")


def test_iterative_runs_at_56x56() -> None:
    """The grid size of the benchmark (t = 256 timed there; fewer steps here to stay fast)."""
    f = torch.randn(1, 32, 56, 56, generator=torch.Generator().manual_seed(0))
    aff = disc_affinity(f, 5)
    assert aff.weights.shape == (1, 69, 56, 56)
    c = torch.rand(1, 56, 56, generator=torch.Generator().manual_seed(1))
    out = random_walk_iterative(c, aff, 8, 32)
    assert torch.isfinite(out).all() and out.min() >= c.min() - 1e-6 and out.max() <= c.max() + 1e-6
