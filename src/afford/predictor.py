"""``Predictor``: load a run once, then ``set_image`` / ``predict`` heatmaps (the user API).

Heatmaps are returned at the input image's resolution, normalised the way the evaluation
protocol scores a prediction: the raw CAM is bilinearly resized (half-pixel, no antialias) and
min-max normalised with +1e-10 (protocol.md §3.2), so saved ``.npy`` files compare numerically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from afford.checkpoint import LoadedRun, load_run
from afford.data.transforms import load_rgb, test_transform
from afford.errors import AffordError, did_you_mean
from afford.metrics.saliency import minmax, resize_bilinear

RefineFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (cams (B,h,w), images) -> (B,h,w)


class Predictor:
    """Affordance heatmaps for one image at a time (segment-anything style)."""

    def __init__(self, run: LoadedRun | str | Path, device: str = "cpu", size: int | None = None,
                 refine: RefineFn | None = None) -> None:
        self.run = run if isinstance(run, LoadedRun) else load_run(run, device=device)
        self.device = torch.device(device)
        self.size = size or self.run.config.data.test_size
        self.refine = refine
        self._image: Image.Image | None = None
        self._tensor: torch.Tensor | None = None

    @property
    def affordances(self) -> tuple[str, ...]:
        return self.run.classes

    def set_image(self, image: Image.Image | np.ndarray | str | Path) -> None:
        """Accept a PIL image, an ``(H, W, 3)`` uint8 array or a path."""
        if isinstance(image, (str, Path)):
            image = load_rgb(image)
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise AffordError(f"image: expected an (H, W, 3) array, got shape {image.shape}")
            image = Image.fromarray(image.astype(np.uint8))
        self._image = image.convert("RGB")
        self._tensor = test_transform(self._image, size=self.size).unsqueeze(0)

    def label_index(self, affordance: str) -> int:
        if affordance not in self.affordances:
            raise AffordError(
                f"unknown affordance '{affordance}' for this checkpoint{did_you_mean(affordance, self.affordances)}"
            )
        return self.affordances.index(affordance)

    @torch.no_grad()
    def raw_cams(self, affordances: Sequence[str]) -> torch.Tensor:
        """Raw maps ``(A, h, w)`` for the current image, one per affordance (one batched pass)."""
        if self._tensor is None:
            raise AffordError("predict: call set_image first")
        labels = torch.tensor([self.label_index(a) for a in affordances], device=self.device)
        images = self._tensor.to(self.device).expand(len(labels), -1, -1, -1)
        cams = self.run.method.predict(images, labels).float()
        if self.refine is not None:
            cams = self.refine(cams, images)
        return cams.cpu()

    def predict(self, affordance: str | Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{affordance: (H, W) float32 in [0, 1]}`` at the image's own resolution."""
        names = list(self.affordances) if affordance is None else (
            [affordance] if isinstance(affordance, str) else list(affordance))
        cams = self.raw_cams(names).double()
        assert self._image is not None
        w, h = self._image.size
        maps = minmax(resize_bilinear(cams, (h, w)))
        return {a: maps[i].float().numpy() for i, a in enumerate(names)}
