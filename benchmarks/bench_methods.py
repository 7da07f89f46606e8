"""Training steps/s and inference images/s of the affordance methods, side by side, one process.

Each method at its paper architecture (DINO ViT-S/16, random weights: no downloads) and its
recipe's batch (``recipe_config(method).train.batch_size``, 16 for LOCATE and LoopTrans; override
with ``--batch``), 224 px, 3 exocentric images per sample, SGD with the method's reference
parameter groups, epoch index 1 (so LOCATE's part selection and prototype loss run). The methods
run one after the other on the same random batch, so their figures compare on one machine state.

Usage::

    python benchmarks/bench_methods.py [--methods locate looptrans] [--steps 5] [--batch N]
        [--threads N] [--device cpu|cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from afford.config import build_config
from afford.data.classes import SEEN_AFFORDANCES
from afford.factory import create_method, recipe_config


def timed(fn, iters: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, batch_size: int | None, steps: int, dev: torch.device, bf16: bool) -> dict:
    cfg = build_config(name)  # paper architecture, random weights (no *_weights set)
    method = create_method(name, cfg.model, SEEN_AFFORDANCES).to(dev)
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

    t_step, t_inf = timed(step, steps), timed(infer, steps)
    return {"batch": b, "n_exo": n_exo, "steps_per_s": 1 / t_step, "train_images_per_s": b * (1 + n_exo) / t_step,
            "infer_images_per_s": b / t_inf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["locate", "looptrans"])
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
    print(f"{'method':<12}{'batch':>6}{'train steps/s':>15}{'train img/s':>13}{'infer img/s':>13}")
    for name in a.methods:
        r = bench(name, a.batch or None, a.steps, dev, a.bf16)
        print(f"{name:<12}{r['batch']:>6}{r['steps_per_s']:>15.3f}{r['train_images_per_s']:>13.2f}"
              f"{r['infer_images_per_s']:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
