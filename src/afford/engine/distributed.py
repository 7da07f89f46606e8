"""Data-parallel training under ``torchrun``: the same optimisation as one process, split over N.

Each process (rank) takes an equal slice of every global batch, computes its loss, and the
gradients are averaged across ranks before the optimiser step, as PyTorch's
DistributedDataParallel does (``gloo`` on CPU, ``nccl`` on GPU). The engine all-reduces them
itself, in one flat buffer per step, instead of wrapping the model in
``DistributedDataParallel``: the methods train through ``forward_train`` and some take a branch
only for some samples (a part found or not), and DDP's unused-parameter handling would turn
"no gradient" into a zero gradient, which moves SGD's momentum and weight decay where a single
process would not. Here a parameter gets a gradient when any rank's slice gave it one, exactly
as for the whole batch in one process.

What couples the samples of a batch is made global too: BatchNorm statistics (training mode)
are computed over the global batch (:class:`GlobalBatchNorm`, also on CPU, where PyTorch's
``SyncBatchNorm`` does not run), and per-sample random draws are keyed by the sample's row in
the global batch (:func:`afford.seeding.sample_seeds`). Terms that compare samples with each
other inside a loss (SelectiveCL's contrastive losses, WSMA's shared NMF bases, CLIP4HOI's
normalisation by the batch's positives) see each rank's slice, as in the references' multi-GPU
code; ``docs/distributed.md`` lists them with the measured difference from one process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from afford.errors import AffordError
from afford.global_batch import collective_device, global_sum, sum_over_processes, world_size


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run (``world == 1``: a plain single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: a gloo group with a long timeout for waiting (rank 0 evaluating while the others wait)
    wait_group: Any = field(default=None, compare=False)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 writes the run (run.json, logs, checkpoints) and evaluates."""
        return self.rank == 0

    def shard(self, batch: Sequence[int]) -> list[int]:
        """This rank's equal, contiguous slice of a global batch of sample indices."""
        per = len(batch) // self.world
        return list(batch[self.rank * per : (self.rank + 1) * per])

    def barrier(self) -> None:
        """Wait for every process; the wait may be long (rank 0 evaluating an epoch), so it uses a
        group whose timeout is ``$AFFORD_DIST_WAIT_TIMEOUT`` s (default a day), not the collectives' one."""
        if self.active:
            dist.barrier(group=self.wait_group)


def in_worker() -> bool:
    """This process is one of a data-parallel run's (torchrun set RANK and WORLD_SIZE): a stale
    WORLD_SIZE alone in a shell is not a launch."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def from_env(device_type: str) -> DistContext:
    """The context torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK); joins
    the process group on first call. Without torchrun: a single process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise AffordError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them); "
                          f"got {os.environ.get('WORLD_SIZE')!r}, {os.environ.get('RANK')!r}, "
                          f"{os.environ.get('LOCAL_RANK')!r}") from None
    if world <= 1:
        return DistContext()
    if "RANK" not in os.environ:
        raise AffordError(f"WORLD_SIZE={world} is set but RANK is not, so this is no torchrun worker: unset "
                          "WORLD_SIZE, and train on N processes with --nproc N (or under torchrun)")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get("AFFORD_DIST_TIMEOUT", "1800")))
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timeout)
    wait = datetime.timedelta(seconds=float(os.environ.get("AFFORD_DIST_WAIT_TIMEOUT", "86400")))
    return DistContext(rank, world, local_rank, dist.new_group(backend="gloo", timeout=wait))


def check_batch(global_batch: int, ctx: DistContext) -> None:
    if global_batch % ctx.world:
        raise AffordError(f"train.batch_size: {global_batch} does not split into {ctx.world} processes; the global "
                          f"batch is kept as configured, so choose --nproc dividing it (or another batch size)")


def average_gradients(params: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Average ``.grad`` over ranks in one flat all-reduce; a parameter keeps ``grad = None``
    only when no rank produced one (as one process would on the whole batch)."""
    if not ctx.active:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    dist.all_reduce(has)
    dist.all_reduce(flat)
    flat /= ctx.world
    offset = 0
    for p, n_ranks in zip(params, has.tolist(), strict=True):
        n = p.numel()
        if n_ranks > 0:
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def sum_over_ranks(counts: dict[str, dict[str, int]], ctx: DistContext) -> dict[str, dict[str, int]]:
    """``{group: {name: count}}`` summed over ranks (every rank holds the same keys), e.g. the
    feature cache's hits and misses: rank 0's alone were half the run's lookups on 2 processes."""
    if not ctx.active or not counts:
        return counts
    keys = [(g, k) for g in sorted(counts) for k in sorted(counts[g])]
    t = torch.tensor([counts[g][k] for g, k in keys], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    out: dict[str, dict[str, int]] = {}
    for (g, k), v in zip(keys, t.cpu().tolist(), strict=True):
        out.setdefault(g, {})[k] = int(v)
    return out


def mean_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """The global batch's values of per-rank scalars, for the log: losses (each rank's is its
    slice's mean) are averaged, counts (``n_*``) summed."""
    if not ctx.active or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return {k: float(v) if k.startswith("n_") else float(v) / ctx.world
            for k, v in zip(keys, t.cpu().tolist(), strict=True)}


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch across ranks.

    Two all-reduces with autograd (sum, then sum of squared deviations: the same two-pass
    mean and variance as one process, so the gradient flows to every rank's samples through
    the shared statistics). Evaluation mode and single processes behave as ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        out_dtype, x = x.dtype, x.float()  # statistics in float32, as BatchNorm keeps them under autocast
        n = global_sum(x.numel() // x.shape[1])  # values per channel in the global batch
        mean = sum_over_processes(x.sum((0, 2, 3))) / n
        var = sum_over_processes((x - mean[None, :, None, None]).pow(2).sum((0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / (int(self.num_batches_tracked) + 1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(n - 1, 1), alpha=m)
                self.num_batches_tracked.add_(1)
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(out_dtype)


def use_global_batchnorm(module: nn.Module) -> int:
    """Make every ``nn.BatchNorm2d`` of ``module`` a :class:`GlobalBatchNorm` in place (same
    parameters and buffers, same state-dict keys); returns how many."""
    n = 0
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm
            n += 1
    return n


__all__ = ["DistContext", "GlobalBatchNorm", "average_gradients", "check_batch", "from_env", "mean_over_ranks",
           "use_global_batchnorm"]
