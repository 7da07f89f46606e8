"""What each tab of the app computes, without the web framework: testable as plain functions.

Every answer goes through the library's predictors and writers (``Predictor.predict``,
``save_prediction``, ``overlay``, ``draw_hoi``), so the page shows exactly what ``afford predict``
and ``afford hoi predict`` produce for the same image. Bad input raises :class:`AffordError`
with a message meant for the page.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from afford.app.registry import Registry
from afford.data.transforms import DECODE_ERRORS, as_rgb
from afford.errors import AffordError

#: the largest image the app accepts (pixels): 4096 x 4096. A map is computed at the image's own
#: resolution, as ``afford predict`` does, so memory grows with the pixel count.
MAX_PIXELS = 4096 * 4096
#: "all" computes every class's map at the image's resolution at once: classes x pixels is capped
#: (36 classes of a 640 x 480 photo take 11 M; the float64 maps of 24 M take ~0.6 GB while computed)
ALL_CLASS_PIXELS = 24_000_000
#: the formats the page accepts (Pillow knows many more, some through external programs)
FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
ALL = "all"


def open_image(path: str | Path | None, shown_as: str | None = None, upright: bool = True) -> Image.Image:
    """The uploaded file as RGB, or an AffordError naming it (``shown_as``: the user's file name).

    ``upright``: as a browser shows it, a phone photo's EXIF orientation applied (the page draws on
    it); False for an image looked up in cached detections, whose boxes are in the stored frame."""
    if path is None or str(path) == "":
        raise AffordError("no image: upload one or pick an example")
    name = shown_as or Path(path).name
    try:
        with Image.open(path, formats=FORMATS) as im:
            w, h = im.size  # the header only: a huge image is refused before it is decoded
            if w * h > MAX_PIXELS:
                raise AffordError(f"{name}: {w} x {h} pixels ({w * h / 1e6:.1f} MP) is too large; the app takes "
                                  f"images up to {MAX_PIXELS / 1e6:.1f} MP (e.g. 4096 x 4096): resize it first")
            return as_rgb(ImageOps.exif_transpose(im) if upright else im)
    except Image.DecompressionBombError:  # PIL refuses to open images above ~179 MP at all
        raise AffordError(f"{name}: too large (over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP); the app takes images "
                          f"up to {MAX_PIXELS / 1e6:.1f} MP (e.g. 4096 x 4096): resize it first") from None
    except AffordError:
        raise
    except (*DECODE_ERRORS, EOFError, Exception):  # a malformed file can fail anywhere inside a decoder
        raise AffordError(f"{name}: not an image this app can read; upload a PNG, JPEG, BMP or WebP file") from None


@dataclass
class AffordanceAnswer:
    picture: Image.Image  # the overlay of one affordance, or the labelled grid of all
    maps: dict[str, np.ndarray]
    files: list[Path]  # what ``afford predict`` writes: .npy, .png and overlay per affordance
    stem: str  # the image's file name without its suffix, as the files are named

    @functools.cached_property
    def downloads(self) -> list[Path]:
        """What the page offers: the files of one affordance, or one zip of all of them."""
        if len(self.maps) == 1:
            return self.files
        zipped = self.files[0].parent / f"{self.stem}_all_affordances.zip"
        with zipfile.ZipFile(zipped, "w") as z:  # PNGs are compressed already; float maps barely shrink
            for f in self.files:
                z.write(f, f.name, zipfile.ZIP_STORED if f.suffix == ".png" else zipfile.ZIP_DEFLATED, 1)
        return [zipped]


def affordance_answer(reg: Registry, image_path: str | Path | None, model: str, affordance: str,
                      out_dir: str | Path | None = None) -> AffordanceAnswer:
    """One affordance's overlay (or ``"all"``: the grid of every class) and the files to download."""
    from afford.predictor import save_prediction
    from afford.visualize import overlay, save_grid

    m = _affordance_model(reg, model)
    image = open_image(image_path)
    if affordance != ALL and affordance not in m.classes:
        raise AffordError(f"affordance {affordance!r}: not a class of {model} (choose one of its "
                          f"{len(m.classes)} or 'all')")
    if affordance == ALL:
        check_class_pixels(len(m.classes), image.size, "'all'", "choose one affordance")
    with reg.lock:  # the files are written under the lock too: their folder is not pruned meanwhile
        pred = m.predictor()
        pred.set_image(image)
        maps = pred.predict(None if affordance == ALL else affordance)
        out = Path(out_dir) if out_dir is not None else reg.new_answer_dir()
        stem = download_stem(Path(image_path).stem, max(len(a) for a in maps))  # type: ignore[arg-type]
        files = save_prediction(out, stem, image, maps)
    if affordance == ALL:
        small = _thumbnail(image)
        picture = save_grid([(overlay(small, m_), a) for a, m_ in maps.items()], None, cols=6)
    else:
        picture = overlay(image, maps[affordance])
    return AffordanceAnswer(picture, maps, files, stem)


#: the longest download name, in UTF-8 bytes: Gradio cuts longer names at 200 (two files could then share
#: one name), and file systems refuse names past 255
MAX_NAME_BYTES = 200


def download_stem(stem: str, longest_affordance: int) -> str:
    """The upload's stem, cut (at a character) so that ``<stem>_<affordance>_overlay.png`` fits
    :data:`MAX_NAME_BYTES`: each download keeps its own, whole name."""
    room = MAX_NAME_BYTES - len("_") - longest_affordance - len("_overlay.png")
    return stem.encode("utf-8")[: max(room, 1)].decode("utf-8", errors="ignore") or "image"


def check_class_pixels(n_maps: int, size: tuple[int, int], what: str, instead: str) -> None:
    """Refuse ``n_maps`` maps at the image's resolution beyond :data:`ALL_CLASS_PIXELS` (memory)."""
    w, h = size
    if n_maps * w * h > ALL_CLASS_PIXELS:
        raise AffordError(f"{what} computes {n_maps} maps at {w} x {h}; that is limited to "
                          f"{ALL_CLASS_PIXELS / 1e6:.0f} M class-pixels here: {instead}, or resize the "
                          f"image to at most {int((ALL_CLASS_PIXELS / n_maps) ** 0.5)} px a side")


def _affordance_model(reg: Registry, name: str) -> Any:
    if name not in reg.affordance:
        raise AffordError(f"model {name!r}: not loaded (choose one of: {', '.join(reg.affordance) or 'none'})")
    return reg.affordance[name]


def _thumbnail(image: Image.Image, side: int = 192) -> Image.Image:
    w, h = image.size
    s = side / max(w, h)
    return image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)


def compare_answer(reg: Registry, image_path: str | Path | None, models: Sequence[str], affordance: str,
                   others: Sequence[str] = ()) -> tuple[Image.Image, str]:
    """A grid with one line per model: the chosen affordance's map, then the ``others`` (the
    object's other affordances) — a map that does not change with the label is label-blind.
    Returns the grid and a Markdown table of each model's correlation between those maps."""
    from afford.metrics.report import map_correlation
    from afford.visualize import overlay, save_grid

    if not models:
        raise AffordError("compare: choose at least one model")
    models = list(dict.fromkeys(models))  # a model chosen twice is computed and shown once
    full = open_image(image_path)
    image = _thumbnail(full)  # the maps are computed on the full image, shown small
    names = list(dict.fromkeys([affordance, *others]))  # each class once, the chosen one first
    check_class_pixels(len(names) * len(models), full.size, "compare", "choose fewer affordances or models")
    for name in models:  # every model checked before any is run
        missing = [a for a in names if a not in _affordance_model(reg, name).classes]
        if missing:
            raise AffordError(f"{name}: has no class {missing[0]!r}; compare runs trained on the same classes")
    tiles, rows = [], []
    for name in models:
        m = _affordance_model(reg, name)
        with reg.lock:
            pred = m.predictor()
            pred.set_image(full)
            maps = pred.predict(names)
        tiles += [(overlay(image, maps[a]), f"{name}: {a}"[:40]) for a in names]
        if len(names) > 1:
            if any(float(np.ptp(maps[a])) == 0.0 for a in names):  # no spatial signal: 1.000 would read label-blind
                rows.append(f"| {name} | n/a (a constant map) |")
                continue
            t = {a: torch.from_numpy(maps[a]) for a in names}
            cc = np.mean([map_correlation(t[names[0]], t[a]) for a in names[1:]])
            rows.append(f"| {name} | {cc:.3f} |")
    grid = save_grid(tiles, None, cols=len(names))
    table = ""
    if rows:
        table = ("| model | map correlation, chosen vs other affordances (1 = label-blind) |\n|---|---:|\n"
                 + "\n".join(rows))
    return grid, table


def hoi_answer(reg: Registry, image_path: str | Path | None, model: str, top: int = 5) -> tuple[Image.Image, list[list]]:
    """The image with its top triplets drawn, and their rows (verb, object, score, boxes)."""
    from afford.hoi.predictor import draw_hoi

    if model not in reg.hoi:
        raise AffordError(f"model {model!r}: not loaded (choose one of: {', '.join(reg.hoi) or 'none'})")
    from afford.hoi.predictor import NoCachedDetections

    image = open_image(image_path, upright=reg.hoi[model].detections is None)
    name = Path(image_path).name  # type: ignore[arg-type]
    with reg.lock:
        pred = reg.hoi[model].predictor()
        try:
            pred.set_image(image, name=name)
        except NoCachedDetections:  # the message names the server's file: the page says what to do
            raise AffordError(f"{name}: this run reads cached detections and has none for an image of this name; "
                              "it answers for its dataset's test images (pick an example), or use a run with a DETR "
                              "detector") from None
        rows = pred.predict(top_k=top)
    # scores as fixed 4-decimal text: a rounded float drops trailing zeros (0.002) or turns to 1e-05
    table = [[r["verb"], r["object"], f"{r['score']:.4f}", [round(x, 1) for x in r["human_box"]],
              [round(x, 1) for x in r["object_box"]]] for r in rows]
    return draw_hoi(image, rows), table
