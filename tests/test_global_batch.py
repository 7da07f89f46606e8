"""The global batch inside a loss, in two real gloo processes against one process on the whole batch:
BatchNorm statistics and their gradient, a contrastive loss over gathered rows and its gradient,
and global counts (also when one process has nothing to count)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from afford.engine.distributed import GlobalBatchNorm
from afford.global_batch import gather_rows, local_rows, mean_over_processes, per_process_denominator
from afford.losses.contrastive import supcon_loss

WORLD, PER = 2, 3


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(WORLD * PER, 4, 5, 5, generator=g) * 2 + 1,
            "w": torch.randn(WORLD * PER, 4, 5, 5, generator=g),
            "f": torch.randn(WORLD * PER, 8, generator=g),
            "labels": torch.tensor([0, 1, 0, 1, 1, 0])}


def _rank(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    d, mine = _data(), slice(rank * PER, (rank + 1) * PER)
    bn = GlobalBatchNorm(4)
    x = d["x"][mine].clone().requires_grad_()
    (bn(x) * d["w"][mine]).sum().backward()  # this process's part of the summed objective
    f = d["f"][mine].clone().requires_grad_()
    feats = nn.functional.normalize(gather_rows(f), dim=-1)
    anchors = torch.zeros(WORLD * PER, dtype=torch.bool)
    anchors[mine] = True
    loss = supcon_loss(feats, gather_rows(d["labels"][mine]), anchor_mask=anchors, global_batch=True)
    loss.backward()
    counts = [per_process_denominator(torch.tensor(4 if rank == 0 else 0), floor=1.0),  # one side has none
              per_process_denominator(0.0, floor=1.0)]
    mean = mean_over_processes(d["f"][mine].mean(0))  # WSMA's NMF bases: the global batch's mean
    torch.save({"x_grad": x.grad, "bn_w_grad": bn.weight.grad, "bn_b_grad": bn.bias.grad, "running": bn.running_var,
                "running_mean": bn.running_mean, "f_grad": f.grad, "loss": loss.detach(), "counts": counts,
                "mean": mean, "local": local_rows(PER)}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_global_batch_terms_in_two_processes_equal_one_process(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(WORLD)]

    d = _data()
    bn = nn.BatchNorm2d(4)
    x = d["x"].clone().requires_grad_()
    (bn(x) * d["w"]).sum().backward()
    torch.testing.assert_close(torch.cat([ri["x_grad"] for ri in r]), x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r[0]["bn_w_grad"] + r[1]["bn_w_grad"], bn.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r[0]["bn_b_grad"] + r[1]["bn_b_grad"], bn.bias.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r[0]["running"], bn.running_var)  # unbiased, global count
    torch.testing.assert_close(r[1]["running"], bn.running_var)
    for ri in r:  # the running mean too (the global batch's mean, not this process's)
        torch.testing.assert_close(ri["running_mean"], bn.running_mean)
        torch.testing.assert_close(ri["mean"], d["f"].mean(0))
    assert r[0]["local"].tolist() == [True] * PER + [False] * PER and r[1]["local"].tolist() == [False] * PER + [True] * PER

    f = d["f"].clone().requires_grad_()
    loss = supcon_loss(nn.functional.normalize(f, dim=-1), d["labels"])
    loss.backward()
    # the mean over processes of their losses is the one-process loss, and averaging the
    # processes' gradients (the engine divides by the world size) gives its gradient
    torch.testing.assert_close((r[0]["loss"] + r[1]["loss"]) / WORLD, loss.detach())
    torch.testing.assert_close(torch.cat([ri["f_grad"] for ri in r]) / WORLD, f.grad, rtol=1e-4, atol=1e-6)

    assert r[0]["counts"] == r[1]["counts"] == [2.0, 0.5]  # (4 + 0) / 2; max(0, 1) / 2
