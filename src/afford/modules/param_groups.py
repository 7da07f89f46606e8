"""Explicit per-method learning-rate groups (methods.md §0.3, defect #10).

The references assign LR multipliers by the substring ``"fc"`` in a parameter's name. afford
states each method's assignment as an explicit prefix table instead, so renaming a layer can
never silently change its learning rate; the resulting groups are logged at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn


@dataclass
class ParamGroup:
    """One optimizer group with its LR multiplier; `name` is logged at start-up."""

    name: str
    params: list[nn.Parameter] = field(default_factory=list)
    lr_mult: float = 1.0

# (module-name prefix, weight multiplier, bias multiplier)
Rule = tuple[str, float, float]


def groups_from_rules(
    model: nn.Module, rules: Sequence[Rule], default: tuple[float, float] = (1.0, 2.0),
    other_mult: float | None = None,
) -> list[ParamGroup]:
    """Split trainable parameters into groups by the first matching prefix rule.

    A parameter whose name ends in neither ``weight`` nor ``bias`` (prompt context vectors,
    positional embeddings) gets ``other_mult`` (default: the weight multiplier of its rule).
    """
    groups: dict[tuple[str, float], ParamGroup] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        tag, (w_mult, b_mult) = "default", default
        for prefix, wm, bm in rules:
            if name == prefix or name.startswith(prefix + "."):
                tag, (w_mult, b_mult) = prefix, (wm, bm)
                break
        if name.endswith("bias"):
            kind, mult = "bias", b_mult
        elif name.endswith("weight"):
            kind, mult = "weight", w_mult
        else:
            kind, mult = "other", other_mult if other_mult is not None else w_mult
        key = (f"{tag}:{kind}", mult)
        groups.setdefault(key, ParamGroup(name=f"{tag}:{kind}", lr_mult=mult)).params.append(p)
    return list(groups.values())


def describe_groups(groups: Sequence[ParamGroup], base_lr: float) -> list[dict[str, object]]:
    """Rows for the start-up log: group name, LR, number of tensors and elements."""
    return [
        {"group": g.name, "lr": base_lr * g.lr_mult, "tensors": len(g.params),
         "elements": sum(p.numel() for p in g.params)}
        for g in groups
    ]
