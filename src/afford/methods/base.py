"""The method contract shared by every WSAG method.

A method is a module that (a) turns a training batch into named losses and (b) turns an
egocentric image plus an affordance label into a raw class-activation map. The engine knows
nothing else about it, so LOCATE, WSMA, LoopTrans and SelectiveCL plug in unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class ParamGroup:
    """One optimizer group with its LR multiplier; `name` is logged at start-up."""

    name: str
    params: list[nn.Parameter] = field(default_factory=list)
    lr_mult: float = 1.0


class Method(nn.Module):
    """Base class: subclasses implement the three methods below.

    Batches come from :class:`afford.data.agd20k.AffordanceTrainSet`:
    ``{"exo": (B, N, 3, S, S), "ego": (B, 3, S, S), "label": (B,)}``.
    """

    name: ClassVar[str] = "method"

    def forward_train(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """Return named scalar losses; ``"loss"`` is the total that is back-propagated."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Raw CAM of the given labels at feature resolution, ``(B, h, w)``, no activation."""
        raise NotImplementedError

    def param_groups(self) -> list[ParamGroup]:
        """Explicit parameter groups with the method's LR multipliers (methods.md §0.3)."""
        raise NotImplementedError
