"""Another codebase's heatmaps, or afford's own saved for one: a folder ``<aff>/<obj>/<name>.png|.npy``
per test image (read by ``afford eval --pred``, written by ``afford eval --save-pred``).

Only file I/O and validation live here; scoring is :mod:`afford.engine.evaluator`'s, so a folder
of predictions is scored exactly like afford's own maps. Nothing is dropped silently: a missing
or unreadable prediction is an error naming its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from afford.data.transforms import DECODE_ERRORS
from afford.errors import AffordError

PRED_SUFFIXES: tuple[str, ...] = (".png", ".npy")


def check_map(m: np.ndarray | torch.Tensor, where: str) -> np.ndarray | torch.Tensor:
    """A prediction must be a finite 2-D map; a nan would silently turn into nan scores."""
    shape = tuple(m.shape)
    if len(shape) == 3 and shape[0] == 1:
        m = m[0]
    if m.ndim != 2 or min(m.shape) < 1:
        raise AffordError(f"{where}: expected a 2-D (H, W) heatmap, got shape {shape}")
    finite = torch.isfinite(m).all() if isinstance(m, torch.Tensor) else np.isfinite(m).all()
    if not finite:
        raise AffordError(f"{where}: heatmap contains nan or inf values")
    return m


def index_prediction_dir(pred_dir: Path) -> dict[str, Path]:
    """``"<aff>/<obj>/<name>"`` -> prediction file, for every .png/.npy three levels down."""
    found: dict[str, Path] = {}
    for p in sorted(pred_dir.glob("*/*/*")):
        if not (p.is_file() and p.suffix.lower() in PRED_SUFFIXES):
            continue
        key = p.relative_to(pred_dir).with_suffix("").as_posix()
        if key in found:
            raise AffordError(f"{p}: ambiguous prediction, {found[key].name} exists too (keep one)")
        found[key] = p
    return found


def load_prediction(path: Path) -> np.ndarray:
    """A greyscale .png (8-bit, or 16/32-bit at its full precision: the map is min-maxed anyway), or a
    2-D float .npy; errors name the file. A colour .png is refused: a colour-mapped picture (jet)
    does not hold the map's values, and its luminance would be scored silently."""
    if path.suffix.lower() != ".npy":
        return np.asarray(check_map(_png_map(path), str(path)))
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" not in str(e):
            raise AffordError(f"{path}: not a readable prediction ({type(e).__name__}: {e})") from None
        raise AffordError(f"{path}: not a numeric .npy array (a text file, a picture, or an object array "
                          "saved with pickling); save the map with numpy.save of a 2-D float array") from None
    except (OSError, EOFError) as e:
        raise AffordError(f"{path}: not a readable prediction ({type(e).__name__}: {e})") from None
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise AffordError(f"{path}: expected a real-valued heatmap array, got dtype {arr.dtype}")
    return np.asarray(check_map(arr.astype(np.float64), str(path)))


def _png_map(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit greyscale: every level kept
                return np.asarray(im, dtype=np.float64)
            if im.mode not in ("1", "L", "LA", "La"):
                rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
                if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any():
                    raise AffordError(f"{path}: a colour image ({im.mode}); a prediction is a greyscale map (8/16-bit "
                                      "PNG or .npy): a colour-mapped picture does not hold the map's values")
            return np.array(im.convert("L"), dtype=np.uint8)  # what load_gray reads, from this one decode
    except FileNotFoundError:
        raise AffordError(f"{path}: prediction file not found") from None
    except (*DECODE_ERRORS, EOFError) as e:
        raise AffordError(f"{path}: not a readable prediction ({type(e).__name__}: {e})") from None


def all_files(pred_dir: Path) -> list[Path]:
    return sorted(p for p in pred_dir.rglob("*") if p.is_file())


def check_save_dir(out_dir: Path, items: Sequence[Any]) -> None:
    """Refuse, before any work, a ``--save-pred`` folder that holds files (they would mix with the new
    maps) and a test set whose images share ``<aff>/<obj>/<name>`` (one file could hold only one map)."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise AffordError(f"--save-pred: {out_dir} is not empty; give a new folder (its files would mix with the maps)")
    seen: dict[str, Any] = {}
    for it in items:
        if it.gt_id in seen:
            raise AffordError(f"--save-pred: {seen[it.gt_id].image} and {it.image} would both be saved as "
                              f"{it.gt_id}.npy; rename one of them")
        seen[it.gt_id] = it


def save_prediction_dir(out_dir: Path, items: Sequence[Any], maps: Sequence[np.ndarray | torch.Tensor]) -> int:
    """Write each map, as the evaluator scored it (before the protocol's resize and normalisation), to
    ``out_dir/<aff>/<obj>/<name>.npy`` as float32, so ``afford eval --pred out_dir`` gives the same
    figures. Returns the number of files written."""
    if len(items) != len(maps):
        raise ValueError(f"save_prediction_dir: {len(maps)} maps for {len(items)} test items")
    check_save_dir(out_dir, items)
    for it, m in zip(items, maps, strict=True):
        path = out_dir / f"{it.gt_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        np.save(path, arr.astype(np.float32), allow_pickle=False)
    return len(items)
