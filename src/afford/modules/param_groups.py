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

    A rule that matches no parameter (a renamed layer) or is shadowed by an earlier rule with other
    rates is a ValueError, a programming error of the method's table, so a rename cannot pass silently.

    A parameter whose name ends in neither ``weight`` nor ``bias`` (prompt context vectors,
    positional embeddings) gets ``other_mult`` (default: the weight multiplier of its rule).
    """
    groups: dict[tuple[str, float], ParamGroup] = {}
    used: set[str] = set()
    for name, p in model.named_parameters():
        hits = [r for r in rules if name == r[0] or name.startswith(r[0] + ".")]
        used.update(r[0] for r in hits[:1])
        if not p.requires_grad:
            continue
        tag, (w_mult, b_mult) = "default", default
        if hits:
            tag, w_mult, b_mult = hits[0]
            narrower = [r for r in hits[1:] if r[0].startswith(hits[0][0] + ".") and r[1:] != hits[0][1:]]
            if narrower:  # a later, narrower rule would never apply
                raise ValueError(f"param groups of {type(model).__name__}: rule {narrower[0][0]!r} is shadowed by "
                                 f"{hits[0][0]!r} for {name}; list the narrower prefix first")
        if name.endswith("bias"):
            kind, mult = "bias", b_mult
        elif name.endswith("weight"):
            kind, mult = "weight", w_mult
        else:
            kind, mult = "other", other_mult if other_mult is not None else w_mult
        key = (f"{tag}:{kind}", mult)
        groups.setdefault(key, ParamGroup(name=f"{tag}:{kind}", lr_mult=mult)).params.append(p)
    unused = [r[0] for r in rules if r[0] not in used]
    if unused:  # a renamed layer: its parameters fell to the default rate without a word
        raise ValueError(f"param groups of {type(model).__name__}: rule {unused[0]!r} matches no parameter")
    return list(groups.values())


def describe_groups(groups: Sequence[ParamGroup], base_lr: float) -> list[dict[str, object]]:
    """Rows for the start-up log: group name, LR, number of tensors and elements."""
    return [
        {"group": g.name, "lr": base_lr * g.lr_mult, "tensors": len(g.params),
         "elements": sum(p.numel() for p in g.params)}
        for g in groups
    ]
