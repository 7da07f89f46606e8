"""CLIP4HOI (NeurIPS 2023), reconstructed: detector -> HO interactor -> HOI decoder on CLIP tokens
-> prompt classifier (hoi.md §2). The paper's code was never released.

Pipeline per image (hoi.md §2, each row **unverified**, each choice a config value below):

1. **Instances**: a frozen DETR's §3.1-filtered proposals with their decoder embeddings, or cached
   detections (``detector=cached``) whose tokens are afford's: the mean CLIP token inside the box
   plus a learned object-label embedding (``instance_tokens=clip_box``).
2. **HO interactor** (UPT §3.2): every ordered (human, instance) pair -> one pair token.
3. **HOI decoder**: pair tokens cross-attend to the frozen CLIP image tokens (CLS + patches),
   optionally masked to the pair's union box, ending in CLIP's joint space.
4. **Classifier**: ``exp(logit_scale) * cos(pair, text_c)`` for every HOI class c, whose text
   feature comes from THID's learnable prompt ``[PREFIX] verb [CONJUN] object`` through the frozen
   CLIP text tower (§4); plus, with ``global_score``, the same for CLIP's global image embedding.
5. **Scores**: ``sigmoid(logit) * (s_h * s_o)^p`` for the classes of the object's label, p = 1 in
   training (UPT's focal loss on the combined logit) and 2.8 at test (§3.3).

Zero-shot training (hoi.md §8): the task removes every pair carrying an unseen HOI from the
training annotations and the model drops the unseen columns from the loss (prior 0), so unseen
classes are neither positives nor negatives; their prompts still exist and are scored at test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from afford.backbones import create_backbone, create_text_encoder
from afford.device import compute_context
from afford.errors import AffordError
from afford.global_batch import per_process_denominator
from afford.hoi.data import DETR_TRAIN_SCALES
from afford.hoi.decoder import PairDecoder, union_mask
from afford.hoi.detector import DetrDetector, Instances, detector_record, filter_proposals
from afford.hoi.interactor import HOInteractor
from afford.hoi.prompts import HOIPromptLearner
from afford.hoi.scoring import TEST_EXPONENT, TRAIN_EXPONENT, interaction_loss, prior_scores
from afford.hoi.targets import pair_targets
from afford.hoi.types import ImageDetections
from afford.labels import LabelSpace
from afford.methods.base import InteractionDetector, ParamGroup

DETECTORS = ("detr_r50", "tiny_detr", "cached")
INSTANCE_TOKENS = ("detector", "clip_box")

#: The reconstruction's open choices (hoi.md §2, §13), recorded in every run.
UNVERIFIED = {
    "decoder_layers": "number of HOI decoder layers",
    "union_mask": "whether the decoder's cross-attention is masked to the pair's union box",
    "global_score": "global/pairwise fusion: pair logit + global logit (same text features, same scale)",
    "n_prefix/n_conjun": "prompt lengths (THID's 8 / 2)",
    "prior_exponent_train/test": "detector prior exponents (UPT's 1 / 2.8)",
    "focal_alpha/gamma": "loss: UPT's focal loss on the combined logit (0.5 / 0.2)",
    "recipe": "optimizer, LR and epochs (UPT's AdamW 1e-4, 20 epochs, drop at 10)",
    "clip": "CLIP variant (ViT-B/16 assumed)",
    "instance_tokens": "instance tokens: DETR decoder embeddings (UPT); clip_box is afford's for cached boxes",
}


#: The HO interactor's weight layout, recorded in run.json: runs of another layout are refused by name.
INTERACTOR_LAYOUT = "upt-2026-12"


@dataclass
class CLIP4HOIConfig:
    """Defaults: the HICO-DET reconstruction (hoi.md §2-§4); every value is recorded in run.json."""

    # frozen CLIP (both towers from clip_weights: a hub name, a directory, or a synth_clip run)
    clip: str = "clip_vitb16"
    clip_weights: str | None = "openai/clip-vit-base-patch16"
    clip_clearclip: bool = False
    clip_input_stats: str = "own"
    tokenizer: str | None = None
    image_size: int = 224
    # detector (§3.1)
    detector: str = "detr_r50"
    detector_weights: str | None = "facebook/detr-resnet-50"
    detector_revision: str | None = "no_timm"
    detector_short: int = 800  # test resize (§3.4: 800, max 1333)
    detector_max: int = 1333
    # training augmentation (§3.4), besides the horizontal flip: UPT's ColorJitter(0.4, 0.4, 0.4)
    # (0 = off) and DETR's multi-scale resize, a short side drawn per image (() = detector_short)
    color_jitter: float = 0.4
    detector_train_scales: tuple[int, ...] = DETR_TRAIN_SCALES
    detections_train: str | None = None  # cached detections (detector=cached): JSON per image
    detections_test: str | None = None
    score_thd: float = 0.2
    nms_thd: float = 0.5
    min_instances: int = 3
    max_instances: int = 15
    # HO interactor (§3.2)
    instance_tokens: str = "detector"
    embed_dim: int = 256
    spatial_dim: int = 512
    pair_dim: int = 1024
    cooperative_layers: int = 2
    heads: int = 8
    branches: int = 16
    competitive_layers: int = 1
    dropout: float = 0.1
    # HOI decoder and classifier (§2, §4; unverified)
    decoder_dim: int = 512
    decoder_layers: int = 2
    decoder_heads: int = 8
    union_mask: bool = True
    n_prefix: int = 8
    n_conjun: int = 2
    prompt_init_std: float = 0.01
    global_score: bool = True
    # scores and loss (§3.3)
    prior_exponent_train: float = TRAIN_EXPONENT
    prior_exponent_test: float = TEST_EXPONENT
    focal_alpha: float = 0.5
    focal_gamma: float = 0.2


def _norm_name(s: str) -> str:
    return s.replace("_", " ").strip().lower()


def box_pool(tokens: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``(E, h, w)`` tokens, ``(N, 4)`` pixel boxes of an ``(H, W)`` image -> ``(N, E)``: mean of the
    tokens whose patch centre lies in the box; a box holding no centre takes the patch under its centre."""
    e, gh, gw = tokens.shape
    hh, ww = float(size[0]), float(size[1])
    cx = (torch.arange(gw, device=tokens.device, dtype=tokens.dtype) + 0.5) * (ww / gw)
    cy = (torch.arange(gh, device=tokens.device, dtype=tokens.dtype) + 0.5) * (hh / gh)
    b = boxes.to(tokens.dtype)
    in_x = (cx >= b[:, 0:1]) & (cx < b[:, 2:3])
    in_y = (cy >= b[:, 1:2]) & (cy < b[:, 3:4])
    inside = (in_y[:, :, None] & in_x[:, None, :]).flatten(1).to(tokens.dtype)  # (N, h*w)
    empty = inside.sum(1) == 0
    if bool(empty.any()):
        col = (((b[:, 0] + b[:, 2]) / 2) * gw / ww).long().clamp(0, gw - 1)
        row = (((b[:, 1] + b[:, 3]) / 2) * gh / hh).long().clamp(0, gh - 1)
        centre = F.one_hot(row * gw + col, gh * gw).to(tokens.dtype)
        inside = torch.where(empty[:, None], centre, inside)
    return (inside @ tokens.flatten(1).T) / inside.sum(1, keepdim=True)


class CLIP4HOI(InteractionDetector):
    """The reconstructed CLIP4HOI (module docstring). Built as ``CLIP4HOI(cfg, labels)`` with an
    HOI :class:`LabelSpace` (classes = (verb, object) pairs, e.g. HICO-DET's 600)."""

    name = "clip4hoi"

    def __init__(self, cfg: CLIP4HOIConfig, labels: LabelSpace | Sequence[str]) -> None:
        super().__init__(labels)
        self._check_config(cfg)
        self.cfg = cfg
        objects = self.labels.objects
        self._build_clip(cfg)
        e = self.clip.token_dim
        self.detector: DetrDetector | None = None
        person = next((i for i, o in enumerate(objects) if _norm_name(o) == "person"), -1)
        #: the label people carry in cached detections: the dataset's "person" object, else -1
        self.cached_human_label = person
        if cfg.detector != "cached":
            self.detector = DetrDetector(cfg.detector_weights, cfg.detector_revision, arch=cfg.detector,
                                         score_thd=cfg.score_thd, nms_thd=cfg.nms_thd,
                                         min_instances=cfg.min_instances, max_instances=cfg.max_instances)
            if cfg.instance_tokens == "detector" and self.detector.embed_dim != cfg.embed_dim:
                raise AffordError(f"model.embed_dim: {cfg.embed_dim}, but the detector's decoder embeddings are "
                                  f"{self.detector.embed_dim}-d")
            by_name = {_norm_name(o): i for i, o in enumerate(objects)}
            n_ids = 1 + max(self.detector.id2label)
            table = torch.full((n_ids,), -1, dtype=torch.long)
            for k, v in self.detector.id2label.items():
                table[k] = by_name.get(_norm_name(v), -1)
            self.register_buffer("label_to_object", table)  # detector id -> dataset object (-1: none)
            # Saved with the run: a run is rebuilt from a random architecture whose id2label is generic.
            self.register_buffer("detector_human", torch.tensor(self.detector.human_label))
            self.register_load_state_dict_post_hook(self._detector_loaded)
        n_obj = len(objects)
        if cfg.instance_tokens == "clip_box":
            self.box_proj = nn.Linear(e, cfg.embed_dim)
            self.label_embed = nn.Embedding(n_obj + 2, cfg.embed_dim)  # objects, person-not-an-object, unknown
        self.interactor = HOInteractor(cfg.embed_dim, cfg.spatial_dim, cfg.pair_dim, cfg.cooperative_layers,
                                       cfg.heads, cfg.branches, cfg.competitive_layers, global_dim=e,
                                       dropout=cfg.dropout)
        self.pair_proj = nn.Linear(cfg.pair_dim, cfg.decoder_dim)
        self.decoder = PairDecoder(cfg.decoder_dim, cfg.decoder_layers, cfg.decoder_heads, clip_dim=e)
        self.prompts = HOIPromptLearner(self.text_encoder, self.labels.verbs, objects,
                                        [(v, o) for v, o in self.labels.pairs], cfg.n_prefix, cfg.n_conjun,
                                        cfg.prompt_init_std)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.zeros(()))
        hoi_object = torch.tensor([o for _, o in self.labels.pairs], dtype=torch.long)
        valid = hoi_object[None, :] == torch.arange(n_obj + 1)[:, None]  # last row: no dataset object
        self.register_buffer("valid", valid, persistent=False)
        self._text_cache: tuple[tuple, Tensor] | None = None

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def _check_config(cfg: CLIP4HOIConfig) -> None:
        if cfg.detector not in DETECTORS:
            raise AffordError(f"model.detector: expected one of {', '.join(DETECTORS)}, got {cfg.detector!r}")
        if cfg.instance_tokens not in INSTANCE_TOKENS:
            raise AffordError(f"model.instance_tokens: expected one of {', '.join(INSTANCE_TOKENS)}, "
                              f"got {cfg.instance_tokens!r}")
        if not 0.0 <= cfg.color_jitter <= 1.0:
            raise AffordError(f"model.color_jitter: expected a strength in [0, 1] (UPT: 0.4), got {cfg.color_jitter}")
        if any(s < 1 for s in cfg.detector_train_scales):
            raise AffordError(f"model.detector_train_scales: expected positive short sides, "
                              f"got {list(cfg.detector_train_scales)}")
        if cfg.detector == "cached" and cfg.instance_tokens != "clip_box":
            raise AffordError("model.instance_tokens: cached detections carry no detector embeddings; "
                              "use instance_tokens=clip_box with detector=cached")

    def _build_clip(self, cfg: CLIP4HOIConfig) -> None:
        from afford.methods.synth_clip import is_run_dir, load_clip_towers

        from_run = is_run_dir(cfg.clip_weights)
        weights = None if from_run else cfg.clip_weights
        self.clip = create_backbone(cfg.clip, weights=weights, clearclip=cfg.clip_clearclip,
                                    input_stats=cfg.clip_input_stats)
        self.text_encoder = create_text_encoder(cfg.clip, weights=weights, tokenizer=cfg.tokenizer)
        self._clip_source: dict[str, Any] = {"kind": "weights", "where": cfg.clip_weights or "random init"}
        if from_run:
            self._clip_source = load_clip_towers(self.clip, self.text_encoder, str(cfg.clip_weights), cfg.clip)
        self.text_encoder.requires_grad_(False)
        if self.clip.token_dim != self.text_encoder.embed_dim:
            raise AffordError(f"model.clip: {cfg.clip}'s image ({self.clip.token_dim}) and text "
                              f"({self.text_encoder.embed_dim}) embeddings differ")

    @staticmethod
    def _detector_loaded(module: nn.Module, incompatible: Any) -> None:
        if module.detector is not None:
            module.detector.human_label = int(module.detector_human)

    def provenance(self) -> dict[str, Any]:
        det = self.detector if self.detector is not None else (self.cfg.detections_train or "cached")
        return {"model": "clip4hoi (reconstruction of CLIP4HOI, NeurIPS 2023; no code was released)",
                "interactor": INTERACTOR_LAYOUT,
                "unverified": dict(UNVERIFIED), "detector": detector_record(det, None if self.detector else
                                                                            {"score_thd": self.cfg.score_thd}),
                "clip_source": self._clip_source}

    def check_record(self, info: dict[str, Any], source: Any) -> None:
        if info.get("interactor") != INTERACTOR_LAYOUT:
            raise AffordError(f"{source}: this CLIP4HOI run was trained with an earlier afford whose HO interactor "
                              f"had another layout (before {INTERACTOR_LAYOUT!r}); its weights do not fit this "
                              "version: train it again (afford hoi train)")

    def param_groups(self) -> list[ParamGroup]:
        """One group at the base rate: the towers and the detector are frozen (§2)."""
        return [ParamGroup("clip4hoi heads + prompts", [p for p in self.parameters() if p.requires_grad], 1.0)]

    # -- forward -----------------------------------------------------------------------------
    def _object_index(self, inst: Instances) -> Tensor:
        """Dataset object index of each instance (``n_objects``: none, e.g. a person in SynthHOI)."""
        n_obj = len(self.labels.objects)
        if self.detector is not None:
            lab = inst.labels.clamp(0, len(self.label_to_object) - 1)
            obj = self.label_to_object[lab]
        else:
            obj = inst.labels.clone()
        return torch.where((obj >= 0) & (obj < n_obj), obj, torch.full_like(obj, n_obj))

    def _instances(self, batch: dict[str, Any], tokens: Tensor) -> list[Instances]:
        dev = tokens.device
        if self.detector is not None:
            if "detr" not in batch:
                raise AffordError("clip4hoi: the batch has no detector images (build the data with the model's "
                                  "detector resize)")
            found = [self.detector(x[None].to(dev), [tuple(s)])[0] for x, s in zip(batch["detr"], batch["size"],
                                                                                      strict=True)]
        else:
            if any(i is None for i in batch["instances"]):
                raise AffordError("clip4hoi: detector=cached but an image has no cached detections entry "
                                  "(model.detections_train / detections_test)")
            c = self.cfg  # §3.1's filter applies to cached detections too (raw detector outputs)
            found = [filter_proposals(i, None, c.score_thd, c.nms_thd, c.min_instances, c.max_instances)
                     for i in batch["instances"]]
        out = []
        for k, inst in enumerate(found):
            inst = Instances(inst.boxes.to(dev).float(), inst.scores.to(dev).float(), inst.labels.to(dev),
                             inst.is_human.to(dev), None if inst.embeddings is None else inst.embeddings.to(dev),
                             inst.names)
            if self.cfg.instance_tokens == "clip_box":
                obj = self._object_index(inst)
                n_obj = len(self.labels.objects)
                label = torch.where(obj < n_obj, obj, torch.where(inst.is_human, n_obj, n_obj + 1))
                pooled = box_pool(tokens[k], inst.boxes, batch["size"][k])
                emb = self.box_proj(pooled) + self.label_embed(label)
                inst = Instances(inst.boxes, inst.scores, inst.labels, inst.is_human, emb, inst.names)
            out.append(inst)
        return out

    def text_features(self) -> Tensor:
        """``(C, E)`` L2-normalised prompt features; outside training computed once per state of
        the prompts (keyed by their versions, which every optimizer step and load bumps)."""
        if self.training:
            return F.normalize(self.prompts(), dim=-1)
        p = self.prompts
        key = (compute_context(p.prefix.device), p.prefix.dtype, p.prefix._version, p.conjun._version,
               p.token_ids._version)
        if self._text_cache is None or self._text_cache[0] != key:
            with torch.no_grad():
                self._text_cache = (key, F.normalize(self.prompts(), dim=-1))
        return self._text_cache[1]

    def _forward(self, batch: dict[str, Any], exponent: float) -> list[tuple[Instances, Tensor, Tensor, Tensor]]:
        """Per image ``(instances, pairs (P, 2), logits (P, C), prior (P, C))``."""
        images = batch["image"]
        feats = self.clip(images)
        tokens, glob = feats.tokens[-1].float(), feats.cls_token.float()
        instances = self._instances(batch, tokens)
        sizes = [tuple(s) for s in batch["size"]]
        pair_out = self.interactor(instances, sizes, glob)
        b = len(instances)
        n_max = max((len(p) for p, _ in pair_out), default=0)
        c = len(self.labels)
        if n_max == 0:
            z = tokens.new_zeros(0, c)
            return [(inst, p, z, z) for inst, (p, _) in zip(instances, pair_out, strict=True)]
        x = tokens.new_zeros(b, n_max, self.cfg.pair_dim)
        valid = torch.zeros(b, n_max, dtype=torch.bool, device=tokens.device)
        bh = tokens.new_zeros(b, n_max, 4)
        bo = tokens.new_zeros(b, n_max, 4)
        for k, ((pairs, tok), inst) in enumerate(zip(pair_out, instances, strict=True)):
            n = len(pairs)
            if n == 0:
                continue
            h, w = sizes[k]
            scale = tokens.new_tensor([w, h, w, h])
            x[k, :n], valid[k, :n] = tok, True
            bh[k, :n] = inst.boxes[pairs[:, 0]] / scale
            bo[k, :n] = inst.boxes[pairs[:, 1]] / scale
        grid = tuple(tokens.shape[-2:])
        union = union_mask(bh, bo, grid, (1.0, 1.0)) if self.cfg.union_mask else None
        memory = torch.cat([glob[:, None], tokens.flatten(2).transpose(1, 2)], dim=1)
        dec = self.decoder(self.pair_proj(x), memory, union, has_cls=True, pair_valid=valid)
        text = self.text_features().float()
        # cosine logits in float32 under any autocast: bf16 rounding ties the ranked scores
        with torch.autocast(device_type=dec.device.type, enabled=False):
            scale = self.logit_scale.float().exp().clamp(max=100)
            logits = scale * F.normalize(dec.float(), dim=-1) @ text.T + self.logit_bias.float()
            if self.cfg.global_score:
                logits = logits + (scale * F.normalize(glob.float(), dim=-1) @ text.T)[:, None, :]
        out = []
        for k, ((pairs, _), inst) in enumerate(zip(pair_out, instances, strict=True)):
            n = len(pairs)
            obj = self._object_index(inst)[pairs[:, 1]] if n else pairs.new_zeros(0)
            prior = prior_scores(inst.scores[pairs[:, 0]], inst.scores[pairs[:, 1]], obj, self.valid, exponent) \
                if n else logits.new_zeros(0, c)
            out.append((inst, pairs, logits[k, :n], prior))
        return out

    def forward_train(self, batch: dict[str, Any], epoch: int) -> dict[str, Tensor]:
        logits, priors, targets = [], [], []
        seen = torch.ones(len(self.labels), device=batch["image"].device)
        seen[list(batch.get("unseen", ()))] = 0.0
        for (inst, pairs, logit, prior), gt in zip(self._forward(batch, self.cfg.prior_exponent_train),
                                                  batch["gt"], strict=True):
            if len(pairs) == 0:
                continue
            y = pair_targets(inst.boxes[pairs[:, 0]], inst.boxes[pairs[:, 1]], gt, len(self.labels), "hoi")
            logits.append(logit)
            priors.append(prior * seen)  # unseen classes: neither positive nor negative
            targets.append(y)
        if not logits:  # no pair in the whole batch: a zero loss that still has a graph
            per_process_denominator(0.0, floor=1.0)  # data-parallel: the other processes count positives
            zero = self.logit_bias * 0.0
            return {"loss": zero, "focal": zero.detach(), "positives": zero.detach()}
        y = torch.cat(targets)
        loss = interaction_loss(torch.cat(logits), torch.cat(priors), y, self.cfg.focal_alpha, self.cfg.focal_gamma)
        return {"loss": loss, "focal": loss.detach(), "positives": y.sum().detach() / len(logits)}

    @torch.no_grad()
    def detect(self, batch: dict[str, Any]) -> list[ImageDetections]:
        """Scored HOI detections per image, boxes 0-based in the original frame; classes whose
        object differs from the pair's object label are not scored (prior 0)."""
        out = []
        for inst, pairs, logit, prior in self._forward(batch, self.cfg.prior_exponent_test):
            scores = torch.sigmoid(logit) * prior
            p_idx, c_idx = torch.nonzero(prior > 0, as_tuple=True)
            boxes = inst.boxes.double().cpu()
            h, o = pairs[p_idx, 0].cpu(), pairs[p_idx, 1].cpu()
            out.append(ImageDetections(c_idx.cpu().numpy().astype("int64"), boxes[h].numpy(), boxes[o].numpy(),
                                       scores[p_idx, c_idx].double().cpu().numpy()))
        return out
