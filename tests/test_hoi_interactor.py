"""HO interactor (hoi.md §2, §3.2): pair enumeration, shapes, equivariance, spatial conditioning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from afford.errors import AffordError
from afford.hoi.detector import Instances, empty_instances
from afford.hoi.interactor import (
    CompetitiveLayer,
    HOInteractor,
    ModifiedEncoderLayer,
    MultiBranchFusion,
    enumerate_pairs,
)

D, S, PAIR, G = 16, 32, 32, 8


def _model(**kw) -> HOInteractor:
    torch.manual_seed(0)
    args = dict(embed_dim=D, spatial_dim=S, pair_dim=PAIR, heads=4, branches=4, global_dim=G)
    args.update(kw)
    return HOInteractor(**args)


def _instances(n: int, humans: list[int], seed: int = 0) -> Instances:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 40 + 5
    boxes = torch.cat([xy, xy + wh], dim=1)
    is_human = torch.zeros(n, dtype=torch.bool)
    is_human[humans] = True
    return Instances(boxes, torch.rand(n, generator=g), torch.zeros(n, dtype=torch.long), is_human,
                     torch.randn(n, D, generator=g))


def test_enumerate_pairs_hand_made() -> None:
    pairs = enumerate_pairs(torch.tensor([True, True, False]))
    assert pairs.dtype == torch.long
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 0], [1, 2]]
    assert enumerate_pairs(torch.tensor([False, True])).tolist() == [[1, 0]]
    assert enumerate_pairs(torch.tensor([True])).shape == (0, 2)


def test_shapes_batch_of_two() -> None:
    model = _model().eval()
    insts = [_instances(3, [0]), _instances(5, [0, 3], seed=1)]
    out = model(insts, [(100, 120), (80, 90)], torch.randn(2, G))
    assert [p.shape for p, _ in out] == [(2, 2), (8, 2)]
    assert [t.shape for _, t in out] == [(2, PAIR), (8, PAIR)]
    assert all(torch.isfinite(t).all() for _, t in out)


def test_no_human_or_single_instance_gives_no_pairs() -> None:
    model = _model().eval()
    insts = [_instances(4, []), _instances(1, [0]), empty_instances(), _instances(2, [1])]
    out = model(insts, [(100, 100)] * 4, torch.randn(4, G))
    assert [len(p) for p, _ in out] == [0, 0, 0, 1]
    assert out[0][1].shape == (0, PAIR) and out[0][0].shape == (0, 2)


def test_bad_input_raises() -> None:
    model = _model()
    with pytest.raises(AffordError):
        model([_instances(3, [0])], [(10, 10)], torch.randn(1, G + 1))
    bad = _instances(3, [0])
    bad.embeddings = torch.randn(3, D + 1)
    with pytest.raises(AffordError):
        model([bad], [(10, 10)], torch.randn(1, G))


def test_permutation_equivariance() -> None:
    model = _model().eval()
    inst = _instances(5, [0, 2], seed=3)
    perm = torch.tensor([3, 0, 4, 2, 1])
    glob = torch.randn(1, G)
    with torch.no_grad():
        (pairs, tok), = model([inst], [(100, 120)], glob)
        (pairs_p, tok_p), = model([inst.select(perm)], [(100, 120)], glob)
    # Map permuted pair indices back to original instance ids and compare by identity.
    orig = {tuple(p): t for p, t in zip(pairs.tolist(), tok, strict=True)}
    mapped = perm[pairs_p]
    assert len(orig) == len(mapped)
    for (h, o), t in zip(mapped.tolist(), tok_p, strict=True):
        torch.testing.assert_close(t, orig[(h, o)], atol=1e-5, rtol=1e-4)


def test_cooperative_attention_depends_on_spatial_features() -> None:
    torch.manual_seed(0)
    layer = ModifiedEncoderLayer(D, S, heads=4).eval()
    tokens, spatial = torch.randn(4, D), torch.randn(4, 4, S)
    changed = spatial.clone()
    changed[0, 1] = torch.randn(S)  # the pair (sender 0, receiver 1)
    with torch.no_grad():
        before, after = layer(tokens, spatial), layer(tokens, changed)
    assert not torch.allclose(before[1], after[1], atol=1e-6)
    assert torch.equal(before[[0, 2, 3]], after[[0, 2, 3]])  # only the receiver hears of it

    model = _model().eval()
    inst = _instances(4, [0], seed=5)
    moved = Instances(inst.boxes.clone(), inst.scores, inst.labels, inst.is_human, inst.embeddings)
    moved.boxes[3] += torch.tensor([30.0, 10.0, 30.0, 10.0])
    glob = torch.randn(1, G)
    with torch.no_grad():
        (_, a), = model([inst], [(100, 120)], glob)
        (_, b), = model([moved], [(100, 120)], glob)
    assert not torch.allclose(a[0], b[0], atol=1e-6)  # pair (0, 1) does not involve box 3


def test_cooperative_layer_matches_a_loop_over_receivers_senders_and_heads() -> None:
    # UPT's ModifiedEncoderLayer: receiver j sums over senders i (self included) the per-head
    # messages M_h(u_i * p_ij), weighted by a softmax over i of a_h . [u_i, u_j, p_ij]
    torch.manual_seed(1)
    heads, n = 4, 3
    layer = ModifiedEncoderLayer(D, S, heads=heads).eval()
    tokens, spatial = torch.randn(n, D), torch.randn(n, n, S)
    u = torch.relu(tokens @ layer.unary.weight.T + layer.unary.bias)
    p = torch.relu(spatial @ layer.pairwise.weight.T + layer.pairwise.bias)
    sub = S // heads
    out = []
    for j in range(n):
        per_head = []
        for h in range(heads):
            sl = slice(h * sub, (h + 1) * sub)
            logit = torch.stack([torch.dot(layer.attn_weight[h], torch.cat([u[i, sl], u[j, sl], p[i, j, sl]]))
                                 + layer.attn_bias[h] for i in range(n)])
            w = torch.softmax(logit, 0)
            msg = [layer.message_weight[h] @ (u[i, sl] * p[i, j, sl]) + layer.message_bias[h] for i in range(n)]
            per_head.append(sum(w[i] * msg[i] for i in range(n)))
        out.append(torch.cat(per_head))
    agg = torch.relu(torch.stack(out)) @ layer.aggregate.weight.T + layer.aggregate.bias
    x = F.layer_norm(tokens + agg, (D,), layer.norm.weight, layer.norm.bias, 1e-5)
    f = layer.ffn.ffn
    y = f[2](F.gelu(f[0](x)))
    expect = F.layer_norm(x + y, (D,), layer.ffn.norm.weight, layer.ffn.norm.bias, 1e-12)
    with torch.no_grad():
        torch.testing.assert_close(layer(tokens, spatial), expect, atol=1e-5, rtol=1e-5)
    assert layer.unary.out_features == S and layer.aggregate.out_features == D and f[0].out_features == 4 * D


def test_competitive_layer_is_post_norm_attention_then_a_2x_gelu_block() -> None:
    torch.manual_seed(2)
    layer = CompetitiveLayer(PAIR, heads=4).eval()
    x = torch.randn(1, 5, PAIR)
    q, k, v = (x[0] @ w.T + b for w, b in zip(layer.attn.in_proj_weight.chunk(3), layer.attn.in_proj_bias.chunk(3),
                                             strict=True))
    d = PAIR // 4
    heads = [torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / d ** 0.5, -1) @ v[:, h * d:(h + 1) * d]
             for h in range(4)]
    m = torch.cat(heads, 1) @ layer.attn.out_proj.weight.T + layer.attn.out_proj.bias
    a = F.layer_norm(x[0] + m, (PAIR,), layer.norm.weight, layer.norm.bias, 1e-12)
    f = layer.ffn.ffn
    expect = F.layer_norm(a + f[2](F.gelu(f[0](a))), (PAIR,), layer.ffn.norm.weight, layer.ffn.norm.bias, 1e-12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[0], expect, atol=1e-5, rtol=1e-5)
    assert f[0].out_features == 2 * PAIR


def test_mbf_equals_loop_over_branches() -> None:
    torch.manual_seed(0)
    mbf = MultiBranchFusion(6, 5, 8, branches=4)
    assert mbf.fc1[0].out_features == 2 and mbf.fc3[0].out_features == 8
    a, s = torch.randn(7, 6), torch.randn(7, 5)
    total = torch.zeros(7, 8)
    for b in range(4):
        hidden = (a @ mbf.fc1[b].weight.T + mbf.fc1[b].bias) * (s @ mbf.fc2[b].weight.T + mbf.fc2[b].bias)
        total = total + torch.relu(hidden) @ mbf.fc3[b].weight.T + mbf.fc3[b].bias
    torch.testing.assert_close(mbf(a, s), torch.relu(total))


def test_gradients_reach_every_parameter() -> None:
    model = _model(dropout=0.0).train()
    insts = [_instances(4, [0, 1], seed=7), _instances(3, [2], seed=8)]
    out = model(insts, [(100, 120), (90, 60)], torch.randn(2, G))
    # A plain sum is blind: the competitive layer ends in LayerNorm, whose outputs sum to sum(bias).
    weight = torch.randn(PAIR, generator=torch.Generator().manual_seed(0))
    sum((t * weight).sum() for _, t in out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_a_zero_area_box_keeps_every_pair_token_finite() -> None:
    # IoU of a zero-area box with itself (the self pair of the cooperative layer) was 0/0 = NaN,
    # which the softmax spread to every pair of the image
    model = _model().eval()
    inst = _instances(4, [0, 1])
    inst.boxes[2] = torch.tensor([5.0, 5.0, 5.0, 20.0])
    pairs, tokens = model([inst], [(100, 100)], torch.randn(1, G))[0]
    assert len(pairs) == 6 and torch.isfinite(tokens).all()


def test_pairwise_spatial_is_the_encoding_of_each_ordered_pair_on_a_non_square_image() -> None:
    """Entry (i, j) is the 36-d encoding of (box i, box j) with box i first; image_size comes as (h, w)
    (UPT's image_shapes) and reaches spatial_encoding as (w, h): a swap shows on a 120 x 300 image."""
    from afford.hoi.interactor import pairwise_spatial
    from afford.hoi.spatial import spatial_encoding

    boxes = torch.tensor([[10.0, 5.0, 60.0, 100.0], [200.0, 20.0, 290.0, 70.0], [100.0, 50.0, 150.0, 110.0]])
    got = pairwise_spatial(boxes, (120, 300), torch.nn.Identity())
    assert got.shape == (3, 3, 36)
    for i in range(3):
        for j in range(3):
            want = spatial_encoding(boxes[i : i + 1], boxes[j : j + 1], (300, 120))[0]
            torch.testing.assert_close(got[i, j], want)
    assert not torch.allclose(got[0, 1], got[1, 0])
    assert not torch.allclose(got, pairwise_spatial(boxes, (300, 120), torch.nn.Identity()))
