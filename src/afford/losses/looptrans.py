"""LoopTrans's losses (methods.md §3.2): pseudo-mask supervision of the pixel decoder,
class-correlation transfer and the noise-class InfoNCE. All batched; the tests compare each
with a plain per-sample loop.

    L = L_cls + 10·L_mse + 2·L_dice + 1.5·L_corr + 0.05·L_denoise + 0.07·L_con
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from afford.modules.heads import minmax


def select_pseudo_masks(clusters: Tensor, cam_y: Tensor, saliency: Tensor, num_clusters: int,
                        cam_thd: float = 0.92, iou_eps: float = 1e-6) -> Tensor:
    """The cluster that best matches the CAM, per sample, as a binary mask ``(B, h, w)``.

    1. ``cam_mask = minmax(cam_y) > cam_thd``;
    2. the background cluster is the present cluster with the lowest mean saliency (excluded);
    3. of the other present clusters, the one with the highest IoU with ``cam_mask``
       (denominator + ``iou_eps``) is the pseudo-mask. Ties go to the lower cluster index.
    A sample whose only present cluster is the background gets an empty mask.

    Follows methods.md's wording ("the cluster with the lowest mean saliency"). LoopTrans's code
    differs when a cluster is empty: its mean is nan and ``argmin`` returns the nan, so the empty
    cluster is "excluded" and the real lowest-saliency cluster stays a candidate. The two agree
    whenever all 4 clusters are present in the 14x14 grid; the spec's reading is kept.

    Args:
        clusters: ``(B, h*w)`` or ``(B, h, w)`` cluster index per position.
        cam_y: ``(B, h, w)`` the label's CAM (LoopTrans: the shared-CAM branch on the ego view).
        saliency: ``(B, h, w)`` continuous or binary saliency.
        num_clusters: K.
    """
    b, h, w = cam_y.shape
    onehot = F.one_hot(clusters.reshape(b, h * w).long(), num_clusters).transpose(1, 2).float()  # (B, K, hw)
    count = onehot.sum(-1)
    present = count > 0
    mean_sal = (onehot * saliency.reshape(b, 1, h * w).float()).sum(-1) / count.clamp(min=1)
    background = mean_sal.masked_fill(~present, float("inf")).argmin(-1)  # (B,)
    cam_mask = (minmax(cam_y.detach().float()) > cam_thd).reshape(b, 1, h * w).float()
    inter = (onehot * cam_mask).sum(-1)
    union = ((onehot + cam_mask) > 0).float().sum(-1)
    iou = inter / (union + iou_eps)
    candidate = present.clone()
    candidate[torch.arange(b), background] = False
    best = iou.masked_fill(~candidate, float("-inf")).argmax(-1)
    mask = onehot[torch.arange(b), best] * candidate.any(-1, keepdim=True).float()
    return mask.view(b, h, w)


def dice_loss(pred: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Per-sample ``1 − (2·Σ p·t + s) / (Σ p + Σ t + s)``, averaged over the batch."""
    p, t = pred.flatten(1), target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def pseudo_mask_losses(pix_cam_y: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(L_mse, L_dice) of ``minmax(pix_cam_y)`` against the binary pseudo-mask."""
    pred = minmax(pix_cam_y)
    return F.mse_loss(pred, target), dice_loss(pred, target)


def class_correlation(cams: Tensor) -> Tensor:
    """``R = K Kᵀ`` over classes, ``cams``: ``(B, C', ...)`` flattened after the class axis."""
    k = cams.flatten(2)
    return k @ k.transpose(1, 2)


def correlation_loss(ego_cams: Tensor, exo_cams: Tensor) -> Tensor:
    """L_corr = 1 − mean cos(R_ego, R_exo), the cosine taken per column (along the first matrix
    dimension), as the reference does.

    Args:
        ego_cams: ``(B, C', h, w)`` pixel-decoder CAMs.
        exo_cams: ``(B, N, C', h, w)`` exocentric CAMs, flattened over ``N·h·w``.
    """
    r_ego = class_correlation(ego_cams)
    r_exo = class_correlation(exo_cams.transpose(1, 2))
    return 1 - F.cosine_similarity(r_ego, r_exo, dim=1).mean()


def weighted_descriptor(cam: Tensor, desc: Tensor) -> Tensor:
    """``mean over positions of cam · desc``: ``cam`` ``(..., h, w)``, ``desc`` ``(..., D, h, w)``
    -> ``(..., D)`` (raw CAM weights, as the reference)."""
    return torch.einsum("...p,...dp->...d", cam.flatten(-2), desc.flatten(-2)) / (cam.shape[-2] * cam.shape[-1])


def denoise_loss(exo_cams: Tensor, exo_desc: Tensor, pix_cam_y: Tensor, ego_desc: Tensor, y: Tensor,
                 num_classes: int, temperature: float = 1.0) -> Tensor:
    """L_denoise: InfoNCE of the exocentric affordance embedding against the noise classes.

    query = l2n(mean over the N exocentric images and positions of CAM_exo_y · desc_exo);
    positive = l2n(mean over positions of CAM_pix_y · desc_ego); negatives = for each noise class
    j >= ``num_classes``, l2n(mean over images and positions of CAM_exo_j · desc_exo).

    Args:
        exo_cams: ``(B, N, C', h, w)``; exo_desc: ``(B, N, D, h, w)`` frozen DINO keys.
        pix_cam_y: ``(B, h, w)``; ego_desc: ``(B, D, h, w)``; y: ``(B,)``.
        num_classes: C; classes ``C .. C'-1`` are the noise classes.
    """
    b = y.shape[0]
    idx = torch.arange(b, device=y.device)
    q = F.normalize(weighted_descriptor(exo_cams[idx, :, y], exo_desc).mean(1), dim=-1)  # (B, D)
    pos = F.normalize(weighted_descriptor(pix_cam_y, ego_desc), dim=-1)  # (B, D)
    noise = exo_cams[:, :, num_classes:]  # (B, N, J, h, w)
    n, hw = noise.shape[1], noise.shape[-2] * noise.shape[-1]
    neg = torch.einsum("bnjp,bndp->bjd", noise.flatten(-2), exo_desc.flatten(-2)) / (n * hw)
    neg = F.normalize(neg, dim=-1)  # (B, J, D)
    logits = torch.cat([(q * pos).sum(-1, keepdim=True), torch.einsum("bd,bjd->bj", q, neg)], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=y.device))


def modularity_loss(pixels: Tensor, scores: Tensor) -> Tensor:
    """Soft-modularity objective of ACSeg (methods.md §3.6; afford's cluster-training recipe).

    Per image, with ``A_ij = max(0, cos(x_i, x_j))``, degrees ``k_i = Σ_j A_ij``, ``2m = Σ A``,
    soft assignments ``S_ic = max(0, cos(x_i, c_c))`` and ``δ_ij = max_c S_ic S_jc``::

        L = −(1 / 2m) Σ_ij (A_ij − k_i k_j / 2m) δ_ij

    (maximising modularity: pixels alike should share a token). Mean over the batch.

    Args:
        pixels: ``(B, N, D)`` descriptors.
        scores: ``(B, N, K)`` the cluster module's output ``cos + 1``.
    """
    x = F.normalize(pixels.float(), dim=-1)
    a = (x @ x.transpose(1, 2)).clamp(min=0)  # (B, N, N)
    k = a.sum(-1)  # (B, N)
    two_m = a.sum((1, 2)).clamp(min=1e-12)  # (B,)
    s = (scores.float() - 1).clamp(min=0)  # (B, N, K)
    delta = (s.unsqueeze(2) * s.unsqueeze(1)).amax(-1)  # (B, N, N)
    b_mat = a - k.unsqueeze(2) * k.unsqueeze(1) / two_m[:, None, None]
    return (-(b_mat * delta).sum((1, 2)) / two_m).mean()
