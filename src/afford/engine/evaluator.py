"""Score a method (or any batched heatmap function) on a split's test set under one protocol."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from afford.config import EvalConfig
from afford.data.agd20k import AffordanceTestSet, Split
from afford.data.gt_cache import GTCache
from afford.metrics.report import MetricAccumulator
from afford.metrics.saliency import protocol_info, score

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
    keep_maps: bool = False, desc: str = "eval",
) -> dict:
    """Mean KLD/SIM/NSS over every test image with GT, plus per-class breakdowns.

    With ``keep_maps`` the raw maps are returned under ``"_maps"`` (index-aligned with the
    split's test items) so callers can draw overlays without a second forward pass.
    """
    ds = AffordanceTestSet(split, size=size)
    gts = GTCache(split)
    acc = MetricAccumulator(protocol_info(eval_cfg.protocol, eval_cfg.exact))
    loader = DataLoader(ds, batch_size=eval_cfg.batch_size, shuffle=False, num_workers=0)
    maps: list[torch.Tensor] = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        cams = map_fn(batch["image"], batch["label"])
        items = [ds.items[int(i)] for i in batch["index"]]
        scores = score(list(cams.double()), [gts[it] for it in items], protocol=eval_cfg.protocol, exact=eval_cfg.exact)
        acc.add(scores, [it.affordance for it in items], [it.object for it in items], [it.name for it in items])
        if keep_maps:
            maps.extend(cams)
    out = acc.summary()
    out["split"] = split.name
    if keep_maps:
        out["_maps"] = maps
    return out


def evaluate_method(method: torch.nn.Module, split: Split, eval_cfg: EvalConfig, device: torch.device,
                    size: int = 224, progress: bool = True, bf16: bool = False, keep_maps: bool = False) -> dict:
    was_training = method.training
    method.eval()
    try:
        return evaluate_fn(method_map_fn(method, device, bf16), split, eval_cfg, size, progress, keep_maps)
    finally:
        method.train(was_training)
