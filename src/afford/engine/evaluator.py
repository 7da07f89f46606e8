"""The one evaluator: every heatmap, whatever produced it, is scored here the same way.

Sources: a model (any batched :data:`MapFn`), a folder of another codebase's predictions, or a
method-free baseline. All go through :func:`evaluate_maps` -> :func:`afford.metrics.saliency.score`
exactly like a raw CAM (resize to 224, min-max), and every summary states the protocol, NSS
mode, split, which model output was scored and the choice made for all-zero GTs.
:func:`label_sensitivity` asks the same ``MapFn`` about each image's *other* affordances.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from afford.baselines import CENTER_SIGMA_FRAC, OBJECT_SIGMA_FRAC, baseline_map, check_baseline, object_map
from afford.config import EvalConfig
from afford.data.agd20k import AffordanceTestSet, GTCache, Split, TestItem
from afford.data.gt_cache import image_size
from afford.data.predictions import all_files, check_map, index_prediction_dir, load_prediction
from afford.data.transforms import load_gray
from afford.errors import AffordError
from afford.methods.base import Grounder
from afford.metrics.report import MetricAccumulator, map_correlation, mean_of
from afford.metrics.saliency import protocol_info, score

log = logging.getLogger(__name__)

#: The one map-function type: ``(images (B, 3, S, S) in [0, 1], labels (B,)) -> maps (B, h, w)``.
MapFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- scoring core
def evaluate_maps(
    split: Split,
    prediction: Callable[[TestItem], np.ndarray | torch.Tensor],
    eval_cfg: EvalConfig | None = None,
    progress: bool = True,
    minmax_pred: bool = True,
    per_image: bool = True,
    gt_cache: GTCache | None = None,
) -> dict:
    """Score ``prediction(item) -> (H, W) heatmap`` (any size) on every test image of ``split``.

    Returns the :class:`MetricAccumulator` summary plus ``split``, ``empty_gt`` ("kept", the
    literature's choice, or "excluded", protocol.md §1.5) and, with ``per_image``, the
    full-precision per-image rows.
    """
    ecfg = eval_cfg or EvalConfig()
    info = protocol_info(ecfg.protocol, ecfg.exact, minmax_pred)
    gts = gt_cache if gt_cache is not None else GTCache(split)
    items = split.test_items()
    if not items:
        raise AffordError(f"{split.root}: no egocentric test image with a GT png to evaluate")
    items, excluded = _drop_empty(items, gts, ecfg.exclude_empty_gt)
    acc = MetricAccumulator(info)
    with tqdm(total=len(items), desc=f"eval {split.name}", unit="img", disable=not progress) as bar:
        for start in range(0, len(items), max(ecfg.batch_size, 1)):
            chunk = items[start : start + max(ecfg.batch_size, 1)]
            maps = [check_map(prediction(it), f"prediction for {it.image}") for it in chunk]
            s = score(maps, [gts[it] for it in chunk], ecfg.protocol, ecfg.exact, minmax_pred=minmax_pred)
            acc.add(s, [it.affordance for it in chunk], [it.object for it in chunk], [it.name for it in chunk])
            bar.update(len(chunk))
    out = acc.summary()
    if out["n_nan_nss"]:
        log.warning("%d images have NSS = nan (constant prediction, reference NSS)", out["n_nan_nss"])
    if out["n_constant_pred"]:
        log.warning("%d images have a constant prediction", out["n_constant_pred"])
    out.update(split=split.name, data_root=str(split.root), test_folder=split.test_folder,
               empty_gt="excluded" if ecfg.exclude_empty_gt else "kept", n_excluded=len(excluded))
    if per_image:
        out["per_image"] = acc.per_image()
    return out


def _drop_empty(items: list[TestItem], gts: GTCache, exclude: bool) -> tuple[list[TestItem], list[TestItem]]:
    excluded = [it for it in items if exclude and not gts[it].any()]
    if excluded:
        log.info("excluding %d all-zero GT images: %s", len(excluded), ", ".join(it.key for it in excluded))
        dropped = set(excluded)
        items = [it for it in items if it not in dropped]
    return items, excluded


# ----------------------------------------------------------------------------- models
def method_map_fn(method: Grounder, device: torch.device, bf16: bool = False, output: str | None = None) -> MapFn:
    """Wrap ``method.predict`` with no-grad, device transfer, the named output and optional bf16."""
    name = method.resolve_output(output)

    def fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        one_image = images.shape[0] > 1 and images.stride(0) == 0  # one image expanded: several labels of it
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if one_image:
                out = method.predict_labels(images[:1].to(device), labels.to(device), output=name)
            else:
                out = method.predict(images.to(device), labels.to(device), output=name)
        return out.float().cpu()

    return fn


def check_output_protocol(method: Grounder, eval_cfg: EvalConfig, refined: bool = False) -> dict:
    """The scored output's name and kind; ``plsp`` softmaxes logits, so a score map is refused.

    ``refined``: the maps go through a refiner, whose output is a [0, 1] score map whatever the method's.
    """
    name = method.resolve_output(eval_cfg.output)
    kind = "scores" if refined else method.outputs[name]
    if eval_cfg.protocol == "plsp" and refined:
        raise AffordError("--protocol plsp: it softmaxes logits, but refined maps are already in [0, 1]; "
                          "drop --refine or use another protocol")
    if eval_cfg.protocol == "plsp" and kind != "logits":
        logits = [n for n, k in method.outputs.items() if k == "logits"]
        raise AffordError(f"--protocol plsp: it softmaxes logits, but output {name!r} of {type(method).__name__} is "
                          f"already a [0, 1] map" + (f"; use --output {logits[0]}" if logits else ""))
    return {"output": name, "output_kind": kind}


def evaluate_fn(map_fn: MapFn, split: Split, eval_cfg: EvalConfig | None = None, size: int = 224,
                progress: bool = True, keep_maps: bool = False) -> dict:
    """Run ``map_fn`` batched over the test images, then score with :func:`evaluate_maps`.

    With ``keep_maps`` the raw maps are returned under ``"_maps"`` (index-aligned with
    ``split.test_items()``) for overlays.
    """
    ecfg = eval_cfg or EvalConfig()
    ds = AffordanceTestSet(split, size=size)
    loader = DataLoader(ds, batch_size=ecfg.batch_size, shuffle=False, num_workers=0)
    maps: list[torch.Tensor] = [torch.empty(0)] * len(ds)
    for batch in tqdm(loader, desc=f"predict {split.name}", disable=not progress, leave=False):
        cams = map_fn(batch["image"], batch["label"])
        for i, cam in zip(batch["index"].tolist(), cams, strict=True):
            maps[i] = cam.double()
    by_item = {it: maps[i] for i, it in enumerate(ds.items)}  # an item, not its key: two images may share a GT
    out = evaluate_maps(split, by_item.__getitem__, ecfg, progress=False)
    if keep_maps:
        out["_maps"] = [by_item[it] for it in split.test_items()]
    return out


def evaluate_method(method: Grounder, split: Split, eval_cfg: EvalConfig | None, device: torch.device,
                    size: int = 224, progress: bool = True, bf16: bool = False, keep_maps: bool = False) -> dict:
    """Score a method's ``eval_cfg.output`` (eval mode restored afterwards)."""
    ecfg = eval_cfg or EvalConfig()
    which = check_output_protocol(method, ecfg)
    was_training = method.training
    method.eval()
    try:
        out = evaluate_fn(method_map_fn(method, device, bf16, which["output"]), split, ecfg, size, progress, keep_maps)
    finally:
        method.train(was_training)
    return {**out, **which}


# ----------------------------------------------------------------------------- other sources
def evaluate_prediction_dir(pred_dir: str | Path, split: Split, eval_cfg: EvalConfig | None = None,
                            progress: bool = True) -> dict:
    """Score a folder ``<aff>/<obj>/<name>.png|.npy`` holding one heatmap per test image.

    Every test image must have its prediction (else an error naming the expected path and how
    many are missing); files that match no test image are listed in ``extra_files``.
    """
    if not hasattr(split, "test_items"):
        raise AffordError(f"evaluate_prediction_dir: split must be a Split (afford.data.agd20k.open_split(root, "
                          f"name)), got {type(split).__name__} {split!r}")
    pred_dir = Path(pred_dir).expanduser()
    if not pred_dir.is_dir():
        raise AffordError(f"{pred_dir}: prediction folder not found (expected <aff>/<obj>/<name>.png|.npy)")
    found = index_prediction_dir(pred_dir)
    keys = {f"{it.affordance}/{it.object}/{it.name}": it for it in split.test_items()}
    missing = [k for k in keys if k not in found]
    if missing:
        raise AffordError(
            f"{pred_dir / missing[0]}.png: missing prediction for test image {keys[missing[0]].image} "
            f"(expected .png or .npy; {len(missing)} of {len(keys)} test images have none)"
        )
    used = {found[k] for k in keys}
    if (eval_cfg or EvalConfig()).protocol == "plsp":
        png = next((f for f in sorted(used) if f.suffix.lower() == ".png"), None)
        if png is not None:
            raise AffordError(f"{png}: --protocol plsp softmaxes logits, but a PNG holds a picture of a map, not logits; "
                              "save the logits as .npy, or score the maps with another protocol")
    extra = [p.relative_to(pred_dir).as_posix() for p in all_files(pred_dir) if p not in used]
    if extra:
        log.warning("%s: %d files match no test image and were ignored, e.g. %s", pred_dir, len(extra), extra[0])
    out = evaluate_maps(split, lambda it: load_prediction(found[f"{it.affordance}/{it.object}/{it.name}"]),
                        eval_cfg, progress=progress)
    out.update(predictions=str(pred_dir), n_extra_files=len(extra), extra_files=extra)
    return out


def evaluate_baseline(kind: str, split: Split, eval_cfg: EvalConfig | None = None, progress: bool = True) -> dict:
    """Score a method-free baseline (``uniform``, ``center``, ``object``; see afford.baselines).

    ``object`` needs SynthAGD's object masks for every test image and says so if they are absent.
    ``uniform`` is scored without min-max (a min-maxed constant map is all zeros).
    """
    check_baseline(kind)
    if (eval_cfg or EvalConfig()).protocol == "plsp":
        raise AffordError(f"--protocol plsp softmaxes logits, but baseline {kind!r} is a map, not logits; "
                          "score it with another protocol")
    items = split.test_items()
    masks: dict[TestItem, Path] = {}
    if kind == "object":
        masks = {it: p for it in items if (p := split.object_mask(it)) is not None}
        if not masks:
            raise AffordError(f"{split.root}: baseline 'object' needs object masks (SynthAGD "
                              f"extras/{split.root.name}/masks/<aff>/<obj>/<name>_object.png); this dataset has none")
        if len(masks) < len(items):
            it = next(i for i in items if i not in masks)
            raise AffordError(f"{it.image}: no object mask for this test image ({len(items) - len(masks)} of "
                              f"{len(items)} missing)")

    def prediction(it: TestItem) -> np.ndarray:
        if kind == "object":
            return object_map(load_gray(masks[it], "object mask"))
        wh = image_size(it.image)
        if wh is None:
            raise AffordError(f"{it.image}: not a readable image")
        return baseline_map(kind, wh[1], wh[0])

    out = evaluate_maps(split, prediction, eval_cfg, progress=progress, minmax_pred=kind != "uniform")
    out["baseline"] = kind
    if kind != "uniform":
        out["baseline_sigma_frac"] = CENTER_SIGMA_FRAC if kind == "center" else OBJECT_SIGMA_FRAC
    return out


# ----------------------------------------------------------------------------- label sensitivity
def label_sensitivity(map_fn: MapFn, split: Split, eval_cfg: EvalConfig | None = None, size: int = 224,
                      progress: bool = True, gt_cache: GTCache | None = None) -> dict:
    """Does the map follow the label? Right- against wrong-label scores on multi-affordance objects.

    Different labels giving nearly the same map (``hold`` vs ``cut_with`` on a knife) is a known
    weakness of CAM-based grounding (methods.md §1.6), and SynthAGD puts two to four affordances
    on different parts of one object to expose it; the protocol's scores cannot show it. Every
    test image whose object carries other affordances in the test set is scored against its GT
    with the map for its own affordance (``right``) and with the maps for the object's other
    affordances (``wrong``, averaged); ``map_cc`` is the Pearson correlation of the raw maps. A
    label-blind method scores the same and correlates near 1. An afford diagnostic, not a
    published metric; it uses the run's protocol, batch size and all-zero-GT choice. Returns
    ``n_images``, ``right``/``wrong`` (mean ``KLD``, ``SIM``), ``map_cc`` and ``per_object``.
    """
    ecfg = eval_cfg or EvalConfig()
    ds = AffordanceTestSet(split, size=size)
    gts = gt_cache if gt_cache is not None else GTCache(split)
    affs_of: dict[str, set[str]] = defaultdict(set)
    for it in ds.items:
        affs_of[it.object].add(it.affordance)
    kept, _ = _drop_empty(ds.items, gts, ecfg.exclude_empty_gt)
    keep = set(kept)
    todo = [i for i, it in enumerate(ds.items) if len(affs_of[it.object]) > 1 and it in keep]
    if not todo:
        raise AffordError(f"{split.root}: label sensitivity needs test objects with two or more affordances; "
                          "every object here has one")
    # (image index, label) queries, own label first per image, asked in batches of eval.batch_size.
    queries = [(i, split.label(a)) for i in todo
               for a in [ds.items[i].affordance, *sorted(affs_of[ds.items[i].object] - {ds.items[i].affordance})]]
    answers: list[torch.Tensor] = []
    step = max(ecfg.batch_size, 1)
    with tqdm(total=len(queries), desc="label sensitivity", unit="map", disable=not progress, leave=False) as bar:
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step]
            images = {i: ds[i]["image"] for i, _ in chunk}
            maps = map_fn(torch.stack([images[i] for i, _ in chunk]), torch.tensor([y for _, y in chunk]))
            answers.extend(maps.double())
            bar.update(len(chunk))
    rows: dict[str, list[tuple[float, float, float, float, float]]] = defaultdict(list)
    pos = 0
    for i in todo:
        it = ds.items[i]
        n = len(affs_of[it.object])
        maps = answers[pos : pos + n]
        pos += n
        s = score(maps, [gts[it]] * n, ecfg.protocol, ecfg.exact)
        cc = mean_of([map_correlation(maps[0], m) for m in maps[1:]])
        rows[it.object].append((float(s["KLD"][0]), float(s["KLD"][1:].mean()), float(s["SIM"][0]),
                                float(s["SIM"][1:].mean()), cc))

    def summarise(rs: list[tuple[float, float, float, float, float]]) -> dict:
        cols = list(zip(*rs, strict=True))
        return {"n": len(rs), "right": {"KLD": mean_of(cols[0]), "SIM": mean_of(cols[2])},
                "wrong": {"KLD": mean_of(cols[1]), "SIM": mean_of(cols[3])}, "map_cc": mean_of(cols[4])}

    out = summarise([r for rs in rows.values() for r in rs])
    return {"n_images": out.pop("n"), **out, "protocol": ecfg.protocol,
            "per_object": {o: summarise(rs) for o, rs in sorted(rows.items())}}
