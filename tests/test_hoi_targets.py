"""Pair targets (hoi.md §3.3 last bullet, §12 box conventions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afford.errors import AffordError
from afford.hoi.targets import pair_targets
from afford.hoi.types import ImageGT

C = 10
# 0-based detector versions of the GT boxes below (x1 - 1, y1 - 1, x2, y2).
H = [0.0, 0.0, 10.0, 10.0]  # area 100
A = [20.0, 0.0, 40.0, 20.0]
B = [50.0, 0.0, 60.0, 10.0]


def _gt() -> ImageGT:
    """One human with two objects: (H, A) carries HOIs 3 and 5 (verbs 1, 2), (H, B) carries HOI 7 (verb 1)."""
    h = [1, 1, 10, 10]
    a = [21, 1, 40, 20]
    b = [51, 1, 60, 10]
    return ImageGT(boxes_h=np.array([h, h, h], dtype=np.float64),
                   boxes_o=np.array([a, a, b], dtype=np.float64),
                   hoi=np.array([3, 5, 7]), obj=np.array([0, 0, 1]), verb=np.array([1, 2, 1]))


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def _pos(t: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(r).flatten().tolist()) for r in t]


def test_exact_boxes_get_all_their_labels_and_nothing_else():
    t = pair_targets(_t([H, H]), _t([A, B]), _gt(), C)
    assert t.shape == (2, C) and t.dtype == torch.float32
    assert set(t.unique().tolist()) <= {0.0, 1.0}
    assert _pos(t) == [{3, 5}, {7}]


def test_gt_conversion_is_applied():
    # Tiny 1-based box [1, 1, 2, 2] is [0, 0, 2, 2] for the detector; the raw numbers overlap it by 1/4.
    gt = ImageGT(boxes_h=np.array([[1.0, 1, 2, 2]]), boxes_o=np.array([[5.0, 5, 6, 6]]),
                 hoi=np.array([0]), obj=np.array([0]), verb=np.array([0]))
    conv = pair_targets(_t([[0, 0, 2, 2]]), _t([[4, 4, 6, 6]]), gt, 2)
    raw = pair_targets(_t([[1, 1, 2, 2]]), _t([[5, 5, 6, 6]]), gt, 2)
    assert _pos(conv) == [{0}] and _pos(raw) == [set()]


@pytest.mark.parametrize(("x2", "positive"), [(19.0, True), (20.0, True), (21.0, False)])
def test_threshold_on_human_iou(x2, positive):
    # Widen the human box only: IoU = 100 / (10 * x2) -> 0.526, exactly 0.5 (>= keeps it), 0.476.
    t = pair_targets(_t([[0, 0, x2, 10]]), _t([A]), _gt(), C)
    assert _pos(t) == [{3, 5} if positive else set()]


@pytest.mark.parametrize(("width", "positive"), [(19.0, True), (20.0, True), (21.0, False)])
def test_threshold_on_object_iou_uses_the_min(width, positive):
    # Object B widened to the left, human exact: IoU = 100 / (10 * width) -> 0.526, 0.5, 0.476.
    t = pair_targets(_t([H]), _t([[60 - width, 0, 60, 10]]), _gt(), C)
    assert _pos(t) == [{7} if positive else set()]


def test_swapped_pair_gets_nothing():
    t = pair_targets(_t([A, B]), _t([H, H]), _gt(), C)
    assert t.sum() == 0


def test_multi_label_accumulates_over_gt_pairs():
    # Two GT pairs with nearly equal object boxes: one detection matches both and takes both classes.
    gt = ImageGT(boxes_h=np.array([[1.0, 1, 10, 10]] * 2), boxes_o=np.array([[21.0, 1, 40, 20], [21.0, 1, 40, 22]]),
                 hoi=np.array([2, 8]), obj=np.array([0, 0]), verb=np.array([0, 0]))
    t = pair_targets(_t([H]), _t([[20, 0, 40, 21]]), gt, C)
    assert _pos(t) == [{2, 8}]


def test_verb_mode_uses_gt_verb():
    t = pair_targets(_t([H, H]), _t([A, B]), _gt(), 4, label="verb")
    assert t.shape == (2, 4)
    assert _pos(t) == [{1, 2}, {1}]


def test_ignore_zeroes_columns():
    t = pair_targets(_t([H, H]), _t([A, B]), _gt(), C, ignore=[5, 7])
    assert _pos(t) == [{3}, set()]
    assert t[:, [5, 7]].sum() == 0


def test_empty_gt_and_empty_pairs_shapes():
    empty = ImageGT(boxes_h=np.zeros((0, 4)), boxes_o=np.zeros((0, 4)), hoi=np.zeros(0, dtype=np.int64),
                    obj=np.zeros(0, dtype=np.int64), verb=np.zeros(0, dtype=np.int64))
    t = pair_targets(_t([H, H, H]), _t([A, B, A]), empty, C)
    assert t.shape == (3, C) and t.sum() == 0
    t = pair_targets(torch.zeros(0, 4), torch.zeros(0, 4), _gt(), C)
    assert t.shape == (0, C)


@pytest.mark.parametrize("kwargs", [dict(label="object"), dict(ignore=[C]), dict(num_classes=5)])
def test_bad_input_raises(kwargs):
    args = dict(num_classes=C) | kwargs
    with pytest.raises(AffordError) as e:
        pair_targets(_t([H]), _t([A]), _gt(), **args)
    assert "\n" not in str(e.value)


def test_mismatched_pair_shapes_raise():
    with pytest.raises(AffordError):
        pair_targets(_t([H, H]), _t([A]), _gt(), C)
