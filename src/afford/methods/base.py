"""The method contract: what the engine, the evaluator and refinement may ask of a model.

Two roles, because not every trained model grounds anything (LoopTrans's cluster module is
pretrained without a ``predict``):

- :class:`Trainable`: named losses from a batch, explicit LR groups, a per-step seed hook.
- :class:`Grounder`: maps for (image, label) pairs under one of several named *outputs*, each
  declaring whether it is logits-like (a raw CAM: the ``plsp`` protocol softmaxes it) or scores
  already in [0, 1] (WSMA's refined map), and ``features`` for refinement.

A WSAG :class:`Method` is both. The engine never reaches into a method's attributes (no
``hasattr``, no ``.backbone``): whatever it needs is a hook declared here, with a default.
Images arrive as ``(B, 3, H, W)`` floats in [0, 1]; each backbone applies its own normalisation.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from afford.errors import AffordError, did_you_mean
from afford.labels import LabelSpace
from afford.modules.param_groups import ParamGroup

#: ``logits``: unbounded, raw-CAM-like; ``scores``: already a map in [0, 1].
OutputKind = Literal["logits", "scores"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "scores")

__all__ = ["OUTPUT_KINDS", "Grounder", "InteractionDetector", "LabelSpace", "Method", "OutputKind", "ParamGroup",
           "Trainable"]


class Trainable(nn.Module):
    """Anything the engine's one training loop can optimise."""

    def forward_train(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """Return named scalar losses; ``"loss"`` is the total that is back-propagated."""
        raise NotImplementedError

    def param_groups(self) -> list[ParamGroup]:
        """Explicit parameter groups with the method's LR multipliers (methods.md §0.3)."""
        raise NotImplementedError

    def set_step_seed(self, seed: int, first_row: int = 0) -> None:
        """Seed the model's own random draws (k-means initialisations) before each step.

        The engine calls it with a seed derived from (seed, epoch, step), which makes resume
        exact, and with the position of this process's first sample in the global batch (0
        unless data-parallel): per-sample draws keyed by it are the same however the batch is
        split. Models without their own generators keep this no-op.
        """

    def provenance(self) -> dict[str, Any]:
        """Where the parts that are not trained here came from, for ``run.json`` (e.g. the
        LoopTrans cluster module's file and sha256). Default: nothing to record."""
        return {}

    def check_training(self) -> None:
        """Refuse, in one line naming the setting, to train a configuration that cannot train as the
        paper does (a pretrained tower its recipe loads, left at random weights). Called by the
        engine before anything is written; building the model for import or evaluation never is.
        Default: every configuration trains."""

    def check_record(self, info: dict[str, Any], source: Any) -> None:
        """Refuse, in one line naming ``source`` (the run's ``run.json``), a run record whose weights
        this version of the model cannot hold (an earlier layout), before its keys are compared.
        Default: every record fits."""


class Grounder(nn.Module):
    """Anything that grounds labels in images: an egocentric image + label -> a map."""

    #: output name -> kind; the first entry is the default unless ``default_output`` says otherwise.
    outputs: ClassVar[dict[str, OutputKind]] = {"raw": "logits"}
    default_output: ClassVar[str] = "raw"

    def resolve_output(self, output: str | None) -> str:
        """The named output to use (``None`` = the method's default); AffordError if unknown."""
        name = self.default_output if output is None else output
        if name not in self.outputs:
            raise AffordError(f"output: {type(self).__name__} has no output {name!r}{did_you_mean(name, self.outputs)}; "
                              f"choose from {', '.join(self.outputs)}")
        return name

    def output_kind(self, output: str | None = None) -> OutputKind:
        return self.outputs[self.resolve_output(output)]

    def predict(self, images: torch.Tensor, labels: torch.Tensor, output: str | None = None) -> torch.Tensor:
        """Maps of ``labels`` at feature resolution, ``(B, h, w)``, as the named ``output``."""
        raise NotImplementedError

    def predict_labels(self, image: torch.Tensor, labels: torch.Tensor, output: str | None = None) -> torch.Tensor:
        """Maps of several ``labels`` for one image ``(1, 3, S, S)``, ``(A, h, w)`` (a user asking
        for every affordance). Default: the image repeated once per label; methods whose forward
        yields every class at once override it to answer in one pass."""
        return self.predict(image.expand(len(labels), -1, -1, -1), labels, output)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen per-pixel features ``[(B, D_l, h, w), ...]`` for refinement (AffinityNet).

        A method with two backbones returns the levels of the one its maps live on.
        """
        raise NotImplementedError


class Method(Trainable, Grounder):
    """A WSAG method: trained from image-level labels, grounds affordances.

    Built as ``cls(model_cfg, labels)``; ``labels`` is a :class:`LabelSpace` (a plain list of
    names is accepted as an affordance label space). Batches come from
    :class:`afford.data.agd20k.AffordanceTrainSet`: ``{"exo": (B, N, 3, S, S), "ego": (B, 3, S, S),
    "label": (B,)}``.
    """

    name: ClassVar[str] = "method"

    def __init__(self, labels: LabelSpace | list[str] | tuple[str, ...]) -> None:
        super().__init__()
        self.labels = LabelSpace.coerce(labels)
        if self.labels.task != "affordance":
            raise AffordError(f"{type(self).__name__}: an affordance method needs affordance labels, got {self.labels.task!r}")
        kinds = set(self.outputs.values()) - set(OUTPUT_KINDS)
        if kinds or self.default_output not in self.outputs:
            raise TypeError(f"{type(self).__name__}: outputs must map names to {OUTPUT_KINDS} and contain the default")

    @property
    def classnames(self) -> tuple[str, ...]:
        return self.labels.names


class InteractionDetector(Trainable):
    """An HOI detector: trained on an HOI task, finds scored (human, verb, object) triplets.

    Built as ``cls(model_cfg, labels)`` with an HOI :class:`LabelSpace`. Batches come from
    :class:`afford.hoi.data.HOIImageSet` through :func:`afford.hoi.data.collate_hoi`: ``image``
    ``(B, 3, S, S)`` in [0, 1], per-image ``size`` ``(h, w)``, ``gt``, ``instances`` (cached
    detections or None), ``detr`` (detector inputs), and ``unseen`` (classes left out of the
    loss in zero-shot training).
    """

    name: ClassVar[str] = "interaction_detector"

    def __init__(self, labels: LabelSpace) -> None:
        super().__init__()
        if not isinstance(labels, LabelSpace) or labels.task != "hoi":
            got = labels.task if isinstance(labels, LabelSpace) else type(labels).__name__
            raise AffordError(f"{type(self).__name__}: an HOI detector needs HOI labels, got {got!r}")
        self.labels = labels

    @property
    def classnames(self) -> tuple[str, ...]:
        return self.labels.names

    def detect(self, batch: dict[str, Any]) -> list[Any]:
        """One :class:`afford.hoi.types.ImageDetections` per image (0-based boxes, original frame)."""
        raise NotImplementedError


class ClassCAMs:
    """For methods whose forward gives every class's CAM at once (LOCATE, LoopTrans): ``predict``
    indexes each sample's label, ``predict_labels`` answers all labels of one image in one pass.
    The method defines ``class_cams(images) -> (B, C, h, w)``; mix in before :class:`Method`."""

    def predict(self, images: torch.Tensor, labels: torch.Tensor, output: str | None = None) -> torch.Tensor:
        self.resolve_output(output)  # type: ignore[attr-defined]
        cam = self.class_cams(images)  # type: ignore[attr-defined]
        return cam[torch.arange(cam.shape[0], device=cam.device), labels]

    def predict_labels(self, image: torch.Tensor, labels: torch.Tensor, output: str | None = None) -> torch.Tensor:
        self.resolve_output(output)  # type: ignore[attr-defined]
        return self.class_cams(image)[0, labels]  # type: ignore[attr-defined]
