"""Part-prototype discovery of LOCATE (PartSelect, methods.md §1.2), batched.

The exocentric images show *where* a person interacts with the object; clustering the frozen
DINO descriptors of those high-CAM regions yields candidate parts, and the candidate whose
egocentric similarity map best agrees with DINO's saliency becomes the prototype that guides the
egocentric CAM (``afford.losses.prototype``). SelectiveCL (§4.4) reuses the same steps with its
own region maps and a 1e-10 PartIoU epsilon, so the steps are exposed separately:

- :func:`exo_region_points` pools the descriptors under each exocentric region mask;
- :func:`centroid_part_maps` turns centroids into egocentric part maps;
- :func:`part_iou` scores them against the saliency;
- :func:`discover_parts` runs everything and keeps all intermediate results;
- :func:`select_part_prototypes` is the LOCATE entry point.

Everything here runs without gradient: the inputs are frozen features and the outputs are
targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from afford.modules.heads import minmax
from afford.modules.kmeans import Generator, batched_kmeans


def part_iou(part_maps: Tensor, saliency: Tensor, eps: float = 0.0) -> Tensor:
    """LOCATE's PartIoU between binary part maps and a binary saliency mask.

    ``pIoU = (|P ∩ S| / |P| + |S| / |P ∪ S|) / 2``, exactly as coded in the reference.

    Args:
        part_maps: ``(B, K, h, w)`` bool.
        saliency: ``(B, h, w)`` bool.
        eps: added to both denominators (0 for LOCATE, 1e-10 for SelectiveCL). With ``eps = 0``
            an empty part map gives nan (0/0), which never passes a threshold.

    Returns:
        ``(B, K)`` float.
    """
    p = part_maps.bool()
    s = saliency.bool().unsqueeze(1)  # (B, 1, h, w)
    inter = (p & s).flatten(2).sum(-1).float()
    union = (p | s).flatten(2).sum(-1).float()
    area_p = p.flatten(2).sum(-1).float()
    area_s = s.flatten(2).sum(-1).float()
    # NOTE: non-standard second term. It is |S| / |P ∪ S| (how much of the union the saliency
    # covers), not |P ∩ S| / |P ∪ S|. Kept for parity with LOCATE (methods.md §1.2, step 5).
    return (inter / (area_p + eps) + area_s / (union + eps)) / 2


def exo_region_points(
    exo_maps: Tensor, exo_desc: Tensor, thd: float = 0.6, eps: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """Flatten the exocentric descriptors and mark those under each image's region mask.

    Each exocentric map is min-max normalised on its own (``eps``) and thresholded at
    ``> thd``; the kept positions of the N images of a sample are pooled into one point set.

    Args:
        exo_maps: ``(B, N, h, w)`` raw region maps (LOCATE: the GT-class CAMs).
        exo_desc: ``(B, N, D, h, w)`` descriptors.

    Returns:
        ``points (B, N*h*w, D)`` and ``mask (B, N*h*w)`` bool.
    """
    b, n, d, h, w = exo_desc.shape
    mask = minmax(exo_maps, eps) > thd  # (B, N, h, w)
    points = exo_desc.permute(0, 1, 3, 4, 2).reshape(b, n * h * w, d)
    return points, mask.reshape(b, n * h * w)


def centroid_part_maps(centroids: Tensor, ego_desc: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Egocentric part maps of each centroid.

    Cosine similarity between each (L2-normalised) centroid and the per-position L2-normalised
    egocentric descriptors, min-max per centroid (``eps``), binarised at ``> its spatial mean``.

    Args:
        centroids: ``(B, K, D)``.
        ego_desc: ``(B, D, h, w)``.

    Returns:
        ``sim (B, K, h, w)`` min-max normalised similarity and ``parts (B, K, h, w)`` bool.
    """
    c = F.normalize(centroids, dim=-1)
    e = F.normalize(ego_desc, dim=1)
    sim = minmax(torch.einsum("bkd,bdhw->bkhw", c, e), eps)
    parts = sim > sim.mean(dim=(-2, -1), keepdim=True)
    return sim, parts


@dataclass
class PartSelection:
    """Everything :func:`discover_parts` computes (so other methods can reuse the parts).

    Shapes: ``centroids (B, K, D)`` L2-normalised; ``sim``/``parts (B, K, h, w)``;
    ``piou (B, K)``; ``best (B,)`` long; ``clustered (B,)`` (enough points for K-means);
    ``valid (B,)`` (clustered and ``max pIoU >= iou_thd``); ``prototypes (B, D)``, zero rows
    where not valid.
    """

    centroids: Tensor
    sim: Tensor
    parts: Tensor
    piou: Tensor
    best: Tensor
    clustered: Tensor
    valid: Tensor
    prototypes: Tensor


@torch.no_grad()
def discover_parts(
    exo_maps: Tensor,
    exo_desc: Tensor,
    ego_desc: Tensor,
    saliency: Tensor,
    cam_thd: float = 0.6,
    iou_thd: float = 0.6,
    k: int = 3,
    generator: Generator | None = None,
    *,
    iters: int = 300,
    iou_eps: float = 0.0,
    init: Tensor | None = None,
) -> PartSelection:
    """Cluster exocentric region descriptors and score the clusters on the egocentric view.

    Args:
        exo_maps: ``(B, N, h, w)`` raw region maps (LOCATE: exocentric CAM_y).
        exo_desc: ``(B, N, D, h, w)`` raw frozen descriptors.
        ego_desc: ``(B, D, h, w)`` egocentric descriptors.
        saliency: ``(B, h, w)`` bool DINO saliency.
        cam_thd: region threshold on the min-max map (LOCATE ``aff_cam_thd``).
        iou_thd: PartIoU acceptance threshold (LOCATE ``part_iou_thd``).
        k: number of clusters (LOCATE ``cluster_num``).
        generator: randomness of the K-means initialisation.
        iters: K-means iteration cap.
        iou_eps: PartIoU denominator epsilon (SelectiveCL: 1e-10).
        init: optional K-means initial centroids ``(B, k, D)`` (tests, reproduction).
    """
    points, mask = exo_region_points(exo_maps, exo_desc, cam_thd)
    clustered = mask.sum(1) >= k
    raw, _ = batched_kmeans(points, mask, k=k, iters=iters, generator=generator, init=init)
    centroids = F.normalize(raw, dim=-1)
    sim, parts = centroid_part_maps(centroids, ego_desc)
    piou = part_iou(parts, saliency, eps=iou_eps)
    # nan (empty part map with eps = 0) must never be chosen nor pass the threshold.
    score = torch.nan_to_num(piou, nan=float("-inf"))
    best = score.argmax(dim=1)  # first maximum on ties (documented for argmax)
    top = score.gather(1, best[:, None]).squeeze(1)
    valid = clustered & (top >= iou_thd)
    protos = torch.gather(centroids, 1, best[:, None, None].expand(-1, 1, centroids.shape[-1])).squeeze(1)
    protos = protos * valid[:, None].to(protos.dtype)
    return PartSelection(centroids, sim, parts, piou, best, clustered, valid, protos)


@torch.no_grad()
def select_part_prototypes(
    exo_cam_y: Tensor,
    exo_desc: Tensor,
    ego_desc: Tensor,
    saliency: Tensor,
    cam_thd: float = 0.6,
    iou_thd: float = 0.6,
    k: int = 3,
    generator: Generator | None = None,
    *,
    iters: int = 300,
    iou_eps: float = 0.0,
    init: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """LOCATE's PartSelect for a batch (methods.md §1.2), without gradient.

    Samples whose pooled region holds fewer than ``k`` descriptors, or whose best part has
    PartIoU below ``iou_thd``, get ``valid = False`` and a zero prototype; the prototype loss
    must ignore them (``afford.losses.prototype.prototype_loss`` does).

    Args:
        exo_cam_y: ``(B, N, h, w)`` raw exocentric CAMs of the GT class.
        exo_desc: ``(B, N, D, h, w)`` raw frozen DINO descriptors (not projected).
        ego_desc: ``(B, D, h, w)`` raw frozen egocentric DINO descriptors.
        saliency: ``(B, h, w)`` bool DINO saliency of the egocentric image.

    Returns:
        ``protos (B, D)`` L2-normalised (zeros where invalid) and ``valid (B,)`` bool.
    """
    sel = discover_parts(
        exo_cam_y,
        exo_desc,
        ego_desc,
        saliency,
        cam_thd,
        iou_thd,
        k,
        generator,
        iters=iters,
        iou_eps=iou_eps,
        init=init,
    )
    return sel.prototypes, sel.valid
