"""psa's affinity loss (affinity.md §5), class-agnostic: only "same / different label" is supervised.

    L_bg+ = −Σ bg_pos · ln(a + 1e-5)     / (Σ bg_pos + 1e-5)
    L_fg+ = −Σ fg_pos · ln(a + 1e-5)     / (Σ fg_pos + 1e-5)
    L−    = −Σ neg    · ln(1 + 1e-5 − a) / (Σ neg + 1e-5)
    L     = L_bg+/4 + L_fg+/4 + L−/2      (∝ L_fg+ + L_bg+ + 2·L−, the paper's weighting)

Sums run over the whole batch, as in psa ``train_aff.py`` (counts are pooled, not per image).
"""

from __future__ import annotations

import torch

from afford.errors import AffordError

EPS = 1e-5


def affinity_loss(
    aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``aff`` and the three masks: (B, P, N_from) -> named scalar losses, ``"loss"`` the total."""
    if not (aff.shape == bg_pos.shape == fg_pos.shape == neg.shape):
        raise AffordError(
            f"affinity loss: affinities {tuple(aff.shape)} and masks {tuple(bg_pos.shape)} must have one shape"
        )
    bg_pos, fg_pos, neg = (m.to(aff.dtype) for m in (bg_pos, fg_pos, neg))
    log_pos = torch.log(aff + EPS)
    bg = -(bg_pos * log_pos).sum() / (bg_pos.sum() + EPS)
    fg = -(fg_pos * log_pos).sum() / (fg_pos.sum() + EPS)
    ng = -(neg * torch.log(1.0 + EPS - aff)).sum() / (neg.sum() + EPS)
    return {"loss": bg / 4 + fg / 4 + ng / 2, "bg_pos": bg, "fg_pos": fg, "neg": ng}
