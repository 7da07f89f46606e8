"""Throughput of the frozen DINO ViT-S/16 key extractor (random weights, no download).

Measures what LOCATE-lineage training pays per image: ``create_backbone("dino_vits16")`` at
224 px returning last-block keys, CLS attention and saliency (``return_tokens=False``), for
batch 1 and 16 in float32 and bfloat16 autocast. Usage::

    python benchmarks/bench_backbone.py [--iters 5] [--batches 1 16] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from afford.backbones import create_backbone


def images_per_second(dtype: torch.dtype, batch: int, iters: int, size: int = 224) -> float:
    """Images/s from the median of ``iters`` timed calls after one warm-up call.

    The median, not the mean, because CI and shared machines add bursts of foreign load.
    """
    bb = create_backbone("dino_vits16", dtype=dtype, return_tokens=False)
    x = torch.rand(batch, 3, size, size)  # images in [0, 1]: the backbone normalises them
    bb(x)  # warm-up: allocator, kernels, autocast caches
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        bb(x)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"DINO ViT-S/16 key extractor, 224 px, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'dtype':>9} {'batch':>5} {'images/s':>9} {'ms/image':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        for batch in args.batches:
            ips = images_per_second(dtype, batch, args.iters)
            print(f"{str(dtype).removeprefix('torch.'):>9} {batch:>5} {ips:>9.1f} {1000 / ips:>9.1f}")


if __name__ == "__main__":
    main()
