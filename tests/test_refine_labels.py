"""Affinity labels from one affordance map (affinity.md §3.3, §12.1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from afford.errors import AffordError
from afford.refine.crf import CRFParams, unary_from_labels
from afford.refine.labels import (
    IGNORE,
    affinity_labels,
    alpha_threshold,
    background_score,
    minmax,
    to_rgb255,
)


@pytest.mark.parametrize(("alpha", "t"), [(4, 0.2755), (16, 0.1228), (24, 0.0939), (32, 0.0770)])
def test_alpha_threshold_table(alpha: float, t: float) -> None:
    got = alpha_threshold(alpha)
    assert got == pytest.approx(t, abs=1e-4)
    assert (1 - got) ** alpha == pytest.approx(got, abs=1e-9)


def _row(values: list[float]) -> torch.Tensor:
    """A 1×len CAM with known min-max levels, given as raw scores (×7 + 3) to exercise minmax."""
    return torch.tensor(values).view(1, 1, -1) * 7.0 + 3.0


def test_alpha_mode_hand_made_cam() -> None:
    c = [0.0, 0.05, 0.076, 0.078, 0.2, 0.275, 0.276, 0.5, 1.0]
    labels = affinity_labels(_row(c))
    #        bg  bg  bg  ign  ign  ign  fg fg fg   (bg ⇔ c ≤ 0.0770, fg ⇔ c > 0.2755)
    assert labels.flatten().tolist() == [0, 0, 0, IGNORE, IGNORE, IGNORE, 1, 1, 1]
    assert labels.dtype == torch.long


def test_alpha_mode_is_argmax_of_background_pairs() -> None:
    cams = torch.rand(2, 9, 11, generator=torch.Generator().manual_seed(0))
    c = minmax(cams)
    labels = affinity_labels(cams, alpha_low=4, alpha_high=32)
    la = torch.stack([background_score(c, 4), c], 1).argmax(1)
    ha = torch.stack([background_score(c, 32), c], 1).argmax(1)
    expected = torch.where(ha == 0, 0, torch.where(la == 1, 1, IGNORE))
    assert torch.equal(labels, expected)
    assert (labels == 0).any() and (labels == 1).any() and (labels == IGNORE).any()


def test_fixed_mode_thresholds() -> None:
    c = [0.0, 0.049, 0.051, 0.299, 0.301, 1.0]
    labels = affinity_labels(_row(c), mode="fixed")
    assert labels.flatten().tolist() == [0, 0, IGNORE, IGNORE, 1, 1]


def test_size_resamples_the_map() -> None:
    cams = torch.zeros(1, 4, 4)
    cams[:, :2] = 1.0  # top half foreground
    labels = affinity_labels(cams, size=(8, 8))
    assert labels.shape == (1, 8, 8)
    assert (labels[0, :3] == 1).all() and (labels[0, 5:] == 0).all()


def test_crf_pulls_labels_to_the_colour_edge() -> None:
    """A CAM that spills 2 px over an object's edge: without CRF the spill is foreground; the
    bilateral term sees the spill has background colour, so low-α CRF no longer calls it fg."""
    image = torch.full((1, 3, 32, 32), 30.0)
    image[:, :, 10:22, 10:22] = 200.0
    cams = torch.zeros(1, 32, 32)
    cams[:, 8:24, 8:24] = 0.5
    cams[:, 10:22, 10:22] = 1.0
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[8:24, 8:24] = True
    ring[10:22, 10:22] = False
    plain = affinity_labels(cams)[0]
    crf = affinity_labels(cams, image=image, crf=CRFParams(reference_size=None, window=31, downsample=1))[0]
    assert (plain[ring] == 1).all()
    assert (crf[ring] != 1).all()
    assert (crf[12:20, 12:20] == 1).all() and (crf[:6] == 0).all()


def test_fixed_mode_with_label_crf_keeps_clean_regions() -> None:
    image = torch.full((1, 3, 16, 16), 30.0)
    image[:, :, 4:12, 4:12] = 220.0
    cams = torch.zeros(1, 16, 16)
    cams[:, 4:12, 4:12] = 1.0
    labels = affinity_labels(cams, mode="fixed", image=image, crf=CRFParams(reference_size=None, window=15, downsample=1))
    assert (labels[0, 4:12, 4:12] == 1).all() and (labels[0, :3] == 0).all()


def test_crf_labels_on_a_grid_coarser_than_the_image_average_blocks_then_argmax() -> None:
    """affinity.md §3.3: the CRF runs at image resolution and its scores are averaged over each label
    cell's block before the argmax (a block-majority of probabilities, not the centre pixel's label)."""
    from afford.refine.crf import dense_crf

    g = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, 64, 64, generator=g) * 255).round()
    cams = torch.rand(1, 8, 8, generator=g)
    params = CRFParams(reference_size=None, window=7, downsample=1)
    got = affinity_labels(cams, mode="fixed", size=(8, 8), image=image, crf=params)
    c = (cams - cams.min()) / (cams.max() - cams.min() + 1e-10)
    c_img = F.interpolate(c[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)

    def posterior(labels_img):
        q = dense_crf(unary_from_labels(labels_img, 2), image, params)  # (1, 2, 64, 64)
        return F.avg_pool2d(q, 8).argmax(1)  # the mean of each 8x8 block

    fg = posterior((c_img >= 0.30).long()) == 1
    bg = posterior((c_img >= 0.05).long()) == 0
    want = torch.full((1, 8, 8), 255, dtype=torch.long)
    want[fg] = 1
    want[bg] = 0
    assert torch.equal(got, want) and len(got.unique()) > 1


def test_errors_and_rgb255() -> None:
    with pytest.raises(AffordError, match="mode"):
        affinity_labels(torch.rand(1, 4, 4), mode="otsu")
    with pytest.raises(AffordError, match="image"):
        affinity_labels(torch.rand(1, 4, 4), crf=CRFParams())
    with pytest.raises(AffordError, match="cams"):
        affinity_labels(torch.rand(4, 4))
    rgb = torch.rand(1, 3, 2, 2) * 255
    assert torch.allclose(to_rgb255(rgb / 255), rgb, atol=1e-3)
    assert to_rgb255(torch.tensor([[-0.5, 1.5]])).tolist() == [[0.0, 255.0]]  # clamped
