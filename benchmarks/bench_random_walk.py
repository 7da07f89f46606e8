"""Time and peak memory of the random walk at 56×56 tokens (N = 3136), t = 256, β = 8, γ = 5.

Why: affinity.md §9 — the dense T^(2^k) form needs several N×N matrices; afford switches to the
banded iterative form above ``DENSE_LIMIT``. This measures both per image on CPU.

Each solver runs in a fresh child process so that peak RSS (``ru_maxrss``, a high-water mark) is
not polluted by the other; "peak extra" is the rise of that mark over the child's baseline after
imports and input allocation (tracemalloc does not see torch's allocations).

    python benchmarks/bench_random_walk.py                 # iterative and dense, 1 image
    python benchmarks/bench_random_walk.py --solver iterative --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(args: argparse.Namespace) -> dict[str, float | str]:
    import torch

    from afford.refine.affinity_head import disc_affinity
    from afford.refine.random_walk import random_walk_dense, random_walk_iterative

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, args.dim, args.grid, args.grid, generator=g)
    cam = torch.rand(1, args.grid, args.grid, generator=g)
    # warm-up on a small grid so first-call overheads are not timed
    small = disc_affinity(torch.randn(1, 8, 8, 8), args.radius)
    random_walk_iterative(torch.rand(1, 8, 8), small, args.beta, 2)
    base = _rss_mib()
    t_aff, t_walk = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        aff = disc_affinity(feats, args.radius)
        t1 = time.perf_counter()
        if args.child == "dense":
            out = random_walk_dense(cam.reshape(1, -1), aff.to_dense(), args.beta, args.steps)
        else:
            out = random_walk_iterative(cam, aff, args.beta, args.steps)
        t2 = time.perf_counter()
        assert torch.isfinite(out).all()
        t_aff.append(t1 - t0)
        t_walk.append(t2 - t1)
    return {
        "solver": args.child,
        "affinity_s": min(t_aff),
        "walk_s": min(t_walk),
        "total_s": min(a + w for a, w in zip(t_aff, t_walk, strict=True)),
        "peak_extra_mib": _rss_mib() - base,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=56)
    p.add_argument("--dim", type=int, default=448, help="embedding channels (psa head: 448)")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--beta", type=float, default=8.0)
    p.add_argument("--radius", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--solver", choices=["iterative", "dense", "both"], default="both")
    p.add_argument("--child", choices=["iterative", "dense"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    solvers = ["iterative", "dense"] if args.solver == "both" else [args.solver]
    n = args.grid * args.grid
    print(f"grid {args.grid}x{args.grid} (N={n}), t={args.steps}, beta={args.beta}, gamma={args.radius}, "
          f"dim={args.dim}, threads={args.threads}, best of {args.repeats}")
    for s in solvers:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", s]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{s:>9}: affinity {res['affinity_s'] * 1e3:8.1f} ms  walk {res['walk_s'] * 1e3:8.1f} ms  "
              f"total {res['total_s'] * 1e3:8.1f} ms/image  peak extra RSS {res['peak_extra_mib']:7.1f} MiB")


if __name__ == "__main__":
    main()
