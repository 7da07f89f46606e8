"""Post-hoc affinity refinement of any method's heatmaps (affinity.md §12).

Why post-hoc: no published WSAG method uses AffinityNet; afford offers it as an optional step
after ``Method.predict`` so refined and unrefined numbers can be reported side by side, with the
settings (β, t, γ, λ, α) recorded from :attr:`AffinityRefiner.params`.

Two affinity sources:

- a trained :class:`AffinityHead` (``train.train_affinity_head``), saved in a run by
  :mod:`afford.engine.refinement` (this package is math only; persistence is the engine's);
- training-free (§12.2 b): each level L2-normalised over channels, levels concatenated, then
  ``exp(−scale · mean_ch |f_i − f_j|)`` (or clamped cosine). Note: for unit vectors of D ≈ 384
  channels the mean absolute difference is ≈ 0.06, so a_ij ≈ 0.94–1 and β = 8 smooths almost
  uniformly; ``scale`` (default 1 = spec) is the knob to sharpen it, to be tuned on held-out data.

Defaults are psa's (β = 8, γ = 5, t = 256, affinity.md §6). §12.3 warns that t = 256 over-smooths a
14×14 grid and suggests choosing t ∈ {2, 4, 16, 256} and λ ∈ {0, 0.5} on a held-out split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from afford.errors import AffordError
from afford.refine.affinity_head import AffinityHead, DiscAffinity, disc_affinity
from afford.refine.random_walk import DENSE_LIMIT, propagate


class AffinityRefiner:
    """``refiner(cams (B, h, w), features [(B, D_l, h', w'), ...]) -> (B, h, w)`` refined maps in [0, 1].

    ``labels`` is not used at inference; it records how a trained head's training labels were made
    (label mode, its α or thresholds, the CRF), so that a report names every setting (§10, §12.4).
    """

    def __init__(
        self,
        head: AffinityHead | None = None,
        *,
        beta: float = 8.0,
        steps: int = 256,
        radius: int = 5,
        blend: float = 0.0,
        labels: dict[str, object] | None = None,
        kind: str = "l1",
        scale: float = 1.0,
        dense_limit: int = DENSE_LIMIT,
    ) -> None:
        if not (math.isfinite(beta) and beta > 0) or steps < 0 or radius < 2:
            raise AffordError(f"refine params: expected beta > 0, t >= 0, radius >= 2; got {beta}, {steps}, {radius}")
        if not 0.0 <= blend <= 1.0:
            raise AffordError(f"refine blend: expected a value in [0, 1], got {blend}")
        if kind not in ("l1", "cosine"):
            raise AffordError(f"refine kind: expected 'l1' or 'cosine', got {kind!r}")
        self.head = head.eval() if head is not None else None
        self.beta, self.steps, self.radius, self.blend = float(beta), int(steps), int(radius), float(blend)
        self.labels = dict(labels) if labels is not None else None
        self.kind, self.scale, self.dense_limit = kind, float(scale), int(dense_limit)

    @property
    def params(self) -> dict[str, object]:
        """Every setting, for run reports (affinity.md §12.4)."""
        return {
            "affinity": "trained_head" if self.head is not None else "training_free",
            "kind": self.kind,
            "scale": self.scale,
            "beta": self.beta,
            "t": self.steps,
            "gamma": self.radius,
            "lambda": self.blend,
            "labels": self.labels,
            "dense_limit": self.dense_limit,
        }

    def embed(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Feature levels -> the (B, E, h, w) embedding whose distances define the affinity."""
        if not features:
            raise AffordError("refine features: expected at least one (B, D, h, w) level")
        if self.head is not None:
            return self.head(features)
        size = features[0].shape[-2:]
        levels = [
            F.normalize(f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear"), dim=1)
            for f in features
        ]
        return torch.cat(levels, 1)

    def affinity(self, features: Sequence[torch.Tensor]) -> DiscAffinity:
        """Banded full-disc affinity (B, K, h, w) on the feature grid."""
        return disc_affinity(self.embed(features), self.radius, kind=self.kind, scale=self.scale)

    @torch.no_grad()
    def __call__(self, cams: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if cams.dim() != 3:
            raise AffordError(f"refine cams: expected (B, h, w), got shape {tuple(cams.shape)}")
        if features and features[0].shape[0] != cams.shape[0]:
            raise AffordError(f"refine features: batch {features[0].shape[0]} != cams batch {cams.shape[0]}")
        aff = self.affinity(features)
        grid = aff.grid
        c = cams.float()
        if tuple(c.shape[-2:]) != grid:
            c = F.interpolate(c[:, None], size=grid, mode="bilinear", align_corners=False)[:, 0]
        out = propagate(
            c, aff, beta=self.beta, steps=self.steps, blend=self.blend, dense_limit=self.dense_limit
        )
        if out.shape[-2:] != cams.shape[-2:]:
            out = F.interpolate(out[:, None], size=cams.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return out
