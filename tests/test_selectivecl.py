"""SelectiveCL: affinity maps, part/object selection, both contrastive losses against plain loops,
the three outputs, LR groups and training through the engine."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from afford.data.classes import SEEN_AFFORDANCES
from afford.errors import AffordError
from afford.losses.selectivecl import (
    ANCHOR,
    EGO_NEG,
    EGO_POS,
    EXO_NEG,
    EXO_POS,
    calibrate,
    pixel_contrastive_loss,
    pixel_foreground,
    prototype_contrastive_loss,
    prototype_membership,
    two_map_part,
)
from afford.methods.selectivecl import SelectiveCL, SelectiveCLConfig
from afford.modules.clip_affinity import action_prompt, cosine_map, entity_prompt, exo_affinity, local_mean3x3

TINY = dict(backbone="tiny_vit", clip="tiny_clip")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- prompts and affinity
def test_prompts_keep_the_underscore_and_add_with_once() -> None:
    assert action_prompt("hold") == "an item to hold with"
    assert action_prompt("cut_with") == "an item to cut_with"
    assert action_prompt("drink_with") == "an item to drink_with"
    assert entity_prompt("sit_on") == "a person sit_on an item"


def test_cosine_map_and_exo_affinity_match_loops() -> None:
    tok, ent, act = torch.randn(2, 8, 4, 5, generator=gen(0)), torch.randn(2, 8, generator=gen(1)), torch.randn(2, 8, generator=gen(2))
    cos = cosine_map(tok, act)
    for b in range(2):
        for i in range(4):
            for j in range(5):
                want = F.cosine_similarity(tok[b, :, i, j], act[b], dim=0)
                assert math.isclose(float(cos[b, i, j]), float(want), abs_tol=1e-6)
    torch.testing.assert_close(exo_affinity(tok, ent, act), local_mean3x3(cosine_map(tok, ent)) * cos)


def test_local_mean_averages_the_existing_neighbours_only() -> None:
    x = torch.randn(2, 3, 5, 6, generator=gen(3))
    want = torch.empty_like(x)
    for i in range(5):
        for j in range(6):
            nb = [(a, b) for a in (i - 1, i, i + 1) for b in (j - 1, j, j + 1) if 0 <= a < 5 and 0 <= b < 6]
            want[..., i, j] = sum(x[..., a, b] for a, b in nb) / len(nb)
    torch.testing.assert_close(local_mean3x3(x), want)
    corner = torch.zeros(1, 3, 3)
    corner[0, 0, 0] = 4.0
    assert float(local_mean3x3(corner)[0, 0, 0]) == 1.0  # 4 neighbours at a corner, not 9


def test_calibration_continuous_binary_and_constant_affinity() -> None:
    cam, aff = torch.randn(2, 4, 4, generator=gen(4)), torch.randn(2, 4, 4, generator=gen(5))
    lo, hi = aff.flatten(1).min(1).values[:, None, None], aff.flatten(1).max(1).values[:, None, None]
    norm = (aff - lo) / (hi - lo)
    torch.testing.assert_close(calibrate(cam, aff), norm * cam)
    torch.testing.assert_close(calibrate(cam, aff, "binary", 0.6), (norm > 0.6).float() * cam)
    flat = calibrate(cam, torch.ones(2, 4, 4))
    assert torch.isfinite(flat).all() and float(flat.abs().max()) == 0.0


# ----------------------------------------------------------------------------- part maps
def test_two_map_part_is_the_mean_of_cosine_and_distance_softmax() -> None:
    """Cosine on the (weighted) descriptors; the softmax of −‖raw desc − n(centroid)‖ over all the
    sample's views and positions (the reference: raw, unweighted descriptors; one softmax per sample)."""
    g = gen(6)
    raw = torch.randn(3, 2, 6, 4, 4, generator=g) * 5  # DINO keys have norms far from 1
    weighted = raw * torch.rand(3, 1, 1, 4, 4, generator=g)
    cen = torch.randn(3, 6, generator=gen(7))
    got = two_map_part(weighted, raw, cen)
    for m in range(3):
        c = cen[m] / cen[m].norm()
        cells = [(v, i, j) for v in range(2) for i in range(4) for j in range(4)]
        cos = torch.stack([(weighted[m, v, :, i, j] / weighted[m, v, :, i, j].norm() * c).sum() for v, i, j in cells])
        soft = torch.softmax(torch.stack([-(raw[m, v, :, i, j] - c).norm() for v, i, j in cells]), 0)
        torch.testing.assert_close(got[m].flatten(), (cos + soft) / 2)
    assert float(got.sum()) != 0 and abs(float(((got * 2) - two_map_part(weighted, raw, cen) * 2).abs().max())) == 0


def _parts_model(**cfg) -> SelectiveCL:
    return SelectiveCL(SelectiveCLConfig(**TINY, **cfg), SEEN_AFFORDANCES[:4]).eval()


def _part_scene(saliency_on_part: bool):
    """One sample, 3 exocentric images whose region holds three distinct descriptor types; the
    egocentric image shows type 0 at its top-left 2x2 block and unrelated noise elsewhere."""
    d, h, w, n = 8, 4, 4, 3
    protos = torch.eye(d)[:3] * 5
    exo = torch.zeros(1, n, d, h, w)
    region = torch.full((1, n, h, w), -1.0)
    for e in range(n):
        for t in range(3):
            exo[0, e, :, t, 0] = protos[t]
            region[0, e, t, 0] = 1.0
    ego = torch.randn(1, d, h, w, generator=gen(8)) * 0.1
    ego[0, :3] = 0.0  # noise orthogonal to the three types
    ego[0, :, :2, :2] = protos[0][:, None, None]
    saliency = torch.zeros(1, h, w, dtype=torch.bool)
    if saliency_on_part:
        saliency[0, :2, :2] = True
    else:
        saliency[0, 2:, 2:] = True
    return ego, exo, region, saliency


@pytest.mark.parametrize("on_part", [True, False])
def test_part_found_uses_the_part_maps_else_the_affinity_fallback(on_part: bool) -> None:
    model = _parts_model()
    ego, exo, region, sal = _part_scene(on_part)
    a_ego = torch.rand(1, 4, 4, generator=gen(9)) + 0.5
    sel = model.select_parts(a_ego, region, None, ego, exo, sal)
    if on_part:
        assert bool(sel.found[0])
        assert float(sel.piou.max()) >= 0.6
        # the part map peaks on the block of the matching descriptor type
        assert sel.ego_map[0, :2, :2].min() > sel.ego_map[0, 2:, 2:].max()
        torch.testing.assert_close(sel.ego_map, two_map_part((ego * a_ego[:, None])[:, None], ego[:, None],
                                                             torch.eye(8)[:1])[:, 0])
        # a raw cosine can be negative: the affinity weighting then shows through the descriptor cosine
        a_neg = a_ego.clone()
        a_neg[0, 1, 1] = -0.5
        neg = model.select_parts(a_neg, region, None, ego, exo, sal)
        assert bool(neg.found[0])
        torch.testing.assert_close(neg.ego_map, two_map_part((ego * a_neg[:, None])[:, None], ego[:, None],
                                                             torch.eye(8)[:1])[:, 0])
        assert not torch.allclose(neg.ego_map, two_map_part(ego[:, None], ego[:, None], torch.eye(8)[:1])[:, 0])
        # the exocentric part map: the raw descriptors, one softmax over the sample's views (not the affinity)
        torch.testing.assert_close(sel.exo_map, two_map_part(exo, exo, torch.eye(8)[:1]))
    else:
        assert not bool(sel.found[0])
        torch.testing.assert_close(sel.ego_map, a_ego)
        torch.testing.assert_close(sel.exo_map, region)


def test_region_uses_the_cam_after_the_first_epoch() -> None:
    """relu(A_exo) · relu(CAM): a CAM that is negative on two of the three types leaves one cluster
    region, so fewer than K descriptors -> no part."""
    model = _parts_model()
    ego, exo, region, sal = _part_scene(True)
    cam = torch.full_like(region, -1.0)
    cam[0, 0, 0, 0] = 1.0  # only type 0 of the first exocentric image survives
    sel = model.select_parts(torch.ones(1, 4, 4), region, cam, ego, exo, sal)
    assert not bool(sel.found[0])


# ----------------------------------------------------------------------------- contrastive losses
def _loop_supcon(feats, anchors, pos, den, t=0.5, tb=0.07):
    total, count = 0.0, 0
    for i in range(len(feats)):
        if not anchors[i]:
            continue
        ps = [j for j in range(len(feats)) if pos[i][j] and j != i]
        if not ps:
            continue
        ds = [j for j in range(len(feats)) if (den[i][j] or pos[i][j]) and j != i]
        logden = math.log(sum(math.exp(float(feats[i] @ feats[j]) / t) for j in ds))
        total += -(t / tb) * sum(float(feats[i] @ feats[p]) / t - logden for p in ps) / len(ps)
        count += 1
    return total / max(count, 1)


def test_prototype_membership_follows_the_rules_of_the_spec() -> None:
    labels, n = torch.tensor([0, 1, 0]), 2
    anchors, pos, den, kind = prototype_membership(labels, n)
    b = 3
    owner = list(range(b)) * 3 + [s for s in range(b) for _ in range(n)] * 2
    cls = [int(labels[s]) for s in owner]
    for i in range(len(kind)):
        assert bool(anchors[i]) == (int(kind[i]) == ANCHOR)
        for j in range(len(kind)):
            k = int(kind[j])
            want_pos = int(kind[i]) == ANCHOR and cls[i] == cls[j] and (
                (k == EGO_POS and owner[i] != owner[j]) or k == EXO_POS)
            want_den = int(kind[i]) == ANCHOR and ((k == EGO_POS and owner[i] != owner[j]) or k == EXO_POS
                                                   or (cls[i] == cls[j] and k in (EGO_NEG, EXO_NEG)))
            assert bool(pos[i, j]) == want_pos, (i, j)
            assert bool(den[i, j]) == want_den, (i, j)
    # the anchor's own ego_pos is neither its positive nor in its denominator; its own exo_pos are positives
    assert not bool(pos[0, b + 0]) and not bool(den[0, b + 0]) and bool(pos[0, b + 2]) and bool(pos[0, 3 * b])


def test_prototype_loss_matches_a_plain_loop() -> None:
    labels, n, d = torch.tensor([0, 1, 0, 2]), 3, 5
    g = gen(10)

    def emb(k: int) -> torch.Tensor:
        return F.normalize(torch.randn(k, d, generator=g), dim=-1)

    a, ep, en, xp, xn = emb(4), emb(4), emb(4), emb(12), emb(12)
    got = prototype_contrastive_loss(a, ep, en, xp, xn, labels, 0.5, 0.07)
    anchors, pos, den, _ = prototype_membership(labels, n)
    want = _loop_supcon(torch.cat([a, ep, en, xp, xn]), anchors.tolist(), pos.tolist(), den.tolist())
    assert math.isclose(float(got), want, rel_tol=1e-5)
    # the hidden 0.5 / 0.07 scale is explicit
    unscaled = prototype_contrastive_loss(a, ep, en, xp, xn, labels, 0.5, 0.5)
    assert math.isclose(float(got), float(unscaled) * 0.5 / 0.07, rel_tol=1e-5)


def test_pixel_foreground_threshold_and_fallback() -> None:
    ego = torch.tensor([[[0.1, 0.5], [0.3, 0.9]], [[0.1, 0.2], [0.3, 0.1]]])
    exo = torch.tensor([[[[0.2, 0.4], [0.0, 0.0]], [[0.6, 0.1], [0.0, 0.0]]],   # rho = min(0.4, 0.6) = 0.4
                        [[[0.5, 0.0], [0.0, 0.0]], [[0.9, 0.0], [0.0, 0.0]]]])  # rho = 0.5: nothing passes
    obj = torch.tensor([[[False, False], [False, False]], [[True, False], [False, True]]])
    fg = pixel_foreground(ego, exo, obj)
    assert fg[0].tolist() == [[False, True], [False, True]]
    assert fg[1].tolist() == obj[1].tolist()


def test_pixel_loss_matches_a_per_image_loop() -> None:
    b, d, h, w = 3, 4, 3, 3
    feat = torch.randn(b, d, h, w, generator=gen(11))
    fg = torch.rand(b, h, w, generator=gen(12)) > 0.5
    weight = torch.rand(b, h, w, generator=gen(13))
    weight[2] = 0.0  # an image without anchors does not count
    got = pixel_contrastive_loss(feat, fg, weight, 0.5, 0.5, 0.07)
    per = []
    for i in range(b):
        f = F.normalize(feat[i].flatten(1).t(), dim=-1)
        lab = fg[i].flatten().tolist()
        anchors = (weight[i].flatten() > 0.5).tolist()
        pos = [[lab[p] == lab[q] for q in range(h * w)] for p in range(h * w)]
        den = [[True] * (h * w) for _ in range(h * w)]
        if any(a and sum(pos[p]) > 1 for p, a in enumerate(anchors)):
            per.append(_loop_supcon(f, anchors, pos, den))
    assert len(per) == 2
    assert math.isclose(float(got), sum(per) / len(per), rel_tol=1e-5)


# ----------------------------------------------------------------------------- the model
def test_outputs_are_the_calibrations_of_the_raw_cam() -> None:
    torch.manual_seed(0)
    model = SelectiveCL(SelectiveCLConfig(**TINY), SEEN_AFFORDANCES).eval()
    x, y = torch.rand(3, 3, 112, 112, generator=gen(14)), torch.tensor([0, 5, 35])
    raw = model.predict(x, y, "raw")
    assert raw.shape == (3, 14, 14) and model.default_output == "calibrated"
    aff = cosine_map(model._clip_tokens(x), model.text_features()[0][y])
    torch.testing.assert_close(model.predict(x, y), calibrate(raw, aff), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.predict(x, y, "calibrated_mean"), calibrate(local_mean3x3(raw), aff), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.predict(x[1:], y[1:]), model.predict(x, y)[1:], atol=1e-5, rtol=1e-5)
    binary = SelectiveCL(SelectiveCLConfig(**TINY, calibration="binary"), SEEN_AFFORDANCES).eval()
    binary.load_state_dict(model.state_dict())
    torch.testing.assert_close(binary.predict(x, y), calibrate(raw, aff, "binary", 0.6), atol=1e-6, rtol=1e-5)
    with pytest.raises(AffordError, match="no output 'refined'.*calibrated, raw, calibrated_mean"):
        model.predict(x, y, "refined")


def test_text_features_are_encoded_one_prompt_at_a_time_and_cached() -> None:
    model = SelectiveCL(SelectiveCLConfig(**TINY), SEEN_AFFORDANCES[:3]).eval()
    act, ent = model.text_features()
    te = model.text_encoder
    for i, prompt in enumerate(model.prompts()):
        one = te.encode_text([prompt])[0]
        torch.testing.assert_close((act if i < 3 else ent)[i % 3], one, atol=0, rtol=0)
    assert model.text_features()[0].data_ptr() == act.data_ptr()  # computed once, then cached
    assert model.prompts()[0] == "an item to beat with"


def test_text_cache_is_keyed_by_the_autocast_it_was_computed_under() -> None:
    # a bf16 training step must not leave its bf16-rounded prompt features to a float32 evaluation
    model = SelectiveCL(SelectiveCLConfig(**TINY), SEEN_AFFORDANCES[:3]).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.text_features()[0]
    full = model.text_features()[0]
    assert full.data_ptr() != low.data_ptr() and not torch.equal(full, low)
    fresh = SelectiveCL(SelectiveCLConfig(**TINY), SEEN_AFFORDANCES[:3]).eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(full, fresh.text_features()[0], atol=0, rtol=0)  # as if no bf16 came first


def test_param_groups_keep_the_classifier_at_the_base_rate_and_the_towers_frozen() -> None:
    model = SelectiveCL(SelectiveCLConfig(**TINY), SEEN_AFFORDANCES)
    groups = {g.name: g for g in model.param_groups()}
    assert groups["aff_classifier:weight"].lr_mult == 1.0 and groups["aff_classifier:bias"].lr_mult == 2.0
    assert groups["aff_proj.fc1:weight"].lr_mult == 10.0 and groups["aff_proj.fc2:bias"].lr_mult == 20.0
    trained = {id(p) for g in groups.values() for p in g.params}
    for tower in (model.backbone, model.clip, model.text_encoder):
        assert not any(id(p) in trained for p in tower.parameters())
    heads = [model.aff_proj, model.aff_ego_proj, model.aff_exo_proj, model.aff_classifier,
             model.K_contrast_projection, model.pixel_contrast_projection]
    assert sum(len(g.params) for g in groups.values()) == sum(len(list(h.parameters())) for h in heads)
    # every parameter's rate by name (methods.md §4.6): fc1/fc2 of aff_proj x10/x20, all else x1 (weights) / x2 (biases)
    rate = {id(p): g.lr_mult for g in groups.values() for p in g.params}
    for name, p in model.named_parameters():
        if id(p) not in rate:
            continue
        fc = name.startswith(("aff_proj.fc1.", "aff_proj.fc2."))
        want = (20.0 if fc else 2.0) if name.endswith(".bias") else (10.0 if fc else 1.0)
        assert rate[id(p)] == want, name


def test_bad_options_and_mismatched_grids_are_named() -> None:
    with pytest.raises(AffordError, match="model.calibration"):
        SelectiveCL(SelectiveCLConfig(**TINY, calibration="soft"), SEEN_AFFORDANCES)
    with pytest.raises(AffordError, match="model.saliency"):
        SelectiveCL(SelectiveCLConfig(**TINY, saliency="clip"), SEEN_AFFORDANCES)
    model = SelectiveCL(SelectiveCLConfig(**TINY), SEEN_AFFORDANCES)
    with pytest.raises(AffordError, match="patch grid"):
        model._check_grids(torch.zeros(1, 4, 14, 14), torch.zeros(1, 4, 7, 7))


def test_training_step_gives_finite_losses_and_gradients_only_to_the_heads() -> None:
    torch.manual_seed(0)
    model = SelectiveCL(SelectiveCLConfig(**TINY, saliency="cam"), SEEN_AFFORDANCES).train()
    batch = {"ego": torch.rand(4, 3, 112, 112, generator=gen(15)), "exo": torch.rand(4, 3, 3, 112, 112, generator=gen(16)),
             "label": torch.tensor([0, 1, 1, 5])}
    for epoch in (0, 1):
        model.zero_grad()
        out = model.forward_train(batch, epoch)
        assert {"loss", "ce_ego", "ce_exo", "proto", "pixel", "n_parts"} <= set(out)
        assert all(torch.isfinite(v) for v in out.values())
        total = out["ce_ego"] + out["ce_exo"] + out["proto"] + out["pixel"]
        torch.testing.assert_close(out["loss"], total)
        out["loss"].backward()
        assert model.K_contrast_projection.weight.grad.abs().sum() > 0
        assert model.pixel_contrast_projection.weight.grad.abs().sum() > 0
        assert model.aff_exo_proj[0].weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.clip.parameters())


def test_negatives_carry_the_cam_gradient_and_pixel_anchors_are_the_object_mask(monkeypatch) -> None:
    """methods.md §4.5 / the reference: negatives 1 − M · relu(CAM_y) with the CAM's gradient (afford
    used a detached min-max CAM: L_proto never reached the classifier); the pixel loss's anchors are
    the binary minmax(A_ego) > γ2 mask (afford used the min-max part map)."""
    import afford.methods.selectivecl as scl

    torch.manual_seed(0)
    model = SelectiveCL(SelectiveCLConfig(**TINY, saliency="cam"), SEEN_AFFORDANCES).train()
    batch = {"ego": torch.rand(4, 3, 112, 112, generator=gen(15)), "exo": torch.rand(4, 3, 3, 112, 112, generator=gen(16)),
             "label": torch.tensor([0, 1, 1, 5])}
    seen = {}
    real = scl.pixel_contrastive_loss
    monkeypatch.setattr(scl, "pixel_contrastive_loss", lambda f, fg, wm, *a: seen.setdefault("w", wm) is None or real(f, fg, wm, *a))
    for epoch, reaches in ((0, False), (1, True)):
        model.zero_grad()
        model.forward_train(batch, epoch)["proto"].backward()
        grad = model.aff_classifier.weight.grad
        assert (grad is not None and float(grad.abs().sum()) > 0) == reaches  # only through the CAM of the negatives
    w = seen["w"]
    assert set(w.unique().tolist()) <= {0.0, 1.0} and 0 < float(w.mean()) < 1


def test_trains_through_the_engine_and_predicts_from_the_run(synth_root, tmp_path) -> None:
    from afford.checkpoint import load_run
    from afford.config import load_config
    from afford.engine.trainer import train

    cfg = load_config("selectivecl_synthagd_demo", [f"data.root={synth_root}", "data.resize=64", "data.crop=56",
                                                   "data.test_size=56", "train.batch_size=4", "train.epochs=2",
                                                   "train.max_steps_per_epoch=2", "model.backbone=tiny_vit"])
    # tiny_clip's patch 8 at 56 px gives 7x7 like tiny_vit's.
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.epochs_done == 2
    run = load_run(tmp_path / "run")
    assert run.info["method"] == "selectivecl"
    x = torch.rand(2, 3, 56, 56, generator=gen(17))
    y = torch.tensor([0, 3])
    maps = run.method.predict(x, y)
    assert maps.shape == (2, 7, 7) and torch.isfinite(maps).all()
    assert torch.equal(run.method.prompt_ids[0, 0], torch.tensor(512))  # SOT of the char-level vocabulary


def test_synth_clip_run_gives_selectivecl_its_towers_and_is_recorded(synth_root, tmp_path) -> None:
    """The offline demo's CLIP: trained on SynthAGD's weak labels, loaded strictly by SelectiveCL,
    which records the run (path + sha256); a run of another method or tower is refused."""
    from afford.checkpoint import load_run
    from afford.config import load_config
    from afford.engine.trainer import train

    small = [f"data.root={synth_root}", "data.resize=64", "data.crop=56", "data.test_size=56",
             "train.batch_size=4", "train.epochs=1", "train.max_steps_per_epoch=2"]
    train(load_config("synth_clip_synthagd_demo", small), tmp_path / "clip", progress=False)
    clip_run = load_run(tmp_path / "clip")
    x, y = torch.rand(2, 3, 56, 56, generator=gen(18)), torch.tensor([0, 3])
    affinity = clip_run.method.predict(x, y)  # the map SelectiveCL calibrates with
    assert affinity.shape == (2, 7, 7) and float(affinity.abs().max()) <= 1.0 + 1e-6

    model = SelectiveCL(SelectiveCLConfig(**TINY, clip_weights=str(tmp_path / "clip")), clip_run.classes)
    for name, v in clip_run.method.clip.state_dict().items():
        assert torch.equal(model.clip.state_dict()[name], v)
    src = model.provenance()["clip"]
    assert src["kind"] == "afford-run" and len(src["sha256"]) == 64 and "synth_clip" in src["how"]
    model.eval()
    torch.testing.assert_close(cosine_map(model._clip_tokens(x), model.text_features()[0][y]), affinity,
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(AffordError, match="trained 'tiny_clip' towers but this config has model.clip='clip_vitb16'"):
        SelectiveCL(SelectiveCLConfig(backbone="tiny_vit", clip="clip_vitb16", clip_weights=str(tmp_path / "clip")),
                    clip_run.classes)
    train(load_config("locate_synthagd_demo", small), tmp_path / "locate", progress=False)
    with pytest.raises(AffordError, match="is a 'locate' run, not a synth_clip run"):
        SelectiveCL(SelectiveCLConfig(**TINY, clip_weights=str(tmp_path / "locate")), clip_run.classes)


def test_synth_clip_pooling_mean_and_lse_against_loops(tmp_path, synth_root) -> None:
    """``mean``: the embedding of the mean patch against each prompt; ``lse``: log of the mean over
    patches of exp(scale * cosine), i.e. the patches trained as SelectiveCL reads them. An unknown
    pooling is refused by name; an lse run says so in the provenance SelectiveCL records."""
    from afford.config import load_config
    from afford.engine.trainer import train
    from afford.methods.synth_clip import SynthCLIP, SynthCLIPConfig, load_clip_run

    tokens, text = torch.randn(2, 8, 3, 4, generator=gen(40)), torch.randn(5, 8, generator=gen(41))
    scale = torch.tensor(14.0)
    for pooling in ("mean", "lse"):
        model = SynthCLIP(SynthCLIPConfig(pooling=pooling), ["hold", "cut_with"])
        got = model._logits(tokens, text, scale)
        want = torch.empty(2, 5)
        for i in range(2):
            patches = [tokens[i, :, r, c] for r in range(3) for c in range(4)]
            for k in range(5):
                t = text[k] / text[k].norm()
                if pooling == "mean":
                    m = sum(patches) / len(patches)
                    want[i, k] = scale * (m / m.norm()) @ t
                else:
                    want[i, k] = math.log(sum(math.exp(float(scale * (p / p.norm()) @ t)) for p in patches) / len(patches))
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    with pytest.raises(AffordError, match="model.pooling: expected one of mean, lse, got 'max'"):
        SynthCLIP(SynthCLIPConfig(pooling="max"), ["hold"])
    small = [f"data.root={synth_root}", "data.resize=64", "data.crop=56", "data.test_size=56",
             "train.batch_size=4", "train.epochs=1", "train.max_steps_per_epoch=1", "model.pooling=lse"]
    train(load_config("synth_clip_synthagd_demo", small), tmp_path / "clip", progress=False)
    assert "log-mean-exp of ClearCLIP patch cosines" in load_clip_run(tmp_path / "clip")[2]["how"]


def test_forward_train_feeds_each_loss_what_methods_md_names(monkeypatch) -> None:
    """methods.md §4.4-4.6 wiring: L_proto's five embeddings (anchor = A_ego where a part is found else the
    whole image; ego/exo positives = the part maps; negatives = 1 − M·relu(CAM_y) with gradient) on the
    K-projected features, at (0.5, 0.07); L_pix on the pixel projection with the foreground of A_ego and the
    exocentric action cosines and the γ2 = 0.6 mask as anchors; CE_exo against each view's own label."""
    import afford.methods.selectivecl as scl
    from afford.losses.selectivecl import pixel_foreground

    calls: dict[str, list] = {"weighted_embedding": []}
    real_we, real_proto, real_pix = scl.weighted_embedding, scl.prototype_contrastive_loss, scl.pixel_contrastive_loss
    monkeypatch.setattr(scl, "weighted_embedding", lambda f, w: calls["weighted_embedding"].append((f, w))
                        or real_we(f, w))
    monkeypatch.setattr(scl, "prototype_contrastive_loss", lambda *a: calls.setdefault("proto", a) and real_proto(*a))
    monkeypatch.setattr(scl, "pixel_contrastive_loss", lambda *a: calls.setdefault("pix", a) and real_pix(*a))
    torch.manual_seed(0)
    model = SelectiveCL(SelectiveCLConfig(**TINY, warm_epoch=0), SEEN_AFFORDANCES[:4]).train()
    chosen = []
    real_select = model.select_parts
    model.select_parts = lambda *a: chosen.append(real_select(*a)) or chosen[-1]
    g = gen(30)
    batch = {"ego": torch.rand(2, 3, 112, 112, generator=g), "exo": torch.rand(2, 3, 3, 112, 112, generator=g),
             "label": torch.tensor([3, 1])}
    out = model.forward_train(batch, epoch=1)  # epoch > warm_epoch: the CAM enters region and negatives
    sel, y = chosen[0], batch["label"]
    with torch.no_grad():
        images = torch.cat([batch["ego"], batch["exo"].flatten(0, 1)])
        desc, _ = model._descriptors(images)
        tokens = model._clip_tokens(images)
        t_action, t_entity = model.text_features()
        a_ego = cosine_map(tokens[:2], t_action[y])
        hw = a_ego.shape[-2:]
        exo_cos = cosine_map(tokens[2:], t_action[y.repeat_interleave(3)]).view(2, 3, *hw)
        ego_feat, ego_cam = model._heads(desc[:2], model.aff_ego_proj)
        exo_feat, exo_cam = model._heads(desc[2:], model.aff_exo_proj)
        ego_cam_y = ego_cam[torch.arange(2), y]
        exo_cam_y = exo_cam.view(2, 3, -1, *hw)[torch.arange(2), :, y]
    (f_a, w_a), (f_p, w_p), (f_n, w_n), (f_xp, w_xp), (f_xn, w_xn) = calls["weighted_embedding"][:5]
    k_ego, k_exo = model.K_contrast_projection(ego_feat), model.K_contrast_projection(exo_feat)
    for f, want in ((f_a, k_ego), (f_p, k_ego), (f_n, k_ego), (f_xp, k_exo), (f_xn, k_exo)):
        assert f.requires_grad
        torch.testing.assert_close(f.detach(), want.detach(), rtol=1e-4, atol=1e-5)
    found = sel.found[:, None, None]
    torch.testing.assert_close(w_a, torch.where(found, a_ego, torch.ones_like(a_ego)))
    torch.testing.assert_close(w_p, sel.ego_map)
    torch.testing.assert_close(w_xp, sel.exo_map.flatten(0, 1))
    assert w_n.requires_grad and w_xn.requires_grad  # the negatives carry the CAM's gradient
    torch.testing.assert_close(w_n.detach(), 1 - sel.ego_map * torch.relu(ego_cam_y), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w_xn.detach(), (1 - sel.exo_map * torch.relu(exo_cam_y)).flatten(0, 1), rtol=1e-4,
                               atol=1e-5)
    assert torch.equal(calls["proto"][5], y) and calls["proto"][6:] == (0.5, 0.07)
    feats, fg, anchors, thd, t, tb = calls["pix"]
    torch.testing.assert_close(feats.detach(), model.pixel_contrast_projection(ego_feat).detach(), rtol=1e-4,
                               atol=1e-5)
    mask = (a_ego - a_ego.amin((1, 2), keepdim=True)) / (a_ego.amax((1, 2), keepdim=True)
                                                          - a_ego.amin((1, 2), keepdim=True)) > 0.6
    assert torch.equal(anchors, mask.float()) and (thd, t, tb) == (0.5, 0.5, 0.07)
    assert torch.equal(fg, pixel_foreground(a_ego, exo_cos, mask))
    want_exo = sum(F.cross_entropy(exo_cam.view(2, 3, -1, *hw)[:, v].mean((2, 3)), y) for v in range(3)) / 3
    torch.testing.assert_close(out["ce_exo"].detach(), want_exo, rtol=1e-5, atol=1e-6)


def test_batchnorm_statistics_move_as_the_references_two_passes_per_step() -> None:
    """The reference runs each conv stack twice per step on one input ("nocond"), so its BatchNorm
    running statistics take two updates at 0.1; afford's one pass at 0.19 lands on the same values."""
    from afford.methods.selectivecl import TWO_PASS_BN_MOMENTUM

    model = SelectiveCL(SelectiveCLConfig(**TINY), SEEN_AFFORDANCES[:4]).train()
    bn = model.aff_ego_proj[1]
    assert bn.momentum == pytest.approx(0.19)
    x = torch.randn(4, bn.num_features, 5, 5, generator=gen(21)) * 3 + 1
    ref = torch.nn.BatchNorm2d(bn.num_features).train()  # PyTorch's 0.1, applied twice to the same batch
    ref(x), ref(x)
    bn.reset_running_stats()
    bn(x)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert TWO_PASS_BN_MOMENTUM == pytest.approx(1 - 0.9**2)
