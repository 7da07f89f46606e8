"""HOI detection as a task of the one training loop, and the one way to score an HOI detector.

``data.root`` is a HICO-DET-layout folder (``instances_{train,test}2015.json`` + ``images/``);
``data.split`` is the training setting: ``default`` (fully supervised) or a zero-shot split
(``rf-uc``, ``nf-uc``, ``uo``, ``uv`` or a file of unseen HOI ids, hoi.md §8). Zero-shot training
removes every pair carrying an unseen HOI from the training annotations (GEN-VLKT's rule,
:func:`afford.hoi.splits.remove_unseen`) and leaves the unseen classes out of the loss; the test
set is always complete and reported as Full / Unseen / Seen (else Full / Rare / Non-rare).
Epoch selection, when asked for, ranks by Full mAP (higher is better).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from afford.engine.tasks import Task
from afford.errors import AffordError
from afford.hoi.data import HOIImageSet, collate_hoi
from afford.hoi.detector import Instances, read_cached_detections
from afford.hoi.evaluate import evaluate_hoi
from afford.hoi.hicodet import HicoDet, load_hicodet, rare_from_counts
from afford.hoi.splits import check_same_classes, remove_unseen, report_groups, zero_shot_unseen
from afford.hoi.types import ImageDetections
from afford.labels import LabelSpace

if TYPE_CHECKING:
    from afford.config import RunConfig

SUPERVISED = "default"


def hoi_labels(data: HicoDet) -> LabelSpace:
    """The HOI label space of a HICO-DET-layout file: classes ``"verb object"``, (verb, object) pairs."""
    pairs = tuple((int(v), int(o)) for _, o, v in data.correspondence.tolist())
    return LabelSpace(task="hoi", names=data.hoi_names, verbs=data.verbs, objects=data.objects, pairs=pairs)


def unseen_classes(setting: str, data: HicoDet) -> tuple[int, ...]:
    """The unseen HOI ids of a training setting (``default``: none)."""
    return () if str(setting).lower() == SUPERVISED else zero_shot_unseen(setting, data)


def person_label(data: HicoDet) -> int:
    """The label people carry in cached detections: the index of the "person" object, else -1."""
    names = [o.replace("_", " ").lower() for o in data.objects]
    return names.index("person") if "person" in names else -1


def cached_instances(path: str | None, data: HicoDet, field: str, subset: bool = False) -> list[Instances] | None:
    """Cached detections aligned with ``data``'s images (labels = the dataset's object indices);
    ``subset``: ``data`` holds some of the file's images (zero-shot removal dropped the others)."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise AffordError(f"model.{field}: {path} not found (cached detections: JSON per image)")
    return read_cached_detections(path, data.filenames, human_label=person_label(data), subset=subset)


def image_set(data: HicoDet, cfg: RunConfig, *, train: bool) -> HOIImageSet:
    """The model's view of ``data``: CLIP size, detector resize or cached detections; in training
    flips, colour jitter and the detector's multi-scale resize (§3.4)."""
    m = cfg.model
    cached = None
    resize = None
    if m.detector == "cached":
        field = "detections_train" if train else "detections_test"
        cached = cached_instances(getattr(m, field), data, field, subset=train)
        if cached is None:
            raise AffordError(f"model.{field}: detector=cached needs a cached-detections file for the "
                              f"{'training' if train else 'test'} images")
    else:
        resize = (m.detector_short, m.detector_max)
    return HOIImageSet(data, m.image_size, flip=train, seed=cfg.train.seed, detector_resize=resize, cached=cached,
                       cache_images=cfg.data.cache_images, jitter=m.color_jitter if train else 0.0,
                       detector_scales=m.detector_train_scales if train else ())


def detect_all(model: torch.nn.Module, images: HOIImageSet, device: torch.device, batch_size: int = 8,
               progress: bool = False, bf16: bool = False, num_workers: int = 0) -> list[ImageDetections]:
    """Run ``model.detect`` over every image, in the dataset's order."""
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, collate_fn=collate_hoi, num_workers=num_workers)
    out: list[ImageDetections] = []
    was = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc="detect", unit="batch", disable=not progress):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out.extend(model.detect(batch))
    finally:
        model.train(was)
    return out


def evaluate_detector(model: torch.nn.Module, test: HicoDet, cfg: RunConfig, device: torch.device,
                      unseen: tuple[int, ...] = (), progress: bool = False, mode: str = "default",
                      bf16: bool = False) -> dict[str, Any]:
    """Detections of ``model`` on ``test``, scored by the official rule (hoi.md §7)."""
    dets = detect_all(model, image_set(test, cfg, train=False), device, cfg.eval.batch_size, progress, bf16,
                      cfg.data.num_workers)
    groups, empty = report_groups(test, unseen)
    result = evaluate_hoi(test.annotations, dets, test.hoi_object, groups=groups, mode=mode,
                          num_classes=test.num_classes)
    out = result.to_dict()
    if empty:
        out["empty_groups"] = empty
    out.update({k: v for k, v in out["mAP"].items()}, data=str(test.source), _detections=dets)
    return out


class HOITask(Task):
    """HOI detection training on a HICO-DET-layout root (module docstring)."""

    name = "hoi"
    selection_key = "full"
    lower_is_better = False
    report_keys = ("full", "n_images")

    def __init__(self, root: str | Path, setting: str = SUPERVISED) -> None:
        if not Path(root).expanduser().is_dir():
            raise AffordError(f"data.root: {root} is not a folder; HOI training needs the dataset folder holding "
                              "instances_train2015.json and instances_test2015.json (one file cannot be both)")
        train = load_hicodet(root, split="train2015")
        test = load_hicodet(root, split="test2015")
        check_same_classes(train, test, str(root))
        if not test.rare and not test.non_rare:
            rare, non_rare = rare_from_counts(train)
            test = dataclasses.replace(test, rare=rare, non_rare=non_rare)
        self.setting = str(setting)
        self.unseen = unseen_classes(setting, train)
        self.removal = None
        if self.unseen:
            train, report = remove_unseen(train, self.unseen)
            self.removal = report.message()
        self.train_data, self.test_data, self.root = train, test, Path(root)
        self.labels = hoi_labels(train)
        self.collate = partial(collate_hoi, unseen=self.unseen)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> HOITask:
        return cls(cfg.data.root, cfg.data.split)

    def train_set(self, cfg: RunConfig) -> HOIImageSet:
        return image_set(self.train_data, cfg, train=True)

    def evaluate(self, model: torch.nn.Module, cfg: RunConfig, device: torch.device, progress: bool) -> dict:
        return evaluate_detector(model, self.test_data, cfg, device, self.unseen, progress)

    def run_info(self) -> dict[str, Any]:
        return {"data_root": str(self.root), "split": self.setting, "unseen": list(self.unseen),
                "zero_shot_removal": self.removal, "train_images": len(self.train_data)}
