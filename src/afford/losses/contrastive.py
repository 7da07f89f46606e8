"""Supervised contrastive loss (SupCon), general enough for SelectiveCL (methods.md §4.5).

SelectiveCL's prototypical loss (anchors, positives and a hand-picked denominator over
[ego_pos, ego_neg, exo_pos, exo_neg]) and its pixel loss (196 patches, anchors restricted by a
weight map) are both SupCon with different masks, so one function with explicit masks serves
both; the method composes the masks.

The reference keeps ``temperature = 0.5`` but ``base_temperature = 0.07``, so every loss carries
a hidden factor ``0.5 / 0.07 ≈ 7.14``. Here that factor is the explicit
``temperature / base_temperature`` scale; pass ``base_temperature = temperature`` for an
unscaled loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from afford.global_batch import per_process_denominator


def supcon_loss(
    features: Tensor,
    labels: Tensor | None,
    temperature: float = 0.5,
    base_temperature: float = 0.07,
    anchor_mask: Tensor | None = None,
    positive_mask: Tensor | None = None,
    denominator_mask: Tensor | None = None,
    global_batch: bool = False,
) -> Tensor:
    """SupCon over N embeddings.

    For an anchor ``i`` with positives ``P(i)`` and denominator set ``A(i)``::

        l_i = −(T / T_base) · mean_{p ∈ P(i)} log( exp(s_ip / T) / Σ_{a ∈ A(i)} exp(s_ia / T) )

    with ``s = f fᵀ``. The loss is the mean of ``l_i`` over anchors that have at least one
    positive (anchors without positives are left out, not counted as zero); 0 if there are none.

    Args:
        features: ``(N, D)``, L2-normalised by the caller.
        labels: ``(N,)``; positives default to "same label". May be ``None`` when
            ``positive_mask`` is given.
        temperature: ``T`` (SelectiveCL ``--cont_temperature`` 0.5).
        base_temperature: ``T_base`` (0.07 in SupCon-derived code).
        anchor_mask: ``(N,)`` bool, which samples act as anchors (default: all).
        positive_mask: ``(N, N)`` bool, ``[i, j]`` = j is a positive of anchor i (overrides labels).
        denominator_mask: ``(N, N)`` bool, which samples enter anchor i's denominator (default:
            all). Positives are always added to it, so each log-probability is ≤ 0.

        global_batch: the embeddings are a data-parallel run's global batch (gathered) and the
            anchors this process's: divide by the global batch's anchor count over the number of
            processes (:mod:`afford.global_batch`), so averaged gradients equal one process's.

    The diagonal (self-pairs) is always excluded from positives and denominators.

    Returns:
        Scalar loss.
    """
    n = features.shape[0]
    device = features.device
    not_self = ~torch.eye(n, dtype=torch.bool, device=device)
    if positive_mask is None:
        if labels is None:
            raise ValueError("supcon_loss: give labels or positive_mask")
        labels = labels.reshape(-1)
        pos = labels[:, None] == labels[None, :]
    else:
        pos = positive_mask.bool()
    pos = pos & not_self
    den = not_self if denominator_mask is None else (denominator_mask.bool() & not_self)
    den = den | pos
    anchors = torch.ones(n, dtype=torch.bool, device=device) if anchor_mask is None else anchor_mask.bool()

    logits = features @ features.T / temperature  # (N, N)
    n_pos = pos.sum(1)
    use = anchors & (n_pos > 0)
    # A row with an empty denominator has no positives either (positives ⊂ denominator) and is
    # unused; give it a dummy full row so logsumexp never sees all -inf (nan gradients).
    den = den | ~den.any(dim=1, keepdim=True)
    log_den = logits.masked_fill(~den, float("-inf")).logsumexp(dim=1, keepdim=True)  # (N, 1)
    log_prob = logits - log_den
    sum_pos = log_prob.masked_fill(~pos, 0.0).sum(1)
    mean_pos = sum_pos / n_pos.clamp_min(1).to(sum_pos.dtype)
    per_anchor = -(temperature / base_temperature) * mean_pos
    per_anchor = torch.where(use, per_anchor, torch.zeros_like(per_anchor))
    if global_batch:
        return per_anchor.sum() / per_process_denominator(use.sum(), floor=1.0)
    return per_anchor.sum() / use.sum().clamp_min(1).to(per_anchor.dtype)


class SupConLoss(nn.Module):
    """Module form of :func:`supcon_loss` holding the two temperatures."""

    def __init__(self, temperature: float = 0.5, base_temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(
        self,
        features: Tensor,
        labels: Tensor | None,
        anchor_mask: Tensor | None = None,
        positive_mask: Tensor | None = None,
        denominator_mask: Tensor | None = None,
    ) -> Tensor:
        """See :func:`supcon_loss`; ``features (N, D)``, ``labels (N,)`` -> scalar."""
        return supcon_loss(
            features,
            labels,
            self.temperature,
            self.base_temperature,
            anchor_mask=anchor_mask,
            positive_mask=positive_mask,
            denominator_mask=denominator_mask,
        )
