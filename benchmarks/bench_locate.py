"""LOCATE training steps/s and inference images/s, DINO ViT-S/16 architecture (random weights).

Batch 8 at 224 px, 3 exocentric images per sample (the reference recipe; methods.md §1.4), SGD
with the reference parameter groups, epoch index 1 so part selection and the prototype loss run.
Usage::

    python benchmarks/bench_locate.py [--steps 5] [--batch 8] [--threads N] [--device cpu|cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from afford.config import build_config
from afford.data.classes import SEEN_AFFORDANCES
from afford.factory import create_method


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cfg = build_config("locate")  # dino_vits16, random weights (backbone_weights=None)
    method = create_method("locate", cfg.model, SEEN_AFFORDANCES).to(dev)
    groups = method.param_groups()
    opt = torch.optim.SGD([{"params": g.params, "lr": 1e-3 * g.lr_mult} for g in groups], lr=1e-3,
                          momentum=0.9, weight_decay=5e-4, nesterov=True)
    b = a.batch
    g = torch.Generator().manual_seed(0)
    batch = {"ego": torch.rand(b, 3, 224, 224, generator=g).to(dev),
             "exo": torch.rand(b, 3, 3, 224, 224, generator=g).to(dev),
             "label": torch.randint(0, len(SEEN_AFFORDANCES), (b,), generator=g).to(dev)}

    def step() -> None:
        method.train()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            loss = method.forward_train(batch, epoch=1)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    def infer() -> None:
        method.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            method.predict(batch["ego"], batch["label"])

    t_step = timed(step, a.steps)
    t_inf = timed(infer, a.steps)
    dtype = "bf16" if a.bf16 else "fp32"
    print(f"device={dev} threads={torch.get_num_threads()} batch={b} dtype={dtype} torch={torch.__version__}")
    print(f"train: {1 / t_step:.3f} steps/s ({b / t_step:.2f} samples/s, {4 * b / t_step:.2f} images/s incl. 3 exo)")
    print(f"inference: {b / t_inf:.2f} images/s")


if __name__ == "__main__":
    main()
