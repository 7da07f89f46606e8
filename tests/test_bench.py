"""``afford bench``: the tower clock behind the per-tower shares, and the evaluation benchmark."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from afford.bench import TowerClock, bench_eval, count_flops, peak_flops, time_step, timed_rounds
from afford.cli import main


class _Slow(torch.nn.Module):
    def __init__(self, trainable: bool) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.lin.requires_grad_(trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return self.lin(x)


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tower = _Slow(trainable=False)
        self.head = _Slow(trainable=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(x))


def test_tower_clock_times_frozen_children_only_and_only_while_on() -> None:
    m = _Model()
    clock = TowerClock(m, lambda: None)
    assert list(clock.total) == ["tower"]  # the trainable head is not a tower
    m(torch.zeros(1, 2))
    assert clock.total["tower"] == 0.0  # off: nothing recorded
    clock.on = True
    m(torch.zeros(1, 2))
    m(torch.zeros(1, 2))
    assert 0.04 <= clock.total["tower"] < 0.2


@pytest.mark.parametrize("separate", [False, True])
def test_time_step_keeps_the_clock_syncs_out_of_the_timed_step_when_asked(separate: bool) -> None:
    m = _Model()  # its frozen tower sleeps 20 ms, its head 20 ms
    in_step = {"on": False}

    def sync() -> None:  # a device sync that costs 50 ms inside the step (the clock's, around the tower)
        if in_step["on"]:
            time.sleep(0.05)

    def step() -> None:
        in_step["on"] = True
        try:
            m(torch.zeros(1, 2))
        finally:
            in_step["on"] = False

    floor_s, step_s, shares = time_step(m, step, lambda: None, 2, sync, separate_clock=separate)
    assert list(shares) == ["tower"] and 0.1 < shares["tower"] < 0.9
    assert step_s > floor_s
    if separate:  # timed bare: the tower and the head, no sync
        assert 0.04 <= step_s < 0.09
    else:  # the clock's two syncs are inside the timed step
        assert step_s >= 0.14


def test_flop_count_covers_forward_and_backward_of_what_trains() -> None:
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64)
    fwd = 2 * 8 * 64 * 32
    with torch.no_grad():
        assert count_flops(lambda: lin(x)) == fwd
    # backward: the weight's gradient only (x needs none), as a frozen input to a trained head
    assert count_flops(lambda: lin(x).sum().backward()) == 2 * fwd
    assert peak_flops(torch.device("cpu"), lambda: None, n=256, tries=2) > 1e8  # any CPU does 0.1 GFLOP/s


def test_timed_rounds_alternate_what_is_compared() -> None:
    calls: list[str] = []
    times = timed_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, lambda: None)
    assert calls == ["a", "b"] * 3 and [len(v) for v in times.values()] == [3, 3]


def test_bench_eval_scores_every_image_through_the_evaluator(tmp_path: Path, capsys) -> None:
    r = bench_eval(n_images=12, batch_size=8, progress=False)
    assert r["n_images"] == 12 and r["score_s"] > 0 and r["eval_s"] > 0
    assert r["eval_images_per_s"] == 12 / r["eval_s"]
    out = tmp_path / "eval.json"
    assert main(["bench", "--eval", "6", "--quiet", "--json", str(out)]) == 0
    assert "scoring 6 test images" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["n_images"] == 6 and (r["device"], r["bf16"]) == ("cpu", False) and r["threads"] >= 1 and r["torch"]


def test_bad_bench_arguments_are_one_line(capsys) -> None:
    from afford.cli import main

    assert main(["bench", "--device", "foo", "--methods", "locate"]) == 2
    assert "--device: unknown device 'foo'" in capsys.readouterr().err
    for argv in (["bench", "--threads", "-1"], ["bench", "--eval", "0"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_a_bench_row_and_its_table_follow_from_the_measured_times_and_flops() -> None:
    """One real row (LOCATE, one image per step): each ratio and each 'needed GFLOP/s' is the formula of
    the measured fields, the cached step computes the heads alone, and the table prints the row's values."""
    from afford.bench import TARGET_OVER_FLOOR, TARGET_SPEEDUP, bench_method, format_bench

    r = bench_method("locate", steps=1, batch_size=1)
    assert r["batch"] == 1 and r["images_per_step"] == 4 and r["towers"] == ["backbone"]
    assert r["uncached_over_floor"] == pytest.approx(r["uncached_s"] / r["floor_s"])
    assert r["speedup"] == pytest.approx(r["uncached_s"] / r["cached_s"])
    assert r["heads_gflop"] == pytest.approx(r["step_gflop"] - r["floor_gflop"])
    assert r["cached_gflop"] == pytest.approx(r["heads_gflop"], rel=0.01)  # no tower forward once cached
    assert r["floor_gflop"] > r["heads_gflop"] > 0
    assert r["needed_gflops_over_floor"] == pytest.approx(r["heads_gflop"] / ((TARGET_OVER_FLOOR - 1) * r["floor_s"]))
    assert r["needed_gflops_speedup"] == pytest.approx(r["cached_gflop"] / (r["uncached_s"] / TARGET_SPEEDUP))
    assert r["infer_images_per_s"] > 0 and set(r["tower_share"]) == {"backbone"}
    table = format_bench([r], "head")
    assert f"| locate | 1 (4) | {r['floor_s']:.2f} | {r['uncached_s']:.2f} | {r['uncached_over_floor']:.2f} |" in table
    assert f"{r['speedup']:.1f}×" in table and f"| {r['needed_gflops_over_floor']:.0f} |" in table
