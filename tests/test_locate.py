"""LOCATE composition: inference path, loss schedule, parameter groups, saliency options."""

from __future__ import annotations

import pytest
import torch

from afford.config import build_config
from afford.errors import AffordError
from afford.factory import create_method
from afford.modules.saliency import border_saliency, cam_saliency

CLASSES = ("cut_with", "hold", "swing")


def tiny(**over):
    cfg = build_config("locate", overrides=["model.backbone=tiny_vit", *[f"model.{k}={v}" for k, v in over.items()]])
    torch.manual_seed(0)
    return create_method("locate", cfg.model, CLASSES).eval()


def test_predict_is_the_official_inference_path():
    m = tiny()
    x = torch.randn(2, 3, 112, 112)
    y = torch.tensor([2, 0])
    feats = m.backbone(x)
    desc = feats.keys[0]  # (B, D, h, w) last-block keys, reference channel order
    b, d, h, w = desc.shape
    t = desc.flatten(2).transpose(1, 2)
    p = (t + m.aff_proj.fc2(torch.nn.functional.gelu(m.aff_proj.fc1(m.aff_proj.norm(t))))).transpose(1, 2).reshape(b, d, h, w)
    e = m.aff_ego_proj(p)
    cam = torch.nn.functional.conv2d(e, m.aff_fc.weight, m.aff_fc.bias)
    expected = cam[torch.arange(2), y]
    assert torch.allclose(m.predict(x, y), expected, atol=1e-5)


def test_losses_and_prototype_schedule():
    m = tiny().train()
    g = torch.Generator().manual_seed(1)
    batch = {"ego": torch.randn(4, 3, 112, 112, generator=g), "exo": torch.randn(4, 3, 3, 112, 112, generator=g),
             "label": torch.tensor([0, 1, 2, 1])}
    out0 = m.forward_train(batch, epoch=0)
    assert out0["proto"].item() == 0.0 and "n_proto" not in out0  # warm epoch: no prototype loss
    assert torch.isclose(out0["loss"], out0["cls"] + 0.07 * out0["con"])
    out1 = m.forward_train(batch, epoch=1)
    assert "n_proto" in out1 and torch.isfinite(out1["loss"])
    assert torch.isclose(out1["loss"], out1["cls"] + m.cfg.proto_weight * out1["proto"] + 0.07 * out1["con"])
    # random inputs seldom pass PartIoU: with every sample given a prototype, L_proto is in the loss
    d = m.backbone(batch["ego"]).keys[0].shape[1]
    m.part_prototypes = lambda *a: (torch.nn.functional.normalize(torch.randn(4, d, generator=g), dim=1),
                                    torch.ones(4, dtype=torch.bool))
    out2 = m.forward_train(batch, epoch=1)
    assert out2["n_proto"] == 4 and out2["proto"] > 0 and m.cfg.proto_weight > 0
    assert torch.isclose(out2["loss"], out2["cls"] + m.cfg.proto_weight * out2["proto"] + 0.07 * out2["con"])
    out1["loss"].backward()
    assert m.aff_fc.weight.grad is not None and m.aff_fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.backbone.parameters())  # frozen, as in the paper


def test_param_groups_reproduce_the_reference_assignment():
    m = tiny()
    groups = {g.name: g for g in m.param_groups()}
    names = {id(p): n for n, p in m.named_parameters()}
    mult = {names[id(p)]: g.lr_mult for g in groups.values() for p in g.params}
    assert mult["aff_fc.weight"] == 10 and mult["aff_fc.bias"] == 20
    assert mult["aff_proj.fc1.weight"] == 10 and mult["aff_proj.fc2.bias"] == 20
    assert mult["aff_proj.norm.weight"] == 1 and mult["aff_proj.norm.bias"] == 2
    assert mult["aff_ego_proj.0.weight"] == 1 and mult["aff_exo_proj.4.bias"] == 2
    assert not any(n.startswith("backbone") for n in mult)  # frozen backbone is not optimised


def test_cam_saliency_and_bad_option():
    cams = torch.zeros(1, 2, 4, 4)
    cams[0, 0, 1, 1] = 5.0
    cams[0, 1, 2, 2] = 3.0
    sal = cam_saliency(cams)
    assert sal.dtype == torch.bool and sal[0, 1, 1] and sal[0, 2, 2] and sal.sum() == 2
    with pytest.raises(AffordError, match="model.saliency"):  # rejected when the model is built
        tiny(saliency="blob")


def test_border_saliency_marks_what_differs_from_the_border():
    # background descriptors all alike, a 3x3 "object" of another direction in the middle
    desc = torch.zeros(1, 4, 7, 7)
    desc[0, 0] = 1.0
    desc[0, :, 2:5, 2:5] = torch.tensor([0.0, 1.0, 0.0, 0.0])[:, None, None]
    sal = border_saliency(desc)
    expected = torch.zeros(1, 7, 7, dtype=torch.bool)
    expected[0, 2:5, 2:5] = True
    assert torch.equal(sal, expected)
    m = tiny(saliency="border").train()  # and it trains as PartIoU's saliency
    batch = {"ego": torch.randn(2, 3, 112, 112), "exo": torch.randn(2, 3, 3, 112, 112), "label": torch.tensor([0, 1])}
    assert torch.isfinite(m.forward_train(batch, epoch=1)["loss"])


def test_ego_only_baseline_is_plain_egocentric_ce():
    """synthagd.md's egocentric-only CAM baseline: CE on the egocentric image, exo never read."""
    m = tiny(ego_only="true").train()
    g = torch.Generator().manual_seed(2)
    ego, y = torch.randn(3, 3, 112, 112, generator=g), torch.tensor([0, 2, 1])
    batch = {"ego": ego, "exo": torch.full((3, 1, 3, 112, 112), float("nan")), "label": y}
    out = m.forward_train(batch, epoch=3)
    assert set(out) == {"cls", "loss"}
    logits = m.aff_fc(m.aff_ego_proj(m._project(m.backbone(ego).keys[0]))).mean((2, 3))
    assert torch.allclose(out["loss"], torch.nn.functional.cross_entropy(logits, y), atol=1e-6)


def test_kmeans_iterations_setting_reaches_part_selection(monkeypatch):
    """model.kmeans_iters was never read: the k-means always ran its default 300 iterations."""
    import afford.methods.locate as locate_mod

    seen = []
    real = locate_mod.select_part_prototypes
    monkeypatch.setattr(locate_mod, "select_part_prototypes", lambda *a, **kw: seen.append(kw["iters"]) or real(*a, **kw))
    m = tiny(kmeans_iters=7).train()
    g = torch.Generator().manual_seed(1)
    batch = {"ego": torch.randn(2, 3, 112, 112, generator=g), "exo": torch.randn(2, 3, 3, 112, 112, generator=g),
             "label": torch.tensor([0, 1])}
    m.forward_train(batch, epoch=1)
    assert seen == [7]


def test_seeding_makes_cudnn_deterministic(monkeypatch):
    """methods.md §0.3: seed and deterministic cuDNN (its autotuner may pick other algorithms per run)."""
    from afford.engine.trainer import seed_everything

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    seed_everything(0)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
