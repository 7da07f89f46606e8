"""Batched Euclidean K-means over masked point sets (LOCATE / SelectiveCL part discovery).

The reference runs one K-means per training sample in a Python loop (``fast_pytorch_kmeans``,
K = 3, at most 300 iterations, random points as initial centroids; methods.md §1.2). Here all B
samples run at once: each sample's point set is a row of a padded ``(B, N, D)`` tensor with a
``valid`` mask, and a sample stops changing as soon as it has converged, so the result equals
running the same algorithm sample by sample from the same initial centroids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: a batch-wide generator, or one integer seed per sample (see :func:`init_centroids`)
Generator = torch.Generator | Sequence[int]


def init_centroids(x: Tensor, valid: Tensor, k: int = 3, generator: Generator | None = None) -> Tensor:
    """Pick ``k`` distinct valid points of each sample, uniformly at random, as initial centroids.

    Vectorised form of the reference's per-sample random choice: every valid point gets a
    uniform random score, invalid points get ``-inf``, and the ``k`` best scores win.

    Args:
        x: points, ``(B, N, D)``.
        valid: ``(B, N)`` bool, which points belong to each sample.
        k: number of centroids.
        generator: source of all randomness (reproducible part selection): a ``torch.Generator``
            for the whole batch, or one integer seed per sample, which makes each sample's draw
            independent of the batch it sits in (its padding, its position, a data-parallel split).

    Returns:
        ``(B, k, D)``; rows of samples with fewer than ``k`` valid points are zeros.
    """
    b, n, d = x.shape
    if n < k:
        return x.new_zeros(b, k, d)
    if isinstance(generator, Sequence):
        if len(generator) != b:
            raise ValueError(f"init_centroids: {len(generator)} sample seeds for a batch of {b}")
        scores = torch.full((b, n), float("-inf"))
        counts = valid.sum(1).tolist()
        for i, (seed, count) in enumerate(zip(generator, counts, strict=True)):  # b small draws
            draw = torch.rand(int(count), generator=torch.Generator().manual_seed(int(seed)))
            scores[i, valid[i].cpu()] = draw
        scores = scores.to(x.device)
    else:
        # Draw on the generator's device so a CPU generator also drives CUDA inputs.
        gen_device = generator.device if generator is not None else x.device
        scores = torch.rand(b, n, generator=generator, device=gen_device).to(x.device)
        scores = scores.masked_fill(~valid, float("-inf"))
    idx = scores.topk(k, dim=1).indices  # (B, k)
    cent = torch.gather(x, 1, idx.unsqueeze(-1).expand(b, k, d))
    enough = valid.sum(1) >= k
    return torch.where(enough[:, None, None], cent, torch.zeros_like(cent))


def _assign(x: Tensor, centroids: Tensor) -> Tensor:
    """Nearest centroid by squared Euclidean distance: ``(B, N, D), (B, k, D) -> (B, N)``.

    ``||x||^2`` is the same for every centroid, so it is dropped from the argmin.
    """
    cross = torch.bmm(x, centroids.transpose(1, 2))  # (B, N, k)
    dist = centroids.pow(2).sum(-1).unsqueeze(1) - 2 * cross
    return dist.argmin(-1)


def batched_kmeans(
    x: Tensor,
    valid: Tensor,
    k: int = 3,
    iters: int = 300,
    tol: float = 1e-4,
    generator: Generator | None = None,
    init: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Lloyd's K-means for B independent point sets at once.

    Per sample: assign each valid point to its nearest centroid, move each centroid to the mean
    of its points (an empty cluster keeps its previous centroid), and stop once the largest
    centroid shift (Euclidean norm) is ``< tol``. A converged sample is frozen while the others
    continue; the loop ends when all have converged or after ``iters`` updates.

    Samples with fewer than ``k`` valid points cannot be clustered: their centroids are zeros and
    all their assignments ``-1``. Callers must skip them (check ``valid.sum(1) >= k``).

    Args:
        x: points, ``(B, N, D)`` (padded; padding is ignored through ``valid``).
        valid: ``(B, N)`` bool mask of real points.
        k: number of clusters.
        iters: maximum number of centroid updates.
        tol: convergence threshold on the per-sample maximum centroid shift.
        generator: randomness for :func:`init_centroids` (ignored when ``init`` is given).
        init: optional initial centroids ``(B, k, D)``, e.g. to reproduce a per-sample run.

    Returns:
        ``centroids (B, k, D)`` and ``assign (B, N)`` long, the nearest final centroid of each
        valid point and ``-1`` for invalid points.
    """
    b, n, d = x.shape
    valid = valid.bool()
    enough = valid.sum(1) >= k  # (B,)
    if init is None:
        cent = init_centroids(x, valid, k, generator)
    else:
        if init.shape != (b, k, d):
            raise ValueError(f"batched_kmeans: init must be {(b, k, d)}, got {tuple(init.shape)}")
        cent = init.to(x.dtype).clone()
    active = enough.clone()
    w = valid.to(x.dtype).unsqueeze(-1)  # (B, N, 1)
    for _ in range(iters):
        if not bool(active.any()):
            break
        assign = _assign(x, cent)
        onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype) * w  # (B, N, k)
        counts = onehot.sum(1)  # (B, k)
        sums = torch.bmm(onehot.transpose(1, 2), x)  # (B, k, D)
        means = sums / counts.clamp_min(1).unsqueeze(-1)
        new = torch.where((counts > 0).unsqueeze(-1), means, cent)
        new = torch.where(active[:, None, None], new, cent)
        shift = (new - cent).norm(dim=-1).amax(-1)  # (B,)
        cent = new
        active = active & (shift >= tol)
    cent = torch.where(enough[:, None, None], cent, torch.zeros_like(cent))
    assign = _assign(x, cent)
    assign = assign.masked_fill(~(valid & enough[:, None]), -1)
    return cent, assign
