"""WSMA training losses (methods.md §2.2).

    L = λ_cls·L_cls + λ_clip·L_clip + λ_d·L_d + λ_lrela·L_lrela,   λ = (1, 1, 0.5, 0.5)

The reference hides the 0.5 of L_d and L_lrela inside the loss code (methods.md §9 #13); here
each function computes the unscaled term and :func:`wsma_losses` applies explicit weights, so
``wsma_losses(...)["d"]`` equals the paper's L_d (0.5 included).

Shapes: B samples, n exocentric views, C classes, K feature channels, h×w grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WSMA_LOSS_WEIGHTS: dict[str, float] = {"cls": 1.0, "clip": 1.0, "d": 0.5, "lrela": 0.5}


def classification_loss(ego_logits: torch.Tensor, exo_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``CE(ego, y) + (1/n) Σ_n CE(exo_n, y)``; ``ego_logits`` (B, C), ``exo_logits`` (B, n, C)."""
    b, n, c = exo_logits.shape
    exo = F.cross_entropy(exo_logits.reshape(b * n, c), labels.repeat_interleave(n))
    # mean over all B·n terms == (1/n) Σ_n mean_b CE(exo_n): the reference averages per view.
    return F.cross_entropy(ego_logits, labels) + exo


def clip_loss(
    global_embed: torch.Tensor, text_embed: torch.Tensor, logit_scale: torch.Tensor | float, labels: torch.Tensor
) -> torch.Tensor:
    """Image-to-prompt CE: ``CE(scale · l2n(g) l2n(T)ᵀ, y)``.

    ``global_embed`` (B, E) attention-pool output; ``text_embed`` (C, E) prompt embeddings of all
    classes; ``logit_scale`` the multiplicative scale (already exponentiated).
    """
    logits = logit_scale * F.normalize(global_embed, dim=-1) @ F.normalize(text_embed, dim=-1).t()
    return F.cross_entropy(logits, labels)


def distillation_loss(
    ego_feat: torch.Tensor, exo_feat: torch.Tensor, fc_weight: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``mean_b ‖l2n(GAP(w_y ⊙ mean_n exo_n)) − l2n(GAP(w_y ⊙ ego))‖²`` (without the 0.5).

    ``ego_feat`` (B, K, h, w), ``exo_feat`` (B, n, K, h, w), ``fc_weight`` (C, K): class-weighted
    channels let only the features that matter for class y be pulled towards the exocentric ones.
    """
    w = fc_weight[labels]  # (B, K)
    exo = F.normalize(w * exo_feat.mean(1).mean((-2, -1)), dim=-1)
    ego = F.normalize(w * ego_feat.mean((-2, -1)), dim=-1)
    return (exo - ego).pow(2).sum(-1).mean()


def class_maps(feat: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """All class CAMs as WSMA defines them (§0.4): ``K[b, p, c] = mean_k w_c[k]·feat[b, k, p]``.

    ``feat`` (B, K, h, w), ``fc_weight`` (C, K) -> (B, h·w, C).
    """
    return feat.flatten(2).transpose(1, 2) @ fc_weight.t() / feat.shape[1]


def relation_matrix(k: torch.Tensor) -> torch.Tensor:
    """Label relation ``M = KᵀK`` (B, C, C) from class maps (B, h·w, C), rows L2-normalised."""
    return F.normalize(k.transpose(1, 2) @ k, dim=-1)


def label_relation_loss(
    ego_feat: torch.Tensor, exo_feat: torch.Tensor, fc_weight: torch.Tensor
) -> torch.Tensor:
    """``mean_b (1 − cos(vec M_exo, vec M_ego))`` (without the 0.5).

    ``M_exo`` is built from the mean of the n exocentric class-map sets, so the relations
    between labels (which classes fire on the same positions) transfer from exo to ego views.
    ``ego_feat`` (B, K, h, w), ``exo_feat`` (B, n, K, h, w), ``fc_weight`` (C, K).
    """
    b, n = exo_feat.shape[:2]
    k_exo = class_maps(exo_feat.flatten(0, 1), fc_weight).view(b, n, -1, fc_weight.shape[0]).mean(1)
    m_exo = relation_matrix(k_exo).flatten(1)
    m_ego = relation_matrix(class_maps(ego_feat, fc_weight)).flatten(1)
    return (1 - F.cosine_similarity(m_exo, m_ego, dim=-1)).mean()


def wsma_losses(
    *,
    ego_logits: torch.Tensor,
    exo_logits: torch.Tensor,
    global_embed: torch.Tensor,
    text_embed: torch.Tensor,
    logit_scale: torch.Tensor | float,
    ego_feat: torch.Tensor,
    exo_feat: torch.Tensor,
    fc_weight: torch.Tensor,
    labels: torch.Tensor,
    weights: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """All four terms, weighted, plus their sum under ``"loss"``; shapes as in each function."""
    lam = {**WSMA_LOSS_WEIGHTS, **(weights or {})}
    out = {
        "cls": lam["cls"] * classification_loss(ego_logits, exo_logits, labels),
        "clip": lam["clip"] * clip_loss(global_embed, text_embed, logit_scale, labels),
        "d": lam["d"] * distillation_loss(ego_feat, exo_feat, fc_weight, labels),
        "lrela": lam["lrela"] * label_relation_loss(ego_feat, exo_feat, fc_weight),
    }
    out["loss"] = out["cls"] + out["clip"] + out["d"] + out["lrela"]
    return out
