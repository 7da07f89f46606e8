"""Score a method (or any batched heatmap function) on a split's test set under one protocol."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from afford.config import EvalConfig
from afford.data.agd20k import AffordanceTestSet, Split
from afford.evaluate import evaluate_maps

# (images (B,3,S,S), labels (B,)) -> maps (B,h,w)
MapFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def method_map_fn(method: torch.nn.Module, device: torch.device, bf16: bool = False) -> MapFn:
    """Wrap ``method.predict`` with no-grad, device transfer and optional bf16 autocast."""

    def fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = method.predict(images.to(device), labels.to(device))
        return out.float().cpu()

    return fn


def evaluate_fn(
    map_fn: MapFn, split: Split, eval_cfg: EvalConfig, size: int = 224, progress: bool = True,
    keep_maps: bool = False, exclude_empty_gt: bool = False,
) -> dict:
    """Run ``map_fn`` batched over the test images, then score with :func:`evaluate_maps`.

    Scoring goes through the same function as prediction folders and baselines, so every row of a
    report is computed identically. With ``keep_maps`` the raw maps are returned under ``"_maps"``
    (index-aligned with ``split.test_items()``) for overlays.
    """
    ds = AffordanceTestSet(split, size=size)
    loader = DataLoader(ds, batch_size=eval_cfg.batch_size, shuffle=False, num_workers=0)
    maps: list[torch.Tensor] = [torch.empty(0)] * len(ds)
    for batch in tqdm(loader, desc=f"predict {split.name}", disable=not progress, leave=False):
        cams = map_fn(batch["image"], batch["label"])
        for i, cam in zip(batch["index"].tolist(), cams, strict=True):
            maps[i] = cam.double()
    by_key = {it.key: maps[i] for i, it in enumerate(ds.items)}
    out = evaluate_maps(split, lambda it: by_key[it.key], protocol=eval_cfg.protocol, exact=eval_cfg.exact,
                        progress=False, exclude_empty_gt=exclude_empty_gt)
    if keep_maps:
        out["_maps"] = [by_key[it.key] for it in split.test_items()]
    return out


def evaluate_method(method: torch.nn.Module, split: Split, eval_cfg: EvalConfig, device: torch.device,
                    size: int = 224, progress: bool = True, bf16: bool = False, keep_maps: bool = False) -> dict:
    was_training = method.training
    method.eval()
    try:
        return evaluate_fn(method_map_fn(method, device, bf16), split, eval_cfg, size, progress, keep_maps)
    finally:
        method.train(was_training)
