"""CLIP4HOI building blocks: spatial encoding, priors/loss, THID prompts, pair decoder (hoi.md §2-§4)."""

from __future__ import annotations

import math

import pytest
import torch

from afford.errors import AffordError
from afford.hoi.decoder import PairDecoder, union_mask
from afford.hoi.prompts import HOIPromptLearner
from afford.hoi.scoring import (
    combined_logit,
    final_scores,
    focal_loss,
    interaction_loss,
    normalised_focal_loss,
    prior_scores,
)
from afford.hoi.spatial import SPATIAL_EPS, SpatialMLP, box_iou, spatial_encoding

# ---------------------------------------------------------------------------------------- spatial

# Pair 1: human (10,20,50,100) left of object (70,40,110,80) in a 200x160 image.
#   c1 = (30, 60), c2 = (90, 60); w1, h1 = 40, 80; w2, h2 = 40, 40; dx = 60/40, dy = 0.
# Pair 2: human (0,0,100,100) overlapping object (50,50,150,150) in a 200x200 image.
#   c1 = (50, 50), c2 = (100, 100); all sides 100; IoU = 2500/17500; dx = dy = 0.5 (right, below).
PAIR1 = ([10.0, 20, 50, 100], [70.0, 40, 110, 80], (200, 160),
         [0.15, 0.375, 0.45, 0.375, 0.2, 0.5, 0.2, 0.25, 0.1, 0.05, 0.5, 0.5, 1.0, 0.0, 1.5, 0.0, 0.0, 0.0])
PAIR2 = ([0.0, 0, 100, 100], [50.0, 50, 150, 150], (200, 200),
         [0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 1.0, 1.0, 1.0, 1 / 7, 0.5, 0.0, 0.5, 0.0])


@pytest.mark.parametrize("pair", [PAIR1, PAIR2], ids=["left", "overlap"])
def test_spatial_encoding_by_hand(pair):
    bh, bo, size, expected = pair
    enc = spatial_encoding(torch.tensor([bh], dtype=torch.float64), torch.tensor([bo], dtype=torch.float64), size)
    assert enc.shape == (1, 36)
    f = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(enc[0, :18], f, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(enc[0, 18:], torch.tensor([math.log(v + SPATIAL_EPS) for v in expected],
                                                         dtype=torch.float64))


def test_spatial_encoding_batch_and_mlp():
    bh = torch.tensor([PAIR1[0], PAIR2[0]])
    bo = torch.tensor([PAIR1[1], PAIR2[1]])
    enc = spatial_encoding(bh, bo, (200, 200))
    assert enc.shape == (2, 36) and torch.isfinite(enc).all()
    assert SPATIAL_EPS == 1e-10  # fredzzhang/upt ops.py::compute_spatial_encodings default
    out = SpatialMLP()(enc)
    assert out.shape == (2, 512) and (out >= 0).all()
    with pytest.raises(AffordError):
        spatial_encoding(bh, bo[:1], (200, 200))


def test_box_iou():
    a = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 25]])
    torch.testing.assert_close(torch.diag(box_iou(a, a)), torch.ones(2))
    b = torch.tensor([[5.0, 0, 15, 10], [20, 20, 30, 30]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 2)
    torch.testing.assert_close(iou[0], torch.tensor([50 / 150, 0.0]))
    torch.testing.assert_close(iou[1, 0], torch.tensor(50 / (100 + 200 - 50)))  # overlap 10 x 5


# ---------------------------------------------------------------------------------------- scoring

def test_prior_scores_masking_and_exponent():
    s_h, s_o, obj = torch.tensor([0.5, 0.9]), torch.tensor([0.8, 0.4]), torch.tensor([0, 1])
    valid = torch.tensor([[True, False, True], [False, True, True]])
    p1 = prior_scores(s_h, s_o, obj, valid, exponent=1.0)
    torch.testing.assert_close(p1, torch.tensor([[0.4, 0.0, 0.4], [0.0, 0.36, 0.36]]))
    p28 = prior_scores(s_h, s_o, obj, valid, exponent=2.8)
    a, b = 0.5 ** 2.8 * 0.8 ** 2.8, 0.9 ** 2.8 * 0.4 ** 2.8
    torch.testing.assert_close(p28, torch.tensor([[a, 0.0, a], [0.0, b, b]]))
    logit = torch.tensor([[0.3, -1.0, 2.0], [0.0, 1.0, -2.0]])
    torch.testing.assert_close(final_scores(logit, p28), torch.sigmoid(logit) * p28)
    with pytest.raises(AffordError):
        prior_scores(s_h, s_o, torch.tensor([0, 2]), valid)
    with pytest.raises(AffordError):
        prior_scores(s_h, s_o, obj, valid.float())


def test_combined_logit_is_logit_of_product():
    logits = torch.tensor([-200.0, -100, -30, -5, -0.5, 0, 0.5, 5, 30, 100, 200], dtype=torch.float64)
    priors = torch.tensor([1e-8, 0.01, 0.3, 0.9, 0.999, 1.0], dtype=torch.float64)
    lg, pr = torch.meshgrid(logits, priors, indexing="ij")
    x = combined_logit(lg, pr)
    assert torch.isfinite(x).all()
    # sigma(x) == p * sigma(l), compared in log space so tiny probabilities count too
    torch.testing.assert_close(torch.nn.functional.logsigmoid(x),
                               torch.log(pr) + torch.nn.functional.logsigmoid(lg), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.sigmoid(x), pr * torch.sigmoid(lg), rtol=1e-9, atol=0.0)
    naive = torch.log(pr / (1 + torch.exp(-lg) - pr))
    ok = torch.isfinite(naive)
    assert ok.sum() > 40 and not ok.all()  # the naive form breaks at prior 1 / large |logit|
    torch.testing.assert_close(x[ok], naive[ok], rtol=1e-4, atol=5e-3)
    # float32 and gradients stay finite too
    l32 = lg.float().requires_grad_()
    y = combined_logit(l32, pr.float())
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(l32.grad).all()


def _focal_ref(x: float, y: float, alpha: float, gamma: float, eps: float) -> float:
    s = 1 / (1 + math.exp(-x))
    bce = max(x, 0) - x * y + math.log1p(math.exp(-abs(x)))
    return abs(1 - y - alpha) * (abs(y - s) + eps) ** gamma * bce


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_focal_loss_matches_loop(eps):
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64) * 3
    y = (torch.rand(4, 5) < 0.3).double()
    alpha, gamma = 0.5, 0.2
    ref = [[_focal_ref(float(x[i, j]), float(y[i, j]), alpha, gamma, eps) for j in range(5)] for i in range(4)]
    ref_t = torch.tensor(ref, dtype=torch.float64)
    torch.testing.assert_close(focal_loss(x, y, alpha, gamma, reduction="none", eps=eps), ref_t)
    torch.testing.assert_close(focal_loss(x, y, alpha, gamma, reduction="sum", eps=eps),
                               torch.tensor(sum(map(sum, ref)), dtype=torch.float64))
    torch.testing.assert_close(focal_loss(x, y, alpha, gamma, reduction="mean", eps=eps),
                               torch.tensor(sum(map(sum, ref)) / 20, dtype=torch.float64))
    # alpha != 0.5 weights positives and negatives differently
    r2 = sum(_focal_ref(float(a), float(b), 0.25, 2.0, eps) for a, b in zip(x.flatten(), y.flatten(), strict=True))
    torch.testing.assert_close(focal_loss(x, y, 0.25, 2.0, eps=eps), torch.tensor(r2, dtype=torch.float64))
    with pytest.raises(AffordError):
        focal_loss(x, y, reduction="max")


def test_normalised_focal_loss_divides_by_positives():
    x = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0])
    y = torch.tensor([1.0, 0, 1, 0, 1])
    torch.testing.assert_close(normalised_focal_loss(x, y), focal_loss(x, y) / 3)
    y0 = torch.zeros(5)
    torch.testing.assert_close(normalised_focal_loss(x, y0), focal_loss(x, y0))  # max(1, 0)


def test_interaction_loss_drops_invalid_combinations():
    logit = torch.tensor([[0.5, -1.0, 2.0], [0.1, 3.0, -2.0]])
    prior = torch.tensor([[0.4, 0.0, 0.4], [0.0, 0.36, 1.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    loss = interaction_loss(logit, prior, labels)
    keep = prior > 0
    expected = normalised_focal_loss(combined_logit(logit[keep], prior[keep]), labels[keep])
    torch.testing.assert_close(loss, expected)  # 2 kept positives, the invalid positive is not counted
    assert torch.isfinite(loss)
    other = logit.clone()
    other[~keep] = torch.tensor([-50.0, 50.0])
    torch.testing.assert_close(interaction_loss(other, prior, labels), loss)
    lg = logit.clone().requires_grad_()
    interaction_loss(lg, prior, labels).backward()
    assert (lg.grad[~keep] == 0).all() and torch.isfinite(lg.grad).all() and (lg.grad[keep] != 0).all()


# ---------------------------------------------------------------------------------------- prompts

@pytest.fixture(scope="module")
def learner():
    from afford.backbones import create_text_encoder

    torch.manual_seed(0)
    enc = create_text_encoder("tiny_clip")
    return HOIPromptLearner(enc, ["ride", "no_interaction"], ["bicycle", "tennis_racket"], [(0, 0), (1, 1)],
                            n_prefix=8, n_conjun=2)


@pytest.mark.parametrize("c,verb,obj", [(0, "ride", "bicycle"), (1, "no interaction", "tennis racket")])
def test_prompt_positions_and_rows(learner, c, verb, obj):
    enc = learner.text_encoder
    n_verb = len(verb.replace(" ", ""))  # char-level tiny vocabulary: one token per character
    n_obj = len(obj.replace(" ", ""))
    pos = learner.positions(c)
    assert pos["prefix"] == slice(1, 9)
    assert pos["verb"] == slice(9, 9 + n_verb)
    assert pos["conjun"] == slice(9 + n_verb, 11 + n_verb)
    assert pos["object"] == slice(11 + n_verb, 11 + n_verb + n_obj)
    eot = pos["eot"]
    assert eot == 11 + n_verb + n_obj
    ids = learner.token_ids[c]
    sot_eot = enc.tokenize("")[0]
    assert ids[0] == sot_eot[0] and ids[eot] == sot_eot[1] and int(ids.argmax()) == eot
    assert (ids[eot + 1 :] == 0).all() and ids.shape == (enc.context_length,)
    verb_ids = enc.tokenize(verb)[0, 1 : 1 + n_verb]
    obj_ids = enc.tokenize(obj)[0, 1 : 1 + n_obj]
    assert torch.equal(ids[pos["verb"]], verb_ids) and torch.equal(ids[pos["object"]], obj_ids)
    emb = enc.token_embedding
    pe = learner.prompt_embeddings()
    assert pe.shape == (2, enc.context_length, enc.width)
    with torch.no_grad():
        torch.testing.assert_close(pe[c, pos["verb"]], emb(verb_ids))
        torch.testing.assert_close(pe[c, pos["object"]], emb(obj_ids))
        torch.testing.assert_close(pe[c, 0], emb(ids[:1])[0])
        torch.testing.assert_close(pe[c, eot], emb(ids[eot : eot + 1])[0])
        torch.testing.assert_close(pe[c, eot + 1 :], emb(torch.zeros_like(ids[eot + 1 :])))
    assert torch.equal(pe[c, pos["prefix"]], learner.prefix)
    assert torch.equal(pe[c, pos["conjun"]], learner.conjun)


def test_prompt_learned_vectors_shared_and_trainable(learner):
    assert dict(learner.named_parameters()).keys() == {"prefix", "conjun"}
    pe = learner.prompt_embeddings()
    p0, p1 = learner.positions(0), learner.positions(1)
    assert torch.equal(pe[0, p0["prefix"]], pe[1, p1["prefix"]])
    assert torch.equal(pe[0, p0["conjun"]], pe[1, p1["conjun"]])
    assert p0["conjun"] != p1["conjun"]  # class-dependent position, same vectors
    learner.zero_grad()
    out = learner()
    assert out.shape == (2, learner.text_encoder.embed_dim)
    out.pow(2).sum().backward()
    assert learner.prefix.grad is not None and learner.prefix.grad.abs().sum() > 0
    assert learner.conjun.grad is not None and learner.conjun.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in learner.text_encoder.parameters())


def test_prompt_features_skip_padding_exactly(learner):
    # causal attention: running the tower only up to the longest prompt's EOT changes nothing
    with torch.no_grad():
        full = learner.text_encoder.encode_prompt_embeddings(learner.prompt_embeddings(), learner.token_ids)
        torch.testing.assert_close(learner(), full, rtol=1e-5, atol=1e-6)


def test_prompt_ids_are_saved_so_a_run_needs_no_vocabulary(learner):
    from afford.backbones import create_text_encoder

    state = learner.state_dict()
    assert {"token_ids", "learned_index", "bounds"} <= state.keys()
    enc = create_text_encoder("tiny_clip", tokenizer=lambda texts, context_length: 1 / 0)  # would fail if used
    enc.tokenizer = None
    fresh = HOIPromptLearner(enc, ["ride", "no_interaction"], ["bicycle", "tennis_racket"], [(0, 0), (1, 1)])
    fresh.load_state_dict(state)
    assert fresh.positions(1) == learner.positions(1) and torch.equal(fresh.token_ids, learner.token_ids)


def test_prompt_bad_input(learner):
    enc = learner.text_encoder
    with pytest.raises(AffordError):
        HOIPromptLearner(enc, ["ride"], ["bicycle"], [(0, 1)])
    with pytest.raises(AffordError):
        HOIPromptLearner(enc, ["ride"], ["bicycle"], [(0, 0)], n_prefix=70)
    with pytest.raises(AffordError):
        learner.positions(2)


# ---------------------------------------------------------------------------------------- decoder

def test_union_mask_by_hand():
    # 64x64 image, 4x4 grid: patch centres at 8, 24, 40, 56 on each axis
    bh = torch.tensor([[[0.0, 0, 20, 20], [33, 33, 63, 63], [1, 1, 2, 2]]])
    bo = torch.tensor([[[30.0, 0, 40, 16], [40, 40, 50, 50], [1, 1, 2, 2]]])
    m = union_mask(bh, bo, (4, 4), (64, 64))
    assert m.shape == (1, 3, 16) and m.dtype == torch.bool
    assert m[0, 0].nonzero().flatten().tolist() == [0, 1]  # union (0,0,40,20): x < 40 excludes 40
    assert m[0, 1].nonzero().flatten().tolist() == [10, 11, 14, 15]
    assert not m[0, 2].any()
    # non-square grid and image: 2 rows x 3 cols over 90x40, centres x 15,45,75 / y 10,30
    m2 = union_mask(torch.tensor([[[0.0, 0, 50, 20]]]), torch.tensor([[[60.0, 25, 80, 40]]]), (2, 3), (90, 40))
    assert m2[0, 0].tolist() == [True, True, True, True, True, True]
    m3 = union_mask(torch.tensor([[[40.0, 0, 50, 20]]]), torch.tensor([[[40.0, 0, 50, 20]]]), (2, 3), (90, 40))
    assert m3[0, 0].tolist() == [False, True, False, False, False, False]
    with pytest.raises(AffordError):
        union_mask(bh[0], bo[0], (4, 4), (64, 64))


# Perturbations are random vectors: a constant shift would vanish in the LayerNorms.
def _decoder():
    torch.manual_seed(0)
    return PairDecoder(dim=32, n_layers=2, n_heads=4, clip_dim=48).eval()


def test_decoder_shape():
    dec = _decoder()
    out = dec(torch.randn(2, 3, 32), torch.randn(2, 17, 48))
    assert out.shape == (2, 3, 48)
    union = torch.zeros(2, 3, 16, dtype=torch.bool)
    union[..., :4] = True
    assert dec(torch.randn(2, 3, 32), torch.randn(2, 17, 48), union, has_cls=True).shape == (2, 3, 48)
    with pytest.raises(AffordError):
        dec(torch.randn(2, 3, 32), torch.randn(2, 17, 48), union)  # 17 tokens need has_cls
    with pytest.raises(AffordError):
        dec(torch.randn(2, 3, 16), torch.randn(2, 17, 48))


@pytest.mark.parametrize("has_cls", [False, True])
def test_masked_query_ignores_tokens_outside_union(has_cls):
    dec = _decoder()
    pairs = torch.randn(1, 2, 32)
    off = int(has_cls)
    tokens = torch.randn(1, off + 16, 48)
    bh = torch.tensor([[[0.0, 0, 20, 20], [0, 0, 10, 40]]])  # both unions inside the left half
    bo = torch.tensor([[[20.0, 20, 30, 30], [0, 0, 10, 10]]])
    union = union_mask(bh, bo, (4, 4), (64, 64))
    inside = union[0].any(0)
    assert inside.any() and not inside.all()
    with torch.no_grad():
        base = dec(pairs, tokens, union, has_cls=has_cls)
        changed = tokens.clone()
        changed[0, off:][~inside] += 5 * torch.randn(int((~inside).sum()), 48)
        if has_cls:
            changed[0, 0] += 5 * torch.randn(48)  # the CLS token is hidden from masked queries
        torch.testing.assert_close(dec(pairs, changed, union, has_cls=has_cls), base)
        # without the mask the same change is seen
        assert not torch.allclose(dec(pairs, changed, has_cls=has_cls), dec(pairs, tokens, has_cls=has_cls))
        poked = tokens.clone()
        first_inside = int(union[0, 0].nonzero()[0])
        poked[0, off + first_inside] += 5 * torch.randn(48)
        assert not torch.allclose(dec(pairs, poked, union, has_cls=has_cls)[0, 0], base[0, 0])


def test_empty_union_falls_back_to_all_tokens():
    dec = _decoder()
    pairs, tokens = torch.randn(1, 1, 32), torch.randn(1, 17, 48)
    empty = union_mask(torch.tensor([[[1.0, 1, 2, 2]]]), torch.tensor([[[1.0, 1, 2, 2]]]), (4, 4), (64, 64))
    assert not empty.any()
    with torch.no_grad():
        out = dec(pairs, tokens, empty, has_cls=True)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, dec(pairs, tokens, has_cls=True))
        changed = tokens.clone()
        changed[0, 16] += 5 * torch.randn(48)  # a patch far from the (empty) union still matters
        assert not torch.allclose(dec(pairs, changed, empty, has_cls=True), out)


def test_padded_pairs_are_not_attended():
    dec = _decoder()
    pairs, tokens = torch.randn(1, 3, 32), torch.randn(1, 16, 48)
    valid = torch.tensor([[True, True, False]])
    with torch.no_grad():
        out = dec(pairs, tokens, pair_valid=valid)
        other = pairs.clone()
        other[0, 2] += 3 * torch.randn(32)
        torch.testing.assert_close(dec(other, tokens, pair_valid=valid)[0, :2], out[0, :2])
        assert not torch.allclose(dec(other, tokens)[0, :2], dec(pairs, tokens)[0, :2])


def test_prompt_gradients_do_not_depend_on_thread_scheduling():
    # The shared vectors reach ~all classes; a gather's backward accumulated them in a thread-dependent
    # order, which made two identical training runs differ with 2 CPU threads.
    from afford.backbones import create_text_encoder

    torch.manual_seed(0)
    enc = create_text_encoder("tiny_clip")
    verbs, objects = [f"v{i}" for i in range(20)], [f"o{i}" for i in range(10)]
    learner = HOIPromptLearner(enc, verbs, objects, [(v, o) for v in range(20) for o in range(10)])
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(3):
            learner.zero_grad()
            learner().pow(2).sum().backward()
            grads.append(learner.prefix.grad.clone())
    finally:
        torch.set_num_threads(prev)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_a_padded_batch_decodes_each_image_as_it_would_alone():
    """CLIP4HOI decodes images with different pair counts as one padded batch: image k's union masks and
    valid pairs are its own (image 0's applied to all would change image 1's output)."""
    dec = _decoder().eval()
    g = torch.Generator().manual_seed(3)
    pairs, tokens = torch.randn(2, 3, 32, generator=g), torch.randn(2, 17, 48, generator=g)
    union = torch.zeros(2, 3, 16, dtype=torch.bool)
    union[0, :, :6] = True
    union[1, 0, 10:] = True
    union[1, 1, 3:9] = True
    valid = torch.tensor([[True, True, True], [True, True, False]])  # image 1 has two pairs, one padding row
    with torch.no_grad():
        both = dec(pairs, tokens, union, has_cls=True, pair_valid=valid)
        alone0 = dec(pairs[:1], tokens[:1], union[:1], has_cls=True, pair_valid=valid[:1])
        alone1 = dec(pairs[1:, :2], tokens[1:], union[1:, :2], has_cls=True, pair_valid=valid[1:, :2])
    torch.testing.assert_close(both[0], alone0[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1, :2], alone1[0], rtol=1e-5, atol=1e-5)
