"""Explicit LR groups: the first matching prefix rule wins; a rule that matches nothing or is shadowed by an
earlier rule with other rates is an error, so renaming a layer cannot change its learning rate silently."""

from __future__ import annotations

import pytest
from torch import nn

from afford.modules.param_groups import groups_from_rules


def _model() -> nn.Module:
    m = nn.Module()
    m.aff_fc = nn.Linear(2, 2)
    m.proj = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    m.frozen = nn.Linear(2, 2).requires_grad_(False)
    return m


def test_rules_defaults_and_frozen_parameters() -> None:
    m = _model()
    groups = {g.name: g for g in groups_from_rules(m, [("proj.0", 10.0, 20.0), ("proj", 1.0, 2.0), ("aff_fc", 10.0, 20.0)])}
    rate = {id(p): g.lr_mult for g in groups.values() for p in g.params}
    assert rate[id(m.aff_fc.weight)] == 10.0 and rate[id(m.aff_fc.bias)] == 20.0
    assert rate[id(m.proj[0].weight)] == 10.0 and rate[id(m.proj[1].weight)] == 1.0 and rate[id(m.proj[1].bias)] == 2.0
    assert id(m.frozen.weight) not in rate and len(rate) == 6  # every trainable parameter exactly once


def test_a_rule_that_matches_nothing_or_is_shadowed_is_an_error() -> None:
    with pytest.raises(ValueError, match="rule 'aff_fcx' matches no parameter"):
        groups_from_rules(_model(), [("aff_fcx", 10.0, 20.0)])
    with pytest.raises(ValueError, match="rule 'proj.0' is shadowed by 'proj'"):
        groups_from_rules(_model(), [("proj", 1.0, 2.0), ("proj.0", 10.0, 20.0)])
