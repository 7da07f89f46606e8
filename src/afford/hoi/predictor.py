"""HOI predictions for single images: ``HOIPredictor`` (``set_image`` / ``predict``) and the picture.

The predictor goes through the model's own ``detect`` on a one-image batch built exactly as the
test set's (:class:`afford.hoi.data.HOIImageSet`), so there is no second inference path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from afford.checkpoint import LoadedRun, load_run
from afford.data.transforms import array_image, as_rgb, load_rgb, to_tensor
from afford.errors import AffordError
from afford.hoi.data import detector_size
from afford.hoi.detections import read_image_mapping
from afford.hoi.detector import Instances, cached_entry
from afford.hoi.hicodet import split_image_dir


class NoCachedDetections(AffordError):
    """The image's name is not in the run's cached-detections file."""


class HOIPredictor:
    """Top HOI triplets of an image from a trained ``clip4hoi`` run.

    ``detections``: a cached-detections file (JSON per image file name) for runs whose detector
    is ``cached`` (default: the run's own test detections, ``model.detections_test``, as ``hoi eval``
    and the app use); images are looked up by file name.
    """

    def __init__(self, run: LoadedRun | str | Path, device: str = "cpu", detections: str | Path | None = None) -> None:
        self.run = run if isinstance(run, LoadedRun) else load_run(run, device=device)
        if self.run.labels.task != "hoi":
            raise AffordError(f"{self.run.path}: a {self.run.info['method']} run grounds affordances; "
                              "HOI prediction needs an HOI run (e.g. clip4hoi)")
        self.model = self.run.method
        self.cfg = self.run.config.model
        self.device = torch.device(device)
        own = getattr(self.cfg, "detections_test", None)
        self.detections = Path(detections) if detections is not None else (Path(own) if own else None)
        if self.cfg.detector == "cached" and (self.detections is None or not self.detections.is_file()):
            tried = f" (its own test detections {str(self.detections)!r} are not here)" if self.detections else ""
            raise AffordError(f"{self.run.path}: this run reads cached detections (model.detector=cached){tried}; "
                              "pass the detections of your images (--detections FILE)")
        self._cached: dict | None = None
        self._image: Image.Image | None = None
        self._batch: dict[str, Any] | None = None

    @property
    def image(self) -> Image.Image:
        """The current image (RGB), as given to :meth:`set_image`."""
        if self._image is None:
            raise AffordError("predict: call set_image first")
        return self._image

    @property
    def test_image_dir(self) -> Path | None:
        """Where the run's dataset keeps the test images its cached detections name (None: not here)."""
        return split_image_dir(self.run.config.data.root)

    def _check_frame(self, name: str, img: Image.Image, instances: Instances) -> None:
        """Cached boxes are in the pixel frame of the dataset's own image of that name: a rescaled
        copy, or another picture under that name, would get them drawn and scored out of place."""
        w, h = img.size
        folder = self.test_image_dir
        if folder is not None and (folder / name).is_file():
            with Image.open(folder / name) as im:
                if im.size != img.size:
                    raise AffordError(f"{name}: {w} x {h}, but the dataset's image of this name is {im.size[0]} x "
                                      f"{im.size[1]}: this run's cached detections are for that image (use a run "
                                      "with a DETR detector for other images)")
        if len(instances) and (float(instances.boxes[:, 2].max()) > w + 1 or float(instances.boxes[:, 3].max()) > h + 1):
            raise AffordError(f"{self.detections}: the cached detections of {name!r} do not fit a {w} x {h} image "
                              "(boxes reach beyond it): this run answers for its dataset's images as they are (or "
                              "use a run with a DETR detector)")

    def set_image(self, image: str | Path | Image.Image | np.ndarray, name: str | None = None,
                  instances: Instances | None = None) -> None:
        """Prepare one image; ``name`` looks it up in the detections file (default: the file name).

        A path is read upright (its EXIF orientation applied, as a viewer shows it) when DETR
        detects on it; with cached detections it is read as stored, the frame their boxes are in,
        and must be that image's size. ``instances`` gives the detections yourself
        (:class:`afford.hoi.detector.Instances`, boxes 0-based pixel xyxy in this image)."""
        if instances is not None and not isinstance(instances, Instances):
            raise AffordError(f"set_image: instances must be an afford.hoi.detector.Instances (boxes, scores, "
                              f"labels, is_human), got {type(instances).__name__}")
        if isinstance(image, (str, Path)):
            name = name or Path(image).name
            img = load_rgb(image, upright=self.cfg.detector != "cached")
        elif isinstance(image, np.ndarray):
            img = array_image(image)  # the affordance Predictor's rule: uint8, or float in [0, 1]
        elif isinstance(image, Image.Image):
            img = as_rgb(image)
        else:
            raise AffordError(f"set_image: expected a path, a PIL image or an (H, W, 3) array, got {type(image).__name__}")
        w, h = img.size
        if instances is None and self.cfg.detector == "cached":
            if name is None:
                raise AffordError("set_image: cached detections are looked up by file name; pass name=")
            assert self.detections is not None
            if self._cached is None:  # read once: a detections file covers many images
                self._cached = read_image_mapping(self.detections, [], "cached detection", subset=True)
            if name not in self._cached:
                raise NoCachedDetections(f"{self.detections}: no cached detections for image {name!r}")
            instances = cached_entry(self.detections, name, self._cached[name], self.model.cached_human_label)
            if not bool(instances.is_human.any()):
                logging.getLogger("afford").warning(
                    "%s: image %r: no box carries the person label %d (the dataset's 'person' object index, not "
                    "DETR's COCO id 1), so no pair can be formed", self.detections, name, self.model.cached_human_label)
            self._check_frame(name, img, instances)
        s = self.cfg.image_size
        batch: dict[str, Any] = {"image": to_tensor(img.resize((s, s), Image.BICUBIC))[None].to(self.device),
                                 "size": [(h, w)], "gt": [None], "instances": [instances], "unseen": ()}
        if self.cfg.detector != "cached":
            batch["detr"] = [to_tensor(img.resize(detector_size(w, h, self.cfg.detector_short,
                                                                self.cfg.detector_max), Image.BILINEAR))]
        self._image, self._batch = img, batch

    def predict(self, top_k: int = 10) -> list[dict[str, Any]]:
        """The ``top_k`` highest-scoring (human, verb, object) triplets, best first: dicts of ``hoi``
        (class index), ``name``, ``verb``, ``object``, ``score`` and ``human_box`` / ``object_box`` as
        ``[x1, y1, x2, y2]`` in 0-based pixels of the image given to :meth:`set_image`."""
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise AffordError(f"predict: top_k is how many triplets to return, an integer >= 0, got {top_k!r}")
        if self._batch is None:
            raise AffordError("predict: call set_image first")
        det = self.model.detect(self._batch)[0]
        order = np.argsort(-det.scores, kind="stable")[: int(top_k)]
        labels = self.run.labels
        rows = []
        for i in order:
            c = int(det.hoi[i])
            v, o = labels.pairs[c]
            rows.append({"hoi": c, "name": labels.names[c], "verb": labels.verbs[v], "object": labels.objects[o],
                         "score": float(det.scores[i]), "human_box": [float(x) for x in det.boxes_h[i]],
                         "object_box": [float(x) for x in det.boxes_o[i]]})
        return rows


def draw_hoi(image: Image.Image, rows: list[dict[str, Any]]) -> Image.Image:
    """The image with each triplet's human box (blue), object box (red), a line between their
    centres and ``verb object score`` written at the line's middle; the labels of one pair are
    stacked, and kept inside the image."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    stacked: dict[tuple[float, float], int] = {}
    for r in rows:
        hb, ob = r["human_box"], r["object_box"]
        draw.rectangle(hb, outline=(40, 110, 255), width=2)
        draw.rectangle(ob, outline=(235, 50, 50), width=2)
        hc = ((hb[0] + hb[2]) / 2, (hb[1] + hb[3]) / 2)
        oc = ((ob[0] + ob[2]) / 2, (ob[1] + ob[3]) / 2)
        draw.line([hc, oc], fill=(255, 220, 0), width=2)
        mid = ((hc[0] + oc[0]) / 2, (hc[1] + oc[1]) / 2)
        text = f"{r['verb'].replace('_', ' ')} {r['object'].replace('_', ' ')} {r['score']:.2f}"
        k = stacked[mid] = stacked.get(mid, -1) + 1
        x0, y0, x1, y1 = draw.textbbox((0, 0), text)
        at = (min(max(mid[0], 0), max(out.width - (x1 - x0), 0)),
              min(max(mid[1] + k * (y1 - y0 + 2), 0), max(out.height - (y1 - y0), 0)))
        box = draw.textbbox(at, text)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text(at, text, fill=(255, 255, 255))
    return out
