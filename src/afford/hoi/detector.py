"""UPT's proposal stage: a frozen DETR, its post-processing and the instance filter (hoi.md §3.1).

§3.1: DETR post-processing, per-class NMS at IoU 0.5, keep score >= 0.2, then keep humans and
objects separately, each clamped to [3, 15] instances by top score. Every instance carries its
DETR last decoder layer embedding (256-d for DETR-R50/R101) as its unary token.

Labels keep DETR's own ids (``config.id2label``, the 91-id COCO scheme of the hub checkpoints, in
which ``1`` is "person"); :class:`Instances` also carries the per-instance class names.

Cached detections (``read_cached_detections``) are one JSON object mapping an image file name to
``{"boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...]}``: 0-based pixel xyxy in the
original image size, one score and one integer label per box: the *dataset's* object index (its
``objects`` list; people carry the index of its "person" object, 0 in HICO-DET), not DETR's COCO id.
Every image has an entry; one in which the detector found nothing has empty lists (a missing image
is an error: a file for another split or a truncated one would silently score near 0). Cached
detections carry no embeddings.

A timm-free DETR: transformers' ``DetrConfig`` builds a timm backbone unless it is given a
``backbone_config`` (e.g. a ``ResNetConfig``); the hub's default revision of
``facebook/detr-resnet-50`` is such a timm config, its ``revision="no_timm"`` branch is not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from afford.backbones.registry import resolve_weights
from afford.errors import AffordError, first_line
from afford.hoi.detections import read_image_mapping
from afford.hoi.spatial import box_iou
from afford.hub import from_hub

#: DETR's ImageNet normalisation.
DETR_MEAN = (0.485, 0.456, 0.406)
DETR_STD = (0.229, 0.224, 0.225)
#: "person" in DETR's 91-id COCO scheme; the fallback when id2label has no "person".
COCO_PERSON = 1
#: §3.1 step 2-4 defaults.
FILTER_DEFAULTS: dict[str, float | int] = dict(score_thd=0.2, nms_thd=0.5, min_instances=3, max_instances=15)


# ----------------------------------------------------------------------------- instances
@dataclass
class Instances:
    """Detections of one image: boxes (N, 4) 0-based pixel xyxy in the original image size."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    is_human: Tensor
    embeddings: Tensor | None = None
    names: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, idx: Tensor) -> Instances:
        """The instances at ``idx`` (an index tensor), in that order."""
        names = tuple(self.names[int(i)] for i in idx) if self.names else ()
        emb = None if self.embeddings is None else self.embeddings[idx]
        return Instances(self.boxes[idx], self.scores[idx], self.labels[idx], self.is_human[idx], emb, names)


def empty_instances(dim: int | None = None) -> Instances:
    """No detections (an image absent from a cached file); ``dim`` gives a (0, dim) embedding."""
    emb = None if dim is None else torch.zeros(0, dim)
    return Instances(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                     torch.zeros(0, dtype=torch.bool), emb)


# ----------------------------------------------------------------------------- NMS
def _greedy(iou: Tensor, scores: Tensor, iou_thd: float) -> Tensor:
    """Greedy suppression in descending score (ties by index): drop boxes with IoU > ``iou_thd``."""
    order = torch.sort(scores, descending=True, stable=True).indices
    removed = torch.zeros(len(scores), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if removed[i]:
            continue
        keep.append(i)
        removed |= iou[i] > iou_thd
    return torch.tensor(keep, dtype=torch.long)


def nms(boxes: Tensor, scores: Tensor, iou_thd: float) -> Tensor:
    """Indices kept by NMS, highest score first (torchvision's rule, without torchvision)."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    return _greedy(box_iou(boxes, boxes), scores, iou_thd)


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thd: float) -> Tensor:
    """Per-class NMS (§3.1 step 2): boxes of different labels never suppress each other."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    same = labels[:, None] == labels[None, :]
    return _greedy(box_iou(boxes, boxes) * same, scores, iou_thd)


# ----------------------------------------------------------------------------- filter
def _clamp_group(group: Tensor, passed: Tensor, scores: Tensor, lo: int, hi: int) -> Tensor:
    """Top-score members of ``group``: at most ``hi`` that passed, topped up to ``lo`` from all."""
    pool = group[passed[group]]
    if len(pool) < lo:
        pool = group
        hi = lo
    order = torch.sort(scores[pool], descending=True, stable=True).indices
    return pool[order[:hi]]


def filter_proposals(inst: Instances, human_label: int | None = None, score_thd: float = 0.2,
                     nms_thd: float = 0.5, min_instances: int = 3, max_instances: int = 15) -> Instances:
    """§3.1 steps 2-4: per-class NMS, score threshold, humans/objects clamped to [min, max] each.

    As in UPT, the clamp keeps at most ``max_instances`` per group by score, and when fewer than
    ``min_instances`` pass the threshold it takes the top ``min_instances`` NMS survivors by score
    regardless of the threshold. The result lists humans then objects, each by descending score.
    ``human_label`` None keeps ``inst.is_human``; otherwise ``is_human = labels == human_label``.
    """
    if min_instances < 0 or max_instances < min_instances:
        raise AffordError(f"filter_proposals: expected 0 <= min_instances <= max_instances, "
                          f"got [{min_instances}, {max_instances}]")
    if human_label is not None:
        inst = Instances(inst.boxes, inst.scores, inst.labels, inst.labels == human_label,
                         inst.embeddings, inst.names)
    inst = inst.select(batched_nms(inst.boxes, inst.scores, inst.labels, nms_thd))
    passed = inst.scores >= score_thd
    idx = torch.arange(len(inst))
    keep_h = _clamp_group(idx[inst.is_human], passed, inst.scores, min_instances, max_instances)
    keep_o = _clamp_group(idx[~inst.is_human], passed, inst.scores, min_instances, max_instances)
    return inst.select(torch.cat([keep_h, keep_o]))


# ----------------------------------------------------------------------------- DETR
def tiny_detr_config() -> Any:
    """A tiny random, timm-free DETR config (ResNet backbone config) for tests."""
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                            layer_type="basic", out_features=["stage4"])
    return DetrConfig(backbone_config=backbone, d_model=32, encoder_layers=1, decoder_layers=1,
                      num_queries=20, encoder_attention_heads=2, decoder_attention_heads=2,
                      encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=91)


#: COCO's 91-id scheme (DETR's classes): ids missing from the 80 categories.
COCO91_GAPS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)


def coco91_id2label() -> dict[int, str]:
    """DETR's ``id2label`` for the 91-id COCO scheme (gaps "N/A"), names spelt with spaces."""
    from afford.hoi.hicodet import COCO80_NAMES

    ids = [i for i in range(1, 91) if i not in COCO91_GAPS]
    table = {i: "N/A" for i in range(91)}
    table.update({i: n.replace("_", " ") for i, n in zip(ids, COCO80_NAMES, strict=True)})
    return table


def detr_r50_config() -> Any:
    """DETR-R50's architecture (hoi.md §3.1: 100 queries, 6+6 layers, hidden 256), timm-free,
    randomly initialised: what a run of it is rebuilt from before its weights are loaded."""
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                            layer_type="bottleneck", out_features=["stage4"])
    table = coco91_id2label()
    return DetrConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
                      num_queries=100, d_model=256, encoder_layers=6, decoder_layers=6, num_labels=91,
                      id2label=table, label2id={v: k for k, v in table.items()})


#: architectures a DETR is built from when no weights are given (tests; rebuilding a saved run).
DETR_ARCHS = {"tiny_detr": tiny_detr_config, "detr_r50": detr_r50_config}


def _load_detr(weights: str | Path | None, revision: str | None, arch: str = "tiny_detr") -> nn.Module:
    """A ``DetrForObjectDetection``: random ``arch`` (None), a hub-layout directory or a hub name."""
    from transformers import DetrForObjectDetection

    kind, where = resolve_weights(weights)
    if kind == "random":
        if arch not in DETR_ARCHS:
            raise AffordError(f"detector: unknown architecture {arch!r}; expected one of {', '.join(DETR_ARCHS)}")
        return DetrForObjectDetection(DETR_ARCHS[arch]())
    if kind == "file":
        raise AffordError(f"weights: {where} is a file; DETR needs a hub-layout directory or a hub name")
    kwargs = {} if revision is None else {"revision": revision}
    try:
        if kind == "dir":
            return DetrForObjectDetection.from_pretrained(where, **kwargs)
        return from_hub(DetrForObjectDetection.from_pretrained, where, **kwargs)  # cache, else a reachable hub
    except ImportError as exc:
        raise AffordError(f"weights: {where!r} needs timm ({first_line(exc)}); use a timm-free revision "
                          f"(e.g. revision='no_timm') or a config with a ResNetConfig backbone") from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise AffordError(f"weights: could not load {where!r} as DetrForObjectDetection: "
                          f"{first_line(exc)}") from None


def _person_id(id2label: Mapping[int, str]) -> int:
    """The id of "person" in ``id2label``, else COCO's 1 (random configs say "LABEL_1")."""
    for k, v in id2label.items():
        if str(v).lower() == "person":
            return int(k)
    return COCO_PERSON


def cxcywh_to_xyxy(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Normalised cxcywh -> absolute xyxy in an ``(h, w)`` image, clamped to the image."""
    h, w = float(size[0]), float(size[1])
    cx, cy, bw, bh = boxes.unbind(-1)
    xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
    xyxy = xyxy * xyxy.new_tensor([w, h, w, h])
    return torch.minimum(xyxy.clamp(min=0), xyxy.new_tensor([w, h, w, h]))


class DetrDetector(nn.Module):
    """Frozen DETR giving §3.1's filtered proposals with their decoder embeddings.

    ``weights``: None (random ``arch``: ``tiny_detr`` for tests, ``detr_r50`` to rebuild a saved
    run), a hub-layout directory, or a hub name with
    ``revision`` passed through. The model stays in eval mode and without gradients (§3.1: frozen
    during UPT training), even when a parent module calls ``train()``.
    """

    def __init__(self, weights: str | Path | None = None, revision: str | None = None,
                 human_label: int | None = None, arch: str = "tiny_detr", **thresholds: float | int) -> None:
        super().__init__()
        unknown = set(thresholds) - set(FILTER_DEFAULTS)
        if unknown:
            raise AffordError(f"DetrDetector: unknown thresholds {sorted(unknown)}; expected {sorted(FILTER_DEFAULTS)}")
        self.weights = None if weights is None else str(weights)
        self.revision = revision
        self.model = _load_detr(weights, revision, arch)
        self.model.requires_grad_(False)
        self.id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        self.human_label = _person_id(self.id2label) if human_label is None else int(human_label)
        self.thresholds = {**FILTER_DEFAULTS, **thresholds}
        self.register_buffer("mean", torch.tensor(DETR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(DETR_STD).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> DetrDetector:
        """Always eval: the detector is frozen (§3.1), so dropout never runs."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.d_model)

    def _check(self, images: Tensor, sizes: Sequence[tuple[int, int]]) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise AffordError(f"images: expected (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        if len(sizes) != images.shape[0]:
            raise AffordError(f"sizes: expected one (h, w) per image ({images.shape[0]}), got {len(sizes)}")

    @torch.no_grad()
    def forward(self, images: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Instances]:
        """``images`` (B, 3, H, W) in [0, 1], each resized (not padded) from its original ``(h, w)``."""
        self._check(images, sizes)
        x = (images - self.mean) / self.std
        mask = torch.ones(x.shape[0], x.shape[2], x.shape[3], dtype=torch.long, device=x.device)
        emb = self.model.model(pixel_values=x, pixel_mask=mask).last_hidden_state
        # The heads and the post-processing run in float32 whatever the caller's autocast (the same
        # operations as DetrForObjectDetection.forward): bf16 box coordinates move in 2-8 px steps
        # (a thin box can collapse to zero width) and bf16 scores tie where NMS and the prior rank them.
        with torch.autocast(device_type=x.device.type, enabled=False):
            emb = emb.float()
            logits = self.model.class_labels_classifier(emb)
            boxes = self.model.bbox_predictor(emb).sigmoid()
            probs = logits.softmax(-1)[..., :-1]  # drop the no-object class
            scores, labels = probs.max(-1)
            return [self._proposals(boxes[b], scores[b], labels[b], emb[b], sizes[b]) for b in range(x.shape[0])]

    def _proposals(self, boxes: Tensor, scores: Tensor, labels: Tensor, emb: Tensor,
                   size: tuple[int, int]) -> Instances:
        """One image's queries -> §3.1-filtered :class:`Instances` in its original size."""
        names = tuple(self.id2label.get(int(i), str(int(i))) for i in labels)
        inst = Instances(cxcywh_to_xyxy(boxes, size), scores, labels, labels == self.human_label, emb, names)
        return filter_proposals(inst, None, **self.thresholds)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- cached
def cached_entry(path: Path, name: str, entry: Any, human_label: int) -> Instances:
    """One image's cached detections, refused in one line when malformed."""
    where = f"{path}: image {name!r}"
    if not isinstance(entry, Mapping) or not {"boxes", "scores", "labels"} <= set(entry):
        raise AffordError(f"{where}: expected {{'boxes', 'scores', 'labels'}}")
    boxes, scores, labels = entry["boxes"], entry["scores"], entry["labels"]
    if not all(isinstance(v, list) for v in (boxes, scores, labels)) or not len(boxes) == len(scores) == len(labels):
        raise AffordError(f"{where}: expected lists of equal length for boxes/scores/labels")
    if any(not isinstance(b, list) or len(b) != 4 for b in boxes):
        raise AffordError(f"{where}: expected every box as [x1, y1, x2, y2]")
    values = [v for b in boxes for v in b] + list(scores)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        raise AffordError(f"{where}: expected finite numbers in boxes and scores")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
        raise AffordError(f"{where}: expected integer labels")
    if any(b[2] < b[0] or b[3] < b[1] for b in boxes):
        raise AffordError(f"{where}: inverted box (expected x1 <= x2 and y1 <= y2)")
    lab = torch.tensor(labels, dtype=torch.long)
    box = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    return Instances(box, torch.tensor(scores, dtype=torch.float32), lab, lab == human_label)


def read_cached_detections(path: str | Path, filenames: Sequence[str], human_label: int,
                           subset: bool = False) -> list[Instances]:
    """Cached detections aligned with ``filenames`` (format in the module docstring); ``subset``:
    the file may hold other images too (``filenames`` are some of its images: a zero-shot training
    set without the removed images, a predictor's lookup)."""
    p = Path(path)
    obj = read_image_mapping(p, filenames, "cached detection", subset=subset)
    if missing := [n for n in filenames if n not in obj]:
        raise AffordError(f"{p}: no cached detections for {len(missing)} of the {len(filenames)} images (first: "
                          f"{missing[0]}); give every image an entry (empty lists where the detector found nothing)")
    out = [cached_entry(p, n, obj[n], human_label) for n in filenames]
    if filenames and not any(bool(inst.is_human.any()) for inst in out):
        logging.getLogger("afford").warning(
            "%s: no box carries the person label %d (the dataset's 'person' object index, not DETR's COCO id 1): "
            "no human-object pair can be formed", p, human_label)
    return out


# ----------------------------------------------------------------------------- record
def detector_record(det: DetrDetector | str | Path, thresholds: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Which detector a run used, for run.json (§8.3 asks to report the detector)."""
    if isinstance(det, DetrDetector):
        return {"kind": "detr", "weights": det.weights, "revision": det.revision,
                "human_label": det.human_label, "thresholds": dict(det.thresholds)}
    return {"kind": "cached", "path": str(det), "revision": None,
            "thresholds": None if thresholds is None else dict(thresholds)}


# ----------------------------------------------------------------------------- ground truth
def ground_truth_entry(gt: Any, human_label: int) -> dict[str, list]:
    """One image's annotated instances in the cached-detections format: a perfect detector.

    Distinct human boxes get ``human_label``; distinct object boxes their object index (a person
    that is the object of a pair keeps the object label). Boxes become 0-based (x1 - 1, y1 - 1).
    Score 1. The oracle-box setting every HOI baseline of afford is scored on.
    """
    from afford.hoi.targets import gt_boxes_to_detector

    boxes: list[list[float]] = []
    labels: list[int] = []
    seen: set[tuple] = set()
    rows = [(b, human_label) for b in gt_boxes_to_detector(gt.boxes_h).tolist()]
    rows += [(b, int(o)) for b, o in zip(gt_boxes_to_detector(gt.boxes_o).tolist(), gt.obj.tolist(), strict=True)]
    for box, label in rows:
        key = (*box, label)
        if key not in seen:
            seen.add(key)
            boxes.append([float(v) for v in box])
            labels.append(int(label))
    return {"boxes": boxes, "scores": [1.0] * len(boxes), "labels": labels}


def write_ground_truth_detections(path: str | Path, filenames: Sequence[str], annotations: Sequence[Any],
                                  human_label: int) -> None:
    """A cached-detections file of the annotated instances (see :func:`ground_truth_entry`)."""
    import json

    obj = {n: ground_truth_entry(g, human_label) for n, g in zip(filenames, annotations, strict=True)}
    Path(path).write_text(json.dumps(obj, separators=(",", ":")) + "\n")
