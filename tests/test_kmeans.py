"""Batched K-means against a per-sample loop reference, hand cases and separated blobs."""

from __future__ import annotations

import torch

from afford.modules.kmeans import batched_kmeans, init_centroids


def loop_kmeans(
    pts: torch.Tensor, init: torch.Tensor, iters: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Lloyd iterations on one point set (M, D) from centroids (k, D)."""
    c = init.clone()
    k = c.shape[0]
    for _ in range(iters):
        a = torch.stack([((c - p) ** 2).sum(1).argmin() for p in pts])
        new = c.clone()
        for j in range(k):
            members = pts[a == j]
            if len(members) > 0:
                new[j] = members.mean(0)
        shift = max(float((new[j] - c[j]).norm()) for j in range(k))
        c = new
        if shift < tol:
            break
    a = torch.stack([((c - p) ** 2).sum(1).argmin() for p in pts])
    return c, a


def test_matches_per_sample_loop_from_same_init() -> None:
    g = torch.Generator().manual_seed(0)
    b, n, d, k = 5, 40, 6, 3
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    x[1] *= 4  # different scales -> different convergence iteration per sample
    valid = torch.rand(b, n, generator=g) > 0.3
    valid[3, 2:] = False  # only 2 valid points -> cannot be clustered
    for iters in (1, 3, 300):
        init = init_centroids(x, valid, k, torch.Generator().manual_seed(1))
        cent, assign = batched_kmeans(x, valid, k=k, iters=iters, tol=1e-4, init=init)
        assert cent.shape == (b, k, d) and assign.shape == (b, n) and assign.dtype == torch.long
        for i in range(b):
            if valid[i].sum() < k:
                assert torch.all(cent[i] == 0) and torch.all(assign[i] == -1)
                continue
            ref_c, ref_a = loop_kmeans(x[i][valid[i]], init[i], iters, 1e-4)
            torch.testing.assert_close(cent[i], ref_c, rtol=0, atol=1e-10)
            assert torch.equal(assign[i][valid[i]], ref_a)
            assert torch.all(assign[i][~valid[i]] == -1)


def test_init_picks_distinct_valid_points_reproducibly() -> None:
    x = torch.arange(2 * 10, dtype=torch.float32).reshape(2, 10, 1)
    valid = torch.zeros(2, 10, dtype=torch.bool)
    valid[0, [1, 4, 5, 8]] = True
    valid[1, [0, 9]] = True  # fewer than k
    a = init_centroids(x, valid, 3, torch.Generator().manual_seed(3))
    b = init_centroids(x, valid, 3, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    chosen = a[0, :, 0].tolist()
    assert len(set(chosen)) == 3 and set(chosen) <= {1.0, 4.0, 5.0, 8.0}
    assert torch.all(a[1] == 0)
    # The generator drives the choice: over seeds every valid point gets picked at some point.
    seen = set()
    for s in range(20):
        seen |= set(init_centroids(x, valid, 3, torch.Generator().manual_seed(s))[0, :, 0].tolist())
    assert seen == {1.0, 4.0, 5.0, 8.0}


def test_empty_cluster_keeps_previous_centroid_hand_case() -> None:
    x = torch.tensor([[[0.0], [1.0], [10.0], [11.0], [500.0]]])
    valid = torch.tensor([[True, True, True, True, False]])  # the 500 outlier is padding
    init = torch.tensor([[[0.0], [10.0], [100.0]]])
    cent, assign = batched_kmeans(x, valid, k=3, init=init)
    torch.testing.assert_close(cent, torch.tensor([[[0.5], [10.5], [100.0]]]))
    assert assign.tolist() == [[0, 0, 1, 1, -1]]


def test_separated_blobs_recover_means_and_ignore_padding() -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    b, per, pad = 3, 20, 7
    xs, labels = [], []
    for _ in range(b):
        lab = torch.arange(3).repeat_interleave(per)
        pts = means[lab] + 0.3 * torch.randn(3 * per, 2, generator=g, dtype=torch.float64)
        junk = 1e3 + torch.randn(pad, 2, generator=g, dtype=torch.float64)  # padding, far away
        perm = torch.randperm(3 * per + pad, generator=g)
        xs.append(torch.cat([pts, junk])[perm])
        labels.append(torch.cat([lab, torch.full((pad,), -1)])[perm])
    x, lab = torch.stack(xs), torch.stack(labels)
    valid = lab >= 0
    # One point of each blob as the start (random starts may legitimately fall in a local minimum).
    init = torch.stack([torch.stack([x[i][lab[i] == j][0] for j in (2, 0, 1)]) for i in range(b)])
    cent, assign = batched_kmeans(x, valid, k=3, init=init)
    for i in range(b):
        true_means = torch.stack([x[i][lab[i] == j].mean(0) for j in range(3)])
        torch.testing.assert_close(cent[i], true_means[[2, 0, 1]])
        assert torch.all(assign[i][~valid[i]] == -1)
        # cluster c holds exactly blob [2, 0, 1][c]
        mapped = torch.tensor([2, 0, 1])[assign[i][valid[i]]]
        assert torch.equal(mapped, lab[i][valid[i]])
    # Without an explicit init, the generator makes the result reproducible.
    c1, a1 = batched_kmeans(x, valid, generator=torch.Generator().manual_seed(5))
    c2, a2 = batched_kmeans(x, valid, generator=torch.Generator().manual_seed(5))
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
