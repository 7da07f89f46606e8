"""Concentration, prototype and SupCon losses: hand values and brute-force loop references."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from afford.losses.concentration import ConcentrationLoss, concentration_loss
from afford.losses.contrastive import SupConLoss, supcon_loss
from afford.losses.prototype import prototype_loss

# ---------------------------------------------------------------- concentration (§0.5)


def loop_concentration(cams: torch.Tensor) -> torch.Tensor:
    b, c, h, w = cams.shape
    total = 0.0
    for i in range(b):
        per_class = 0.0
        for k in range(c):
            cam = cams[i, k]
            m = (cam - cam.min()) / (cam.max() - cam.min() + 1e-10) + 1e-3
            q = m / m.sum()
            mx = sum(q[y, x] * (2 * x / w - 1) for y in range(h) for x in range(w))
            my = sum(q[y, x] * (2 * y / h - 1) for y in range(h) for x in range(w))
            var = sum(
                q[y, x] * ((2 * x / w - 1 - mx) ** 2 + (2 * y / h - 1 - my) ** 2)
                for y in range(h)
                for x in range(w)
            )
            per_class = per_class + var / c
        total = total + per_class / b
    return torch.as_tensor(total)


def test_concentration_hand_values() -> None:
    uniform = torch.full((1, 1, 4, 4), 3.0)
    # flat map -> q uniform; u = [-1, -0.5, 0, 0.5], mean -0.25, variance 0.3125 per axis
    assert math.isclose(concentration_loss(uniform).item(), 0.625, rel_tol=1e-6)
    delta = torch.zeros(1, 1, 4, 4)
    delta[0, 0, 2, 1] = 5.0  # y = 2, x = 1
    # m = 1.001 at the peak, 0.001 elsewhere; Σm = 1.016
    # x marginal (·1.016): [0.004, 1.004, 0.004, 0.004]; y marginal: [0.004, 0.004, 1.004, 0.004]
    var_x = 0.256 / 1.016 - (0.504 / 1.016) ** 2
    var_y = 0.006 / 1.016 - (0.004 / 1.016) ** 2
    assert math.isclose(concentration_loss(delta).item(), var_x + var_y, rel_tol=1e-5)
    # the mean over classes then batch: [uniform, delta] in one batch item
    both = torch.cat([uniform, delta], dim=1)
    assert math.isclose(concentration_loss(both).item(), (0.625 + var_x + var_y) / 2, rel_tol=1e-5)
    assert math.isclose(ConcentrationLoss()(both).item(), 0.07 * (0.625 + var_x + var_y) / 2, rel_tol=1e-5)


def test_concentration_matches_loop_and_backprops() -> None:
    g = torch.Generator().manual_seed(0)
    cams = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    got = concentration_loss(cams)
    torch.testing.assert_close(got, loop_concentration(cams.detach()))
    got.backward()
    assert cams.grad is not None and torch.isfinite(cams.grad).all() and cams.grad.abs().sum() > 0
    # invariant to the affine scale of each map (min-max first)
    torch.testing.assert_close(concentration_loss(3 * cams.detach() + 7), got.detach())


# ---------------------------------------------------------------- prototype (§1.3)


def test_prototype_loss_hand_value_and_invalid_samples() -> None:
    # (B=3, h=1, w=3), D = 2
    cam = torch.tensor([[[0.0, 0.5, 1.0]], [[2.0, 4.0, 6.0]], [[1.0, 0.0, 9.0]]], requires_grad=True)
    desc = torch.zeros(3, 2, 1, 3)
    # sample 0: m = [0, .5, 1]; desc = (1,0), (0,1), (0,0) -> e ∝ (0, 1); proto (1, 0) -> cos 0 -> 0.5
    desc[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    desc[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    # sample 1: same m; desc (·, (1,1), (1,1)) -> e ∝ (1,1); proto (-1, 0) -> cos -1/√2 -> 1.2071
    desc[1, :, 0, 0] = torch.tensor([5.0, -3.0])
    desc[1, :, 0, 1] = torch.tensor([1.0, 1.0])
    desc[1, :, 0, 2] = torch.tensor([1.0, 1.0])
    # sample 2: invalid, anything
    desc[2] = torch.randn(2, 1, 3)
    desc.requires_grad_(True)
    protos = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    valid = torch.tensor([True, True, False])
    loss = prototype_loss(cam, desc, protos, valid)
    expected = (0.5 + (1 + 1 / math.sqrt(2) - 0.5)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    assert desc.grad is None  # descriptors are frozen: no gradient through them
    assert cam.grad is not None


def test_prototype_loss_matches_loop_and_hinge() -> None:
    g = torch.Generator().manual_seed(1)
    b, d, h, w = 5, 6, 4, 4
    cam = torch.randn(b, h, w, generator=g, dtype=torch.float64)
    desc = torch.randn(b, d, h, w, generator=g, dtype=torch.float64)
    protos = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    valid = torch.tensor([True, False, True, True, False])
    terms = []
    for i in range(b):
        if not valid[i]:
            continue
        m = (cam[i] - cam[i].min()) / (cam[i].max() - cam[i].min() + 1e-10)
        e = (desc[i] * m).sum((1, 2)) / m.sum()
        cos = (e @ protos[i]) / (e.norm() * protos[i].norm())
        terms.append(max(1 - cos.item() - 0.5, 0.0))
    cam_g = cam.clone().requires_grad_(True)
    desc_g = desc.clone().requires_grad_(True)
    protos_g = protos.clone().requires_grad_(True)
    loss = prototype_loss(cam_g, desc_g, protos_g, valid)
    torch.testing.assert_close(loss.item(), sum(terms) / len(terms))
    assert loss.item() > 0
    loss.backward()
    # the gradient reaches the model only through the CAM, and only for valid samples
    assert desc_g.grad is None and protos_g.grad is None
    assert cam_g.grad is not None
    active = torch.tensor([t > 0 for t in terms])
    assert torch.all(cam_g.grad[valid][active].flatten(1).abs().sum(1) > 0)
    assert torch.all(cam_g.grad[~valid] == 0)
    # prototype equal to the pooled embedding -> inside the margin -> 0
    m = (cam - cam.amin((1, 2), keepdim=True)) / (
        cam.amax((1, 2), keepdim=True) - cam.amin((1, 2), keepdim=True)
    )
    e = (desc * m[:, None]).sum((2, 3))
    assert prototype_loss(cam, desc, e, valid).item() < 1e-12
    # no valid sample -> exactly 0, still differentiable
    c2 = cam.clone().requires_grad_(True)
    zero = prototype_loss(c2, desc, protos, torch.zeros(b, dtype=torch.bool))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.all(c2.grad == 0)


# ---------------------------------------------------------------- SupCon (§4.5)


def loop_supcon(f, labels, t, bt, anchors=None, pos=None, den=None) -> float:
    n = f.shape[0]
    total, count = 0.0, 0
    for i in range(n):
        if anchors is not None and not anchors[i]:
            continue
        ps = [j for j in range(n) if j != i and (pos[i, j] if pos is not None else labels[i] == labels[j])]
        if not ps:
            continue
        ds = [j for j in range(n) if j != i and (den is None or den[i, j] or j in ps)]
        z = sum(math.exp(float(f[i] @ f[j]) / t) for j in ds)
        li = sum(-math.log(math.exp(float(f[i] @ f[p]) / t) / z) for p in ps) / len(ps)
        total += (t / bt) * li
        count += 1
    return total / count if count else 0.0


def test_supcon_hand_value() -> None:
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # anchors 0 and 1: positive logit 1/0.5 = 2, other-class logit 0 -> log(1 + e^-2);
    # anchor 2 has no positive and is left out. Scaled by the hidden 0.5 / 0.07.
    expected = (0.5 / 0.07) * math.log(1 + math.exp(-2))
    assert math.isclose(supcon_loss(f, labels).item(), expected, rel_tol=1e-6)
    assert math.isclose(SupConLoss()(f, labels).item(), expected, rel_tol=1e-6)
    assert math.isclose(
        supcon_loss(f, labels, base_temperature=0.5).item(), math.log(1 + math.exp(-2)), rel_tol=1e-6
    )


def test_supcon_matches_loop_with_masks() -> None:
    g = torch.Generator().manual_seed(0)
    n = 9
    f = F.normalize(torch.randn(n, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    labels = torch.randint(0, 3, (n,), generator=g)
    anchors = torch.rand(n, generator=g) > 0.3
    pos = torch.rand(n, n, generator=g) > 0.6
    den = torch.rand(n, n, generator=g) > 0.5
    fd = f.detach()
    for t, bt in ((0.5, 0.07), (0.1, 0.1)):
        cases = [
            ({}, loop_supcon(fd, labels, t, bt)),
            ({"anchor_mask": anchors}, loop_supcon(fd, labels, t, bt, anchors=anchors)),
            ({"positive_mask": pos}, loop_supcon(fd, labels, t, bt, pos=pos)),
            ({"denominator_mask": den}, loop_supcon(fd, labels, t, bt, den=den)),
            (
                {"anchor_mask": anchors, "positive_mask": pos, "denominator_mask": den},
                loop_supcon(fd, labels, t, bt, anchors=anchors, pos=pos, den=den),
            ),
        ]
        for kwargs, ref in cases:
            got = supcon_loss(f, labels, temperature=t, base_temperature=bt, **kwargs)
            assert math.isclose(got.item(), ref, rel_tol=1e-9), kwargs
    # labels may be omitted when the positives are explicit; gradients stay finite
    got = supcon_loss(f, None, positive_mask=pos, denominator_mask=torch.zeros(n, n, dtype=torch.bool))
    got.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    # no anchor has a positive -> 0
    assert supcon_loss(fd, torch.arange(n)).item() == 0.0
