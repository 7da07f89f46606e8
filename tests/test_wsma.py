"""WSMA method on tiny models: losses and gradients, inference modes, LR groups."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from afford.errors import AffordError
from afford.factory import recipe_config
from afford.methods.wsma import WSMA, WSMAConfig
from afford.modules.attention_refine import refine_cam

CLASSES = ("hold", "cut_with", "sit_on")
SIZE = 32  # tiny_vit has patch 8 -> a 4x4 grid


def tiny_cfg(**kw: object) -> WSMAConfig:
    base = dict(backbone="tiny_vit", text_encoder="tiny_clip", attnpool_heads=8, n_ctx=4, grid=4,
                nmf_dim=16, nmf_rank=4)
    return WSMAConfig(**{**base, **kw})


def tiny_wsma(seed: int = 0, **kw: object) -> WSMA:
    torch.manual_seed(seed)
    m = WSMA(tiny_cfg(**kw), CLASSES)
    with torch.no_grad():
        # A random attention pool is nearly uniform, so A²·cam is nearly constant and its min-max
        # only amplifies float noise; sharper attention gives the refinement something to do.
        m.attnpool.q_proj.weight.mul_(8)
        m.attnpool.k_proj.weight.mul_(8)
    return m


def batch(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"ego": torch.randn(b, 3, SIZE, SIZE, generator=g), "exo": torch.randn(b, 3, 3, SIZE, SIZE, generator=g),
            "label": torch.arange(b) % len(CLASSES)}


def test_defaults_are_the_papers() -> None:
    cfg = WSMAConfig()
    assert (cfg.backbone, cfg.key_layers, cfg.text_encoder, cfg.n_ctx, cfg.ctx_init_std) == (
        "dino_vits16", (-2, -1), "clip_rn50", 16, 0.02)
    assert (cfg.nmf_rank, cfg.nmf_dim, cfg.nmf_train_steps, cfg.nmf_eval_steps, cfg.nmf_eta, cfg.nmf_bn_momentum) == (
        64, 512, 6, 7, 0.9, 3e-4)
    assert (cfg.attnpool_heads, cfg.grid, cfg.refine_threshold, cfg.refine_rounds) == (64, 14, 0.2, 3)
    assert (cfg.cls_weight, cfg.clip_weight, cfg.d_weight, cfg.lrela_weight) == (1.0, 1.0, 0.5, 0.5)
    assert (cfg.faithful, cfg.normalize_gate, cfg.train_backbone, cfg.train_text) == (False, "channel", False, True)
    recipe = recipe_config("wsma")  # the registry's recipe: configs/wsma_seen.yaml
    assert (recipe.train.epochs, recipe.train.batch_size, recipe.train.lr, recipe.train.scheduler) == (13, 10, 1e-3, "none")
    assert (recipe.data.n_exo, recipe.data.sampling) == (3, "consecutive_window")


@pytest.mark.parametrize("faithful", [False, True])
def test_forward_train_losses_and_gradients(faithful: bool) -> None:
    m = tiny_wsma(faithful=faithful).train()
    out = m.forward_train(batch(), epoch=0)
    assert set(out) == {"cls", "clip", "d", "lrela", "loss"}
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], out["cls"] + out["clip"] + out["d"] + out["lrela"])
    out["loss"].backward()
    for name in ("prompt_learner.ctx", "aff_proj.fc1.weight", "Hamburger.lower_bread.0.weight",
                 "aff_exo_proj.0.weight", "aff_ego_proj.0.weight", "attnpool.q_proj.weight",
                 "attnpool.positional_embedding", "fc.weight", "text_encoder.logit_scale",
                 "text_encoder.model.text_projection.weight"):
        grad = m.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in m.backbone.parameters())  # frozen DINO


def test_forward_train_feeds_the_four_losses_what_methods_md_names(monkeypatch) -> None:
    """methods.md §2: the losses get the weights 1 / 1 / 0.5 / 0.5, the exponentiated logit scale, the text
    features with their gradient, the egocentric features gated by the label's own text, and each
    sample's own exocentric views (B, n order)."""
    import afford.methods.wsma as wsma_module

    got = {}
    real = wsma_module.wsma_losses
    monkeypatch.setattr(wsma_module, "wsma_losses", lambda **kw: got.update(kw) or real(**kw))
    m = tiny_wsma().train()
    b = batch(3, seed=2)
    b["label"] = torch.tensor([2, 0, 1])
    bases = m.Hamburger.bases.clone()
    m.forward_train(b, epoch=0)
    assert got["weights"] == {"cls": 1.0, "clip": 1.0, "d": 0.5, "lrela": 0.5}
    torch.testing.assert_close(got["logit_scale"], m.logit_scale.exp())
    assert got["text_embed"].requires_grad and got["ego_feat"].requires_grad and torch.equal(got["labels"], b["label"])
    m.Hamburger.bases.copy_(bases)  # the step's online update moved them: recompute from the same start
    with torch.no_grad():
        ego, exo, y = b["ego"], b["exo"], b["label"]
        proj = m._project(torch.cat([ego, exo.flatten(0, 1)]))
        text = m.text_features()
        pooled = m.attnpool(proj[:3])
        t = F.normalize(text[y], dim=-1)
        sim = (F.normalize(pooled.patch_embed, dim=-1) * t[:, None]).sum(-1)
        gate = torch.sigmoid(F.normalize(sim, dim=1)).view(3, 1, *proj.shape[-2:])
        ego_feat = m.aff_ego_proj(gate * proj[:3] + proj[:3])
        exo_feat = m.aff_exo_proj(m.Hamburger(proj[3:]))
    torch.testing.assert_close(got["text_embed"].detach(), text)
    torch.testing.assert_close(got["ego_feat"].detach(), ego_feat, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["exo_feat"].detach(), exo_feat.view(3, 3, *exo_feat.shape[1:]), rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(got["exo_logits"].detach(), m.fc(exo_feat.mean((2, 3))).view(3, 3, -1), rtol=1e-4,
                               atol=1e-5)


def test_the_default_channel_gate_at_inference_written_out() -> None:
    """afford's default gate (normalised along channels, batch independent): gate = sigmoid(l2n over
    positions of cos(patch embedding, text_y)); CAM = mean over channels of fc_y * aff_ego_proj(gate·f + f)."""
    m = tiny_wsma().eval()
    x, labels = batch(3, seed=4)["ego"], torch.tensor([0, 1, 2])
    with torch.no_grad():
        proj = m._project(x)
        pooled = m.attnpool(proj)
        t = F.normalize(m.text_features()[labels], dim=-1)
        s = (F.normalize(pooled.patch_embed, dim=-1) * t[:, None]).sum(-1)
        gate = torch.sigmoid(F.normalize(s, dim=1)).view(3, 1, *proj.shape[-2:])
        want = (m.fc.weight[labels][:, :, None, None] * m.aff_ego_proj(gate * proj + proj)).mean(1)
    torch.testing.assert_close(m.predict(x, labels, output="raw"), want, rtol=1e-4, atol=1e-5)
    ungated = (m.fc.weight[labels][:, :, None, None] * m.aff_ego_proj(proj)).mean(1)
    assert not torch.allclose(want, ungated, atol=1e-4)


def test_cam_is_channel_mean_of_class_weighted_features() -> None:
    m = tiny_wsma()
    feat = torch.randn(2, m.backbone.embed_dim, 4, 4)
    labels = torch.tensor([2, 0])
    cam = m._cam(feat, labels)
    for b in range(2):
        w = m.fc.weight[labels[b]]
        expected = sum(w[c] * feat[b, c] for c in range(feat.shape[1])) / feat.shape[1]
        assert torch.allclose(cam[b], expected, atol=1e-5)


def _gate_reference(feat: torch.Tensor, patches: torch.Tensor, text: torch.Tensor, axis: str) -> torch.Tensor:
    """Loop reference of the pixel-text gate in the reference's sequence-first view."""
    b, n, e = patches.shape
    out = torch.empty_like(feat)
    for i in range(b):
        t = text[i] / text[i].norm()
        s = torch.empty(n)
        for j in range(n):
            if axis == "batch":  # unit norm across the batch for each (token, channel)
                v = patches[i, j] / patches[:, j].norm(dim=0)
            else:
                v = patches[i, j] / patches[i, j].norm()
            s[j] = (v * t).sum()
        g = torch.sigmoid(s / s.norm()).view(1, *feat.shape[-2:])
        out[i] = g * feat[i] + feat[i]
    return out


@pytest.mark.parametrize("axis", ["channel", "batch"])
def test_gate_matches_loop_reference(axis: str) -> None:
    m = tiny_wsma(normalize_gate=axis)
    g = torch.Generator().manual_seed(1)
    feat, patches, text = torch.randn(3, 5, 2, 2, generator=g), torch.randn(3, 4, 6, generator=g), torch.randn(3, 6, generator=g)
    assert torch.allclose(m._gate(feat, patches, text), _gate_reference(feat, patches, text, axis), atol=1e-5)


def test_predict_deterministic_batch_independent_and_refined() -> None:
    m = tiny_wsma().eval()
    x = batch(4, seed=3)["ego"]
    labels = torch.tensor([0, 2, 1, 2])
    full = m.predict(x, labels)
    assert full.shape == (4, 4, 4) and torch.equal(full, m.predict(x, labels))
    assert float(full.min()) >= 0 and float(full.max()) <= 1
    for i in range(4):
        assert torch.allclose(full[i], m.predict(x[i : i + 1], labels[i : i + 1])[0], atol=1e-5)
    cam, attn = m.raw_cam(x, labels)
    assert torch.allclose(full, refine_cam(cam, attn, 0.2), atol=1e-6)
    other = m.predict(x, torch.tensor([1, 0, 0, 0]))  # the label matters
    assert not torch.allclose(full[0], other[0])


def test_faithful_mode_reproduces_reference_quirks() -> None:
    m = tiny_wsma(faithful=True).eval()
    # Text: prompt embeddings + token_embedding[ids] go through the tower.
    pl, enc, ids = m.prompt_learner, m.text_encoder, m.prompt_ids
    expected = enc.encode_prompt_embeddings(pl.prompt_embeddings() + enc.token_embedding(ids), ids)
    assert torch.allclose(m.text_features(), expected, atol=1e-6)
    # Test time: one image at a time, so the patch embeddings become sign vectors.
    x, labels = batch(3, seed=4)["ego"], torch.tensor([0, 1, 2])
    cam, _ = m.raw_cam(x, labels)
    proj = m._project(x)
    pooled = m.attnpool(proj)
    t = F.normalize(m.text_features()[labels], dim=-1)
    s = (torch.sign(pooled.patch_embed) * t[:, None]).sum(-1)
    gate = torch.sigmoid(F.normalize(s, dim=1)).view(3, 1, 4, 4)
    assert torch.allclose(cam, m._cam(m.aff_ego_proj(gate * proj + proj), labels), atol=1e-5)
    # ... which keeps faithful predictions batch-size independent as well.
    full = m.predict(x, labels)
    assert torch.allclose(full[1], m.predict(x[1:2], labels[1:2])[0], atol=1e-5)
    # The default mode is a different model function on the same weights.
    m.cfg = dataclasses.replace(m.cfg, faithful=False)
    m.gate_axis = "channel"
    assert not torch.allclose(m.predict(x, labels), full, atol=1e-3)


def test_param_groups_follow_the_table() -> None:
    m = tiny_wsma()
    mult = {id(p): g.lr_mult for g in m.param_groups() for p in g.params}
    named = dict(m.named_parameters())
    expected = {
        "aff_proj.norm.weight": 1.0, "aff_proj.norm.bias": 2.0,
        "aff_proj.fc1.weight": 10.0, "aff_proj.fc1.bias": 20.0, "aff_proj.fc2.weight": 10.0,
        "fc.weight": 10.0, "fc.bias": 20.0,
        "Hamburger.lower_bread.0.weight": 1.0, "Hamburger.lower_bread.0.bias": 2.0,
        "Hamburger.upper_bread.1.weight": 1.0, "aff_ego_proj.0.bias": 2.0,
        "attnpool.c_proj.weight": 1.0, "attnpool.positional_embedding": 2.0, "prompt_learner.ctx": 2.0,
        "text_encoder.logit_scale": 2.0, "text_encoder.model.text_projection.weight": 2.0,
        # the text tower's MLP is named fc1 but is a CLIP text parameter: x2, not x10
        "text_encoder.model.text_model.encoder.layers.0.mlp.fc1.weight": 2.0,
        "text_encoder.model.text_model.encoder.layers.0.mlp.fc1.bias": 2.0,
    }
    for name, m_expected in expected.items():
        assert mult[id(named[name])] == m_expected, name
    assert not any(id(p) in mult for p in m.backbone.parameters())  # frozen: not optimised
    assert len(mult) == sum(1 for p in m.parameters() if p.requires_grad)


def test_invalid_gate_and_grid_are_user_errors() -> None:
    with pytest.raises(AffordError, match="normalize_gate"):
        tiny_wsma(normalize_gate="rows")
    with pytest.raises(AffordError, match="attnpool_heads"):
        tiny_wsma(attnpool_heads=64)  # 96 channels
    m = tiny_wsma().eval()
    with pytest.raises(AffordError, match="model.grid"):
        m.predict(torch.randn(1, 3, 48, 48), torch.tensor([0]))


def test_prompt_ids_travel_with_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a vocabulary the model refuses to run until a state dict brings the ids."""
    monkeypatch.delenv("AFFORD_CLIP_BPE", raising=False)
    m = tiny_wsma(text_encoder="clip_rn50", n_ctx=2).eval()
    with pytest.raises(AffordError, match="vocabulary"):
        m.predict(batch(1)["ego"], torch.tensor([0]))
    sd = m.state_dict()
    ids = torch.zeros_like(sd["prompt_ids"])
    ids[:, 0], ids[:, 1:3], ids[:, 3], ids[:, 4] = 49406, 343, 500 + torch.arange(3), 49407
    sd["prompt_ids"] = ids
    m.load_state_dict(sd)
    out = m.predict(batch(1)["ego"], torch.tensor([0]))
    assert torch.isfinite(out).all() and torch.equal(m.prompt_ids, ids)


def test_outputs_are_declared_and_plsp_refuses_the_refined_scores() -> None:
    from afford.config import EvalConfig
    from afford.engine.evaluator import check_output_protocol

    m = tiny_wsma().eval()
    assert m.outputs == {"refined": "scores", "raw": "logits"} and m.default_output == "refined"
    x, y = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2])
    raw, attn = m.raw_cam(x, y)
    torch.testing.assert_close(m.predict(x, y, output="raw"), raw)
    torch.testing.assert_close(m.predict(x, y), refine_cam(raw, attn, m.cfg.refine_threshold, m.cfg.refine_rounds))
    assert check_output_protocol(m, EvalConfig(protocol="plsp", output="raw")) == {"output": "raw", "output_kind": "logits"}
    with pytest.raises(AffordError, match="plsp.*already a \\[0, 1\\] map; use --output raw"):
        check_output_protocol(m, EvalConfig(protocol="plsp"))
    with pytest.raises(AffordError, match="has no output 'cam'"):
        m.predict(x, y, output="cam")
    assert len(m.features(x)) == 2 and m.features(x)[0].shape[-2:] == (SIZE // 8, SIZE // 8)


def test_resume_continues_from_the_online_nmf_bases(synth_root, tmp_path) -> None:
    """The NMF bases are not in the weights (as in the reference) but training moves them: the
    epoch checkpoint's state keeps them, so a resumed run equals an uninterrupted one."""
    from safetensors.torch import load_file

    from afford import checkpoint as ckpt
    from afford.config import load_config
    from afford.engine.trainer import train

    sets = [f"data.root={synth_root}", "data.resize=64", "data.crop=56", "data.test_size=56", "model.grid=7",
            "data.feature_cache=false", "train.batch_size=4", "train.max_steps_per_epoch=2"]
    train(load_config("wsma_synthagd_demo", [*sets, "train.epochs=2"]), tmp_path / "a", progress=False)
    train(load_config("wsma_synthagd_demo", [*sets, "train.epochs=1"]), tmp_path / "b", progress=False)
    state = torch.load(ckpt.epoch_dir(tmp_path / "b", 0) / ckpt.STATE, weights_only=False)
    assert any(k.endswith("bases") for k in state["buffers"])
    train(load_config("wsma_synthagd_demo", [*sets, "train.epochs=2"]), tmp_path / "b", resume=True, progress=False)
    wa, wb = load_file(tmp_path / "a" / ckpt.WEIGHTS), load_file(tmp_path / "b" / ckpt.WEIGHTS)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_refuses_the_full_text_tower_without_its_weights(synth_root, tmp_path) -> None:
    """The reference presets left model.text_weights unset: WSMA then fine-tuned a random CLIP RN50
    text tower to the end without a word (methods.md §2.1: loaded from RN50.pt)."""
    from afford.config import load_config
    from afford.engine.trainer import train

    sets = [f"data.root={synth_root}", "data.resize=64", "data.crop=56", "data.test_size=56", "model.grid=7",
            "data.feature_cache=false", "train.batch_size=4", "train.max_steps_per_epoch=1", "train.epochs=1",
            "model.text_encoder=clip_rn50"]
    with pytest.raises(AffordError, match="model.text_weights: WSMA fine-tunes the pretrained CLIP clip_rn50"):
        train(load_config("wsma_synthagd_demo", sets), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    tiny_wsma(text_encoder="clip_rn50", allow_random_text=True).check_training()  # on purpose: allowed
    tiny_wsma().check_training()  # the tiny test tower is random by design
