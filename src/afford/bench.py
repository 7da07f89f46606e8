"""``afford bench``: training-step time uncached and cached, inference images/s and the frozen-forward
floor of each affordance method, measured in one process on one random batch.

Each method at its paper architecture with random weights (no downloads), its recipe's batch,
224 px, its recipe's exocentric count, SGD with its parameter groups, epoch index 1 (so LOCATE's
part selection runs). Per method:

- **floor**: the frozen towers' forward on the step's images alone (what the step cannot avoid
  without a cache);
- **uncached**: the full training step (towers + heads + backward + optimizer step);
- **fill**: the first cached step, which computes and stores the towers' outputs;
- **cached**: a step that reads them (:mod:`afford.engine.feature_cache`, float16);
- **infer**: images/s of ``predict`` (uncached).

Ratios: uncached / floor (how close the step is to its floor) and uncached / cached (the cache's
speed-up). Medians of ``steps`` timed calls after one warm-up.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from afford.errors import AffordError

BENCH_METHODS: tuple[str, ...] = ("locate", "wsma", "looptrans", "selectivecl")


def _timed(fn: Callable[[], Any], steps: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_method(name: str, steps: int = 3, device: str = "cpu", bf16: bool = False,
                 batch_size: int | None = None) -> dict[str, Any]:
    """One row of the table (seconds, images/s, ratios) for ``name``."""
    from afford.backbones.tokenizer import ClipBPETokenizer
    from afford.config import build_config
    from afford.data.classes import SEEN_AFFORDANCES
    from afford.engine.feature_cache import attach_feature_cache, frozen_towers
    from afford.factory import create_method, recipe_config

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg = build_config(name)
    if getattr(cfg.model, "tokenizer", "unset") is None:  # no CLIP vocabulary offline: valid char-level ids
        cfg.model.tokenizer = ClipBPETokenizer.char_level()
    torch.manual_seed(0)
    method = create_method(name, cfg.model, SEEN_AFFORDANCES).to(dev)
    recipe = recipe_config(name)
    b = batch_size or recipe.train.batch_size
    n_exo = recipe.data.n_exo
    g = torch.Generator().manual_seed(0)
    batch = {"ego": torch.rand(b, 3, 224, 224, generator=g).to(dev),
             "exo": torch.rand(b, n_exo, 3, 224, 224, generator=g).to(dev),
             "label": torch.randint(0, len(SEEN_AFFORDANCES), (b,), generator=g).to(dev)}
    opt = torch.optim.SGD([{"params": p.params, "lr": 1e-3 * p.lr_mult} for p in method.param_groups()],
                          lr=1e-3, momentum=0.9)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        method.train()
        with autocast:
            loss = method.forward_train(batch, epoch=1)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    def infer() -> None:
        method.eval()
        with torch.no_grad(), autocast:
            method.predict(batch["ego"], batch["label"])

    # The floor: each frozen tower's forward on every image the step feeds it, recorded by a hook.
    towers = frozen_towers(method)
    seen: list[tuple[torch.nn.Module, torch.Tensor, bool | None]] = []
    hooks = [t.register_forward_pre_hook(lambda m, args, kw: seen.append((m, args[0], kw.get("return_tokens"))),
                                         with_kwargs=True) for t in towers.values()]
    step()  # warm-up, and the record of the towers' inputs
    for h in hooks:
        h.remove()

    def floor() -> None:
        with torch.no_grad(), autocast:
            for tower, images, want in seen:
                tower(images, return_tokens=want)

    floor_s = _timed(floor, steps, sync)
    uncached = _timed(step, steps, sync)
    infer_s = _timed(infer, steps, sync)
    with tempfile.TemporaryDirectory(prefix="afford-bench-") as tmp:
        attach_feature_cache(method, tmp)
        t0 = time.perf_counter()
        step()
        sync()
        fill = time.perf_counter() - t0
        cached = _timed(step, steps, sync)
    return {"method": name, "batch": b, "images_per_step": b * (1 + n_exo), "floor_s": floor_s,
            "uncached_s": uncached, "fill_s": fill, "cached_s": cached, "infer_images_per_s": b / infer_s,
            "uncached_over_floor": uncached / floor_s, "speedup": uncached / cached,
            "towers": sorted(towers)}


def run_bench(methods: tuple[str, ...] = BENCH_METHODS, steps: int = 3, device: str = "cpu", bf16: bool = False,
              threads: int = 0, progress: bool = True) -> tuple[list[dict[str, Any]], str]:
    """All rows and the markdown table (with the machine line)."""
    from afford.factory import METHODS

    unknown = [m for m in methods if m not in METHODS or METHODS[m].task != "affordance"]
    if unknown:
        raise AffordError(f"bench: {', '.join(unknown)} is not an affordance method; expected some of "
                          f"{', '.join(BENCH_METHODS)} (CLIP4HOI: benchmarks/bench_clip4hoi.py)")
    if steps < 1:
        raise AffordError(f"bench: --steps must be at least 1, got {steps}")
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for m in methods:
        if progress:
            print(f"bench: {m} ...", flush=True)
        rows.append(bench_method(m, steps, device, bf16))
    head = (f"device {device}, {torch.get_num_threads()} threads, {'bf16' if bf16 else 'fp32'}, torch "
            f"{torch.__version__}, 224 px, random weights, median of {steps}")
    lines = [head, "",
             "| method | batch (images) | floor s | uncached s | ×floor | fill s | cached s | speed-up | infer img/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['batch']} ({r['images_per_step']}) | {r['floor_s']:.2f} | {r['uncached_s']:.2f} | "
              f"{r['uncached_over_floor']:.2f} | {r['fill_s']:.2f} | {r['cached_s']:.2f} | {r['speedup']:.1f}× | "
              f"{r['infer_images_per_s']:.1f} |" for r in rows]
    return rows, "\n".join(lines)
