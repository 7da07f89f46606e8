"""SynthAGD generation speed (synthagd.md: 2,000 images at 224 px well under a minute, one core).

    python benchmarks/bench_synth.py [--size 224] [--n-exo 40] [--n-ego 10] [--n-test 5]

Generates the Seen split into a temporary folder (deleted afterwards), single process, and prints
images/s including JPEG/PNG encoding and the mask/GT files, plus the projection to 2,000 images.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from afford.synthagd import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--split", default="seen")
    ap.add_argument("--n-exo", type=int, default=40)
    ap.add_argument("--n-ego", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=5)
    ap.add_argument("--difficulty", type=float, default=1.0)
    args = ap.parse_args()
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        s = generate(tmp, args.split, seed=0, size=args.size, n_exo=args.n_exo, n_ego=args.n_ego,
                     n_test=args.n_test, difficulty=args.difficulty)
    cpu = time.process_time() - cpu0  # CPU time: the honest figure on a shared, loaded machine
    rate, cpu_rate = s["images"] / s["seconds"], s["images"] / cpu
    print(f"SynthAGD {s['split']} size={args.size}: {s['images']} images "
          f"({s['counts']['exocentric']} exo, {s['counts']['egocentric']} ego, {s['counts']['test']} test+GT)")
    print(f"  wall {s['seconds']:.1f} s = {rate:.1f} images/s; CPU {cpu:.1f} s = {cpu_rate:.1f} images/s per core")
    print(f"  2,000 images ~ {2000 / rate:.1f} s wall, {2000 / cpu_rate:.1f} s of one core")


if __name__ == "__main__":
    main()
