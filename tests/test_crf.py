"""Dense CRF: windowed solver vs full N×N brute force, and a per-pixel loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from afford.errors import AffordError
from afford.refine.crf import CRFParams, dense_crf, dense_crf_bruteforce, effective_sxy, unary_from_labels


def _scene(h: int = 12, w: int = 12, labels: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scores plus an image with a bright square so the bilateral term has structure."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(1, labels, h, w, generator=g, dtype=torch.float64)
    image = torch.full((1, 3, h, w), 40.0, dtype=torch.float64)
    image[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 200.0
    image = image + 10 * torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)
    return probs, image


def _loop_reference(probs: torch.Tensor, image: torch.Tensor, p: CRFParams) -> torch.Tensor:
    """Mean field written out pixel by pixel from the energy (symmetric normalisation, Potts)."""
    _, n_labels, h, w = probs.shape
    pix = [(y, x) for y in range(h) for x in range(w)]
    rgb = image[0].reshape(3, -1).t().tolist()
    unary = [[-math.log(min(max(float(probs[0, lab, y, x]), 1e-5), 1.0)) for lab in range(n_labels)] for y, x in pix]

    def kernels() -> list[tuple[float, list[list[float]]]]:
        out = []
        for compat, sxy, srgb in ((p.gaussian_compat, p.gaussian_sxy, None), (p.bilateral_compat, p.bilateral_sxy, p.bilateral_srgb)):
            k = []
            for i, (yi, xi) in enumerate(pix):
                row = []
                for j, (yj, xj) in enumerate(pix):
                    e = ((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * sxy**2)
                    if srgb is not None:
                        e += sum((a - b) ** 2 for a, b in zip(rgb[i], rgb[j], strict=True)) / (2 * srgb**2)
                    row.append(math.exp(-e))
                k.append(row)
            d = [sum(r) for r in k]
            out.append((compat, [[k[i][j] / math.sqrt(d[i] * d[j]) for j in range(len(pix))] for i in range(len(pix))]))
        return out

    ks = kernels()

    def softmax(v: list[float]) -> list[float]:
        m = max(v)
        e = [math.exp(a - m) for a in v]
        return [a / sum(e) for a in e]

    q = [softmax([-u for u in unary[i]]) for i in range(len(pix))]
    for _ in range(p.iterations):
        new = []
        for i in range(len(pix)):
            logits = []
            for lab in range(n_labels):
                msg = sum(c * sum(k[i][j] * q[j][lab] for j in range(len(pix))) for c, k in ks)
                logits.append(-unary[i][lab] + msg)
            new.append(softmax(logits))
        q = new
    return torch.tensor(q, dtype=torch.float64).t().reshape(1, n_labels, h, w)


def test_loop_reference_matches_both_solvers() -> None:
    probs, image = _scene(3, 4, labels=3)
    p = CRFParams(iterations=3, bilateral_sxy=2.0, reference_size=None, window=3, downsample=1)
    ref = _loop_reference(probs, image, p)
    assert torch.allclose(dense_crf_bruteforce(probs, image, p), ref, atol=1e-10)
    assert torch.allclose(dense_crf(probs, image, p), ref, atol=1e-10)


def test_full_window_equals_bruteforce_on_12x12() -> None:
    probs, image = _scene(12, 12)
    p = CRFParams(reference_size=None, window=11, downsample=1)  # psa 3/3, 80/13/10, 10 iterations
    brute = dense_crf_bruteforce(probs, image, p)
    windowed = dense_crf(probs, image, p)
    assert (windowed - brute).abs().max() < 1e-6
    # the CRF must have changed something, or the comparison is vacuous
    assert (brute - probs / probs.sum(1, keepdim=True)).abs().max() > 0.05


def test_small_window_is_close_to_bruteforce() -> None:
    probs, image = _scene(12, 12, seed=1)
    p = CRFParams(bilateral_sxy=3.0, reference_size=None, window=4, downsample=1)
    diff = (dense_crf(probs, image, p) - dense_crf_bruteforce(probs, image, p)).abs().max()
    assert 0 < diff < 1e-4  # truncated beyond 4 cells, where the Gaussians have decayed to e^-0.9


def test_zero_compat_returns_normalised_unary() -> None:
    probs, image = _scene(6, 7, labels=3)
    p = CRFParams(gaussian_compat=0.0, bilateral_compat=0.0, downsample=1, window=2)
    expected = probs.clamp(1e-5, 1) / probs.clamp(1e-5, 1).sum(1, keepdim=True)
    assert torch.allclose(dense_crf(probs, image, p), expected, atol=1e-12)


def test_crf_flips_an_isolated_outlier() -> None:
    probs = torch.zeros(1, 2, 10, 10)
    probs[:, 1] = 0.9
    probs[:, 0] = 0.1
    probs[0, :, 5, 5] = torch.tensor([0.6, 0.4])  # one pixel weakly prefers label 0
    image = torch.full((1, 3, 10, 10), 100.0)
    q = dense_crf(probs, image, CRFParams(reference_size=None, window=9, downsample=1))
    assert q[0, :, 5, 5].argmax() == 1
    assert torch.allclose(q.sum(1), torch.ones(1, 10, 10))


def test_downsample_and_size_rescale() -> None:
    probs, image = _scene(16, 20)
    q = dense_crf(probs, image, CRFParams(downsample=4, window=3))
    assert q.shape == probs.shape and torch.allclose(q.sum(1), torch.ones(1, 16, 20, dtype=q.dtype))
    g, b = effective_sxy(CRFParams(), 224, 224)
    assert g == pytest.approx(3 * 224 / 500) and b == pytest.approx(80 * 224 / 500)


def test_unary_from_labels_and_errors() -> None:
    u = unary_from_labels(torch.tensor([[[0, 1]]]), 2, gt_prob=0.7)
    assert torch.allclose(u[0, :, 0, 0], torch.tensor([0.7, 0.3]))
    probs, image = _scene(4, 4)
    with pytest.raises(AffordError, match="crf image"):
        dense_crf(probs, image[:, :2])
    with pytest.raises(AffordError, match="bruteforce"):
        dense_crf_bruteforce(torch.rand(1, 2, 80, 80), torch.rand(1, 3, 80, 80), CRFParams(downsample=1))
