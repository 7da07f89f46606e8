"""WSMA losses against hand-computed values and brute-force loop references."""

from __future__ import annotations

import math

import numpy as np
import torch

from afford.losses.wsma import (
    WSMA_LOSS_WEIGHTS,
    class_maps,
    classification_loss,
    clip_loss,
    distillation_loss,
    label_relation_loss,
    wsma_losses,
)


def _ce(logits: list[float], y: int) -> float:
    return -logits[y] + math.log(sum(math.exp(v) for v in logits))


def _l2n(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_classification_loss_hand_computed() -> None:
    ego = torch.tensor([[0.0, 0.0]])
    exo = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(3.0)]]])
    y = torch.tensor([0])
    # ego: ln 2; exo: ln 2, ln(4/3), ln 4 averaged over the three views.
    expected = math.log(2) + (math.log(2) + math.log(4 / 3) + math.log(4)) / 3
    assert math.isclose(float(classification_loss(ego, exo, y)), expected, rel_tol=1e-6)


def test_classification_loss_vs_loop() -> None:
    g = torch.Generator().manual_seed(0)
    ego, exo = torch.randn(4, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    y = torch.tensor([0, 4, 2, 2])
    ref = np.mean([_ce(ego[b].tolist(), int(y[b])) for b in range(4)])
    ref += sum(np.mean([_ce(exo[b, n].tolist(), int(y[b])) for b in range(4)]) for n in range(3)) / 3
    assert math.isclose(float(classification_loss(ego, exo, y)), ref, rel_tol=1e-5)


def test_clip_loss_hand_computed_and_loop() -> None:
    # g is parallel to class 1's text vector and orthogonal to class 0's: cos = [0, 1].
    g = torch.tensor([[0.0, 2.0]])
    t = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    scale = 2.0
    expected = _ce([0.0, 2.0], 0)  # = ln(1 + e²)
    assert math.isclose(float(clip_loss(g, t, scale, torch.tensor([0]))), expected, rel_tol=1e-6)
    assert math.isclose(expected, math.log(1 + math.e**2), rel_tol=1e-12)

    gen = torch.Generator().manual_seed(1)
    g, t = torch.randn(3, 4, generator=gen), torch.randn(5, 4, generator=gen)
    y = torch.tensor([1, 3, 0])
    ref = np.mean(
        [_ce([scale * float(_l2n(g[b].numpy()) @ _l2n(t[c].numpy())) for c in range(5)], int(y[b])) for b in range(3)]
    )
    assert math.isclose(float(clip_loss(g, t, torch.tensor(scale), y)), ref, rel_tol=1e-5)


def test_distillation_loss_hand_computed() -> None:
    # K = 2 channels, 1x1 grid, w_y = [1, 1]: exo mean -> [1, 0], ego -> [0, 1]; ‖diff‖² = 2.
    w = torch.tensor([[1.0, 1.0], [5.0, -1.0]])
    exo = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]]]).view(1, 3, 2, 1, 1)
    ego = torch.tensor([[0.0, 3.0]]).view(1, 2, 1, 1)
    assert math.isclose(float(distillation_loss(ego, exo, w, torch.tensor([0]))), 2.0, rel_tol=1e-6)


def test_distillation_loss_vs_loop() -> None:
    g = torch.Generator().manual_seed(2)
    ego, exo, w = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 3, 4, 3, 3, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([3, 1])
    total = 0.0
    for b in range(2):
        wy = w[int(y[b])].numpy()
        e = np.array([wy[k] * ego[b, k].numpy().mean() for k in range(4)])
        x = np.array([wy[k] * np.mean([exo[b, n, k].numpy().mean() for n in range(3)]) for k in range(4)])
        total += float(np.sum((_l2n(x) - _l2n(e)) ** 2))
    assert math.isclose(float(distillation_loss(ego, exo, w, y)), total / 2, rel_tol=1e-5)


def test_class_maps_are_channel_means_of_weighted_features() -> None:
    g = torch.Generator().manual_seed(3)
    feat, w = torch.randn(1, 4, 2, 3, generator=g), torch.randn(3, 4, generator=g)
    k = class_maps(feat, w)
    for c in range(3):
        cam = (w[c].view(4, 1, 1) * feat[0]).mean(0)  # §0.4 CAM_c
        assert torch.allclose(k[0, :, c], cam.flatten(), atol=1e-6)


def test_label_relation_loss_hand_computed() -> None:
    # fc = I (C = K = 2), 1x2 grid, so K[p, c] = feat[c, p] / 2.
    w = torch.eye(2)
    ego = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # K = diag(.5) -> M rows e1, e2 -> [1,0,0,1]
    exo = torch.ones(1, 1, 2, 1, 2)  # K = .5 everywhere -> M rows (1,1)/√2
    # cos([1,0,0,1], [1,1,1,1]/√2) = (2/√2) / (√2·√2) = 1/√2
    expected = 1 - 1 / math.sqrt(2)
    assert math.isclose(float(label_relation_loss(ego, exo, w)), expected, rel_tol=1e-6)


def test_label_relation_loss_vs_loop() -> None:
    g = torch.Generator().manual_seed(4)
    ego, exo, w = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(3, 4, generator=g)

    def class_map_loop(f: np.ndarray) -> np.ndarray:  # f (K, h, w) -> K (h·w, C)
        return np.array([[np.mean([w[c, k].item() * f[k].flatten()[p] for k in range(4)]) for c in range(3)] for p in range(4)])

    total = 0.0
    for b in range(2):
        k_ego = class_map_loop(ego[b].numpy())
        k_exo = np.mean([class_map_loop(exo[b, n].numpy()) for n in range(3)], axis=0)
        m_ego, m_exo = k_ego.T @ k_ego, k_exo.T @ k_exo
        m_ego = np.stack([_l2n(r) for r in m_ego]).flatten()
        m_exo = np.stack([_l2n(r) for r in m_exo]).flatten()
        total += 1 - float(m_exo @ m_ego / (np.linalg.norm(m_exo) * np.linalg.norm(m_ego)))
    assert math.isclose(float(label_relation_loss(ego, exo, w)), total / 2, rel_tol=1e-5)


def test_wsma_losses_weights_and_sum() -> None:
    assert WSMA_LOSS_WEIGHTS == {"cls": 1.0, "clip": 1.0, "d": 0.5, "lrela": 0.5}
    w = torch.eye(2)
    ego_feat = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    exo_feat = torch.ones(1, 1, 2, 1, 2)
    y = torch.tensor([0])
    out = wsma_losses(
        ego_logits=torch.zeros(1, 2), exo_logits=torch.zeros(1, 1, 2), global_embed=torch.tensor([[1.0, 0.0]]),
        text_embed=torch.eye(2), logit_scale=1.0, ego_feat=ego_feat, exo_feat=exo_feat, fc_weight=w, labels=y,
    )
    # cls: 2·ln 2; clip: CE([1, 0], 0) = ln(1 + e⁻¹); d: w_y = [1, 0] -> both l2n = [1, 0] -> 0
    assert math.isclose(float(out["cls"]), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(float(out["clip"]), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    assert abs(float(out["d"])) < 1e-12
    assert math.isclose(float(out["lrela"]), 0.5 * (1 - 1 / math.sqrt(2)), rel_tol=1e-6)
    assert math.isclose(float(out["loss"]), sum(float(out[k]) for k in ("cls", "clip", "d", "lrela")), rel_tol=1e-7)
