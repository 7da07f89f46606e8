"""Seeds derived from integers, stable across platforms and process counts.

Every random draw of training is keyed by what it is for (seed, epoch, step, sample position),
never by how many draws came before: that makes resume exact and a data-parallel run draw the
same numbers as a single process.
"""

from __future__ import annotations


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
