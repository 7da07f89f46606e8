"""Heatmap overlays and labelled grids, with numpy + PIL only (no matplotlib dependency).

The colormap is the classic piecewise-linear "jet" (dark blue -> cyan -> yellow -> dark red),
the one WSAG papers use for their qualitative figures, so afford's pictures read the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from afford.metrics.saliency import resize_bilinear

ImageLike = Image.Image | np.ndarray


def jet(x: np.ndarray) -> np.ndarray:
    """``(...)`` values in [0, 1] -> ``(..., 3)`` float RGB in [0, 1] (clipped outside)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue ramps peak at x = 3/4, 1/2, 1/4
    return np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)


def _to_rgb(image: ImageLike) -> np.ndarray:
    """PIL image or ``(H, W)`` / ``(H, W, 3|4)`` array -> ``(H, W, 3)`` uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    a = np.asarray(image)
    if a.dtype != np.uint8:  # float images are taken to be in [0, 1]
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"image: expected (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    return a[..., :3]


def _fit_heatmap(heatmap: np.ndarray | torch.Tensor, height: int, width: int, normalize: bool) -> np.ndarray:
    """Bilinear resize of ``(h, w)`` to ``(H, W)`` (the metric's resize), optionally min-maxed."""
    t = torch.as_tensor(np.asarray(heatmap, dtype=np.float64))
    if t.dim() != 2:
        raise ValueError(f"heatmap: expected (H, W), got shape {tuple(t.shape)}")
    h = resize_bilinear(t[None], (height, width))[0].numpy()
    if normalize:
        lo, hi = h.min(), h.max()
        h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    return h


def overlay(
    image: ImageLike, heatmap: np.ndarray | torch.Tensor, alpha: float = 0.5, normalize: bool = True
) -> Image.Image:
    """``(1 - alpha) * image + alpha * jet(heatmap)`` at the image's size, as an RGB image.

    ``heatmap`` is ``(h, w)`` of any size; with ``normalize`` it is min-maxed first (a CAM's
    scale is arbitrary), otherwise it must already lie in [0, 1].
    """
    rgb = _to_rgb(image).astype(np.float64)
    heat = jet(_fit_heatmap(heatmap, rgb.shape[0], rgb.shape[1], normalize)) * 255.0
    out = (1.0 - alpha) * rgb + alpha * heat
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def save_overlay(
    image: ImageLike,
    heatmap: np.ndarray | torch.Tensor,
    path: str | Path,
    alpha: float = 0.5,
    title: str | None = None,
) -> Path:
    """Write :func:`overlay` (with an optional title strip) to ``path``; returns the path."""
    img = overlay(image, heatmap, alpha)
    if title is not None:
        img = save_grid([(img, title)], None, cols=1, pad=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, compress_level=PNG_LEVEL)
    return path


#: zlib level of overlay PNGs: 1 encodes 3.5x faster than PIL's default 6 for 26 % more bytes (a
#: 660x360 grid: 17 ms against 59 ms); the demo writes a dozen grids per row.
PNG_LEVEL = 1
TITLE_HEIGHT = 14  # PIL's default bitmap font is ~11 px tall


def save_grid(
    images_with_titles: Sequence[tuple[ImageLike, str]],
    path: str | Path | None,
    cols: int = 4,
    cell_size: tuple[int, int] | None = None,
    pad: int = 4,
) -> Image.Image:
    """Tile ``(image, title)`` pairs into a labelled grid, e.g. one row per affordance.

    Every image is resized to ``cell_size`` = (W, H) (default: the first image's size). The
    canvas is ``cols * (W + pad) + pad`` wide and ``rows * (H + TITLE_HEIGHT + pad) + pad``
    high. Saved to ``path`` when given; the grid image is returned either way.
    """
    if not images_with_titles:
        raise ValueError("save_grid: no images")
    if cols < 1:
        raise ValueError(f"save_grid: cols must be >= 1, got {cols}")
    tiles = [(Image.fromarray(_to_rgb(im)), str(t)) for im, t in images_with_titles]
    cw, ch = cell_size or tiles[0][0].size
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    canvas = Image.new("RGB", (cols * (cw + pad) + pad, rows * (ch + TITLE_HEIGHT + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (tile, title) in enumerate(tiles):
        x = pad + (i % cols) * (cw + pad)
        y = pad + (i // cols) * (ch + TITLE_HEIGHT + pad)
        draw.text((x + 1, y + 1), title, fill="black", font=font)
        canvas.paste(
            tile.resize((cw, ch), Image.BILINEAR) if tile.size != (cw, ch) else tile, (x, y + TITLE_HEIGHT)
        )
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path, compress_level=PNG_LEVEL)
    return canvas


def save_eval_overlays(
    split: object, maps: Sequence[np.ndarray | torch.Tensor], out_dir: str | Path, per_affordance: int = 4,
    cell: int = 160,
) -> list[Path]:
    """One grid per affordance: [image+prediction, image+GT] pairs for its first test images.

    ``maps`` are index-aligned with ``split.test_items()`` (as the evaluators return them).
    """
    from afford.data.agd20k import load_gt  # data sits below visualisation; imported lazily
    from afford.data.transforms import load_rgb

    items = split.test_items()  # type: ignore[attr-defined]
    if len(items) != len(maps):
        raise ValueError(f"save_eval_overlays: {len(maps)} maps for {len(items)} test items")
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.affordance, []).append(i)
    out_dir = Path(out_dir)
    written = []
    for aff, idx in sorted(groups.items()):
        tiles: list[tuple[ImageLike, str]] = []
        for i in idx[:per_affordance]:
            it = items[i]
            img = load_rgb(it.image).resize((cell, cell), Image.BILINEAR)
            tiles.append((overlay(img, maps[i]), f"{it.object} pred"))
            tiles.append((overlay(img, load_gt(it.gt).astype(np.float64)), f"{it.object} GT"))
        written.append(out_dir / f"{aff}.png")
        save_grid(tiles, written[-1], cols=4)
    return written


def comparison_figure(
    items: Sequence[object], picks: Sequence[int], columns: Sequence[tuple[str, Sequence[np.ndarray | torch.Tensor]]],
    path: str | Path, cell: int = 128,
) -> Path:
    """One line per picked test item: the image, its ground truth, then each column's map.

    ``items`` are the split's test items (``image``, ``gt``, ``affordance``, ``object``);
    ``columns`` are ``(title, maps)`` with maps index-aligned with ``items``. Maps are min-maxed
    and overlaid on the image, as the metric sees them after its min-max.
    """
    from afford.data.agd20k import load_gt  # data sits below visualisation; imported lazily
    from afford.data.transforms import load_rgb

    chars = max(4, cell // 6)  # PIL's default font is ~6 px per character

    def fit(title: str) -> str:
        return title if len(title) <= chars else title[: chars - 2] + ".."

    tiles: list[tuple[ImageLike, str]] = []
    for i in picks:
        it = items[i]
        img = load_rgb(it.image).resize((cell, cell), Image.BILINEAR)  # type: ignore[attr-defined]
        tiles.append((img, fit(f"{it.affordance} / {it.object}")))  # type: ignore[attr-defined]
        tiles.append((overlay(img, load_gt(it.gt).astype(np.float64)), "ground truth"))  # type: ignore[attr-defined]
        tiles += [(overlay(img, maps[i]), fit(title)) for title, maps in columns]
    path = Path(path)
    save_grid(tiles, path, cols=2 + len(columns))
    return path
