"""Confident-region affinity labels from one affordance map (affinity.md §3, §12.1).

Why a reduction: at training and test time the affordance label y is known, so each (image, y)
is a binary problem — foreground = CAM_y min-max normalised to ``c ∈ [0, 1]``, background
``b = (1 − c)^α``. Labels follow psa (``VOC12AffDataset``, §3.3):

- foreground (1) where the low-α pair [b_la, c] (α_low = 4) is won by ``c``;
- background (0) where the high-α pair [b_ha, c] (α_high = 32) is won by ``b`` — this overrides;
- ignore (255) everywhere else.

Ties go to the background (argmax returns the first index, background is channel 0). Without a
CRF this is a pair of thresholds: fg ⇔ c > t(α_low) ≈ 0.2755, bg ⇔ c ≤ t(α_high) ≈ 0.0770 where
``t = (1 − t)^α`` (:func:`alpha_threshold`). The IRN-style alternative uses fixed thresholds
(fg ``c ≥ 0.30``, bg ``c < 0.05``).

Optional CRF (psa): ``c`` is bilinearly upsampled to the image, the raw [b, c] scores go through
:func:`afford.refine.crf.dense_crf`, the posteriors are block-averaged back to the label grid
(psa's 8×8 mean, here an area resize) and then arg-maxed. In ``"fixed"`` mode the CRF follows IRN:
threshold first, then a CRF on the label map with ``unary_from_labels`` (gt_prob 0.7). psa's
"all scores < 1e-5 ⇒ ignore" rule handles crop padding, which afford's crops do not have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from afford.errors import AffordError
from afford.refine.crf import IRN_CRF, PSA_CRF, CRFParams, dense_crf, unary_from_labels

BG, FG, IGNORE = 0, 1, 255
MINMAX_EPS = 1e-8


def minmax(x: torch.Tensor, eps: float = MINMAX_EPS) -> torch.Tensor:
    """Per-map min-max to [0, 1]: ``x`` (B, h, w) -> (B, h, w); a constant map becomes 0."""
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    return (x - lo) / (hi - lo + eps)


def background_score(c: torch.Tensor, alpha: float) -> torch.Tensor:
    """psa background ``(1 − c)^α`` for a foreground map ``c`` in [0, 1] (affinity.md §3.1)."""
    return (1.0 - c).clamp(min=0.0).pow(alpha)


def alpha_threshold(alpha: float, iterations: int = 60) -> float:
    """The ``t`` with ``t = (1 − t)^α``: the foreground/background boundary without a CRF.

    Bisection on the decreasing ``g(t) = (1 − t)^α − t`` (g(0) = 1 > 0, g(1) = −1 < 0).
    """
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if (1.0 - mid) ** alpha - mid > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _combine(fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    label = torch.full(fg.shape, IGNORE, dtype=torch.long, device=fg.device)
    label[fg] = FG
    label[bg] = BG  # psa order: confident background overrides
    return label


def affinity_labels(
    cams: torch.Tensor,
    *,
    mode: str = "alpha",
    alpha_low: float = 4.0,
    alpha_high: float = 32.0,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    size: tuple[int, int] | None = None,
    image: torch.Tensor | None = None,
    crf: CRFParams | None = None,
) -> torch.Tensor:
    """Label map (0 bg, 1 fg, 255 ignore) for affinity training.

    ``cams`` (B, h, w) raw maps of the image's label (min-max normalised here); ``size`` the label
    grid (default (h, w), usually the feature grid); ``image`` (B, 3, H, W) RGB in 0..255, required
    when ``crf`` is given. Returns int64 (B, *size).
    """
    if cams.dim() != 3:
        raise AffordError(f"affinity labels cams: expected (B, h, w), got shape {tuple(cams.shape)}")
    if mode not in ("alpha", "fixed"):
        raise AffordError(f"affinity labels mode: expected 'alpha' or 'fixed', got {mode!r}")
    size = tuple(size) if size is not None else tuple(cams.shape[-2:])
    c = minmax(cams.float())

    if crf is None:
        if size != tuple(c.shape[-2:]):
            c = F.interpolate(c[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        if mode == "alpha":
            fg = c > background_score(c, alpha_low)
            bg = background_score(c, alpha_high) >= c
        else:
            fg, bg = c >= fg_threshold, c < bg_threshold
        return _combine(fg, bg)

    if image is None or image.dim() != 4 or image.shape[0] != cams.shape[0]:
        raise AffordError("affinity labels image: the CRF needs the (B, 3, H, W) RGB image (0..255)")
    img = image.to(c.dtype)
    c_img = F.interpolate(c[:, None], size=img.shape[-2:], mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)

    def posterior(probs: torch.Tensor) -> torch.Tensor:
        q = dense_crf(probs, img, crf)
        return F.interpolate(q, size=size, mode="area").argmax(1)  # block mean, then argmax

    if mode == "alpha":
        fg = posterior(torch.stack([background_score(c_img, alpha_low), c_img], 1)) == FG
        bg = posterior(torch.stack([background_score(c_img, alpha_high), c_img], 1)) == BG
    else:
        fg = posterior(unary_from_labels((c_img >= fg_threshold).long(), 2)) == FG
        bg = posterior(unary_from_labels((c_img >= bg_threshold).long(), 2)) == BG
    return _combine(fg, bg)


def default_crf(mode: str) -> CRFParams:
    """The reference CRF for a label mode: psa's for ``"alpha"``, IRN's for ``"fixed"``."""
    return PSA_CRF if mode == "alpha" else IRN_CRF


def to_rgb255(images: torch.Tensor) -> torch.Tensor:
    """Model input (B, 3, H, W) in [0, 1] -> RGB in 0..255 for the CRF's colour term."""
    return (images * 255.0).clamp(0, 255)
