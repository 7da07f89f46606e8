"""Training steps/s and inference images/s of the affordance methods, side by side, one process.

Each method at its paper architecture (DINO ViT-S/16, random weights: no downloads) and its
recipe's batch (``recipe_config(method).train.batch_size``: 16 for LOCATE and LoopTrans, 8 for
SelectiveCL; override
with ``--batch``), 224 px, 3 exocentric images per sample, SGD with the method's reference
parameter groups, epoch index 1 (so LOCATE's part selection and prototype loss run). The methods
run one after the other on the same random batch, so their figures compare on one machine state.
The last column is the share of the timed training steps spent inside each frozen tower (DINO
``backbone``, SelectiveCL's ``clip`` image tower and ``text_encoder``; the text features are
computed once and cached, so that tower costs nothing per step).

Usage::

    python benchmarks/bench_methods.py [--methods locate looptrans selectivecl] [--steps 5] [--batch N]
        [--threads N] [--device cpu|cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from afford.backbones.tokenizer import ClipBPETokenizer
from afford.config import build_config
from afford.data.classes import SEEN_AFFORDANCES
from afford.factory import create_method, recipe_config


def timed(fn, iters: int, warmup: bool = True) -> float:
    """Median wall time of ``iters`` calls (after one untimed call unless ``warmup`` is False)."""
    if warmup:
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class TowerClock:
    """Wall time spent inside each frozen tower (a child module without trainable parameters)."""

    def __init__(self, method: torch.nn.Module) -> None:
        self.total: dict[str, float] = {}
        self._start: dict[str, float] = {}
        for name, child in method.named_children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                child.register_forward_pre_hook(lambda m, a, n=name: self._enter(n))
                child.register_forward_hook(lambda m, a, o, n=name: self._leave(n))
                self.total[name] = 0.0

    def _enter(self, name: str) -> None:
        self._start[name] = time.perf_counter()

    def _leave(self, name: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.total[name] += time.perf_counter() - self._start.pop(name)

    def reset(self) -> None:
        self.total = dict.fromkeys(self.total, 0.0)


def bench(name: str, batch_size: int | None, steps: int, dev: torch.device, bf16: bool) -> dict:
    cfg = build_config(name)  # paper architecture, random weights (no *_weights set)
    if getattr(cfg.model, "tokenizer", "unset") is None:
        # No CLIP vocabulary offline: prompt ids from the char-level scheme (valid ids, same timing).
        cfg.model.tokenizer = ClipBPETokenizer.char_level()
    method = create_method(name, cfg.model, SEEN_AFFORDANCES).to(dev)
    clock = TowerClock(method)
    opt = torch.optim.SGD([{"params": g.params, "lr": 1e-3 * g.lr_mult} for g in method.param_groups()],
                          lr=1e-3, momentum=0.9, weight_decay=5e-4)
    b = batch_size or recipe_config(name).train.batch_size
    n_exo = cfg.data.n_exo
    g = torch.Generator().manual_seed(0)
    batch = {"ego": torch.rand(b, 3, 224, 224, generator=g).to(dev),
             "exo": torch.rand(b, n_exo, 3, 224, 224, generator=g).to(dev),
             "label": torch.randint(0, len(SEEN_AFFORDANCES), (b,), generator=g).to(dev)}

    def step() -> None:
        method.train()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = method.forward_train(batch, epoch=1)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    def infer() -> None:
        method.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            method.predict(batch["ego"], batch["label"])

    step()  # warm-up outside the clock
    clock.reset()
    start = time.perf_counter()
    t_step = timed(step, steps)
    shares = {k: v / (time.perf_counter() - start) for k, v in clock.total.items()}
    t_inf = timed(infer, steps)
    return {"batch": b, "n_exo": n_exo, "steps_per_s": 1 / t_step, "train_images_per_s": b * (1 + n_exo) / t_step,
            "infer_images_per_s": b / t_inf, "tower_share": shares}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["locate", "looptrans", "selectivecl"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=0, help="0: each method's recipe batch")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    print(f"device={dev} threads={torch.get_num_threads()} dtype={'bf16' if a.bf16 else 'fp32'} "
          f"torch={torch.__version__}, 224 px, median of {a.steps} after one warm-up")
    print(f"{'method':<12}{'batch':>6}{'train steps/s':>15}{'train img/s':>13}{'infer img/s':>13}"
          "  share of training time in each frozen tower")
    for name in a.methods:
        r = bench(name, a.batch or None, a.steps, dev, a.bf16)
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["tower_share"].items())
        print(f"{name:<12}{r['batch']:>6}{r['steps_per_s']:>15.3f}{r['train_images_per_s']:>13.2f}"
              f"{r['infer_images_per_s']:>13.2f}  {shares}", flush=True)


if __name__ == "__main__":
    main()
