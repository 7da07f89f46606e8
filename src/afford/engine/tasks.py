"""What the one training loop trains on: a small task object per kind of training.

The loop (:func:`afford.engine.trainer.train`) owns seeding, the optimizer, checkpoints, resume
and logs; a task owns what differs between kinds of training: the label space, the training
set (which must have ``set_epoch`` so every draw derives from (seed, epoch, index)), its collate
function, how a model is scored during training and which number selects an epoch. Affordance
training is :class:`WSAGTask`; LoopTrans's cluster pretraining (a model with no ``predict``) and
HOI training are further tasks for the same loop, never a second loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.utils.data import Dataset

from afford.data.agd20k import AffordanceTrainSet, Split, TrainImageSet, open_split
from afford.data.transforms import TrainTransform
from afford.errors import AffordError, did_you_mean
from afford.labels import LabelSpace

if TYPE_CHECKING:
    from afford.config import RunConfig


class Task:
    """Base task. Subclasses set ``labels`` and implement :meth:`train_set`; a task that can
    score a model during training implements :meth:`evaluate` and names its selection metric."""

    name: ClassVar[str] = "task"
    #: The metric that ``train.select=best-on-test`` ranks epochs by, and whether lower is better.
    selection_key: ClassVar[str | None] = None
    lower_is_better: ClassVar[bool] = True
    #: Summary entries copied into the epoch history when the task evaluates.
    report_keys: ClassVar[tuple[str, ...]] = ()
    labels: LabelSpace
    collate: Callable[[list[Any]], Any] | None = None

    def train_set(self, cfg: RunConfig) -> Dataset:
        """The epoch-seeded training set (``set_epoch(e)`` is called before each epoch)."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, cfg: RunConfig, device: torch.device, progress: bool) -> dict:
        """Score ``model`` (eval mode is the caller's); tasks without a test set raise."""
        raise AffordError(f"train.select: task {self.name!r} has no evaluation to select an epoch by; use 'last'")

    def run_info(self) -> dict[str, Any]:
        """Extra ``run.json`` fields (where the data came from)."""
        return {}

    def better(self, a: dict, b: dict | None) -> bool:
        """Whether summary ``a`` beats ``b`` on the selection metric (ties keep the earlier)."""
        if b is None:
            return True
        key = self.selection_key
        return a[key] < b[key] if self.lower_is_better else a[key] > b[key]


class WSAGTask(Task):
    """Weakly supervised affordance grounding on an AGD20K-format split (LOCATE, WSMA, ...).

    Selection, when asked for, is the literature's: the lowest test KLD (protocol.md §5).
    """

    name = "affordance"
    selection_key = "KLD"
    lower_is_better = True
    report_keys = ("KLD", "SIM", "NSS", "n_images")

    def __init__(self, split: Split) -> None:
        self.split = split
        self.labels = LabelSpace.affordances(split.affordances)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> WSAGTask:
        return cls(open_split(cfg.data.root, cfg.data.split))

    def train_set(self, cfg: RunConfig, n_exo: int | None = None) -> AffordanceTrainSet:
        """The split's training samples as ``cfg.data`` prepares them (``n_exo`` overrides its count)."""
        d = cfg.data
        return AffordanceTrainSet(
            self.split, n_exo=d.n_exo if n_exo is None else n_exo, sampling=d.sampling, seed=cfg.train.seed,
            cache_images=d.cache_images,
            transform=TrainTransform(resize=d.resize, crop=d.crop, flip=True, square=d.square_resize),
            views=d.cache_views if d.feature_cache else 0,
        )

    def evaluate(self, model: torch.nn.Module, cfg: RunConfig, device: torch.device, progress: bool) -> dict:
        from afford.engine.evaluator import evaluate_method

        return evaluate_method(model, self.split, cfg.eval, device, size=cfg.data.test_size, progress=progress)

    def run_info(self) -> dict[str, Any]:
        return {"split": self.split.name, "data_root": str(self.split.root)}


class ImagePretrainTask(Task):
    """Label-free pretraining on a split's training images (LoopTrans's cluster module).

    No labels are used; the label space is the split's, recorded so the run says which split it
    learned from. There is no evaluation, so epochs are selected by ``last`` only.
    """

    name = "images"

    def __init__(self, split: Split) -> None:
        self.split = split
        self.labels = LabelSpace.affordances(split.affordances)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ImagePretrainTask:
        return cls(open_split(cfg.data.root, cfg.data.split))

    def train_set(self, cfg: RunConfig) -> TrainImageSet:
        d = cfg.data
        return TrainImageSet(self.split, seed=cfg.train.seed, cache_images=d.cache_images,
                             transform=TrainTransform(resize=d.resize, crop=d.crop, flip=True, square=d.square_resize),
                             views=d.cache_views if d.feature_cache else 0)

    def run_info(self) -> dict[str, Any]:
        return {"split": self.split.name, "data_root": str(self.split.root)}


class AffinityHeadTask(WSAGTask):
    """An affinity head trained on a run's CAMs (:mod:`afford.refine.head_training`): the split's
    egocentric training images and their labels. The head has no map of its own to score, so
    epochs are selected by ``last`` only."""

    name = "affinity"
    selection_key = None
    report_keys = ()
    evaluate = Task.evaluate

    def train_set(self, cfg: RunConfig, n_exo: int | None = None) -> AffordanceTrainSet:
        return super().train_set(cfg, n_exo=1)  # the head sees the egocentric image only


def _hoi_task(cfg: RunConfig) -> Task:
    from afford.hoi.task import HOITask  # the HOI package imports this module

    return HOITask.from_config(cfg)


#: task name (``MethodSpec.task``) -> builder from a run config.
TASKS: dict[str, Callable[[RunConfig], Task]] = {"affordance": WSAGTask.from_config,
                                                 "images": ImagePretrainTask.from_config,
                                                 "affinity": AffinityHeadTask.from_config,
                                                 "hoi": _hoi_task}


def task_for(cfg: RunConfig) -> Task:
    """The task the registry names for ``cfg.method``, built from ``cfg``."""
    from afford.factory import method_spec

    name = method_spec(cfg.method).task
    if name not in TASKS:
        raise AffordError(f"method {cfg.method!r}: unknown task {name!r}{did_you_mean(name, TASKS)}")
    return TASKS[name](cfg)
