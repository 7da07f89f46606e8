"""``Predictor``: load a run once, then ``set_image`` / ``predict`` heatmaps (the user API).

Heatmaps are returned at the input image's resolution, normalised the way the evaluation
protocol scores a prediction: the raw CAM is bilinearly resized (half-pixel, no antialias) and
min-max normalised with +1e-10 (protocol.md §3.2), so saved ``.npy`` files compare numerically.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from afford.checkpoint import LoadedRun, load_run
from afford.data.transforms import array_image, as_rgb, eval_transform, load_rgb
from afford.engine.evaluator import method_map_fn
from afford.engine.refinement import RefineFn, refined
from afford.errors import AffordError
from afford.metrics.saliency import prepare_prediction


class Predictor:
    """Affordance heatmaps for one image at a time (segment-anything style).

    ``output`` names which of the method's outputs to return (None: its default); ``refine`` is
    a refiner from :func:`afford.engine.refinement.refiner_for_run`. The maps come from the same
    map function the evaluator scores: a saved ``.npy`` equals what ``afford eval --batch-size 1``
    scored, bit for bit. Against eval's batches of 16 they differ by float32 rounding (CPU kernels
    round a batch of one otherwise): about 1e-6 in most maps, up to 7e-3 where a method thresholds
    (WSMA's refinement) or min-maxes a nearly flat map (the CLIP affinity); no printed figure moves.

    A Predictor holds one current image, so ``set_image`` then ``predict`` from two threads may
    answer for the other thread's image: give each thread its own Predictor (they may share one
    ``LoadedRun``), or hold a lock around the pair, as the web app does. ``predict`` always answers
    for one image at its size, whatever another thread sets meanwhile.
    """

    def __init__(self, run: LoadedRun | str | Path, device: str = "cpu", size: int | None = None,
                 refine: RefineFn | None = None, output: str | None = None) -> None:
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise AffordError(f"Predictor: size is the square side images are resized to, a positive integer "
                              f"(None: the run's data.test_size), got {size!r}")
        self.run = run if isinstance(run, LoadedRun) else load_run(run, device=device)
        if self.run.labels.task != "affordance":
            raise AffordError(f"{self.run.path}: a {self.run.info.get('method')} run detects human-object "
                              "interactions; use afford.hoi.predictor.HOIPredictor (or afford hoi predict)")
        self.device = next(self.run.method.parameters()).device
        self.size = size or self.run.config.data.test_size
        self.output = self.run.method.resolve_output(output)
        self._map_fn = refined(method_map_fn(self.run.method, self.device, output=self.output), refine)
        self._current: tuple[Image.Image, torch.Tensor] | None = None  # one object: replaced whole

    @property
    def affordances(self) -> tuple[str, ...]:
        """The run's affordance classes, in index order (what :meth:`predict` accepts)."""
        return self.run.classes

    @property
    def image(self) -> Image.Image:
        """The current image (RGB), as given to :meth:`set_image`."""
        return self._now()[0]

    def _now(self) -> tuple[Image.Image, torch.Tensor]:
        if self._current is None:
            raise AffordError("predict: call set_image first")
        return self._current

    def set_image(self, image: Image.Image | np.ndarray | str | Path) -> None:
        """Accept a PIL image, a path, or an ``(H, W, 3)`` array: uint8 in [0, 255] or float in [0, 1]
        (scaled by 255 and rounded). Any other dtype, or a float array outside [0, 1] or holding nan,
        is an AffordError (never a silent cast). A path is read upright: a phone photo's EXIF
        orientation is applied, so the maps lie on the image as a viewer (and the app) shows it."""
        if isinstance(image, (str, Path)):
            image = load_rgb(image, upright=True)
        elif isinstance(image, np.ndarray):
            image = array_image(image)
        elif not isinstance(image, Image.Image):
            raise AffordError(f"set_image: expected a path, a PIL image or an (H, W, 3) array, got "
                              f"{type(image).__name__} (one image per call)")
        if 0 in image.size:
            raise AffordError(f"set_image: an empty image ({image.size[0]} x {image.size[1]} pixels)")
        rgb = as_rgb(image)
        self._current = (rgb, eval_transform(rgb, size=self.size).unsqueeze(0))

    def label_index(self, affordance: str) -> int:
        """The class index of ``affordance``; an AffordError with a suggestion for an unknown name."""
        if not isinstance(affordance, str):
            raise AffordError(f"predict: an affordance is a name (one of {', '.join(self.affordances)}), "
                              f"got {type(affordance).__name__} {affordance!r}")
        return self.run.labels.index(affordance)

    def raw_cams(self, affordances: Sequence[str]) -> torch.Tensor:
        """Maps ``(A, h, w)`` at feature resolution for the current image, one per affordance."""
        return self._cams(self._now()[1], affordances)

    @torch.no_grad()
    def _cams(self, tensor: torch.Tensor, affordances: Sequence[str]) -> torch.Tensor:
        labels = torch.tensor([self.label_index(a) for a in affordances])
        return self._map_fn(tensor.expand(len(labels), -1, -1, -1), labels)

    def predict(self, affordance: str | Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{affordance: (H, W) float32 in [0, 1]}`` at the image's own resolution."""
        return dict(self.iter_maps(affordance))

    def iter_maps(self, affordance: str | Sequence[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """:meth:`predict`'s maps one at a time (one model pass for all of them): a caller that writes
        each and drops it holds one full-resolution map, not all (12 classes of a 16 MP photo at once
        in float64 took 4.9 GB)."""
        if affordance is not None and (isinstance(affordance, (bytes, bytearray))
                                       or not isinstance(affordance, (str, Sequence))):
            raise AffordError(f"predict: expected an affordance name, a list of them or None (every class), "
                              f"got {type(affordance).__name__}")
        names = list(self.affordances) if affordance is None else (
            [affordance] if isinstance(affordance, str) else list(affordance))
        if not names:
            raise AffordError("predict: no affordance asked for (None predicts every class of the run)")
        image, tensor = self._now()  # one snapshot: a concurrent set_image cannot mix two images
        cams = self._cams(tensor, names).double()
        w, h = image.size
        for i, a in enumerate(names):
            yield a, prepare_prediction(cams[i : i + 1], (h, w))[0].float().numpy()  # a constant CAM: all 0


def prediction_paths(out: str | Path, stem: str, affordance: str) -> list[Path]:
    """The ``.npy``, ``.png`` and overlay paths :func:`save_prediction` writes for one map."""
    out = Path(out)
    return [out / f"{stem}_{affordance}.npy", out / f"{stem}_{affordance}.png", out / f"{stem}_{affordance}_overlay.png"]


def save_prediction(out: str | Path, stem: str, image: Image.Image, maps: dict[str, np.ndarray]) -> list[Path]:
    """Write what ``afford predict`` writes for one image: per affordance the map as ``.npy``
    (float32), as an 8-bit ``.png`` and as an overlay on the image. Returns the paths written."""
    from afford.visualize import overlay

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for aff, m in maps.items():
        written += prediction_paths(out, stem, aff)
        np.save(written[-3], m.astype(np.float32))
        Image.fromarray((m * 255).round().astype(np.uint8)).save(written[-2])
        overlay(image, m).save(written[-1])
    return written
