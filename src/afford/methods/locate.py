"""LOCATE (Li et al., CVPR 2023): part prototypes transferred from exocentric to egocentric views.

Composition (methods.md §1): frozen DINO keys -> residual ``aff_proj`` Mlp -> per-view conv stacks
-> a shared 1x1 ``aff_fc`` classifier giving class CAMs. Exocentric CAMs pick confident regions,
k-means over their DINO descriptors proposes parts, PartIoU against the DINO saliency chooses the
part prototype, and the egocentric CAM is pulled towards it. Attribute names equal the official
checkpoint's (checkpoints/locate.md) so released weights load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from afford.backbones import create_backbone
from afford.errors import AffordError
from afford.losses.concentration import concentration_loss
from afford.losses.prototype import prototype_loss
from afford.methods.base import ClassCAMs, LabelSpace, Method, ParamGroup
from afford.modules.heads import Mlp, conv_bn_relu_stack, project_map
from afford.modules.param_groups import groups_from_rules
from afford.modules.prototypes import select_part_prototypes
from afford.modules.saliency import PARTIOU_SALIENCIES, partiou_saliency
from afford.seeding import sample_seeds


@dataclass
class LOCATEConfig:
    """Paper/reference defaults (``models/locate.py``, ``train.py``)."""

    backbone: str = "dino_vits16"
    backbone_weights: str | None = None
    key_layer: int = -1  # block whose attention keys are the descriptor (paper: the last)
    # The paper freezes DINO. Offline (no pretrained weights) the demo trains a tiny ViT jointly.
    train_backbone: bool = False
    aff_cam_thd: float = 0.6
    part_iou_thd: float = 0.6
    cel_margin: float = 0.5
    cluster_num: int = 3
    kmeans_iters: int = 300
    warm_epoch: int = 0  # L_proto applies when epoch > warm_epoch (0-based), i.e. from the 2nd epoch
    proto_weight: float = 1.0
    con_weight: float = 0.07
    # PartIoU's saliency: "dino" = the CLS-attention saliency of methods.md §0.2 (the paper).
    # For backbones whose CLS token never learned to attend to objects (the offline demo's tiny ViT
    # has no self-supervised pretraining, so its CLS attention is noise), two stand-ins, not in
    # the paper: "border" = positions unlike the image border in the same keys (label-free, from
    # the egocentric image alone; :func:`border_saliency`); "cam" = the class-agnostic
    # egocentric CAM (max over classes, min-max, > mean), which feeds the model's own output back.
    saliency: str = "dino"
    # The "raw CAM of an egocentric-only classifier" baseline of synthagd.md: the same head trained
    # with CE on the egocentric image alone (no exocentric branch, no prototype, no L_con). What
    # LOCATE's exocentric transfer adds is measured against it. Not a LOCATE setting.
    ego_only: bool = False


SALIENCIES = PARTIOU_SALIENCIES


class LOCATE(ClassCAMs, Method):
    """LOCATE with the official module names: ``backbone``, ``aff_proj``, ``aff_*_proj``, ``aff_fc``."""

    name = "locate"

    def __init__(self, cfg: LOCATEConfig, labels: LabelSpace | Sequence[str]) -> None:
        super().__init__(labels)
        if cfg.saliency not in SALIENCIES:
            raise AffordError(f"model.saliency: expected one of {SALIENCIES}, got '{cfg.saliency}'")
        self.cfg = cfg
        self.backbone = create_backbone(
            cfg.backbone, weights=cfg.backbone_weights, layers=(cfg.key_layer,), trainable=cfg.train_backbone,
            return_tokens=False,  # LOCATE reads only the last block's keys, not its output
        )
        dim = self.backbone.embed_dim
        self.aff_proj = Mlp(dim, 4 * dim)
        self.aff_ego_proj = conv_bn_relu_stack(dim, 2)
        self.aff_exo_proj = conv_bn_relu_stack(dim, 2)
        self.aff_fc = nn.Conv2d(dim, len(self.classnames), 1)
        self._step_seed, self._first_row = 0, 0  # per-sample k-means seeds (set_step_seed)

    # -- features -------------------------------------------------------------------------
    def _descriptors(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-block DINO keys ``(B, D, h, w)`` and the binary DINO saliency ``(B, h, w)``."""
        feats = self.backbone(images)
        desc = feats.keys[0]
        if not self.cfg.train_backbone:
            desc = desc.detach()
        return desc, feats.saliency

    def _project(self, desc: torch.Tensor) -> torch.Tensor:
        """Residual ``aff_proj`` on the descriptor map (methods.md §0)."""
        return project_map(self.aff_proj, desc)

    # -- training ---------------------------------------------------------------------------
    def forward_train(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        ego, exo, y = batch["ego"], batch["exo"], batch["label"]
        if self.cfg.ego_only:
            return self._forward_ego_only(ego, y)
        b, n = exo.shape[:2]
        desc, sal = self._descriptors(torch.cat([ego, exo.flatten(0, 1)]))
        ego_desc, exo_desc = desc[:b], desc[b:]
        ego_sal = sal[:b]

        proj = self._project(desc)
        ego_cam = self.aff_fc(self.aff_ego_proj(proj[:b]))  # (B, C, h, w)
        exo_cam = self.aff_fc(self.aff_exo_proj(proj[b:]))  # (B*N, C, h, w)
        ego_logits = ego_cam.mean((2, 3))
        exo_logits = exo_cam.mean((2, 3))

        l_cls = F.cross_entropy(ego_logits, y) + F.cross_entropy(exo_logits, y.repeat_interleave(n))
        # The reference sums the N exocentric CEs and divides by N: equal to the mean CE above.

        h, w = ego_cam.shape[-2:]
        idx = torch.arange(b, device=y.device)
        exo_cam_y = exo_cam.view(b, n, -1, h, w)[idx, :, y]  # (B, N, h, w)
        ego_cam_y = ego_cam[idx, y]  # (B, h, w)
        losses: dict[str, torch.Tensor] = {"cls": l_cls}

        if epoch > self.cfg.warm_epoch:
            ego_sal = self.ego_saliency(ego_sal, ego_desc, ego_cam)
            protos, valid = self.part_prototypes(batch, exo_cam_y, exo_desc, ego_desc, ego_sal)
            losses["proto"] = prototype_loss(
                ego_cam_y, ego_desc.detach(), protos, valid, margin=self.cfg.cel_margin
            )
            losses["n_proto"] = valid.float().sum().detach()
        else:
            losses["proto"] = ego_cam_y.new_zeros(())
        losses["con"] = concentration_loss(ego_cam)
        losses["loss"] = l_cls + self.cfg.proto_weight * losses["proto"] + self.cfg.con_weight * losses["con"]
        return losses

    def ego_saliency(self, dino_sal: torch.Tensor, ego_desc: torch.Tensor, ego_cam: torch.Tensor) -> torch.Tensor:
        """The binary egocentric saliency PartIoU compares with, per ``cfg.saliency``."""
        return partiou_saliency(self.cfg.saliency, dino_sal, ego_desc, ego_cam)

    @torch.no_grad()
    def part_prototypes(self, batch: dict, exo_cam_y: torch.Tensor, exo_desc: torch.Tensor,
                        ego_desc: torch.Tensor, ego_sal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PartSelect (methods.md §1.2): ``(B, D)`` prototypes and ``(B,)`` validity.

        A method of its own so diagnostics can swap in other prototypes (e.g. oracle ones from
        SynthAGD part masks, ``benchmarks/diagnose_locate_parts.py``) without touching the losses.
        """
        b, n = exo_cam_y.shape[:2]
        return select_part_prototypes(
            exo_cam_y.detach().float(), exo_desc.detach().float().view(b, n, *exo_desc.shape[1:]),
            ego_desc.detach().float(), ego_sal.bool(),
            cam_thd=self.cfg.aff_cam_thd, iou_thd=self.cfg.part_iou_thd, k=self.cfg.cluster_num,
            generator=sample_seeds(self._step_seed, self._first_row, b), iters=self.cfg.kmeans_iters,
        )

    def _forward_ego_only(self, ego: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        desc, _ = self._descriptors(ego)
        logits = self.aff_fc(self.aff_ego_proj(self._project(desc))).mean((2, 3))
        l_cls = F.cross_entropy(logits, y)
        return {"cls": l_cls, "loss": l_cls}

    def set_step_seed(self, seed: int, first_row: int = 0) -> None:
        """Seed the k-means initialisations, one seed per sample keyed by its global batch row
        (the engine calls this per step: exact resume, and data-parallel runs draw the same)."""
        self._step_seed, self._first_row = seed, first_row

    # -- inference ---------------------------------------------------------------------------
    def class_cams(self, images: torch.Tensor) -> torch.Tensor:
        """Raw CAMs of every class at feature resolution (checkpoints/locate.md §4),
        ``(B, C, h, w)``; ``predict`` and ``predict_labels`` index it (:class:`ClassCAMs`)."""
        desc, _ = self._descriptors(images)
        return self.aff_fc(self.aff_ego_proj(self._project(desc)))

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The DINO key descriptor the CAMs are computed from (refinement's affinity features)."""
        with torch.no_grad():
            return [self._descriptors(images)[0].float()]

    def param_groups(self) -> list[ParamGroup]:
        """Reference groups: weights x1, biases x2; ``aff_proj.fc1/fc2`` and ``aff_fc`` x10/x20."""
        rules = [("aff_proj.fc1", 10.0, 20.0), ("aff_proj.fc2", 10.0, 20.0), ("aff_fc", 10.0, 20.0)]
        if self.cfg.train_backbone:
            rules.insert(0, ("backbone", 1.0, 1.0))  # not in the paper: the backbone is frozen there
        return groups_from_rules(self, rules)
