"""Selective Contrastive Learning (Moon et al., ICCV 2025): CLIP object affinity selects what to learn.

Composition (methods.md §4): frozen DINO keys -> ``aff_proj`` Mlp (no residual) -> per-view
conv stacks -> a 1x1 ``aff_classifier`` giving class CAMs, as in LOCATE. A frozen CLIP ViT-B/16
(ClearCLIP last block) and its text tower give object-affinity maps for an action prompt
(egocentric) and an entity prompt (exocentric). Part discovery clusters the DINO descriptors of
the exocentric region (affinity, then affinity × CAM), the egocentric descriptors are weighted by
the affinity, and PartIoU (α = 0.6) decides between a part and the object-level fallback; two
SupCon losses pull the features towards the selected part or object. At test time the CAM is
calibrated by the egocentric affinity. Attribute names equal the official checkpoint's
(checkpoints/selectivecl.md; ``backbone`` stands for ``vit_model``, ``clip``/``text_encoder``
for the two towers of ``net``).

The reference feeds CLIP the same ImageNet-normalised tensor as DINO (not CLIP's own statistics);
afford keeps that (``clip_input_stats: imagenet``) because the released heads were trained so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from afford.backbones import create_backbone, create_text_encoder
from afford.device import compute_context
from afford.errors import AffordError
from afford.losses.selectivecl import (
    calibrate,
    pixel_contrastive_loss,
    pixel_foreground,
    prototype_contrastive_loss,
    two_map_part,
    weighted_embedding,
)
from afford.methods.base import LabelSpace, Method, ParamGroup
from afford.methods.synth_clip import is_run_dir, load_clip_towers
from afford.modules.clip_affinity import action_prompt, cosine_map, entity_prompt, exo_affinity, local_mean3x3
from afford.modules.heads import Mlp, conv_bn_relu_stack, minmax, project_map
from afford.modules.param_groups import groups_from_rules
from afford.modules.prototypes import discover_parts
from afford.modules.saliency import PARTIOU_SALIENCIES, partiou_saliency
from afford.seeding import sample_seeds

log = logging.getLogger(__name__)

CALIBRATIONS = ("continuous", "binary")


@dataclass
class PartChoice:
    """What part discovery decided per sample: ``found (B,)``; the maps the losses use,
    ``ego_map (B, h, w)`` / ``exo_map (B, N, h, w)`` (the part maps, or the affinity maps as the
    object-level fallback); ``piou (B, K)`` for diagnostics."""

    found: torch.Tensor
    ego_map: torch.Tensor
    exo_map: torch.Tensor
    piou: torch.Tensor


@dataclass
class SelectiveCLConfig:
    """Reference defaults (``hynnsk/SelectiveCL``: ``models/locate.py``, ``train.py``)."""

    backbone: str = "dino_vits16"
    backbone_weights: str | None = None
    key_layer: int = -1
    # CLIP: one weights source for both towers (hub name, directory or OpenAI ViT-B-16.pt).
    clip: str = "clip_vitb16"  # image tower (ClearCLIP last block) and text tower of this name
    clip_weights: str | None = None
    clip_input_stats: str = "imagenet"  # the reference quirk; "own" = CLIP's statistics
    tokenizer: str | None = None  # CLIP BPE vocabulary; resolution order in afford.backbones.clip_text
    cluster_num: int = 3
    kmeans_iters: int = 300
    gamma1: float = 0.6  # exocentric region: minmax(map) > gamma1
    gamma2: float = 0.6  # egocentric object mask: minmax(A_ego) > gamma2
    alpha: float = 0.6  # PartIoU acceptance
    warm_epoch: int = 0  # epochs <= warm_epoch use the affinity alone (no CAM) for regions/negatives
    # PartIoU's saliency: "dino" (the paper) or a label-free stand-in (see LOCATEConfig.saliency).
    saliency: str = "dino"
    temperature: float = 0.5  # --cont_temperature
    base_temperature: float = 0.07  # kept as in the reference: each loss is scaled by 0.5 / 0.07
    proto_weight: float = 1.0
    pixel_weight: float = 1.0
    pixel_anchor_thd: float = 0.5
    calibration: str = "continuous"  # the code's minmax(A_ego) · CAM; "binary" = the paper's text


#: BatchNorm momentum of SelectiveCL's two conv stacks: two updates at PyTorch's 0.1 per step.
TWO_PASS_BN_MOMENTUM = 1.0 - (1.0 - 0.1) ** 2


class SelectiveCL(Method):
    """SelectiveCL with the official head names: ``aff_proj``, ``aff_{ego,exo}_proj``,
    ``aff_classifier``, ``K_contrast_projection``, ``pixel_contrast_projection``."""

    name = "selectivecl"
    #: (b) ``calibrated``: minmax(A_ego) · CAM, what the paper reports (default; model selection
    #: uses it, as the reference does); (a) ``raw``: the CAM; (c) ``calibrated_mean``: the affinity
    #: times the 3x3 local mean of the CAM. All unbounded (CAM-scaled): logits-like.
    outputs = {"calibrated": "logits", "raw": "logits", "calibrated_mean": "logits"}
    default_output = "calibrated"

    def __init__(self, cfg: SelectiveCLConfig, labels: LabelSpace | Sequence[str]) -> None:
        super().__init__(labels)
        if cfg.saliency not in PARTIOU_SALIENCIES:
            raise AffordError(f"model.saliency: expected one of {PARTIOU_SALIENCIES}, got '{cfg.saliency}'")
        if cfg.calibration not in CALIBRATIONS:
            raise AffordError(f"model.calibration: expected one of {CALIBRATIONS}, got '{cfg.calibration}'")
        self.cfg = cfg
        self.backbone = create_backbone(cfg.backbone, weights=cfg.backbone_weights, layers=(cfg.key_layer,),
                                        return_tokens=False)
        from_run = is_run_dir(cfg.clip_weights)  # afford's SynthAGD tiny CLIP (the offline demo)
        weights = None if from_run else cfg.clip_weights
        self.clip = create_backbone(cfg.clip, weights=weights, clearclip=True, input_stats=cfg.clip_input_stats)
        self.text_encoder = create_text_encoder(cfg.clip, weights=weights, tokenizer=cfg.tokenizer)
        self._clip_source: dict[str, Any] = {"kind": "weights", "where": cfg.clip_weights or "random init"}
        if from_run:
            self._clip_source = load_clip_towers(self.clip, self.text_encoder, cfg.clip_weights, cfg.clip)
        if self.clip.token_dim != self.text_encoder.embed_dim:
            raise AffordError(f"model.clip: {cfg.clip}'s image embeddings ({self.clip.token_dim}) and text "
                              f"embeddings ({self.text_encoder.embed_dim}) differ")
        dim = self.backbone.embed_dim
        self.aff_proj = Mlp(dim, 4 * dim)
        # The reference runs each stack twice per training step on the same input (its "nocond" pass
        # for the contrastive projections), so BatchNorm's running statistics move twice per step:
        # one update at momentum 1 - 0.9^2 = 0.19 is exactly that (the batch statistics are the same).
        self.aff_ego_proj = conv_bn_relu_stack(dim, 2, bn_momentum=TWO_PASS_BN_MOMENTUM)
        self.aff_exo_proj = conv_bn_relu_stack(dim, 2, bn_momentum=TWO_PASS_BN_MOMENTUM)
        self.aff_classifier = nn.Conv2d(dim, len(self.classnames), 1)
        self.K_contrast_projection = nn.Conv2d(dim, dim, 1)
        self.pixel_contrast_projection = nn.Conv2d(dim, dim, 1)
        # Token ids of the C action prompts then the C entity prompts: part of the model, so a saved
        # run predicts without the vocabulary (filled at construction when one is at hand).
        self.register_buffer("prompt_ids", torch.zeros(2 * len(self.classnames), self.text_encoder.context_length,
                                                       dtype=torch.long))
        self._ids_pending = True
        if self.text_encoder.tokenizer is not None:
            self.tokenize_prompts()
        self.register_load_state_dict_post_hook(self._ids_loaded)
        self._text_cache: tuple[Any, torch.Tensor] | None = None
        self._step_seed, self._first_row = 0, 0  # per-sample k-means seeds (set_step_seed)


    # -- text ---------------------------------------------------------------------------------
    def prompts(self) -> list[str]:
        """The C action prompts, then the C entity prompts (§4.2)."""
        return [action_prompt(c) for c in self.classnames] + [entity_prompt(c) for c in self.classnames]

    def tokenize_prompts(self) -> None:
        """(Re)tokenise the prompts with the text tower's vocabulary into ``prompt_ids``."""
        self.prompt_ids.copy_(self.text_encoder.tokenize(self.prompts()).to(self.prompt_ids.device))
        self._ids_pending = False
        self._text_cache = None

    @staticmethod
    def _ids_loaded(module: nn.Module, incompatible: Any) -> None:
        if not any(k.endswith("prompt_ids") for k in incompatible.missing_keys):
            module._ids_pending = False  # type: ignore[assignment]
        module._text_cache = None  # type: ignore[assignment]

    @torch.no_grad()
    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, E)`` action and entity prompt features of the frozen tower, computed once.

        One prompt per call: batching changes the tower's results at rounding level, and the
        reference encodes one prompt at a time. A run's stored prompt ids need no vocabulary.
        """
        if self._ids_pending:  # a fresh model without a vocabulary at hand: the lazy hub fallback,
            self.tokenize_prompts()  # else one line naming the ways to provide one
        te = self.text_encoder
        key = (compute_context(self.prompt_ids.device), te.token_embedding.weight.dtype,
               te.token_embedding.weight._version)
        if self._text_cache is None or self._text_cache[0] != key:
            ids = self.prompt_ids
            feats = torch.cat([te.encode_prompt_embeddings(te.token_embedding(ids[i : i + 1]), ids[i : i + 1])
                               for i in range(ids.shape[0])])
            self._text_cache = (key, feats.float())
        c = len(self.classnames)
        feats = self._text_cache[1]
        return feats[:c], feats[c:]

    # -- features -------------------------------------------------------------------------------
    def _descriptors(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen DINO keys ``(N, D, h, w)`` and the binary DINO saliency ``(N, h, w)``."""
        feats = self.backbone(images)
        return feats.keys[0].detach(), feats.saliency

    def _clip_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen ClearCLIP patch embeddings ``(N, E, h, w)`` on the DINO grid."""
        return self.clip(images).tokens[-1].detach().float()

    def _heads(self, desc: torch.Tensor, proj: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``aff_proj`` (no residual) -> the view's conv stack -> (features, CAMs)."""
        feat = proj(project_map(self.aff_proj, desc, residual=False))
        return feat, self.aff_classifier(feat)

    def _check_grids(self, desc: torch.Tensor, tokens: torch.Tensor) -> None:
        if desc.shape[-2:] != tokens.shape[-2:]:
            raise AffordError(f"model.clip: {self.cfg.clip} gives a {tuple(tokens.shape[-2:])} patch grid but "
                              f"{self.cfg.backbone} gives {tuple(desc.shape[-2:])}; the two towers need one grid "
                              "(same input size / patch size ratio)")

    # -- training -------------------------------------------------------------------------------
    def forward_train(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        ego, exo, y = batch["ego"], batch["exo"], batch["label"]
        b, n = exo.shape[:2]
        images = torch.cat([ego, exo.flatten(0, 1)])
        desc, dino_sal = self._descriptors(images)
        tokens = self._clip_tokens(images)
        self._check_grids(desc, tokens)
        h, w = desc.shape[-2:]
        t_action, t_entity = self.text_features()
        y_exo = y.repeat_interleave(n)

        a_ego = cosine_map(tokens[:b], t_action[y])  # (B, h, w) raw cosine
        exo_action_cos = cosine_map(tokens[b:], t_action[y_exo])  # (B*N, h, w), also the pixel loss's
        a_exo = exo_affinity(tokens[b:], t_entity[y_exo], t_action[y_exo], exo_action_cos).view(b, n, h, w)
        ego_feat, ego_cam = self._heads(desc[:b], self.aff_ego_proj)
        exo_feat, exo_cam = self._heads(desc[b:], self.aff_exo_proj)
        l_ego = F.cross_entropy(ego_cam.mean((2, 3)), y)
        l_exo = F.cross_entropy(exo_cam.mean((2, 3)), y_exo)  # = (1/N) Σ_n CE_exo_n
        idx = torch.arange(b, device=y.device)
        ego_cam_y = ego_cam[idx, y]
        exo_cam_y = exo_cam.view(b, n, -1, h, w)[idx, :, y]  # (B, N, h, w)
        with_cam = epoch > self.cfg.warm_epoch

        saliency = partiou_saliency(self.cfg.saliency, dino_sal[:b], desc[:b], ego_cam)
        sel = self.select_parts(a_ego, a_exo, exo_cam_y if with_cam else None, desc[:b],
                                desc[b:].view(b, n, *desc.shape[1:]), saliency)
        m_ego, m_exo, found = sel.ego_map, sel.exo_map, sel.found
        # Negatives: 1 − M · relu(CAM_y) from the first CAM epoch, as the reference builds them: the raw
        # CAM (no min-max), its gradient kept, so L_proto trains the classifier and the heads through it.
        neg_ego = 1 - m_ego * (F.relu(ego_cam_y) if with_cam else 1)
        neg_exo = 1 - m_exo * (F.relu(exo_cam_y) if with_cam else 1)
        anchor_w = torch.where(found[:, None, None], a_ego, torch.ones_like(a_ego))

        # Prototypical contrastive loss on the K-projected view features.
        k_ego = self.K_contrast_projection(ego_feat)
        k_exo = self.K_contrast_projection(exo_feat)
        l_proto = prototype_contrastive_loss(
            weighted_embedding(k_ego, anchor_w), weighted_embedding(k_ego, m_ego), weighted_embedding(k_ego, neg_ego),
            weighted_embedding(k_exo, m_exo.flatten(0, 1)), weighted_embedding(k_exo, neg_exo.flatten(0, 1)),
            y, self.cfg.temperature, self.cfg.base_temperature)

        # Pixel contrastive loss on the egocentric patches.
        object_mask = minmax(a_ego, eps=0.0).nan_to_num(0.0) > self.cfg.gamma2
        fg = pixel_foreground(a_ego, exo_action_cos.view(b, n, h, w), object_mask)
        l_pix = pixel_contrastive_loss(self.pixel_contrast_projection(ego_feat), fg,  # anchors: the γ2 mask
                                       object_mask.float(), self.cfg.pixel_anchor_thd,
                                       self.cfg.temperature, self.cfg.base_temperature)
        total = l_ego + l_exo + self.cfg.proto_weight * l_proto + self.cfg.pixel_weight * l_pix
        return {"loss": total, "ce_ego": l_ego, "ce_exo": l_exo, "proto": l_proto, "pixel": l_pix,
                "n_parts": found.float().sum().detach()}

    @torch.no_grad()
    def select_parts(self, a_ego: torch.Tensor, a_exo: torch.Tensor, exo_cam_y: torch.Tensor | None,
                     ego_desc: torch.Tensor, exo_desc: torch.Tensor, saliency: torch.Tensor) -> PartChoice:
        """Part discovery and the part/object choice (§4.4), without gradient.

        Args:
            a_ego: ``(B, h, w)`` raw egocentric affinity; a_exo: ``(B, N, h, w)`` exocentric affinity.
            exo_cam_y: ``(B, N, h, w)`` exocentric CAMs of the label, or None in the first epoch(s)
                (the region is then the affinity alone, else ``relu(A_exo) · relu(CAM)``).
            ego_desc: ``(B, D, h, w)``; exo_desc: ``(B, N, D, h, w)`` frozen DINO descriptors.
            saliency: ``(B, h, w)`` binary PartIoU saliency.
        """
        b, n, h, w = a_exo.shape
        region = a_exo if exo_cam_y is None else F.relu(a_exo) * F.relu(exo_cam_y.detach())
        ego_w = ego_desc * a_ego[:, None]  # descriptors weighted by the affinity before matching
        sel = discover_parts(region.float(), exo_desc.float(), ego_w.float(), saliency.bool(),
                             cam_thd=self.cfg.gamma1, iou_thd=self.cfg.alpha, k=self.cfg.cluster_num,
                             generator=sample_seeds(self._step_seed, self._first_row, b), iters=self.cfg.kmeans_iters, iou_eps=1e-10)
        centroid = sel.centroids[torch.arange(b, device=a_ego.device), sel.best]  # (B, D)
        part_ego = two_map_part(ego_w[:, None], ego_desc[:, None], centroid)[:, 0]
        part_exo = two_map_part(exo_desc, exo_desc, centroid)  # one softmax over the sample's N views
        found = sel.valid
        return PartChoice(found, torch.where(found[:, None, None], part_ego, a_ego),
                          torch.where(found[:, None, None, None], part_exo, a_exo), sel.piou)

    def set_step_seed(self, seed: int, first_row: int = 0) -> None:
        """Seed the k-means initialisations, one seed per sample keyed by its global batch row
        (the engine calls this per step: exact resume, and data-parallel runs draw the same)."""
        self._step_seed, self._first_row = seed, first_row

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, labels: torch.Tensor, output: str | None = None) -> torch.Tensor:
        """(b) ``calibrated`` (default), (a) ``raw`` or (c) ``calibrated_mean`` (§4.7), ``(B, h, w)``."""
        name = self.resolve_output(output)
        desc, _ = self._descriptors(images)
        _, cams = self._heads(desc, self.aff_ego_proj)
        cam = cams[torch.arange(cams.shape[0], device=cams.device), labels]
        if name == "raw":
            return cam
        tokens = self._clip_tokens(images)
        self._check_grids(desc, tokens)
        affinity = cosine_map(tokens, self.text_features()[0][labels])
        if name == "calibrated_mean":
            cam = local_mean3x3(cam)
        return calibrate(cam, affinity, self.cfg.calibration, self.cfg.gamma2)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The DINO key descriptor the CAMs are computed from (refinement's affinity features)."""
        with torch.no_grad():
            return [self._descriptors(images)[0].float()]

    def param_groups(self) -> list[ParamGroup]:
        """§4.6: LOCATE's name rule, so ``aff_proj.fc1/fc2`` train at ×10/×20, but the classifier is
        not named like an "fc": ``aff_classifier`` trains at the base ×1/×2 (stated explicitly)."""
        rules = [("aff_proj.fc1", 10.0, 20.0), ("aff_proj.fc2", 10.0, 20.0), ("aff_classifier", 1.0, 2.0)]
        return groups_from_rules(self, rules)

    def provenance(self) -> dict[str, Any]:
        """run.json records where the CLIP towers came from and how the maps are calibrated."""
        return {"clip": self._clip_source, "calibration": self.cfg.calibration,
                "clip_input_stats": self.cfg.clip_input_stats}
