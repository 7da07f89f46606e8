"""The global batch inside a loss: counts over it, and its rows gathered from every process.

A loss averaged over "the samples that have a part" or "the positive pairs" divides by a count
that depends on the batch. In a data-parallel run each process holds a slice of the batch and
the gradients are averaged over processes, so each process must divide by the global count over
the number of processes (not by its own count) for the result to equal one process's gradient
on the whole batch. A loss that compares samples with each other (a contrastive loss) needs the
other processes' samples: :func:`gather_rows` concatenates every process's rows in global batch
order and routes the gradient back to the process each row came from. In a single process these
functions return the local values unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def collective_device() -> str:
    """Where a small tensor must live to be reduced: nccl reduces CUDA tensors only, gloo CPU ones."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def global_sum(n: torch.Tensor | float) -> float:
    """``n`` summed over the processes of a data-parallel run (a count: no gradient)."""
    value = float(n.detach()) if torch.is_tensor(n) else float(n)
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return float(t)


def per_process_denominator(local_count: torch.Tensor | float, floor: float = 0.0) -> float:
    """``max(global count, floor) / processes``: what each process divides its summed loss by."""
    return max(global_sum(local_count), floor) / world_size()


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


class _GatherRows(torch.autograd.Function):
    """All processes' ``x`` concatenated along dim 0; backward: the sum over processes of the
    gradient of the concatenation, sliced to this process's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's context
        ctx.rows = x.shape[0]
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        start = rank() * ctx.rows
        return g[start : start + ctx.rows]


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``x`` (equal counts), in global batch order, with gradient."""
    if world_size() == 1:
        return x
    return _GatherRows.apply(x) if x.requires_grad else _all_gather(x)


def local_rows(n_local: int, device: torch.device | None = None) -> torch.Tensor:
    """``(n_local * processes,)`` bool: which rows of a :func:`gather_rows` result are this process's."""
    mask = torch.zeros(n_local * world_size(), dtype=torch.bool, device=device)
    mask[rank() * n_local : (rank() + 1) * n_local] = True
    return mask


def mean_over_processes(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over processes (no gradient): with equal slices, the mean of per-slice
    means is the global batch's mean."""
    if world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world_size()


class _SumOverProcesses(torch.autograd.Function):
    """``all_reduce(SUM)`` with its gradient: the sum over processes of the outputs' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's context
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        g = grad.clone()
        dist.all_reduce(g)
        return g


def sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over processes, with gradient (a statistic of the global batch that every
    process's samples feed, e.g. BatchNorm's sums). One process: ``x``."""
    return x if world_size() == 1 else _SumOverProcesses.apply(x)
