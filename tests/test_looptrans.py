"""LoopTrans: the cluster module's forward, every loss against a plain loop, the model's wiring,
LR groups, cluster-weight sources and their record, and training through the one engine."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from afford.config import build_config
from afford.engine.trainer import train
from afford.errors import AffordError
from afford.losses.concentration import concentration_loss
from afford.losses.looptrans import (
    correlation_loss,
    denoise_loss,
    dice_loss,
    modularity_loss,
    pseudo_mask_losses,
    select_pseudo_masks,
)
from afford.methods.looptrans import LoopTrans, LoopTransConfig
from afford.modules.cluster import ClusterModule

T = torch.Tensor
TINY = dict(backbone="tiny_vit", cluster_layers=2, cluster_heads=4)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- cluster module
def _ref_mha(q: T, kv: T, sd: dict, prefix: str, heads: int) -> T:
    """nn.MultiheadAttention by hand on one sample: q (K, D), kv (N, D)."""
    w, b = sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"]
    d = q.shape[-1]
    qq = q @ w[:d].t() + b[:d]
    kk = kv @ w[d:2 * d].t() + b[d:2 * d]
    vv = kv @ w[2 * d:].t() + b[2 * d:]
    hd = d // heads
    out = []
    for h in range(heads):
        s = slice(h * hd, (h + 1) * hd)
        a = torch.softmax(qq[:, s] @ kk[:, s].t() / math.sqrt(hd), dim=-1)
        out.append(a @ vv[:, s])
    return torch.cat(out, -1) @ sd[prefix + "out_proj.weight"].t() + sd[prefix + "out_proj.bias"]


def _ref_cluster(sd: dict, pixels: T, layers: int, heads: int, stale: bool) -> T:
    """The reference loop, written out: queries built once before the loop when ``stale``."""
    out = []
    for x_pix in pixels:  # one image at a time
        queries = sd["tokens.weight"]
        x = queries
        for i in range(layers):
            q = queries if stale else x
            x = x + _ref_mha(q, x_pix, sd, f"cross_attn_layers.{i}.", heads)
            q = queries if stale else x
            x = x + _ref_mha(q, q, sd, f"self_attn_layers.{i}.", heads)
            f = F.gelu(x @ sd[f"ffn_layers.{i}.net.0.weight"].t() + sd[f"ffn_layers.{i}.net.0.bias"])
            f = f @ sd[f"ffn_layers.{i}.net.3.weight"].t() + sd[f"ffn_layers.{i}.net.3.bias"]
            x = F.layer_norm(x + f, x.shape[-1:], sd[f"norm_layers.{i}.weight"], sd[f"norm_layers.{i}.bias"])
        cos = (x_pix / x_pix.norm(dim=-1, keepdim=True)) @ (x / x.norm(dim=-1, keepdim=True)).t()
        out.append(cos + 1)
    return torch.stack(out)


@pytest.mark.parametrize("stale", [True, False])
def test_cluster_forward_matches_the_written_out_reference_loop(stale: bool) -> None:
    torch.manual_seed(0)
    m = ClusterModule(dim=32, num_tokens=4, num_layers=3, num_heads=4, stale_queries=stale).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=_g(int(p.numel()))))
    pixels = torch.randn(2, 10, 32, generator=_g(1))
    got = m(pixels)
    assert got.shape == (2, 10, 4)
    ref = _ref_cluster({k: v.detach() for k, v in m.state_dict().items()}, pixels, 3, 4, stale)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(m.assign(pixels), got.argmax(-1))
    # A (B, D, h, w) map is read as row-major tokens.
    torch.testing.assert_close(m(pixels.transpose(1, 2).reshape(2, 32, 2, 5)), got)


def test_stale_queries_make_the_self_attention_image_independent() -> None:
    """The quirk: with stale queries, the self-attention term is the same for every image."""
    torch.manual_seed(0)
    stale = ClusterModule(dim=16, num_tokens=4, num_layers=2, num_heads=2, stale_queries=True)
    fresh = ClusterModule(dim=16, num_tokens=4, num_layers=2, num_heads=2, stale_queries=False)
    fresh.load_state_dict(stale.state_dict())
    pixels = torch.randn(2, 9, 16, generator=_g(3))
    assert not torch.allclose(stale(pixels), fresh(pixels))
    q = stale.tokens.weight.unsqueeze(0)
    sa = stale.self_attn_layers[0](q, q, q, need_weights=False)[0]
    assert sa.shape == (1, 4, 16)  # a function of the embeddings alone


# ----------------------------------------------------------------------------- losses
def _loop_pseudo_masks(clusters: T, cam_y: T, sal: T, k: int, thd: float) -> T:
    out = []
    for c, cam, s in zip(clusters, cam_y, sal, strict=True):
        c = c.flatten()
        cam_mask = ((cam - cam.min()) / (cam.max() - cam.min() + 1e-10)).flatten() > thd
        present = [j for j in range(k) if (c == j).any()]
        bg = min(present, key=lambda j: (float(s.flatten()[c == j].mean()), j))
        best, best_iou = None, -1.0
        for j in present:
            if j == bg:
                continue
            m = c == j
            iou = float((m & cam_mask).sum()) / (float((m | cam_mask).sum()) + 1e-6)
            if iou > best_iou:
                best, best_iou = j, iou
        mask = (c == best).float() if best is not None else torch.zeros_like(c, dtype=torch.float)
        out.append(mask.view(cam.shape))
    return torch.stack(out)


def test_pseudo_mask_choice_matches_a_per_sample_loop() -> None:
    g = _g(5)
    b, h, w, k = 12, 6, 6, 4
    clusters = torch.randint(0, k, (b, h * w), generator=g)
    clusters[0] = 2  # only the background present -> empty mask
    clusters[1, :18] = 0
    clusters[1, 18:] = 3  # two clusters present, one is background
    cam = torch.randn(b, h, w, generator=g)
    sal = torch.rand(b, h, w, generator=g)
    got = select_pseudo_masks(clusters, cam, sal, k, cam_thd=0.5)
    ref = _loop_pseudo_masks(clusters.view(b, h, w), cam, sal, k, 0.5)
    assert torch.equal(got, ref)
    assert got[0].sum() == 0 and got[1].sum() == 18


def test_dice_with_smooth_one_and_mse_by_hand() -> None:
    p = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])
    t = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # 1 - (2 * 1.5 + 1) / (1.75 + 2 + 1)
    assert float(dice_loss(p, t)) == pytest.approx(1 - 4 / 4.75)
    cam = torch.tensor([[[2.0, 4.0], [0.0, 1.0]]])  # minmax -> [[0.5, 1], [0, 0.25]]
    mse, dice = pseudo_mask_losses(cam, t)
    assert float(mse) == pytest.approx((0.25 + 0 + 0 + 0.0625) / 4, abs=1e-6)
    assert float(dice) == pytest.approx(1 - 4 / 4.75, abs=1e-6)


def test_correlation_loss_is_a_column_wise_cosine() -> None:
    g = _g(7)
    ego, exo = torch.randn(3, 5, 4, 4, generator=g), torch.randn(3, 2, 5, 4, 4, generator=g)
    vals = []
    for i in range(3):
        k_ego = ego[i].reshape(5, -1)
        k_exo = exo[i].transpose(0, 1).reshape(5, -1)  # (C', N*h*w)
        r_ego, r_exo = k_ego @ k_ego.t(), k_exo @ k_exo.t()
        for col in range(5):
            a, b = r_ego[:, col], r_exo[:, col]
            vals.append(float(a @ b / (a.norm() * b.norm())))
    assert float(correlation_loss(ego, exo)) == pytest.approx(1 - sum(vals) / len(vals), abs=1e-5)


def test_denoise_is_infonce_over_the_noise_keys() -> None:
    g = _g(9)
    b, n, c, j, d, h, w = 2, 3, 4, 15, 8, 3, 3
    exo_cams = torch.randn(b, n, c + j, h, w, generator=g)
    exo_desc = torch.randn(b, n, d, h, w, generator=g)
    pix_y, ego_desc = torch.randn(b, h, w, generator=g), torch.randn(b, d, h, w, generator=g)
    y = torch.tensor([1, 3])
    total = 0.0
    for i in range(b):
        q = sum((exo_cams[i, e, y[i]][None] * exo_desc[i, e]).mean((1, 2)) for e in range(n)) / n
        pos = (pix_y[i][None] * ego_desc[i]).mean((1, 2))
        negs = [sum((exo_cams[i, e, c + k][None] * exo_desc[i, e]).mean((1, 2)) for e in range(n)) / n for k in range(j)]
        q, pos = F.normalize(q, dim=0), F.normalize(pos, dim=0)
        logits = torch.stack([q @ pos] + [q @ F.normalize(v, dim=0) for v in negs])
        total += float(-torch.log_softmax(logits, 0)[0])
    got = denoise_loss(exo_cams, exo_desc, pix_y, ego_desc, y, num_classes=c)
    assert float(got) == pytest.approx(total / b, abs=1e-5)


def test_modularity_loss_matches_the_double_sum() -> None:
    g = _g(11)
    x = torch.randn(2, 7, 5, generator=g)
    scores = torch.rand(2, 7, 3, generator=g) * 2  # cos + 1 in [0, 2]
    total = 0.0
    for bi in range(2):
        xn = F.normalize(x[bi], dim=-1)
        a = [[max(0.0, float(xn[i] @ xn[jj])) for jj in range(7)] for i in range(7)]
        k = [sum(r) for r in a]
        two_m = sum(k)
        s = (scores[bi] - 1).clamp(min=0)
        acc = 0.0
        for i in range(7):
            for jj in range(7):
                delta = max(float(s[i, c] * s[jj, c]) for c in range(3))
                acc += (a[i][jj] - k[i] * k[jj] / two_m) * delta
        total += -acc / two_m
    assert float(modularity_loss(x, scores)) == pytest.approx(total / 2, abs=1e-5)
    # One cluster for everything has zero modularity; splitting two opposite groups is negative loss.
    pts = torch.cat([torch.ones(4, 3), -torch.ones(4, 3)])[None]
    one = torch.full((1, 8, 2), 2.0)
    split = torch.tensor([[2.0, 0.0]] * 4 + [[0.0, 2.0]] * 4)[None]
    assert abs(float(modularity_loss(pts, one))) < 1e-6
    assert float(modularity_loss(pts, split)) < -0.4


# ----------------------------------------------------------------------------- the model
def _batch(b: int = 4, n: int = 3, size: int = 56, seed: int = 0) -> dict[str, T]:
    g = _g(seed)
    return {"ego": torch.rand(b, 3, size, size, generator=g), "exo": torch.rand(b, n, 3, size, size, generator=g),
            "label": torch.tensor([0, 1, 2, 1][:b])}


def test_each_loss_gets_the_maps_methods_md_names(monkeypatch) -> None:
    """methods.md §3: the pseudo-mask comes from the shared CAM on the egocentric view (cross_cam, > 0.92)
    with the saliency of the egocentric images; L_mse/L_dice train the pixel decoder's map of the label
    (with gradient); L_corr and L_con take all C + 15 pixel-decoder maps; L_denoise the exocentric CAMs and
    descriptors per sample; the CE terms the pooled cross and exocentric CAMs."""
    import afford.methods.looptrans as lt
    from afford.modules.saliency import mean_head_saliency

    got: dict[str, tuple] = {}
    for name in ("select_pseudo_masks", "pseudo_mask_losses", "correlation_loss", "denoise_loss",
                 "concentration_loss"):
        real = getattr(lt, name)
        monkeypatch.setattr(lt, name, lambda *a, _n=name, _r=real, **k: got.setdefault(_n, (a, k)) and _r(*a, **k))
    torch.manual_seed(0)
    m = LoopTrans(LoopTransConfig(**TINY), ["a", "b", "c"])
    batch = _batch()
    ego, exo, y = batch["ego"], batch["exo"], batch["label"]
    out = m.forward_train(batch, epoch=0)
    with torch.no_grad():  # the same modules in the same (training) mode, recomputed by hand
        feats = m.backbone(torch.cat([ego, exo.flatten(0, 1)]))
        desc = feats.keys[0]
        proj = m._project(desc)
        cross = m.aff_fc(m.scam(proj[:4]))
        pix = m.aff_fc(m.pixel_dec(proj[:4]))
        exo_cam = m.aff_fc(m.scam(proj[4:]))
    idx = torch.arange(4)
    (clusters, cam_y, sal, k), kw = got["select_pseudo_masks"]
    torch.testing.assert_close(cam_y, cross[idx, y])
    torch.testing.assert_close(sal, mean_head_saliency(feats.cls_attn)[:4])
    assert kw["cam_thd"] == 0.92 and k == m.cluster.num_tokens
    (pix_y, target), _ = got["pseudo_mask_losses"]
    torch.testing.assert_close(pix_y.detach(), pix[idx, y])
    assert pix_y.requires_grad and target.shape == pix_y.shape
    (corr_pix, corr_exo), _ = got["correlation_loss"]
    torch.testing.assert_close(corr_pix.detach(), pix)
    torch.testing.assert_close(corr_exo.detach(), exo_cam.view(4, 3, 18, *pix.shape[-2:]))
    (d_exo, d_desc, d_pix_y, d_ego_desc, d_y, d_c), d_kw = got["denoise_loss"]
    torch.testing.assert_close(d_exo.detach(), exo_cam.view(4, 3, 18, *pix.shape[-2:]))
    torch.testing.assert_close(d_desc, desc[4:].view(4, 3, *desc.shape[1:]))
    torch.testing.assert_close(d_pix_y.detach(), pix[idx, y])
    torch.testing.assert_close(d_ego_desc, desc[:4])
    assert torch.equal(d_y, y) and d_c == 3 and d_kw["temperature"] == 1.0
    (con_pix,), _ = got["concentration_loss"]
    assert con_pix.shape[1] == 18
    torch.testing.assert_close(con_pix.detach(), pix)
    want_cls = F.cross_entropy(cross.mean((2, 3)), y) + F.cross_entropy(exo_cam.mean((2, 3)), y.repeat_interleave(3))
    torch.testing.assert_close(out["cls"].detach(), want_cls)


def test_model_wiring_losses_and_reference_weights() -> None:
    torch.manual_seed(0)
    m = LoopTrans(LoopTransConfig(**TINY), ["a", "b", "c"])
    assert m.aff_fc.out_channels == 3 + 15
    assert not any(p.requires_grad for p in m.cluster.parameters())
    assert not any(p.requires_grad for p in m.backbone.parameters())
    out = m.forward_train(_batch(), epoch=0)
    expect = (out["cls"] + 10 * out["mse"] + 2 * out["dice"] + 1.5 * out["corr"] + 0.05 * out["denoise"]
              + 0.07 * out["con"])
    torch.testing.assert_close(out["loss"], expect)
    out["loss"].backward()
    assert all(p.grad is None for p in m.cluster.parameters())
    assert m.pixel_dec[0].weight.grad is not None and m.scam[0].weight.grad is not None
    # L_con covers all C + 15 pixel-decoder maps.
    m.eval()
    x = _batch()["ego"]
    with torch.no_grad():
        desc, _ = m._descriptors(x)
        pix = m.aff_fc(m.pixel_dec(m._project(desc)))
    assert pix.shape[1] == 18
    assert float(concentration_loss(pix)) != pytest.approx(float(concentration_loss(pix[:, :3])))
    # The test output is the pixel decoder's raw CAM of the label, batch independent.
    labels = torch.tensor([2, 0, 1, 1])
    maps = m.predict(x, labels)
    torch.testing.assert_close(maps, pix[torch.arange(4), labels])
    torch.testing.assert_close(maps[1:2], m.predict(x[1:2], labels[1:2]), atol=1e-5, rtol=1e-5)
    masks = m.pseudo_masks(x, labels)
    assert masks.shape == maps.shape and set(masks.unique().tolist()) <= {0.0, 1.0}


def test_param_groups_follow_the_reference_fc_rule() -> None:
    m = LoopTrans(LoopTransConfig(**TINY), ["a", "b"])
    groups = {g.name: g for g in m.param_groups()}
    mult = {g.name: g.lr_mult for g in m.param_groups()}
    assert mult["aff_fc:weight"] == 10 and mult["aff_fc:bias"] == 20
    assert mult["aff_proj.fc1:weight"] == 10 and mult["aff_proj.fc2:bias"] == 20
    assert mult["default:weight"] == 1 and mult["default:bias"] == 2
    in_groups = {id(p) for g in groups.values() for p in g.params}
    assert not any(id(p) in in_groups for p in m.cluster.parameters())
    assert any(p is m.pixel_dec[0].weight for p in groups["default:weight"].params)  # conv stacks: base rate
    assert any(p is m.aff_proj.norm.weight for p in groups["default:weight"].params)


def test_bad_options_are_named() -> None:
    with pytest.raises(AffordError, match="model.saliency"):
        LoopTrans(LoopTransConfig(backbone="tiny_vit", saliency="cam"), ["a"])
    with pytest.raises(AffordError, match="model.cluster_weights: .*no 'tokens.weight'"):
        torch.save({"x": torch.zeros(1)}, "/tmp/_afford_not_cluster.pth")
        LoopTrans(LoopTransConfig(**TINY, cluster_weights="/tmp/_afford_not_cluster.pth"), ["a"])


# ----------------------------------------------------------------------------- cluster sources
def test_cluster_weights_from_a_release_file_and_a_looptrans_checkpoint(tmp_path) -> None:
    torch.manual_seed(1)
    ref = ClusterModule(96, 4, 2, 4)
    torch.save(ref.state_dict(), tmp_path / "cluster_seen.pth")
    m = LoopTrans(LoopTransConfig(**TINY, cluster_weights=str(tmp_path / "cluster_seen.pth")), ["a"])
    for k, v in ref.state_dict().items():
        assert torch.equal(m.cluster.state_dict()[k], v)
    prov = m.provenance()["cluster"]
    assert prov["kind"] == "file" and len(prov["sha256"]) == 64 and "released cluster module" in prov["how"]
    torch.save({f"cluster.{k}": v for k, v in ref.state_dict().items()} | {"aff_fc.weight": torch.zeros(1)},
               tmp_path / "best_model.pth")
    m2 = LoopTrans(LoopTransConfig(**TINY, cluster_weights=str(tmp_path / "best_model.pth")), ["a"])
    assert torch.equal(m2.cluster.tokens.weight, ref.tokens.weight)
    assert "LoopTrans checkpoint" in m2.provenance()["cluster"]["how"]
    bad = ClusterModule(96, 4, 3, 4)  # a deeper module than the config asks for
    torch.save(bad.state_dict(), tmp_path / "deep.pth")
    with pytest.raises(AffordError, match="unexpected keys"):
        LoopTrans(LoopTransConfig(**TINY, cluster_weights=str(tmp_path / "deep.pth")), ["a"])


def test_cluster_pretraining_through_the_engine_and_looptrans_on_top(synth_root, tmp_path) -> None:
    """The cluster module trains without labels through the one loop, resumes exactly, and a
    LoopTrans run built on it records its source (path + sha256) and learns."""
    common = [f"data.root={synth_root}", "data.resize=64", "data.crop=56", "train.batch_size=8"]
    cfg = build_config("looptrans_cluster", overrides=[
        *common, "model.backbone=tiny_vit", "model.num_layers=2", "model.num_heads=4", "train.epochs=2",
        "train.max_steps_per_epoch=3", "train.optimizer=adamw", "train.lr=1e-3", "train.scheduler=none"])
    full = train(cfg, tmp_path / "cluster", progress=False)
    assert len(full.history) == 2 and math.isfinite(full.history[-1]["loss"])
    info = json.loads((tmp_path / "cluster" / "run.json").read_text())
    assert info["task"] == "images" and info["config"]["method"] == "looptrans_cluster"
    # Exact resume: one epoch, then resume to two, equals the uninterrupted run.
    cfg1 = build_config("looptrans_cluster", overrides=[*cfg_overrides(cfg), "train.epochs=1"])
    train(cfg1, tmp_path / "half", progress=False)
    train(cfg, tmp_path / "half", resume=True, progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "cluster" / "model.safetensors")), load_file(str(tmp_path / "half" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    lt = build_config("looptrans", overrides=[
        *common, "model.backbone=tiny_vit", "model.cluster_layers=2", "model.cluster_heads=4",
        f"model.cluster_weights={tmp_path / 'cluster'}", "model.saliency=border", "data.test_size=56",
        "train.epochs=1", "train.max_steps_per_epoch=3"])
    res = train(lt, tmp_path / "lt", progress=False)
    rec = json.loads((tmp_path / "lt" / "run.json").read_text())["cluster"]
    assert rec["kind"] == "afford-run" and rec["path"] == str((tmp_path / "cluster").resolve())
    assert len(rec["sha256"]) == 64 and "afford's recipe" in rec["how"]
    assert math.isfinite(res.history[-1]["loss"])
    from afford.checkpoint import load_run

    run = load_run(tmp_path / "lt")  # loads without the cluster run (its weights are in the run)
    assert torch.equal(run.method.cluster.tokens.weight, a["cluster.tokens.weight"])
    # a cluster run of another forward (same weight shapes) is refused, naming both fields
    with pytest.raises(AffordError, match=r"model.stale_queries=True but this LoopTrans config has "
                                          r"model.cluster_stale_queries=False"):
        LoopTrans(LoopTransConfig(**TINY, cluster_weights=str(tmp_path / "cluster"), cluster_stale_queries=False),
                  ["hold", "cut_with", "drink_with"])
    with pytest.raises(AffordError, match=r"model.num_heads=4 but .* model.cluster_heads=2"):
        LoopTrans(LoopTransConfig(**{**TINY, "cluster_heads": 2}, cluster_weights=str(tmp_path / "cluster")),
                  ["hold", "cut_with", "drink_with"])


def cfg_overrides(cfg) -> list[str]:
    """A run config as key=value overrides (to vary one field)."""
    d = cfg.to_dict()
    return [f"{s}.{k}={v}" for s in ("model", "data", "train") for k, v in d[s].items() if v is not None]


def test_a_missing_cluster_module_names_the_key_and_how_to_make_it() -> None:
    """The demo preset run by hand failed with 'checkpoint file not found' naming neither the key nor the
    command that makes the cluster run."""
    from afford.errors import AffordError
    from afford.methods.looptrans_cluster import load_cluster_weights

    with pytest.raises(AffordError, match=r"model.cluster_weights: .*nowhere does not exist.*looptrans_cluster_synthagd_demo"):
        load_cluster_weights("/nowhere")
