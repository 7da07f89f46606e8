"""WSMA's inference-time refinement of a CAM by the attention-pool affinity (methods.md §2.4).

The attention-pool attention ``A`` (patch x patch) says which positions the model pools
together; propagating the CAM along it spreads activation over the whole part. The reference
(checkpoints/wsma.md §4 steps 7, 10, 11) makes ``A`` roughly doubly stochastic (three rounds of
alternating normalisation), symmetric, and takes two propagation steps (``A²``). The propagated
map only fills in where the CAM is already confident (``cam >= threshold`` after min-max), so the
refinement grows the predicted region instead of moving it.
"""

from __future__ import annotations

import torch

from afford.modules.heads import minmax


def sinkhorn_affinity(attn: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """(B, N, N) attention, query index first -> symmetric two-step affinity ``A²`` (B, N, N).

    Each round divides by the sum over the query axis (column sums), then by the sum over the
    key axis (row sums); then ``A ← (A + Aᵀ)/2`` and ``A ← A @ A``.

    The reference divides by the raw sums: a key that every query's softmax underflowed to 0 for
    (saturated attention, seen after a few epochs on SynthAGD) gives 0/0 = nan and a nan map.
    The sums are clamped to the smallest normal float, so every finite reference result is
    reproduced bit for bit and such a column stays 0 instead.
    """
    a = attn
    tiny = torch.finfo(attn.dtype).tiny
    for _ in range(rounds):
        a = a / a.sum(dim=1, keepdim=True).clamp_min(tiny)
        a = a / a.sum(dim=2, keepdim=True).clamp_min(tiny)
    a = (a + a.transpose(1, 2)) / 2
    return a @ a


def refine_cam(cam: torch.Tensor, attn: torch.Tensor, threshold: float = 0.2, rounds: int = 3) -> torch.Tensor:
    """Refine raw CAMs ``cam`` (B, h, w) with the patch attention ``attn`` (B, h·w, h·w).

    Returns the final map (B, h, w) in [0, 1]:
    ``cam1 = A² vec(cam)``; both min-maxed; ``cam1[cam < threshold] = 0``;
    ``minmax(cam + cam1)``. The min-max epsilon is the reference's 1e-10.
    """
    b, h, w = cam.shape
    affinity = sinkhorn_affinity(attn, rounds)
    cam1 = (affinity @ cam.reshape(b, h * w, 1)).view(b, h, w)
    cam_n = minmax(cam)
    cam1 = minmax(cam1).masked_fill(cam_n < threshold, 0.0)
    return minmax(cam_n + cam1)
