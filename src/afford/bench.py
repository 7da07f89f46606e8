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

- **tower shares**: the part of the uncached step spent inside each frozen tower (the text tower
  of SelectiveCL included: its prompt features are computed once, so it costs ~nothing per step).

Ratios: uncached / floor (how close the step is to its floor) and uncached / cached (the cache's
speed-up). Medians of ``steps`` timed calls after one warm-up; the floor and the uncached step are
timed in alternation (:func:`timed_rounds`), so their ratio is not skewed by load drifting between them.

- **arithmetic**: the matmul/convolution/attention FLOPs (``torch.utils.flop_counter``, forward and
  backward) of the floor, of the trainable heads (uncached step − floor) and of the cached step; the
  rate the cached step achieves; the rates the heads would need for the project's targets
  (uncached ≤ :data:`TARGET_OVER_FLOOR` × floor, cache speed-up ≥ :data:`TARGET_SPEEDUP`); and the
  device's dense-matmul rate (:func:`peak_flops`). A target whose needed rate exceeds what the device
  reaches cannot be met by any implementation of the same computation.
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
TARGET_OVER_FLOOR = 1.2  # issue 16: uncached LOCATE step at most this many times its frozen-forward floor
TARGET_SPEEDUP = 5.0  # issue 16: cached step at least this many times faster than uncached


class TowerClock:
    """Wall time spent inside each frozen child module (every tower without a trainable parameter:
    vision towers, and SelectiveCL's text tower)."""

    def __init__(self, method: torch.nn.Module, sync: Callable[[], None]) -> None:
        self.total: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._sync = sync
        self.on = False
        for name, child in method.named_children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                child.register_forward_pre_hook(lambda m, a, n=name: self._enter(n))
                child.register_forward_hook(lambda m, a, o, n=name: self._leave(n))
                self.total[name] = 0.0

    def _enter(self, name: str) -> None:
        if self.on:
            self._sync()
            self._start[name] = time.perf_counter()

    def _leave(self, name: str) -> None:
        if self.on and name in self._start:
            self._sync()
            self.total[name] += time.perf_counter() - self._start.pop(name)


def _no_sync() -> None:
    pass


def timed(fn: Callable[[], Any], steps: int, sync: Callable[[], None] | None = None, warmup: bool = False) -> float:
    """Median wall time of ``steps`` calls (after one untimed call with ``warmup``); ``sync`` waits for
    the device (default: ``torch.cuda.synchronize`` when CUDA is available)."""
    sync = sync or (torch.cuda.synchronize if torch.cuda.is_available() else _no_sync)
    if warmup:
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_rounds(fns: dict[str, Callable[[], Any]], steps: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Wall times of ``steps`` rounds that call each of ``fns`` once, in turn: quantities compared as a
    ratio (the step and its floor) see the same machine load, which on a shared machine drifts."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times


def time_step(method: torch.nn.Module, step: Callable[[], Any], floor: Callable[[], Any], steps: int,
              sync: Callable[[], None], separate_clock: bool) -> tuple[float, float, dict[str, float]]:
    """Median floor and step times (alternating rounds) and each frozen tower's share of the step.
    The tower clock syncs the device around every tower call; where that costs time (CUDA:
    ``separate_clock``) the step is timed bare and the shares come from separate clocked steps."""
    clock = TowerClock(method, sync)

    def clocked_step() -> None:
        clock.on = True
        try:
            step()
        finally:
            clock.on = False

    rounds = timed_rounds({"floor": floor, "uncached": step if separate_clock else clocked_step}, steps, sync)
    clocked = timed_rounds({"clocked": clocked_step}, steps, sync)["clocked"] if separate_clock else rounds["uncached"]
    shares = {k: v / sum(clocked) for k, v in clock.total.items()}
    return statistics.median(rounds["floor"]), statistics.median(rounds["uncached"]), shares


def peak_flops(device: torch.device, sync: Callable[[], None], bf16: bool = False, n: int = 4096,
               tries: int = 5) -> float:
    """FLOP/s of the best of ``tries`` ``n``×``n`` matmuls: the device's practical peak for dense compute."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    sync()
    return 2 * n**3 / min(timed_rounds({"matmul": lambda: a @ b}, tries, sync)["matmul"])


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul/convolution/attention FLOPs of one call of ``fn`` (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


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

    floor_s, uncached, shares = time_step(method, step, floor, steps, sync, separate_clock=dev.type == "cuda")
    floor_flops, step_flops = count_flops(floor), count_flops(step)
    infer_s = timed(infer, steps, sync)
    with tempfile.TemporaryDirectory(prefix="afford-bench-") as tmp:
        attach_feature_cache(method, tmp)
        t0 = time.perf_counter()
        step()
        sync()
        fill = time.perf_counter() - t0
        cached = timed(step, steps, sync)
        cached_flops = count_flops(step)
    peak = peak_flops(dev, sync, bf16)
    return {"method": name, "batch": b, "images_per_step": b * (1 + n_exo), "floor_s": floor_s,
            "uncached_s": uncached, "fill_s": fill, "cached_s": cached, "infer_images_per_s": b / infer_s,
            "uncached_over_floor": uncached / floor_s, "speedup": uncached / cached,
            "towers": sorted(towers), "tower_share": shares,
            "floor_gflop": floor_flops / 1e9, "step_gflop": step_flops / 1e9, "cached_gflop": cached_flops / 1e9,
            "heads_gflop": (step_flops - floor_flops) / 1e9, "peak_gflops": peak / 1e9,
            "cached_gflops": cached_flops / 1e9 / cached,
            "needed_gflops_over_floor": (step_flops - floor_flops) / 1e9 / ((TARGET_OVER_FLOOR - 1) * floor_s),
            "needed_gflops_speedup": cached_flops / 1e9 / (uncached / TARGET_SPEEDUP)}


def _shares(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {100 * v:.0f}%" for k, v in row["tower_share"].items())


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
    return rows, format_bench(rows, head)


def format_bench(rows: list[dict[str, Any]], head: str) -> str:
    """The two markdown tables of ``afford bench`` (times, then arithmetic) under the machine line."""
    lines = [head, "",
             "| method | batch (images) | floor s | uncached s | ×floor | fill s | cached s | speed-up | infer img/s "
             "| uncached step in each frozen tower |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['method']} | {r['batch']} ({r['images_per_step']}) | {r['floor_s']:.2f} | {r['uncached_s']:.2f} | "
              f"{r['uncached_over_floor']:.2f} | {r['fill_s']:.2f} | {r['cached_s']:.2f} | {r['speedup']:.1f}× | "
              f"{r['infer_images_per_s']:.1f} | {_shares(r)} |" for r in rows]
    lines += ["", "Arithmetic (GFLOP: matmul/conv/attention, forward + backward; GFLOP/s the trainable heads would "
              f"need for uncached ≤ {TARGET_OVER_FLOOR}× floor and for a cache speed-up ≥ {TARGET_SPEEDUP:.0f}×, "
              "against what the cached step and a large matmul reach on this device):", "",
              "| method | floor GFLOP | heads GFLOP (= cached step) | cached step GFLOP/s | "
              f"needed for ≤ {TARGET_OVER_FLOOR}× | needed for ≥ {TARGET_SPEEDUP:.0f}× | matmul GFLOP/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['floor_gflop']:.0f} | {r['heads_gflop']:.0f} | "
              f"{r['cached_gflops']:.0f} | {r['needed_gflops_over_floor']:.0f} | {r['needed_gflops_speedup']:.0f} | "
              f"{r['peak_gflops']:.0f} |" for r in rows]
    return "\n".join(lines)


AGD20K_SEEN_TEST = 1675  # egocentric test images with GT in AGD20K Seen (protocol.md)


def _write_eval_split(root, n_images: int, size: tuple[int, int] = (640, 480)) -> None:
    """An AGD20K-layout ``Seen`` test set of ``n_images`` noise JPEGs at a typical AGD20K size with
    blob GT pngs, spread over the Seen affordances and objects (no training images needed)."""
    import numpy as np
    from PIL import Image

    from afford.data.classes import OBJECTS, SEEN_AFFORDANCES

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n_images):
        aff, obj = SEEN_AFFORDANCES[i % len(SEEN_AFFORDANCES)], OBJECTS[(i // len(SEEN_AFFORDANCES)) % len(OBJECTS)]
        img_dir = root / "Seen" / "testset" / "egocentric" / aff / obj
        gt_dir = root / "Seen" / "testset" / "GT" / aff / obj
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((w, h), Image.BILINEAR).save(img_dir / f"{i:05d}.jpg", quality=90)
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        gt = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.08 * w) ** 2))
        Image.fromarray((gt * 255).astype(np.uint8)).save(gt_dir / f"{i:05d}.png")


def bench_eval(n_images: int = AGD20K_SEEN_TEST, method: str = "locate", device: str = "cpu", bf16: bool = False,
               batch_size: int = 64, threads: int = 0, progress: bool = True) -> dict[str, Any]:
    """Scoring a test set of AGD20K Seen's size: the GT cache build, the scoring alone (a baseline's
    maps) and a whole ``afford eval`` of a method at its paper architecture (random weights), in
    images/s. Everything goes through the one evaluator (:mod:`afford.engine.evaluator`)."""
    import os
    from pathlib import Path

    from afford.config import EvalConfig, build_config
    from afford.data.agd20k import GTCache, open_split
    from afford.engine.evaluator import evaluate_baseline, evaluate_method
    from afford.factory import create_method

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    ecfg = EvalConfig(batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="afford-bench-eval-") as tmp:
        root = Path(tmp)
        old = os.environ.get("AFFORD_CACHE")
        os.environ["AFFORD_CACHE"] = str(root / "cache")  # a cold GT cache, removed with the folder
        try:
            t0 = time.perf_counter()
            _write_eval_split(root / "data", n_images)
            write_s = time.perf_counter() - t0
            split = open_split(root / "data", "Seen")
            t0 = time.perf_counter()
            GTCache(split)
            gt_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            base = evaluate_baseline("center", split, ecfg, progress=progress)
            score_s = time.perf_counter() - t0
            cfg = build_config(method)
            torch.manual_seed(0)
            model = create_method(method, cfg.model, split.affordances).to(dev)
            t0 = time.perf_counter()
            summary = evaluate_method(model, split, ecfg, dev, size=cfg.data.test_size, progress=progress, bf16=bf16)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            eval_s = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("AFFORD_CACHE", None)
            else:
                os.environ["AFFORD_CACHE"] = old
    assert base["n_images"] == summary["n_images"] == n_images
    return {"n_images": n_images, "write_s": write_s, "gt_cache_s": gt_s, "score_s": score_s,
            "eval_s": eval_s, "method": method, "batch_size": batch_size, "device": str(dev), "bf16": bf16,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "score_images_per_s": n_images / score_s, "eval_images_per_s": n_images / eval_s}
