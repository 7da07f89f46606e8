"""The affinity head as a model the engine trains, on a frozen run's CAMs (affinity.md §12.2).

Why through the engine: training the head is training like any other — it must resume exactly
after a kill, be reproducible from a seed, log, and run data-parallel — so it is a
:class:`~afford.methods.base.Trainable` trained by :func:`afford.engine.trainer.train` on the
``affinity`` task (the teacher run's egocentric training images), never a second loop.

Per step: the teacher's frozen features and the CAMs of each image's own label, confident-region
labels from the CAMs (§12.1, optional CRF at image resolution), psa pair masks over the half disc,
the §5 loss. The teacher is held outside the module tree, so it is neither trained, nor saved in
the head's weights, nor moved by ``.to()`` (it follows the batch's device).

psa's optimiser as executed (affinity.md §2: SGD, momentum slot 5e-4, weight decay 5e-4, poly
power 0.9, per step) is the packaged preset ``affinity_refiner``; psa gave its new layers 10× a
base rate of 0.1 while also training the backbone, afford freezes the backbone, so ``train.lr``
is the head's rate and is meant to be tuned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from afford.errors import AffordError
from afford.labels import LabelSpace
from afford.methods.base import ParamGroup, Trainable
from afford.modules.param_groups import groups_from_rules
from afford.refine.affinity_head import AffinityHead, pair_affinity, pair_labels
from afford.refine.affinity_loss import affinity_loss
from afford.refine.labels import affinity_labels, default_crf, to_rgb255

LABEL_MODES = ("alpha", "fixed")


@dataclass
class AffinityHeadConfig:
    """The head and its labels: psa's α 4/32 labels and radius 5 by default (affinity.md §3, §5)."""

    teacher: str = ""  # run folder whose CAMs label, and whose frozen features feed, the head
    radius: int = 5
    label_mode: str = "alpha"  # "alpha" (psa) | "fixed" (IRN thresholds)
    alpha_low: float = 4.0
    alpha_high: float = 32.0
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    crf: bool = False  # psa's CRF for "alpha", IRN's for "fixed"
    widths: list[int] = field(default_factory=list)  # per feature level; [] = max(8, D_l // 8)


def check_head_config(cfg: AffinityHeadConfig) -> None:
    """The label settings that can make training labels (affinity.md §3.1, §12.1), before anything runs:
    α < 1 or α_low >= α_high left no foreground or no ignore band, and the head learnt nothing."""
    if cfg.label_mode not in LABEL_MODES:
        raise AffordError(f"model.label_mode: expected one of {', '.join(LABEL_MODES)}, got {cfg.label_mode!r}")
    if cfg.label_mode == "alpha" and not 1.0 <= cfg.alpha_low < cfg.alpha_high < float("inf"):
        raise AffordError(f"model.alpha_low, model.alpha_high: expected 1 <= alpha_low < alpha_high (psa: 4 and 32), "
                          f"got {cfg.alpha_low} and {cfg.alpha_high}")
    if cfg.label_mode == "fixed" and not 0.0 <= cfg.bg_threshold < cfg.fg_threshold <= 1.0:
        raise AffordError(f"model.bg_threshold, model.fg_threshold: expected 0 <= bg_threshold < fg_threshold <= 1 "
                          f"(IRN: 0.05 and 0.30), got {cfg.bg_threshold} and {cfg.fg_threshold}")
    if cfg.radius < 2:
        raise AffordError(f"model.radius: expected at least 2, got {cfg.radius}")
    if any(w < 1 for w in cfg.widths):
        raise AffordError(f"model.widths: expected positive widths, got {cfg.widths}")


def label_settings(cfg: AffinityHeadConfig) -> dict[str, Any]:
    """How the training labels were made, as a report names them: the mode's own settings and the CRF."""
    crf = default_crf(cfg.label_mode) if cfg.crf else None
    values = ({"alpha_low": cfg.alpha_low, "alpha_high": cfg.alpha_high} if cfg.label_mode == "alpha"
              else {"fg_threshold": cfg.fg_threshold, "bg_threshold": cfg.bg_threshold})
    return {"label_mode": cfg.label_mode, **values, "crf": crf.to_dict() if crf is not None else None}


def make_labels(cams: torch.Tensor, images: torch.Tensor, grid: tuple[int, int], cfg: AffinityHeadConfig) -> torch.Tensor:
    """(B, h, w) CAMs -> (B, *grid) labels 0/1/255 per ``cfg`` (CRF on the [0, 1] images as RGB 0..255)."""
    crf = default_crf(cfg.label_mode) if cfg.crf else None
    return affinity_labels(
        cams, mode=cfg.label_mode, alpha_low=cfg.alpha_low, alpha_high=cfg.alpha_high,
        fg_threshold=cfg.fg_threshold, bg_threshold=cfg.bg_threshold, size=grid,
        image=to_rgb255(images.float()) if crf is not None else None, crf=crf,
    )


def load_teacher(run_dir: str, labels: LabelSpace) -> Any:
    """The trained run whose CAMs teach the head, frozen; its classes must be the task's."""
    from afford.checkpoint import load_run
    from afford.factory import affordance_run_info

    if not run_dir:
        raise AffordError("model.teacher: the run folder whose CAMs train the affinity head is required")
    affordance_run_info(run_dir)  # a run that makes maps, else one line saying what it is
    run = load_run(Path(run_dir))
    if run.classes != labels.names:
        raise AffordError(f"model.teacher: {run_dir} was trained on {len(run.classes)} classes, the training split "
                          f"has {len(labels.names)}" + ("" if len(run.classes) != len(labels.names) else
                                                         " in another order"))
    return run


class AffinityHeadTraining(AffinityHead, Trainable):
    """An :class:`AffinityHead` (same weights, same keys) that trains on its teacher's CAMs."""

    name = "affinity"

    def __init__(self, cfg: AffinityHeadConfig, labels: LabelSpace | Sequence[str], teacher: Any = None) -> None:
        check_head_config(cfg)
        if teacher is None:
            run = load_teacher(cfg.teacher, LabelSpace.coerce(labels))
            teacher, size = run.method, run.config.data.test_size
        else:
            size = 64
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        with torch.no_grad():
            dims = [int(f.shape[1]) for f in teacher.features(torch.zeros(1, 3, size, size))]
        super().__init__(dims, cfg.widths or None)
        self.cfg = cfg
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not trained, saved or moved

    def _teacher_on(self, device: torch.device) -> Any:
        t = self.teacher
        if next(t.parameters()).device != device:
            t.to(device)
        return t.eval()

    def forward_train(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        images, labels = batch["ego"], batch["label"]
        teacher = self._teacher_on(images.device)
        with torch.no_grad():  # the frozen teacher: features, CAMs, then confident-region labels (§12.1)
            feats = [f.detach().float() for f in teacher.features(images)]
            cams = teacher.predict(images, labels).detach().float()
            target = make_labels(cams, images, tuple(feats[0].shape[-2:]), self.cfg).to(feats[0].device)
        aff = pair_affinity(self(feats), self.cfg.radius)  # half-disc pairs (§3.4), the §5 loss
        return affinity_loss(aff, *pair_labels(target, self.cfg.radius))

    def param_groups(self) -> list[ParamGroup]:
        """One rate for the whole head (its convolutions have no bias)."""
        return groups_from_rules(self, [], default=(1.0, 1.0))

    def provenance(self) -> dict[str, Any]:
        from afford.checkpoint import WEIGHTS, file_sha256

        teacher = {"path": str(Path(self.cfg.teacher).resolve())} if self.cfg.teacher else {}
        if self.cfg.teacher and (Path(self.cfg.teacher) / WEIGHTS).is_file():
            teacher["sha256"] = file_sha256(Path(self.cfg.teacher) / WEIGHTS)
        return {"teacher": teacher, "head": self.config()}
