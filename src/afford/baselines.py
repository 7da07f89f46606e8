"""Method-free heatmaps that every report shows beside a method (synthagd.md, "Baselines").

* ``uniform``: all ones. Under the standard protocol a constant map is min-maxed to all zeros
  (KLD ≈ 19.3, a degenerate number that says nothing), so :func:`afford.engine.evaluator.evaluate_baseline`
  scores it **without** the min-max, which is the "uniform" row of protocol.md §3.7
  (KLD 2.4638 / SIM 0.1372 on the sanity GT) and is recorded as ``prediction_minmax: false``.
* ``center``: a centred Gaussian with ``sigma = CENTER_SIGMA_FRAC`` × the image height (rows) and
  × the width (columns). Per-axis fractions make it isotropic after the protocol's square resize.
* ``object``: the whole-object mask (SynthAGD oracle segmentation) blurred by a Gaussian with
  ``sigma = OBJECT_SIGMA_FRAC`` × the image's short side, so the map is soft at the border like
  a GT but still covers the whole object. An **oracle** (it uses the object segmentation, which no
  method is given): shown beside every method, with the label-sensitivity table; a method "works"
  on SynthAGD when it beats the non-oracle rows (uniform, centre, egocentric-only CAM) on KLD and
  SIM (synthagd.md, revised), and beating this map (part- rather than object-level) is a research goal.

All maps are float64 (H, W) in [0, 1] at the image's native size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from afford.errors import AffordError, did_you_mean

BASELINES: tuple[str, ...] = ("uniform", "center", "object")
CENTER_SIGMA_FRAC = 0.25  # a quarter of each side: covers the central half of the image at 1 sigma
OBJECT_SIGMA_FRAC = 0.03  # ~6.7 px at 224 px: softens the mask edge without leaving the object


def check_baseline(kind: str) -> str:
    if kind not in BASELINES:
        raise AffordError(
            f"baseline: expected one of {', '.join(BASELINES)}, got {kind!r}" + did_you_mean(kind, BASELINES)
        )
    return kind


def uniform(height: int, width: int) -> np.ndarray:
    """``(H, W)`` ones: no spatial preference at all."""
    return np.ones((height, width), dtype=np.float64)


def center(height: int, width: int, sigma_frac: float = CENTER_SIGMA_FRAC) -> np.ndarray:
    """``(H, W)`` Gaussian with peak 1 at the image centre (pixel-centre coordinates)."""
    r = (np.arange(height) - (height - 1) / 2) / (sigma_frac * height)
    c = (np.arange(width) - (width - 1) / 2) / (sigma_frac * width)
    return np.exp(-0.5 * (r[:, None] ** 2 + c[None, :] ** 2))


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``(H, W)`` with edge replication (radius ``ceil(3 sigma)``)."""
    if sigma <= 0:
        return x.astype(np.float64)
    radius = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    k = k / k.sum()
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))[None, None]
    t = F.conv2d(F.pad(t, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def object_map(mask: np.ndarray, sigma_frac: float = OBJECT_SIGMA_FRAC) -> np.ndarray:
    """``(H, W)`` blurred object mask in [0, 1]; ``mask`` is bool, 0/255 uint8 or a 0/1 array ``(H, W)``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"object mask: expected (H, W), got shape {m.shape}")
    # uint8 0/255 (SynthAGD's PNGs) at 127; a 0/1 mask (uint8 or float) at 0.5, never read as all background
    binary = (m > 127 if m.dtype == np.uint8 and m.max() > 1 else m > 0.5).astype(np.float64)
    out = gaussian_blur(binary, sigma_frac * min(m.shape))
    peak = out.max()
    return out / peak if peak > 0 else out


def baseline_map(kind: str, height: int, width: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Dispatch by name; ``object`` needs ``mask`` of shape ``(height, width)``."""
    check_baseline(kind)
    if kind == "uniform":
        return uniform(height, width)
    if kind == "center":
        return center(height, width)
    if mask is None:
        raise AffordError("baseline 'object': needs an object mask (SynthAGD extras), none given")
    return object_map(mask)
