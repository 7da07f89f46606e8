"""Seeds derived from integers, stable across platforms and process counts.

Every random draw of training is keyed by what it is for (seed, epoch, step, sample position),
never by how many draws came before: that makes resume exact and a data-parallel run draw the
same numbers as a single process.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 mixing), stable across platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def sample_seeds(step_seed: int, first_row: int, n: int) -> list[int]:
    """One seed per sample of a (shard of a) batch: sample ``i`` is row ``first_row + i`` of the
    global batch, so its draws do not depend on how the batch is split across processes."""
    return [derive_seed(step_seed, first_row + i) for i in range(n)]


@contextlib.contextmanager
def preserved_global_random_state() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global generators and cuDNN's determinism flags on exit.

    Training seeds them all for itself; a notebook that trains and then draws kept drawing from the
    run's seed, and cuDNN stayed deterministic for the rest of the process.
    """
    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
