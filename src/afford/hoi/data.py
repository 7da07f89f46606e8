"""HOI images as model inputs: one sample per image, its ground truth and (optionally) its cached detections.

Why one class for training and detection: the same image must reach CLIP, the detector and the
targets in the same frame. Boxes stay in the original image's pixel frame (the model maps them to
its inputs), so a horizontal flip is the only augmentation that moves them: it flips the image,
the ground truth (1-based inclusive: ``x -> W + 1 - x``) and the cached detections (0-based:
``x -> W - x``) together. Colour jitter and the detector's multi-scale resize (UPT's recipe,
hoi.md §3.4) move no box. Every draw is a function of (seed, epoch, index), so resume is exact.
UPT's alternative branch (resize, RandomSizeCrop(384, 600), resize) is not applied: it would cut
ground-truth pairs out of the frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset

from afford.data.transforms import load_rgb, to_tensor
from afford.errors import AffordError
from afford.hoi.detector import Instances
from afford.hoi.hicodet import HicoDet
from afford.hoi.types import ImageGT


def flip_gt(gt: ImageGT, width: int) -> ImageGT:
    """Mirror 1-based inclusive boxes: pixel column ``x`` becomes ``W + 1 - x``."""
    def mirror(b: np.ndarray) -> np.ndarray:
        out = b.copy()
        out[:, 0], out[:, 2] = width + 1 - b[:, 2], width + 1 - b[:, 0]
        return out

    return ImageGT(mirror(gt.boxes_h), mirror(gt.boxes_o), gt.hoi, gt.obj, gt.verb)


def flip_instances(inst: Instances, width: int) -> Instances:
    """Mirror 0-based continuous boxes: ``x -> W - x``."""
    b = inst.boxes.clone()
    b[:, 0], b[:, 2] = width - inst.boxes[:, 2], width - inst.boxes[:, 0]
    return Instances(b, inst.scores, inst.labels, inst.is_human, inst.embeddings, inst.names)


#: DETR's (and UPT's) training short sides: 480 to 800 in steps of 32 (long side at most 1333).
DETR_TRAIN_SCALES = tuple(range(480, 801, 32))


def color_jitter(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """torchvision's ``ColorJitter(s, s, s)``: brightness, contrast and saturation factors drawn
    uniformly from ``[max(0, 1 - s), 1 + s]``, applied in a random order (PIL's enhancers: blends
    with black, the mean grey level and the greyscale image, as torchvision's are)."""
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    factors = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=3)
    for k in rng.permutation(3):
        img = enhancers[k](img).enhance(float(factors[k]))
    return img


def detector_size(width: int, height: int, short: int, longest: int) -> tuple[int, int]:
    """(w, h) for DETR's resize, by DETR's own rule: the short side is ``short`` (lowered, rounded, so
    the long side stays within ``longest``) and the long side is truncated, ``int(short · long / short_side)``
    (640 x 480 -> 1066 x 800, where a plain rounding gave 1067)."""
    lo, hi = min(width, height), max(width, height)
    if hi / lo * short > longest:
        short = int(round(longest * lo / hi))
    if lo == short:
        return width, height
    if width < height:
        return short, max(1, int(short * height / width))
    return max(1, int(short * width / height)), short


class HOIImageSet(Dataset):
    """Images of a :class:`HicoDet` split as model inputs.

    Each sample: ``image`` ``(3, S, S)`` in [0, 1] (CLIP's square resize), ``detr`` (the detector's
    resize ``(short, longest)``, only with ``detector_resize``; the short side drawn from
    ``detector_scales`` when given), ``size`` ``(h, w)`` of the original, ``gt`` (ImageGT),
    ``instances`` (cached detections or None), ``index`` and ``filename``.
    """

    def __init__(self, data: HicoDet, image_size: int, *, flip: bool = False, seed: int = 0,
                 detector_resize: tuple[int, int] | None = None, cached: Sequence[Instances] | None = None,
                 cache_images: bool = False, jitter: float = 0.0, detector_scales: Sequence[int] = ()) -> None:
        if data.image_dir is None:
            raise AffordError(f"{data.source}: no image folder found for this split (expected images/<split>/ "
                              "beside the annotation file)")
        if cached is not None and len(cached) != len(data):
            raise AffordError(f"cached detections: {len(cached)} entries for {len(data)} images")
        self.data, self.image_size, self.flip, self.seed = data, int(image_size), flip, int(seed)
        self.detector_resize, self.cached = detector_resize, cached
        self.jitter, self.detector_scales = float(jitter), tuple(int(x) for x in detector_scales)
        self.epoch = 0
        self._images: dict[int, Image.Image] | None = {} if cache_images else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def _image(self, i: int) -> Image.Image:
        if self._images is not None and i in self._images:
            return self._images[i]
        assert self.data.image_dir is not None
        img = load_rgb(self.data.image_dir / self.data.filenames[i])
        if self._images is not None:
            self._images[i] = img
        return img

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = self._image(i)
        w, h = img.size
        gt = self.data.annotations[i]
        inst = self.cached[i] if self.cached is not None else None
        if self.flip and np.random.default_rng([self.seed, self.epoch, i, 11]).random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            gt = flip_gt(gt, w)
            inst = None if inst is None else flip_instances(inst, w)
        if self.jitter > 0:
            img = color_jitter(img, self.jitter, np.random.default_rng([self.seed, self.epoch, i, 12]))
        sample: dict[str, Any] = {
            "image": to_tensor(img.resize((self.image_size, self.image_size), Image.BICUBIC)),
            "size": (h, w), "gt": gt, "instances": inst, "index": i, "filename": self.data.filenames[i],
        }
        if self.detector_resize is not None:
            short, longest = self.detector_resize
            if self.detector_scales:
                pick = np.random.default_rng([self.seed, self.epoch, i, 13]).integers(len(self.detector_scales))
                short = self.detector_scales[int(pick)]
            sample["detr"] = to_tensor(img.resize(detector_size(w, h, short, longest), Image.BILINEAR))
        return sample


def collate_hoi(samples: list[dict[str, Any]], unseen: Sequence[int] = ()) -> dict[str, Any]:
    """Stack the CLIP images; everything of per-image size stays a list. ``unseen``: the classes a
    zero-shot training leaves out of the loss (a property of the split, carried by every batch)."""
    out: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples]), "unseen": tuple(unseen)}
    for key in ("size", "gt", "instances", "index", "filename"):
        out[key] = [s[key] for s in samples]
    if "detr" in samples[0]:
        out["detr"] = [s["detr"] for s in samples]
    return out
