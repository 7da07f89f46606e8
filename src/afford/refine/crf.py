"""Mean-field dense CRF in pure PyTorch, with a brute-force reference for small images.

Why: psa/IRN refine CAM scores with pydensecrf, which no longer builds on current Python/Cython
(affinity.md §9). This module is the ConvCRF-style fallback of affinity.md §10: the same energy,
solved by mean field, with the pairwise kernels *truncated to a local square window*.

Model (Krähenbühl & Koltun 2011, as configured by psa ``crf_inference``, affinity.md §3.2)::

    E(x) = Σ_i ψ_u(x_i) + Σ_{i,j} [x_i ≠ x_j] · Σ_m w_m k̃_m(i, j)          (Potts compatibility)
    ψ_u(l) = −log(clip(p_l, 1e-5, 1))       raw scores used as probabilities (not renormalised)
    k_gauss(i, j) = exp(−|p_i − p_j|² / (2 sxy_g²))
    k_bilat(i, j) = exp(−|p_i − p_j|² / (2 sxy_b²) − |I_i − I_j|² / (2 srgb²))   (I in 0..255)

Mean-field update (all labels in parallel; the Potts term Σ_{l'≠l} K Q(l') = K·1 − K Q(l) and the
K·1 part is the same for every label, so it cancels in the softmax)::

    Q ← softmax_l( −ψ_u + Σ_m w_m K̃_m Q )

``normalization="symmetric"`` (pydensecrf's default ``NORMALIZE_SYMMETRIC``) uses
``K̃ = D^-½ K D^-½`` with ``D = diag(K·1)``; the kernel includes the pixel itself (k_ii = 1), as a
Gaussian blur does. Without normalisation a wide bilateral kernel sums to thousands and swamps
the unary, so the psa compatibilities (3, 10) only make sense normalised. ``"none"`` is kept for
experiments. This module does not claim bit-equality with pydensecrf (permutohedral lattice).

Truncation: :func:`dense_crf` keeps k(i, j) only for ``|dy|, |dx| ≤ window`` (a (2r+1)² square,
normalisation computed over the same window). With ``window ≥ max(H, W) − 1`` nothing is cut and
the result equals :func:`dense_crf_bruteforce` (tested to 1e-6). ``downsample=s`` runs the solver
on an s×-area-pooled grid with sxy/s (ConvCRF's "blur"), then upsamples Q bilinearly, so a window
of r cells reaches r·s pixels.

Size rescaling: the psa parameters assume VOC images (long side ≈ 500 px). With
``reference_size=500`` both sxy are multiplied by ``max(H, W) / 500`` (affinity.md §12.1, a
starting point, unverified); at 224 px the bilateral sxy 80 becomes 35.8 and the Gaussian 3 → 1.34.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from afford.errors import AffordError

UNARY_CLIP = 1e-5  # pydensecrf's unary_from_softmax clips probabilities here before −log
BRUTEFORCE_MAX_PIXELS = 4096  # N×N kernels: 4096² doubles = 128 MiB per kernel

Message = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings; the defaults are psa's ``crf_inference`` (affinity.md §3.2)."""

    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    reference_size: float | None = 500.0  # sxy are for this long side; None = use as given
    window: int = 11  # radius (cells) of the truncated kernel window in :func:`dense_crf`
    downsample: int = 4  # solve on a grid pooled by this factor (ConvCRF blur)
    normalization: str = "symmetric"  # "symmetric" | "none"

    def to_dict(self) -> dict[str, object]:
        """Plain dict for run reports (affinity.md §10: record the CRF backend and settings)."""
        return {"backend": "afford.torch_meanfield", **asdict(self)}


PSA_CRF = CRFParams()
"""psa score CRF (Gaussian 3/3, bilateral 80/13/10, 10 iterations)."""

IRN_CRF = CRFParams(bilateral_sxy=50.0, bilateral_srgb=5.0)
"""IRN label CRF (bilateral 50/5/10, used with :func:`unary_from_labels`, gt_prob 0.7)."""


def _check(probs: torch.Tensor, image: torch.Tensor, params: CRFParams) -> None:
    if probs.dim() != 4:
        raise AffordError(f"crf probs: expected (B, L, H, W), got shape {tuple(probs.shape)}")
    if image.dim() != 4 or image.shape[1] != 3 or image.shape[-2:] != probs.shape[-2:]:
        raise AffordError(
            f"crf image: expected (B, 3, {probs.shape[-2]}, {probs.shape[-1]}), got {tuple(image.shape)}"
        )
    if params.normalization not in ("symmetric", "none"):
        raise AffordError(f"crf normalization: expected 'symmetric' or 'none', got {params.normalization!r}")
    if params.window < 0 or params.downsample < 1 or params.iterations < 0:
        raise AffordError("crf window/downsample/iterations: expected window >= 0, downsample >= 1, iterations >= 0")


def effective_sxy(params: CRFParams, height: int, width: int) -> tuple[float, float]:
    """(Gaussian sxy, bilateral sxy) in pixels of an H×W image after size rescaling."""
    scale = 1.0 if params.reference_size is None else max(height, width) / params.reference_size
    return params.gaussian_sxy * scale, params.bilateral_sxy * scale


def _mean_field(unary: torch.Tensor, message: Message, iterations: int) -> torch.Tensor:
    """Shared loop: ``unary`` (B, L, N) energies, ``message(Q) -> (B, L, N)`` = Σ_m w_m K̃_m Q."""
    q = torch.softmax(-unary, dim=1)
    for _ in range(iterations):
        q = torch.softmax(-unary + message(q), dim=1)
    return q


def _unary(probs: torch.Tensor) -> torch.Tensor:
    return -torch.log(probs.clamp(UNARY_CLIP, 1.0))


def _windowed_solve(probs: torch.Tensor, image: torch.Tensor, params: CRFParams, sxy_g: float, sxy_b: float) -> torch.Tensor:
    """Mean field with kernels truncated to a (2r+1)² window, via ``F.unfold``; one image at a time."""
    b, n_labels, h, w = probs.shape
    r = params.window
    size = 2 * r + 1
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    d2 = (dy.square() + dx.square()).reshape(-1, 1).to(probs)  # (K, 1) squared offset length
    ones = torch.ones(1, 1, h, w, dtype=probs.dtype, device=probs.device)
    valid = F.unfold(ones, size, padding=r)[0]  # (K, N): 1 where the neighbour is inside the image
    outs = []
    for i in range(b):
        img = image[i : i + 1]
        neigh = F.unfold(img, size, padding=r).view(3, size * size, h * w)  # (3, K, N)
        centre = img.reshape(3, 1, h * w)
        c2 = (neigh - centre).square().sum(0)  # (K, N) squared colour distance
        kernels = [
            (params.gaussian_compat, torch.exp(-d2 / (2 * sxy_g**2)) * valid),
            (params.bilateral_compat, torch.exp(-d2 / (2 * sxy_b**2) - c2 / (2 * params.bilateral_srgb**2)) * valid),
        ]
        combined = torch.zeros_like(valid)
        for compat, k in kernels:
            if params.normalization == "symmetric":
                inv = k.sum(0).rsqrt()  # (N,) D^-½ at the centre pixel
                inv_n = F.unfold(inv.view(1, 1, h, w), size, padding=r)[0]  # D^-½ at the neighbour
                k = k * inv.unsqueeze(0) * inv_n
            combined = combined + compat * k

        def message(q: torch.Tensor, combined: torch.Tensor = combined) -> torch.Tensor:
            qn = F.unfold(q.view(1, n_labels, h, w), size, padding=r).view(n_labels, size * size, h * w)
            return (qn * combined).sum(1).unsqueeze(0)

        unary = _unary(probs[i : i + 1]).reshape(1, n_labels, h * w)
        outs.append(_mean_field(unary, message, params.iterations).view(1, n_labels, h, w))
    return torch.cat(outs)


def _full_solve(probs: torch.Tensor, image: torch.Tensor, params: CRFParams, sxy_g: float, sxy_b: float) -> torch.Tensor:
    """Mean field with full N×N kernels (the definition, no truncation)."""
    b, n_labels, h, w = probs.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1).to(probs)  # (N, 2)
    d2 = torch.cdist(pos, pos).square()
    outs = []
    for i in range(b):
        rgb = image[i].reshape(3, -1).t()  # (N, 3)
        c2 = torch.cdist(rgb, rgb).square()
        combined = torch.zeros_like(d2)
        for compat, k in (
            (params.gaussian_compat, torch.exp(-d2 / (2 * sxy_g**2))),
            (params.bilateral_compat, torch.exp(-d2 / (2 * sxy_b**2) - c2 / (2 * params.bilateral_srgb**2))),
        ):
            if params.normalization == "symmetric":
                inv = k.sum(1).rsqrt()
                k = inv[:, None] * k * inv[None, :]
            combined = combined + compat * k
        unary = _unary(probs[i : i + 1]).reshape(1, n_labels, h * w)
        q = _mean_field(unary, lambda q, m=combined: q @ m.t(), params.iterations)
        outs.append(q.view(1, n_labels, h, w))
    return torch.cat(outs)


def _run(
    probs: torch.Tensor,
    image: torch.Tensor,
    params: CRFParams,
    solver: Callable[[torch.Tensor, torch.Tensor, CRFParams, float, float], torch.Tensor],
) -> torch.Tensor:
    _check(probs, image, params)
    h, w = probs.shape[-2:]
    sxy_g, sxy_b = effective_sxy(params, h, w)
    s = params.downsample
    if s == 1:
        return solver(probs, image, params, sxy_g, sxy_b)
    small = (math.ceil(h / s), math.ceil(w / s))
    p_small = F.interpolate(probs, size=small, mode="area")
    i_small = F.interpolate(image, size=small, mode="area")
    q = solver(p_small, i_small, params, sxy_g / s, sxy_b / s)
    # Bilinear weights are convex, so the upsampled Q still sums to 1 over labels.
    return F.interpolate(q, size=(h, w), mode="bilinear", align_corners=False)


def dense_crf(probs: torch.Tensor, image: torch.Tensor, params: CRFParams = PSA_CRF) -> torch.Tensor:
    """Windowed mean-field CRF. ``probs`` (B, L, H, W) scores in [0, 1] (need not sum to 1),
    ``image`` (B, 3, H, W) RGB in 0..255 -> posterior Q (B, L, H, W), summing to 1 over L."""
    return _run(probs, image, params, _windowed_solve)


def dense_crf_bruteforce(probs: torch.Tensor, image: torch.Tensor, params: CRFParams = PSA_CRF) -> torch.Tensor:
    """Reference with full N×N kernels (``params.window`` ignored); small images only."""
    s = params.downsample
    n = math.ceil(probs.shape[-2] / s) * math.ceil(probs.shape[-1] / s)
    if n > BRUTEFORCE_MAX_PIXELS:
        raise AffordError(f"crf bruteforce: at most {BRUTEFORCE_MAX_PIXELS} pixels, got {n}; use dense_crf")
    return _run(probs, image, params, _full_solve)


def unary_from_labels(labels: torch.Tensor, n_labels: int, gt_prob: float = 0.7) -> torch.Tensor:
    """IRN's label unary as probabilities: ``gt_prob`` on the given label, the rest shared evenly.

    ``labels`` (B, H, W) int in [0, n_labels) -> (B, n_labels, H, W), for :func:`dense_crf`.
    """
    if not 0.0 < gt_prob < 1.0:
        raise AffordError(f"crf gt_prob: expected a value in (0, 1), got {gt_prob}")
    onehot = F.one_hot(labels.long(), n_labels).permute(0, 3, 1, 2).float()
    return onehot * gt_prob + (1 - onehot) * (1 - gt_prob) / (n_labels - 1)

