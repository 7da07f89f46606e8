"""Detector priors, the combined logit and UPT's focal loss (hoi.md §3.3).

Invalid (object, verb) combinations get prior 0 and are **dropped** from the loss:
:func:`interaction_loss` selects ``prior > 0`` itself, so callers pass the full tables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from afford.errors import AffordError
from afford.global_batch import per_process_denominator

#: §3.3: prior exponent p in training and at inference (``upt.py::postprocessing``).
TRAIN_EXPONENT = 1.0
TEST_EXPONENT = 2.8
#: UPT ``ops.py::binary_focal_loss_with_logits`` adds this to ``|y - sigmoid(x)|`` so that
#: ``** gamma`` (gamma < 1) has a finite gradient when a prediction is exact.
FOCAL_EPS = 1e-6
_REDUCTIONS = ("none", "sum", "mean")


def prior_scores(s_h: Tensor, s_o: Tensor, obj: Tensor, valid: Tensor, exponent: float = TRAIN_EXPONENT) -> Tensor:
    """``(N,)`` human/object scores and object labels -> ``(N, n_verbs)`` priors ``s_h^p * s_o^p``.

    Zero where ``valid[obj, verb]`` is False, so verbs that never occur with an object are never
    scored (§3.3; p = 1 in training, 2.8 at test).
    """
    if valid.dim() != 2 or valid.dtype != torch.bool:
        raise AffordError(f"valid: expected an (n_objects, n_verbs) bool table, got {tuple(valid.shape)} {valid.dtype}")
    if not (s_h.dim() == s_o.dim() == obj.dim() == 1 and len(s_h) == len(s_o) == len(obj)):
        raise AffordError(f"prior_scores: s_h {tuple(s_h.shape)}, s_o {tuple(s_o.shape)}, obj {tuple(obj.shape)} "
                          "must be (N,) each")
    if len(obj) and (int(obj.min()) < 0 or int(obj.max()) >= valid.shape[0]):
        raise AffordError(f"obj: labels must lie in [0, {valid.shape[0]}), got [{int(obj.min())}, {int(obj.max())}]")
    p = (s_h.pow(exponent) * s_o.pow(exponent))[:, None]
    return p * valid[obj].to(p.dtype)


def combined_logit(logit: Tensor, prior: Tensor) -> Tensor:
    """``ln(prior / (1 + e^-logit - prior))``, the logit of ``prior * sigmoid(logit)`` (§3.3).

    Evaluated as ``log(prior) - logaddexp(log1p(-prior), -logit)`` so that neither ``e^-logit``
    (large negative logits) nor ``1 - prior`` (prior 1, large positive logits) overflows or
    cancels. Finite for prior in (0, 1]; prior 0 gives -inf (drop those entries, see module doc).
    """
    return torch.log(prior) - torch.logaddexp(torch.log1p(-prior), -logit)


def final_scores(logit: Tensor, prior_test: Tensor) -> Tensor:
    """Test-time HOI score ``sigmoid(logit) * prior`` with the p = 2.8 prior (§3.3)."""
    return torch.sigmoid(logit) * prior_test


def focal_loss(x: Tensor, y: Tensor, alpha: float = 0.5, gamma: float = 0.2,
               reduction: str = "sum", eps: float = FOCAL_EPS) -> Tensor:
    """``|1 - y - alpha| * (|y - sigmoid(x)| + eps)^gamma * BCE(x, y)`` elementwise (§3.3).

    alpha 0.5, gamma 0.2 are UPT's ``main.py`` defaults; ``eps`` is UPT's guard (pass 0 for the
    bare formula).
    """
    if reduction not in _REDUCTIONS:
        raise AffordError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    if x.shape != y.shape:
        raise AffordError(f"focal_loss: logits {tuple(x.shape)} and labels {tuple(y.shape)} differ in shape")
    y = y.to(x.dtype)
    loss = (1 - y - alpha).abs() * ((y - torch.sigmoid(x)).abs() + eps).pow(gamma) \
        * F.binary_cross_entropy_with_logits(x, y, reduction="none")
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if reduction == "mean" else loss


def normalised_focal_loss(x: Tensor, y: Tensor, alpha: float = 0.5, gamma: float = 0.2,
                          eps: float = FOCAL_EPS) -> Tensor:
    """Summed focal loss / max(1, number of positives), as UPT normalises (§3.3)."""
    n_pos = per_process_denominator((y > 0).sum(), floor=1.0)  # the global batch's positives (UPT all-reduces them)
    return focal_loss(x, y, alpha, gamma, reduction="sum", eps=eps) / n_pos


def interaction_loss(logit: Tensor, prior: Tensor, labels: Tensor, alpha: float = 0.5,
                     gamma: float = 0.2) -> Tensor:
    """Training loss on ``(N, n_verbs)`` tables: keep ``prior > 0``, combine, normalised focal loss.

    Entries with prior 0 (invalid object-verb combinations) are dropped here, before their
    -inf combined logit is formed (§3.3).
    """
    if not (logit.shape == prior.shape == labels.shape):
        raise AffordError(f"interaction_loss: logit {tuple(logit.shape)}, prior {tuple(prior.shape)}, "
                          f"labels {tuple(labels.shape)} must match")
    keep = prior > 0
    x = combined_logit(logit[keep], prior[keep])
    return normalised_focal_loss(x, labels[keep], alpha, gamma)
