"""Counts over the global batch, for losses that average over a subset of it.

A loss averaged over "the samples that have a part" or "the positive pairs" divides by a count
that depends on the batch. In a data-parallel run each process holds a slice of the batch and
the gradients are averaged over processes, so each process must divide by the global count over
the number of processes (not by its own count) for the result to equal one process's gradient
on the whole batch. In a single process these functions return the local values unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_sum(n: torch.Tensor | float) -> float:
    """``n`` summed over the processes of a data-parallel run (a count: no gradient)."""
    value = float(n.detach()) if torch.is_tensor(n) else float(n)
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=n.device if torch.is_tensor(n) else "cpu")
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t)


def per_process_denominator(local_count: torch.Tensor | float, floor: float = 0.0) -> float:
    """``max(global count, floor) / processes``: what each process divides its summed loss by."""
    return max(global_sum(local_count), floor) / world_size()
