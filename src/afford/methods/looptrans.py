"""LoopTrans (Tang et al., ICCV 2025): closed-loop transfer between exocentric and egocentric views.

Composition (methods.md §3): frozen DINO keys -> residual ``aff_proj`` Mlp (shared by both
views) -> ``scam``, one conv stack applied to the exocentric features *and* the egocentric ones
(the shared CAM, ``cross_cam``) -> a shared 1x1 ``aff_fc`` over C affordances + 15 noise
classes. An egocentric pixel decoder ``pixel_dec`` gives the test-time CAM; it learns from the
pseudo-mask that a frozen cluster module's segmentation yields where the shared CAM fires, and
from the exocentric class correlations. Attribute names equal the official checkpoint's
(checkpoints/looptrans.md), so released weights load without renaming.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from afford.backbones import create_backbone
from afford.backbones.convert import load_strict
from afford.errors import AffordError
from afford.losses.concentration import concentration_loss
from afford.losses.looptrans import correlation_loss, denoise_loss, pseudo_mask_losses, select_pseudo_masks
from afford.methods.base import ClassCAMs, LabelSpace, Method, ParamGroup
from afford.methods.looptrans_cluster import load_cluster_weights
from afford.modules.cluster import ClusterModule
from afford.modules.heads import Mlp, conv_bn_relu_stack, project_map
from afford.modules.param_groups import groups_from_rules
from afford.modules.saliency import border_contrast, mean_head_saliency

log = logging.getLogger(__name__)

SALIENCIES = ("dino", "border")


@dataclass
class LoopTransConfig:
    """Reference defaults (``SooLab/LoopTrans``: ``models/looptrans.py``, ``train.py``)."""

    backbone: str = "dino_vits16"
    backbone_weights: str | None = None
    key_layer: int = -1
    noise_classes: int = 15
    # The frozen cluster module: an afford looptrans_cluster run directory, a released
    # cluster_{seen,unseen}.pth, or a released LoopTrans checkpoint (its cluster.* keys).
    cluster_weights: str | None = None
    cluster_tokens: int = 4
    cluster_layers: int = 8
    cluster_heads: int = 8
    cluster_stale_queries: bool = True  # the reference forward; the release only reproduces with it
    cam_thd: float = 0.92  # cam_mask = minmax(cross_cam_y) > 0.92
    # Background test saliency: "dino" = mean raw CLS attention of heads [0, 1, 3], min-max (the
    # paper); "border" = the label-free border-contrast prior for backbones whose CLS attention
    # means nothing (the offline demo's random tiny ViT). Not a LoopTrans setting.
    saliency: str = "dino"
    mse_weight: float = 10.0
    dice_weight: float = 2.0
    corr_weight: float = 1.5
    denoise_weight: float = 0.05
    denoise_temperature: float = 1.0
    con_weight: float = 0.07


class LoopTrans(ClassCAMs, Method):
    """LoopTrans with the official module names: ``backbone``, ``cluster``, ``aff_proj``,
    ``pixel_dec``, ``scam``, ``aff_fc``."""

    name = "looptrans"

    def __init__(self, cfg: LoopTransConfig, labels: LabelSpace | Sequence[str]) -> None:
        super().__init__(labels)
        if cfg.saliency not in SALIENCIES:
            raise AffordError(f"model.saliency: expected one of {SALIENCIES}, got '{cfg.saliency}'")
        if cfg.noise_classes < 1:
            raise AffordError(f"model.noise_classes: expected at least 1, got {cfg.noise_classes}")
        self.cfg = cfg
        self.backbone = create_backbone(cfg.backbone, weights=cfg.backbone_weights, layers=(cfg.key_layer,),
                                        return_tokens=False)
        dim = self.backbone.embed_dim
        self.cluster = ClusterModule(dim, cfg.cluster_tokens, cfg.cluster_layers, cfg.cluster_heads,
                                     stale_queries=cfg.cluster_stale_queries)
        self.cluster.requires_grad_(False)  # frozen explicitly (upstream it is frozen by accident)
        self.aff_proj = Mlp(dim, 4 * dim)
        self.pixel_dec = conv_bn_relu_stack(dim, 2)
        self.scam = conv_bn_relu_stack(dim, 2)
        self.aff_fc = nn.Conv2d(dim, len(self.classnames) + cfg.noise_classes, 1)
        self._cluster_source: dict[str, Any] = {"kind": "random",
                                                "how": "randomly initialised: pseudo-masks carry no meaning"}
        if cfg.cluster_weights:
            self._load_cluster(cfg.cluster_weights)

    def _load_cluster(self, source: str) -> None:
        cluster, backbone, info = load_cluster_weights(source)
        self._check_cluster_run(source, info.pop("model", None))
        load_strict(self.cluster, cluster, f"model.cluster_weights={source}")
        if backbone is not None:  # an afford cluster run: its keys must be the keys we compute
            own = self.backbone.state_dict()
            same = own.keys() == backbone.keys() and all(torch.equal(own[k], backbone[k]) for k in own)
            if not same:
                if self.cfg.backbone_weights:
                    raise AffordError(f"model.cluster_weights: the cluster run {source} was trained on other "
                                      f"backbone weights than model.backbone_weights={self.cfg.backbone_weights}")
                load_strict(self.backbone, backbone, f"{source} (backbone)")
                info["backbone"] = "copied from the cluster run (random-init backbone, offline demo)"
        self._cluster_source = info

    # cluster run's model field -> this config's field that must agree with it
    _CLUSTER_FIELDS = {"backbone": "backbone", "key_layer": "key_layer", "num_tokens": "cluster_tokens",
                       "num_layers": "cluster_layers", "num_heads": "cluster_heads",
                       "stale_queries": "cluster_stale_queries"}

    def _check_cluster_run(self, source: str, model: dict[str, Any] | None) -> None:
        """An afford cluster run must have been trained with this module's shape and forward:
        the head count and the stale-query switch do not show in the weights' shapes."""
        if model is None:
            return
        for theirs, ours in self._CLUSTER_FIELDS.items():
            if theirs in model and model[theirs] != getattr(self.cfg, ours):
                raise AffordError(f"model.cluster_weights: the cluster run {source} has model.{theirs}="
                                  f"{model[theirs]!r} but this LoopTrans config has model.{ours}="
                                  f"{getattr(self.cfg, ours)!r}; they must agree")

    def provenance(self) -> dict[str, Any]:
        """run.json records where the frozen cluster module came from (methods.md §3.5)."""
        return {"cluster": self._cluster_source}

    # -- features -------------------------------------------------------------------------
    def _descriptors(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen last-block DINO keys ``(B, D, h, w)`` and the background-test saliency."""
        feats = self.backbone(images)
        desc = feats.keys[0].detach()
        if self.cfg.saliency == "dino":
            return desc, mean_head_saliency(feats.cls_attn)
        return desc, border_contrast(desc)

    def _project(self, desc: torch.Tensor) -> torch.Tensor:
        """Residual ``aff_proj`` on the descriptor map (methods.md §0)."""
        return project_map(self.aff_proj, desc)

    # -- training ---------------------------------------------------------------------------
    def forward_train(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        ego, exo, y = batch["ego"], batch["exo"], batch["label"]
        b, n = exo.shape[:2]
        c = len(self.classnames)
        desc, sal = self._descriptors(torch.cat([ego, exo.flatten(0, 1)]))
        ego_desc, exo_desc = desc[:b], desc[b:]
        proj = self._project(desc)
        exo_cam = self.aff_fc(self.scam(proj[b:]))  # (B*N, C', h, w)
        cross_cam = self.aff_fc(self.scam(proj[:b]))  # (B, C', h, w): the shared CAM on the ego view
        pix_cam = self.aff_fc(self.pixel_dec(proj[:b]))  # (B, C', h, w): the test output
        h, w = pix_cam.shape[-2:]
        idx = torch.arange(b, device=y.device)

        l_cls = F.cross_entropy(cross_cam.mean((2, 3)), y) + F.cross_entropy(exo_cam.mean((2, 3)), y.repeat_interleave(n))
        with torch.no_grad():
            clusters = self.cluster.assign(ego_desc.float())
            target = select_pseudo_masks(clusters, cross_cam[idx, y].detach(), sal[:b], self.cluster.num_tokens,
                                         cam_thd=self.cfg.cam_thd)
        pix_y = pix_cam[idx, y]
        l_mse, l_dice = pseudo_mask_losses(pix_y, target)
        exo_cams = exo_cam.view(b, n, -1, h, w)
        l_corr = correlation_loss(pix_cam, exo_cams)
        l_denoise = denoise_loss(exo_cams, exo_desc.view(b, n, *exo_desc.shape[1:]), pix_y, ego_desc, y, c,
                                 temperature=self.cfg.denoise_temperature)
        l_con = concentration_loss(pix_cam)
        cfg = self.cfg
        total = (l_cls + cfg.mse_weight * l_mse + cfg.dice_weight * l_dice + cfg.corr_weight * l_corr
                 + cfg.denoise_weight * l_denoise + cfg.con_weight * l_con)
        return {"loss": total, "cls": l_cls, "mse": l_mse, "dice": l_dice, "corr": l_corr, "denoise": l_denoise,
                "con": l_con, "mask_frac": target.mean().detach()}

    # -- inference ---------------------------------------------------------------------------
    def class_cams(self, images: torch.Tensor) -> torch.Tensor:
        """Raw ``pixel_dec`` CAMs of every class at feature resolution (looptrans.md §4),
        ``(B, C, h, w)``; ``predict`` and ``predict_labels`` index it (:class:`ClassCAMs`)."""
        desc, _ = self._descriptors(images)
        return self.aff_fc(self.pixel_dec(self._project(desc)))

    @torch.no_grad()
    def pseudo_masks(self, images: torch.Tensor, labels: torch.Tensor,
                     clusters: torch.Tensor | None = None) -> torch.Tensor:
        """The training target for ``images`` (methods.md §3.2) as ``(B, h, w)`` {0, 1}: the
        non-background cluster that best matches the shared CAM. ``clusters`` ``(B, h*w)``
        replaces the cluster module's assignment (e.g. k-means, for comparison)."""
        desc, sal = self._descriptors(images)
        cross_cam = self.aff_fc(self.scam(self._project(desc)))
        y = cross_cam[torch.arange(cross_cam.shape[0], device=cross_cam.device), labels]
        if clusters is None:
            clusters = self.cluster.assign(desc.float())
        k = max(self.cluster.num_tokens, int(clusters.max()) + 1)
        return select_pseudo_masks(clusters, y, sal, k, cam_thd=self.cfg.cam_thd)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The DINO key descriptor the CAMs are computed from (refinement's affinity features)."""
        with torch.no_grad():
            return [self._descriptors(images)[0].float()]

    def param_groups(self) -> list[ParamGroup]:
        """Reference groups (methods.md §3.3): weights ×1, biases ×2; ``aff_proj.fc1/fc2`` and
        ``aff_fc`` ×10/×20 (the "fc" substring rule, stated explicitly). The cluster module is frozen."""
        rules = [("aff_proj.fc1", 10.0, 20.0), ("aff_proj.fc2", 10.0, 20.0), ("aff_fc", 10.0, 20.0)]
        return groups_from_rules(self, rules)
