"""WSMA building blocks: NMF Hamburger, attention pooling, attention refinement."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from afford.modules.attention_pool import AttentionPool2d
from afford.modules.attention_refine import refine_cam, sinkhorn_affinity
from afford.modules.nmf import Hamburger, nmf, update_bases, update_coef

# ---------------------------------------------------------------- NMF


def _err(x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> float:
    return float((x - bases @ coef.transpose(1, 2)).pow(2).sum())


def test_multiplicative_updates_never_increase_error() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 8, 30, generator=g, dtype=torch.float64)
    bases = torch.rand(2, 8, 4, generator=g, dtype=torch.float64)
    coef = torch.rand(2, 30, 4, generator=g, dtype=torch.float64)
    errs = [_err(x, bases, coef)]
    for _ in range(30):
        coef = update_coef(x, bases, coef)
        errs.append(_err(x, bases, coef))
        bases = update_bases(x, bases, coef)
        errs.append(_err(x, bases, coef))
    assert all(b <= a + 1e-9 for a, b in zip(errs, errs[1:], strict=False))
    assert errs[-1] < 0.5 * errs[0]  # the updates actually do something
    assert (coef >= 0).all() and (bases >= 0).all()


def test_update_coef_matches_elementwise_formula() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 5, generator=g, dtype=torch.float64)
    bases = torch.rand(1, 3, 2, generator=g, dtype=torch.float64)
    coef = torch.rand(1, 5, 2, generator=g, dtype=torch.float64)
    xn, bn, cn = x[0].numpy(), bases[0].numpy(), coef[0].numpy()
    expected = np.zeros_like(cn)
    for i in range(5):
        for r in range(2):
            num = sum(xn[d, i] * bn[d, r] for d in range(3))
            btb = [sum(bn[d, r2] * bn[d, r] for d in range(3)) for r2 in range(2)]
            den = sum(cn[i, r2] * btb[r2] for r2 in range(2))
            expected[i, r] = cn[i, r] * num / (den + 1e-6)
    assert np.allclose(update_coef(x, bases, coef)[0].numpy(), expected, atol=1e-12)


def test_nmf_reconstructs_low_rank_matrix() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 6, 3, generator=g) @ torch.rand(1, 3, 40, generator=g)  # exact rank 3
    bases0 = F.normalize(torch.rand(1, 6, 3, generator=g), dim=1)
    bases, coef = nmf(x, bases0, steps=200)
    rel = (x - bases @ coef.transpose(1, 2)).norm() / x.norm()
    assert rel < 0.05


def test_hamburger_state_dict_matches_official_keys() -> None:
    ham = Hamburger()  # WSMA defaults: 384 -> 512, R = 64
    expected = {
        "lower_bread.0.weight": (512, 384, 1, 1),
        "lower_bread.0.bias": (512,),
        "upper_bread.0.weight": (384, 512, 1, 1),
        "upper_bread.1.weight": (384,),
        "upper_bread.1.bias": (384,),
        "upper_bread.1.running_mean": (384,),
        "upper_bread.1.running_var": (384,),
        "upper_bread.1.num_batches_tracked": (),
    }
    sd = ham.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert ham.bases.shape == (512, 64)  # present, but not persistent
    assert ham.upper_bread[1].momentum == 3e-4
    # the reference's initialisation: He-normal over the fan-out k*k*out (PyTorch's default was 2-3x smaller)
    for w, fan_out in ((sd["lower_bread.0.weight"], 512), (sd["upper_bread.0.weight"], 384)):
        assert abs(float(w.std()) / (2.0 / fan_out) ** 0.5 - 1) < 0.02 and abs(float(w.mean())) < 1e-3


def test_hamburger_is_joint_over_the_n_views() -> None:
    torch.manual_seed(0)
    ham = Hamburger(in_channels=4, n=3, dim=5, rank=2).eval()
    z = torch.rand(6, 5, 2, 3)  # B = 2 samples x 3 views, non-negative
    recon = ham.decompose(z)
    # Reference: build the D x (3·h·w) matrix of sample 1 by concatenating its views by hand.
    x1 = torch.cat([z[3 + i].reshape(5, 6) for i in range(3)], dim=1)[None]
    bases, coef = nmf(x1, ham.bases[None].clone(), steps=ham.eval_steps)
    ref = (bases @ coef.transpose(1, 2))[0]
    for i in range(3):
        assert torch.allclose(recon[3 + i].reshape(5, 6), ref[:, 6 * i : 6 * (i + 1)], atol=1e-6)


def loop_nmf(x: torch.Tensor, bases: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """methods.md §2.1's NMF for one (D, N) matrix, element by element: coefficients start as the
    softmax over the R bases of xᵀB, then ``steps`` Lee-Seung rounds (coefficients, then bases), then
    one last coefficient update; ε = 1e-6 in every denominator."""
    d, n = x.shape
    r = bases.shape[1]
    b = bases.clone()
    c = torch.empty(n, r, dtype=x.dtype)
    for i in range(n):
        logits = [sum(x[k, i] * b[k, j] for k in range(d)) for j in range(r)]
        m = max(logits)
        e = [math.exp(float(v - m)) for v in logits]
        c[i] = torch.tensor([v / sum(e) for v in e], dtype=x.dtype)

    def coef_step(c, b):
        btb = b.T @ b
        return torch.stack([torch.stack([c[i, j] * sum(x[k, i] * b[k, j] for k in range(d))
                                         / (sum(c[i, q] * btb[q, j] for q in range(r)) + 1e-6)
                                         for j in range(r)]) for i in range(n)])

    for _ in range(steps):
        c = coef_step(c, b)
        ctc = c.T @ c
        b = torch.stack([torch.stack([b[k, j] * sum(x[k, i] * c[i, j] for i in range(n))
                                      / (sum(b[k, q] * ctc[q, j] for q in range(r)) + 1e-6)
                                      for j in range(r)]) for k in range(d)])
    return b, coef_step(c, b)


def test_nmf_and_the_hamburger_forward_against_hand_loops() -> None:
    """The NMF (softmax start, update order, last coefficient step) and the forward pass
    relu(x + upper(NMF(lower(x)))) in eval, against loops written from the formulas; and one online
    update of the bases in training: b <- normalise(b + 0.9 (batch mean - b))."""
    torch.manual_seed(0)
    x = torch.rand(1, 4, 6, dtype=torch.float64)
    b0 = F.normalize(torch.rand(1, 4, 3, dtype=torch.float64), dim=1)
    for steps in (0, 2):
        got_b, got_c = nmf(x, b0.clone(), steps)
        want_b, want_c = loop_nmf(x[0], b0[0], steps)
        torch.testing.assert_close(got_b[0], want_b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_c[0], want_c, rtol=1e-10, atol=1e-12)

    ham = Hamburger(in_channels=3, n=2, dim=4, rank=3, eval_steps=2).double().eval()
    with torch.no_grad():
        ham.upper_bread[1].running_mean.uniform_(-0.1, 0.1)
        ham.upper_bread[1].running_var.uniform_(0.5, 1.5)
    inp = torch.rand(2, 3, 1, 2, dtype=torch.float64)  # one sample, n = 2 views of 1x2 positions
    with torch.no_grad():
        z = torch.relu(F.conv2d(inp, ham.lower_bread[0].weight, ham.lower_bread[0].bias))
    mat = torch.cat([z[0].reshape(4, 2), z[1].reshape(4, 2)], dim=1)  # D x (n·h·w), the views side by side
    bases, coef = loop_nmf(mat, ham.bases.double(), 2)
    recon = bases @ coef.T
    views = torch.stack([recon[:, :2].reshape(4, 1, 2), recon[:, 2:].reshape(4, 1, 2)])
    bn = ham.upper_bread[1]
    up = F.conv2d(views, ham.upper_bread[0].weight)
    up = (up - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps) \
        * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    torch.testing.assert_close(ham(inp).detach(), torch.relu(inp + up).detach(), rtol=1e-9, atol=1e-12)

    before = ham.bases.clone()
    solution = torch.rand(2, 4, 3, dtype=torch.float64)  # two samples' NMF bases
    ham._online_update(solution)
    moved = before + 0.9 * (solution.mean(0) - before)
    torch.testing.assert_close(ham.bases, moved / moved.norm(dim=0, keepdim=True), rtol=1e-12, atol=1e-12)


def test_hamburger_forward_shape_and_online_update() -> None:
    torch.manual_seed(0)
    ham = Hamburger(in_channels=8, n=3, dim=6, rank=3)
    x = torch.rand(6, 8, 4, 4)
    ham.eval()
    before = ham.bases.clone()
    y1, y2 = ham(x), ham(x)
    assert y1.shape == x.shape and torch.equal(y1, y2) and (y1 >= 0).all()
    assert torch.equal(ham.bases, before)  # eval: no base update
    ham.train()
    ham(x).sum().backward()
    assert not torch.equal(ham.bases, before)  # online update in training
    assert torch.allclose(ham.bases.norm(dim=0), torch.ones(3))
    assert ham.lower_bread[0].weight.grad is not None and ham.lower_bread[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- attention pooling


def test_attention_pool_matches_per_head_loop() -> None:
    torch.manual_seed(0)
    pool = AttentionPool2d(spatial=3, dim=8, heads=4, out_dim=5).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    out = pool(x)
    assert out.global_embed.shape == (2, 5) and out.patch_embed.shape == (2, 9, 5) and out.attn.shape == (2, 9, 9)
    for b in range(2):
        seq = x[b].reshape(8, 9).t()
        seq = torch.cat([seq.mean(0, keepdim=True), seq]) + pool.positional_embedding
        q, k, v = pool.q_proj(seq), pool.k_proj(seq), pool.v_proj(seq)
        heads_out, attn_sum = [], torch.zeros(10, 10, dtype=torch.float64)
        for h in range(4):
            sl = slice(2 * h, 2 * h + 2)
            logits = torch.zeros(10, 10, dtype=torch.float64)
            for i in range(10):
                for j in range(10):
                    logits[i, j] = (q[i, sl] * k[j, sl]).sum() / math.sqrt(2)
            a = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
            attn_sum += a
            heads_out.append(a @ v[:, sl])
        ref = pool.c_proj(torch.cat(heads_out, dim=1))
        assert torch.allclose(out.global_embed[b], ref[0], atol=1e-10)
        assert torch.allclose(out.patch_embed[b], ref[1:], atol=1e-10)
        assert torch.allclose(out.attn[b], (attn_sum / 4)[1:, 1:], atol=1e-12)


def test_attention_pool_official_shapes() -> None:
    pool = AttentionPool2d()
    shapes = {k: tuple(v.shape) for k, v in pool.state_dict().items()}
    assert shapes == {
        "positional_embedding": (197, 384),
        "k_proj.weight": (384, 384), "k_proj.bias": (384,),
        "q_proj.weight": (384, 384), "q_proj.bias": (384,),
        "v_proj.weight": (384, 384), "v_proj.bias": (384,),
        "c_proj.weight": (1024, 384), "c_proj.bias": (1024,),
    }


# ---------------------------------------------------------------- refinement


def test_sinkhorn_affinity_hand_computed_one_round() -> None:
    a = torch.tensor([[[1.0, 3.0], [1.0, 1.0]]], dtype=torch.float64)
    # columns: /[2, 4] -> [[.5,.75],[.5,.25]]; rows: /[1.25, .75] -> [[.4,.6],[2/3,1/3]]
    # symmetrise -> off-diagonal (0.6 + 2/3)/2 = 0.633..; square it.
    off = (0.6 + 2 / 3) / 2
    expected = torch.tensor([[0.16 + off**2, 0.4 * off + off / 3], [0.4 * off + off / 3, off**2 + 1 / 9]])
    assert torch.allclose(sinkhorn_affinity(a, rounds=1)[0], expected.double(), atol=1e-12)


def test_sinkhorn_affinity_three_rounds_vs_loop() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 3, generator=g, dtype=torch.float64) + 0.1
    m = a[0].numpy().copy()
    for _ in range(3):
        for j in range(3):
            m[:, j] = m[:, j] / m[:, j].sum()
        for i in range(3):
            m[i, :] = m[i, :] / m[i, :].sum()
    m = (m + m.T) / 2
    assert np.allclose(sinkhorn_affinity(a)[0].numpy(), m @ m, atol=1e-12)


def test_sinkhorn_affinity_survives_an_all_zero_key_column() -> None:
    """Saturated attention: no query attends to key 2 at all. The reference gives 0/0 = nan."""
    a = torch.tensor([[[0.7, 0.3, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 0.0]]], dtype=torch.float64)
    with np.errstate(invalid="ignore"):
        ref = a[0].numpy().copy()
        ref[:, 2] = ref[:, 2] / ref[:, 2].sum()
    assert np.isnan(ref[:, 2]).all()  # what the reference computes
    out = sinkhorn_affinity(a)
    assert torch.isfinite(out).all() and torch.allclose(out, out.transpose(1, 2))
    # every finite reference result is unchanged: the clamp never binds on positive sums
    g = torch.Generator().manual_seed(1)
    b = torch.rand(2, 5, 5, generator=g) + 0.01
    ref_b = b
    for _ in range(3):
        ref_b = ref_b / ref_b.sum(dim=1, keepdim=True)
        ref_b = ref_b / ref_b.sum(dim=2, keepdim=True)
    ref_b = (ref_b + ref_b.transpose(1, 2)) / 2
    assert torch.equal(sinkhorn_affinity(b), ref_b @ ref_b)
    cam = torch.rand(1, 1, 3, generator=g, dtype=torch.float64)
    assert torch.isfinite(refine_cam(cam, a)).all()


def test_refine_cam_hand_computed_2x2() -> None:
    # A is already doubly stochastic and symmetric with A @ A == A, so A² = A.
    attn = torch.tensor([[[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]])
    cam = torch.tensor([[[1.0, 0.0], [0.5, 0.1]]])
    # cam1 = A vec(cam) = [.5, .5, .3, .3] -> minmax [1, 1, 0, 0]; zeroed where cam < .2 -> [1, 0, 0, 0]
    # cam + cam1 = [2, 0, .5, .1] -> minmax [1, 0, .25, .05]
    out = refine_cam(cam, attn, threshold=0.2)
    assert torch.allclose(out, torch.tensor([[[1.0, 0.0], [0.25, 0.05]]]), atol=1e-6)
    # A threshold of 0 keeps the propagated map everywhere: [2, 1, .5, .1] -> minmax.
    out0 = refine_cam(cam, attn, threshold=0.0)
    assert torch.allclose(out0, torch.tensor([[[1.0, 0.9 / 1.9], [0.4 / 1.9, 0.0]]]), atol=1e-6)


def test_refine_cam_is_per_image() -> None:
    g = torch.Generator().manual_seed(3)
    cam = torch.randn(3, 3, 3, generator=g)
    attn = torch.rand(3, 9, 9, generator=g).softmax(-1)
    batched = refine_cam(cam, attn)
    for i in range(3):
        assert torch.allclose(batched[i], refine_cam(cam[i : i + 1], attn[i : i + 1])[0], atol=1e-6)
