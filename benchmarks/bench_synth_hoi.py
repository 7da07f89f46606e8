"""SynthHOI generation speed (images per minute) at the default settings, one process.

Usage::

    python benchmarks/bench_synth_hoi.py [--n-train 600] [--n-test 200] [--tile 112]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from afford.hoi.synth import generate_synthhoi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--tile", type=int, default=112)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        info = generate_synthhoi(Path(tmp) / "synthhoi", seed=0, n_train=a.n_train, n_test=a.n_test, tile=a.tile)
        seconds = time.perf_counter() - t0
    n = a.n_train + a.n_test
    print(f"SynthHOI {n} images ({info['train']['pairs']} + {info['test']['pairs']} pairs, "
          f"{info['rare']} rare of {info['classes']} classes) in {seconds:.1f} s = {60 * n / seconds:.0f} images/min")


if __name__ == "__main__":
    main()
