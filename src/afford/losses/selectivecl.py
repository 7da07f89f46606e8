"""SelectiveCL's losses (methods.md §4.4–4.5): the two-map part map and the two contrastive terms.

    L = CE_ego + mean_n CE_exo_n + L_proto + L_pix

Both contrastive terms are SupCon (:func:`afford.losses.contrastive.supcon_loss`) with
``temperature = 0.5`` and ``base_temperature = 0.07``: the reference's hidden ×(0.5/0.07) ≈ 7.14
scale is kept, explicit in the config. This module only builds *who is whose positive*; the tests
check that membership against a plain loop over the rules of §4.5.

Where the spec leaves a choice open, afford's reading is stated at the function (e.g. which
embeddings and maps enter) so it can be changed in one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from afford.global_batch import gather_rows, local_rows, per_process_denominator
from afford.losses.contrastive import supcon_loss
from afford.modules.heads import minmax

# Kinds of the embeddings in the prototypical loss's set, in this order along the set.
ANCHOR, EGO_POS, EGO_NEG, EXO_POS, EXO_NEG = range(5)


def two_map_part(cos_desc: Tensor, raw_desc: Tensor, centroid: Tensor) -> Tensor:
    """The part map of a centroid (§4.4 step 5): the mean of two maps over positions.

    1. the cosine similarity between the centroid and each position of ``cos_desc`` (egocentric:
       the descriptors weighted by A_ego, §4.4 step 3);
    2. a softmax of ``−‖desc − n(centroid)‖`` over all the sample's positions, with ``desc`` the raw
       DINO descriptors (unweighted, not normalised) and the L2-normalised centroid, as the
       reference computes it; a sample's exocentric views share one softmax (``V`` views).

    Args:
        cos_desc, raw_desc: ``(M, V, D, h, w)`` descriptors of M samples with V views each.
        centroid: ``(M, D)``.

    Returns:
        ``(M, V, h, w)``.
    """
    m, v, d, h, w = raw_desc.shape
    c = F.normalize(centroid, dim=-1)[:, None, :, None]  # (M, 1, D, 1)
    cos = (F.normalize(cos_desc, dim=2).flatten(3) * c).sum(2)  # (M, V, hw)
    dist = (raw_desc.flatten(3) - c).norm(dim=2)  # (M, V, hw)
    soft = (-dist).flatten(1).softmax(dim=-1).view(m, v, h * w)
    return ((cos + soft) / 2).view(m, v, h, w)


def weighted_embedding(feat: Tensor, weight: Tensor) -> Tensor:
    """``l2n(mean_hw(F · M))``: one embedding per map; ``feat (M, D, h, w)``, ``weight (M, h, w)``."""
    return F.normalize((feat * weight[:, None]).mean((-2, -1)), dim=-1)


def prototype_membership(labels: Tensor, n_exo: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Who is whose positive in the set ``[anchor, ego_pos, ego_neg, exo_pos, exo_neg]``.

    ``B`` anchors / ego_pos / ego_neg (one per sample), ``B·n_exo`` exo_pos / exo_neg. For an
    anchor (§4.5): positives = the same-class ego_pos of *other* samples and every same-class
    exo_pos (its own exocentric views included); the denominator adds the other-class
    ego_pos / exo_pos and the same-class ego_neg / exo_neg. Other-class negatives never enter,
    nor does the anchor's own ego_pos (excluded from both, as the reference's logits mask does).

    Returns:
        ``anchor_mask (N,)``, ``positive (N, N)``, ``denominator (N, N)`` and ``kind (N,)``.
    """
    b = labels.shape[0]
    dev = labels.device
    sample_ego = torch.arange(b, device=dev)
    sample_exo = sample_ego.repeat_interleave(n_exo)
    y_exo = labels.repeat_interleave(n_exo)
    kind = torch.cat([torch.full((b,), k, device=dev) for k in (ANCHOR, EGO_POS, EGO_NEG)]
                     + [torch.full((b * n_exo,), k, device=dev) for k in (EXO_POS, EXO_NEG)])
    cls = torch.cat([labels, labels, labels, y_exo, y_exo])
    sample = torch.cat([sample_ego, sample_ego, sample_ego, sample_exo, sample_exo])
    is_anchor = kind == ANCHOR
    same_cls = cls[:, None] == cls[None, :]
    other_sample = sample[:, None] != sample[None, :]
    kj = kind[None, :]
    positive = is_anchor[:, None] & same_cls & (((kj == EGO_POS) & other_sample) | (kj == EXO_POS))
    denominator = is_anchor[:, None] & (((kj == EGO_POS) & other_sample) | (kj == EXO_POS)
                                        | (same_cls & ((kj == EGO_NEG) | (kj == EXO_NEG))))
    return is_anchor, positive, denominator, kind


def prototype_contrastive_loss(anchor: Tensor, ego_pos: Tensor, ego_neg: Tensor, exo_pos: Tensor, exo_neg: Tensor,
                               labels: Tensor, temperature: float = 0.5, base_temperature: float = 0.07) -> Tensor:
    """SelectiveCL's prototypical contrastive loss (§4.5), over L2-normalised embeddings.

    Args:
        anchor, ego_pos, ego_neg: ``(B, D)``; exo_pos, exo_neg: ``(B·N, D)`` (sample-major).
        labels: ``(B,)`` affordance classes.
    """
    n_exo = exo_pos.shape[0] // labels.shape[0]
    b = labels.shape[0]
    # The positives and denominators span the batch: in a data-parallel run, the global one
    # (gathered; this process's anchors only). One process: the batch as it is.
    anchor, ego_pos, ego_neg, exo_pos, exo_neg, labels = (
        gather_rows(t) for t in (anchor, ego_pos, ego_neg, exo_pos, exo_neg, labels))
    anchors, positive, denominator, _ = prototype_membership(labels, n_exo)
    mine = local_rows(b, labels.device)
    anchors = anchors & torch.cat([mine, torch.zeros(anchors.shape[0] - mine.shape[0], dtype=torch.bool,
                                                            device=mine.device)])
    feats = torch.cat([anchor, ego_pos, ego_neg, exo_pos, exo_neg])
    return supcon_loss(feats, None, temperature, base_temperature, anchor_mask=anchors,
                       positive_mask=positive, denominator_mask=denominator, global_batch=True)


def pixel_foreground(ego_action_cos: Tensor, exo_action_cos: Tensor, object_mask: Tensor) -> Tensor:
    """Egocentric foreground patches of the pixel loss (§4.5), ``(B, h, w)`` bool.

    A patch is foreground when its cosine with the action prompt exceeds
    ``ρ = min_e max_hw cos(exo_e, t_action)`` over the sample's exocentric images; a sample with
    no such patch falls back to its binary object mask.

    Args:
        ego_action_cos: ``(B, h, w)`` raw cosines of the egocentric patches (= ``A_ego``).
        exo_action_cos: ``(B, N, h, w)`` raw cosines of the exocentric patches.
        object_mask: ``(B, h, w)`` bool, ``minmax(A_ego) > γ2``.
    """
    rho = exo_action_cos.flatten(2).amax(-1).amin(-1)  # (B,)
    fg = ego_action_cos > rho[:, None, None]
    empty = ~fg.flatten(1).any(1)
    return torch.where(empty[:, None, None], object_mask, fg)


def pixel_contrastive_loss(pixel_feat: Tensor, foreground: Tensor, weight_map: Tensor, anchor_thd: float = 0.5,
                           temperature: float = 0.5, base_temperature: float = 0.07) -> Tensor:
    """SupCon over each image's patches, foreground vs background (§4.5).

    Per image: the ``h·w`` L2-normalised patch embeddings, labelled by ``foreground``; anchors
    are the patches with ``weight_map > anchor_thd``; SelectiveCL passes the binary object mask
    ``minmax(A_ego) > γ2``, as the reference does. The loss is the mean over the images that have
    at least one anchor with a positive (the reference divides by B, and is nan when an image has none).

    Args:
        pixel_feat: ``(B, D, h, w)`` (``pixel_contrast_projection`` output).
        foreground: ``(B, h, w)`` bool.
        weight_map: ``(B, h, w)`` in [0, 1].
    """
    b = pixel_feat.shape[0]
    feats = F.normalize(pixel_feat.flatten(2).transpose(1, 2), dim=-1)  # (B, hw, D)
    labels = foreground.flatten(1).long()
    anchors = weight_map.flatten(1) > anchor_thd
    losses = []
    for i in range(b):
        same = labels[i][:, None] == labels[i][None, :]
        has_pos = (same.sum(1) > 1) & anchors[i]
        if has_pos.any():
            losses.append(supcon_loss(feats[i], labels[i], temperature, base_temperature, anchor_mask=anchors[i]))
    # the mean over the global batch's images with an anchor (afford.global_batch)
    return (torch.stack(losses).sum() if losses else pixel_feat.sum() * 0.0) / per_process_denominator(len(losses), 1.0)


def calibrate(cam: Tensor, affinity: Tensor, mode: str = "continuous", thd: float = 0.6) -> Tensor:
    """Test-time calibration (§4.7): ``minmax(A_ego) · CAM`` (the code, default) or the paper's
    binarised ``1[minmax(A_ego) > thd] · CAM``. ``minmax`` has no epsilon, as in the reference;
    a constant affinity (0/0) calibrates to 0 instead of nan."""
    a = torch.nan_to_num(minmax(affinity, eps=0.0), nan=0.0)
    if mode == "binary":
        a = (a > thd).to(cam.dtype)
    return a * cam
