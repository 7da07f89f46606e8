"""The one training loop runs any task: a model with no ``predict`` (like LoopTrans's cluster
pretraining) trains, checkpoints and resumes exactly through the same engine as LOCATE."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from afford import checkpoint as ckpt
from afford.config import build_config
from afford.engine.tasks import Task
from afford.engine.trainer import train
from afford.errors import AffordError
from afford.labels import LabelSpace
from afford.methods.base import Grounder, Trainable
from afford.modules.param_groups import ParamGroup


class Points(Dataset):
    """Two noisy clusters; each epoch redraws its noise from (seed, epoch, index) only."""

    def __init__(self, n: int = 24) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        centre = torch.tensor([2.0, 0.0]) if i % 2 else torch.tensor([-2.0, 1.0])
        return {"x": centre + 0.3 * torch.randn(2, generator=g)}


class Centres(Trainable):
    """Two learnable centres pulled to the points (soft k-means); random restarts of the
    assignment temperature come from the model's own generator, seeded by the engine per step."""

    def __init__(self) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.tensor([[0.5, 0.0], [-0.5, 0.0]]))
        self._gen = torch.Generator()
        self.seeds: list[int] = []

    def set_step_seed(self, seed: int, first_row: int = 0) -> None:
        self._gen.manual_seed(seed)
        self.seeds.append(seed)

    def forward_train(self, batch: dict, epoch: int) -> dict:
        tau = 0.5 + torch.rand((), generator=self._gen)
        d = torch.cdist(batch["x"], self.centres)
        w = torch.softmax(-d / tau, dim=1).detach()
        loss = (w * d.pow(2)).sum(1).mean()
        return {"loss": loss, "tau": tau}

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("centres", [self.centres], 1.0)]


class PointsTask(Task):
    name = "points"

    def __init__(self) -> None:
        self.labels = LabelSpace.affordances(("near", "far"))

    def train_set(self, cfg):
        return Points()


def _cfg(root, *extra: str):
    return build_config("locate", overrides=[f"data.root={root}", "train.batch_size=4", "train.lr=0.1",
                                             "train.scheduler=none", "train.nesterov=false", *extra])


def _build(name, model_cfg, labels):
    return Centres()


def test_a_model_without_predict_trains_through_the_same_loop(tmp_path):
    assert not isinstance(Centres(), Grounder)  # nothing to ground: no predict, no outputs
    run = tmp_path / "run"
    res = train(_cfg(tmp_path, "train.epochs=6"), run, progress=False, task=PointsTask(), build_method=_build)
    assert res.epochs_done == 6 and [h["epoch"] for h in res.history] == list(range(6))
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0]  # the centres moved onto the clusters
    centres = load_file(str(run / ckpt.WEIGHTS))["centres"]
    assert torch.cdist(centres, torch.tensor([[2.0, 0.0], [-2.0, 1.0]])).min(1).values.max() < 0.5
    info = json.loads((run / ckpt.RUN_FILE).read_text())
    assert info["task"] == "points" and info["labels"] == {"task": "affordance", "names": ["near", "far"]}
    start = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert start["task"] == "points" and start["param_groups"][0]["group"] == "centres"


def test_a_resumed_task_run_equals_an_uninterrupted_one(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    train(_cfg(tmp_path, "train.epochs=3"), ref, progress=False, task=PointsTask(), build_method=_build)
    train(_cfg(tmp_path, "train.epochs=1"), cut, progress=False, task=PointsTask(), build_method=_build)
    train(_cfg(tmp_path, "train.epochs=3"), cut, resume=True, progress=False, task=PointsTask(), build_method=_build)
    assert torch.equal(load_file(str(ref / ckpt.WEIGHTS))["centres"], load_file(str(cut / ckpt.WEIGHTS))["centres"])


def test_selection_needs_a_task_that_evaluates(tmp_path):
    with pytest.raises(AffordError, match="task 'points' has no test evaluation"):
        train(_cfg(tmp_path, "train.epochs=1", "train.select=best-on-test"), tmp_path / "r", progress=False,
              task=PointsTask(), build_method=_build)
