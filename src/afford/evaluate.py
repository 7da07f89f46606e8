"""Scoring heatmaps on an AGD20K-format split: from a function, a folder of files, or a baseline.

Every prediction, whatever produced it, goes through :func:`afford.metrics.saliency.score`
exactly like a raw CAM (resize to 224, min-max), so the outputs of any other codebase can be
scored with the same protocol as afford's own models. Nothing is dropped silently: a missing or
unreadable prediction is an error naming its path, extra files are listed in the summary, and
the summary states the protocol, NSS mode, split and the choice made for all-zero GTs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from afford.baselines import CENTER_SIGMA_FRAC, OBJECT_SIGMA_FRAC, baseline_map, check_baseline, object_map
from afford.data.agd20k import GTCache, Split, TestItem
from afford.data.gt_cache import image_size
from afford.data.transforms import DECODE_ERRORS
from afford.errors import AffordError
from afford.metrics.report import MetricAccumulator
from afford.metrics.saliency import protocol_info, score

log = logging.getLogger(__name__)

PRED_SUFFIXES: tuple[str, ...] = (".png", ".npy")
MapFn = Callable[[TestItem], np.ndarray | torch.Tensor]


def _check_map(m: np.ndarray | torch.Tensor, where: str) -> np.ndarray | torch.Tensor:
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


def evaluate_maps(
    split: Split,
    map_fn: MapFn,
    protocol: str = "standard",
    exact: bool = False,
    progress: bool = True,
    batch_size: int = 64,
    minmax_pred: bool = True,
    exclude_empty_gt: bool = False,
    per_image: bool = True,
    gt_cache: GTCache | None = None,
) -> dict:
    """Score ``map_fn(item) -> (H, W) heatmap`` (any size) on every test image of ``split``.

    Returns the :class:`MetricAccumulator` summary plus ``split``, ``empty_gt`` ("kept", the
    literature's choice, or "excluded", protocol.md §1.5) and, with ``per_image``, the
    full-precision per-image rows.
    """
    info = protocol_info(protocol, exact, minmax_pred)
    gts = gt_cache if gt_cache is not None else GTCache(split)
    items = split.test_items()
    if not items:
        raise AffordError(f"{split.root}: no egocentric test image with a GT png to evaluate")
    excluded = [it for it in items if exclude_empty_gt and not gts[it].any()]
    if excluded:
        log.info("excluding %d all-zero GT images: %s", len(excluded), ", ".join(it.key for it in excluded))
        dropped = set(excluded)
        items = [it for it in items if it not in dropped]
    acc = MetricAccumulator(info)
    with tqdm(total=len(items), desc=f"eval {split.name}", unit="img", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            maps = [_check_map(map_fn(it), f"prediction for {it.image}") for it in chunk]
            s = score(maps, [gts[it] for it in chunk], protocol, exact, minmax_pred=minmax_pred)
            acc.add(
                s, [it.affordance for it in chunk], [it.object for it in chunk], [it.name for it in chunk]
            )
            bar.update(len(chunk))
    out = acc.summary()
    if out["n_nan_nss"]:
        log.warning("%d images have NSS = nan (constant prediction, reference NSS)", out["n_nan_nss"])
    if out["n_constant_pred"]:
        log.warning("%d images have a constant prediction", out["n_constant_pred"])
    out.update(
        split=split.name,
        data_root=str(split.root),
        test_folder=split.test_folder,
        empty_gt="excluded" if exclude_empty_gt else "kept",
        n_excluded=len(excluded),
    )
    if per_image:
        out["per_image"] = acc.per_image()
    return out


# ----------------------------------------------------------------------------- prediction folder
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
    """A .png as 8-bit grayscale, or a 2-D float .npy; errors name the file."""
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise AffordError(f"{path}: expected a real-valued heatmap array, got dtype {arr.dtype}")
            arr = arr.astype(np.float64)
        else:
            with Image.open(path) as im:
                arr = np.array(im.convert("L"), dtype=np.uint8)
    except AffordError:
        raise
    except (*DECODE_ERRORS, EOFError) as e:
        raise AffordError(f"{path}: not a readable prediction ({type(e).__name__}: {e})") from None
    return np.asarray(_check_map(arr, str(path)))


def _all_files(pred_dir: Path) -> list[Path]:
    return sorted(p for p in pred_dir.rglob("*") if p.is_file())


def evaluate_prediction_dir(pred_dir: str | Path, split: Split, **kwargs) -> dict:
    """Score a folder ``<aff>/<obj>/<name>.png|.npy`` holding one heatmap per test image.

    Every test image must have its prediction (else an error naming the expected path and how
    many are missing); files that match no test image are listed in ``extra_files``.
    ``kwargs`` go to :func:`evaluate_maps`.
    """
    pred_dir = Path(pred_dir).expanduser()
    if not pred_dir.is_dir():
        raise AffordError(f"{pred_dir}: prediction folder not found (expected <aff>/<obj>/<name>.png|.npy)")
    found = index_prediction_dir(pred_dir)
    items = split.test_items()
    keys = {f"{it.affordance}/{it.object}/{it.name}": it for it in items}
    missing = [k for k in keys if k not in found]
    if missing:
        raise AffordError(
            f"{pred_dir / missing[0]}.png: missing prediction for test image {keys[missing[0]].image} "
            f"(expected .png or .npy; {len(missing)} of {len(keys)} test images have none)"
        )
    used = {found[k] for k in keys}
    extra = [p.relative_to(pred_dir).as_posix() for p in _all_files(pred_dir) if p not in used]
    if extra:
        log.warning(
            "%s: %d files match no test image and were ignored, e.g. %s", pred_dir, len(extra), extra[0]
        )

    def map_fn(it: TestItem) -> np.ndarray:
        return load_prediction(found[f"{it.affordance}/{it.object}/{it.name}"])

    out = evaluate_maps(split, map_fn, **kwargs)
    out.update(predictions=str(pred_dir), n_extra_files=len(extra), extra_files=extra)
    return out


# ----------------------------------------------------------------------------- baselines
def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("L"), dtype=np.uint8)
    except (*DECODE_ERRORS, EOFError) as e:
        raise AffordError(f"{path}: not a readable object mask ({type(e).__name__}: {e})") from None


def evaluate_baseline(kind: str, split: Split, **kwargs) -> dict:
    """Score a method-free baseline (``uniform``, ``center``, ``object``; see afford.baselines).

    ``object`` needs SynthAGD's object masks for every test image and says so if they are absent.
    ``uniform`` is scored without min-max (a min-maxed constant map is all zeros).
    """
    check_baseline(kind)
    items = split.test_items()
    masks: dict[TestItem, Path] = {}
    if kind == "object":
        found = {it: split.object_mask(it) for it in items}
        masks = {it: p for it, p in found.items() if p is not None}
        if not masks:
            raise AffordError(
                f"{split.root}: baseline 'object' needs object masks (SynthAGD "
                f"extras/{split.root.name}/masks/<aff>/<obj>/<name>_object.png); this dataset has none"
            )
        if len(masks) < len(items):
            it = next(i for i in items if i not in masks)
            raise AffordError(
                f"{it.image}: no object mask for this test image "
                f"({len(items) - len(masks)} of {len(items)} missing)"
            )

    def map_fn(it: TestItem) -> np.ndarray:
        if kind == "object":
            return object_map(_read_mask(masks[it]))
        wh = image_size(it.image)
        if wh is None:
            raise AffordError(f"{it.image}: not a readable image")
        return baseline_map(kind, wh[1], wh[0])

    kwargs.setdefault("minmax_pred", kind != "uniform")
    out = evaluate_maps(split, map_fn, **kwargs)
    out["baseline"] = kind
    if kind != "uniform":
        out["baseline_sigma_frac"] = CENTER_SIGMA_FRAC if kind == "center" else OBJECT_SIGMA_FRAC
    return out
