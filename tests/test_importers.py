"""Importing official LOCATE/WSMA/LoopTrans files: key tables, conversion, parity with the official path.

The official-layout state dicts are built here from the spec's key tables (checkpoints/locate.md
§7, wsma.md §6, looptrans.md §6) with random values; the expected maps are computed by an
independent re-implementation of the official inference paths (locate.md §4, wsma.md §4,
looptrans.md §4) on those raw official tensors, so a wrong rename, q/k/v split or channel order
shows up as a value error.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from afford.backbones.tokenizer import ClipBPETokenizer
from afford.checkpoint import load_run
from afford.data.classes import HICO_IIF_AFFORDANCES, SEEN_AFFORDANCES
from afford.errors import AffordError
from afford.importers import import_official, official_keys, to_afford_names
from afford.methods.locate import LOCATE, LOCATEConfig
from afford.methods.looptrans import LoopTrans, LoopTransConfig
from afford.methods.wsma import WSMA, WSMAConfig

T = torch.Tensor


def _vit(sd: dict, g: torch.Generator, dim: int, depth: int, patch: int, empty: bool) -> None:
    def r(*shape: int, scale: float = 0.05, base: float = 0.0) -> T:
        return torch.zeros(shape) if empty else base + scale * torch.randn(shape, generator=g)

    p = "vit_model."
    sd[p + "cls_token"], sd[p + "pos_embed"] = r(1, 1, dim, scale=0.5), r(1, 197, dim, scale=0.5)
    sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"] = r(dim, 3, patch, patch), r(dim)
    for i in range(depth):
        b = f"{p}blocks.{i}."
        for name, (out_dim, in_dim) in {"attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim),
                                        "mlp.fc1": (4 * dim, dim), "mlp.fc2": (dim, 4 * dim)}.items():
            if name == "mlp.fc1":
                sd[b + "norm2.weight"], sd[b + "norm2.bias"] = r(dim, base=1.0), r(dim)
            if name == "attn.qkv":
                sd[b + "norm1.weight"], sd[b + "norm1.bias"] = r(dim, base=1.0), r(dim)
            sd[b + name + ".weight"], sd[b + name + ".bias"] = r(out_dim, in_dim, scale=in_dim**-0.5), r(out_dim)
    sd[p + "norm.weight"], sd[p + "norm.bias"] = r(dim, base=1.0), r(dim)


def _conv_bn(sd: dict, g: torch.Generator, prefix: str, dim: int, depth: int, empty: bool) -> None:
    for j in range(depth):
        c, n = f"{prefix}{3 * j}.", f"{prefix}{3 * j + 1}."
        if empty:
            sd[c + "weight"], sd[c + "bias"] = torch.zeros(dim, dim, 3, 3), torch.zeros(dim)
        else:
            sd[c + "weight"], sd[c + "bias"] = torch.randn(dim, dim, 3, 3, generator=g) / (3 * dim**0.5), 0.1 * torch.randn(dim, generator=g)
        sd[n + "weight"], sd[n + "bias"] = 1 + 0.1 * torch.randn(dim, generator=g), 0.1 * torch.randn(dim, generator=g)
        sd[n + "running_mean"], sd[n + "running_var"] = 0.1 * torch.randn(dim, generator=g), 0.5 + torch.rand(dim, generator=g)
        sd[n + "num_batches_tracked"] = torch.tensor(1000)


def official_locate(c: int = 36, dim: int = 384, depth: int = 12, patch: int = 16, seed: int = 0, empty: bool = False) -> dict:
    """A LOCATE file as in locate.md §7 (file order), random values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict = OrderedDict()
    _vit(sd, g, dim, depth, patch, empty)
    sd.update({"aff_proj.norm.weight": 1 + 0.1 * torch.randn(dim, generator=g), "aff_proj.norm.bias": torch.zeros(dim),
               "aff_proj.fc1.weight": torch.randn(4 * dim, dim, generator=g) / dim**0.5, "aff_proj.fc1.bias": torch.zeros(4 * dim),
               "aff_proj.fc2.weight": torch.randn(dim, 4 * dim, generator=g) / (2 * dim**0.5), "aff_proj.fc2.bias": torch.zeros(dim)})
    _conv_bn(sd, g, "aff_ego_proj.", dim, 2, empty)
    _conv_bn(sd, g, "aff_exo_proj.", dim, 2, empty)
    sd["aff_fc.weight"], sd["aff_fc.bias"] = torch.randn(c, dim, 1, 1, generator=g) / dim**0.5, torch.randn(c, generator=g)
    return sd


def official_wsma(c: int = 36, dim: int = 384, depth: int = 12, patch: int = 16, width: int = 512, text_depth: int = 12,
                  vocab: int = 49408, proj: int = 1024, nmf: int = 512, seed: int = 0, empty: bool = False) -> dict:
    """A WSMA file as in wsma.md §6 (file order), random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.05, base: float = 0.0) -> T:
        return torch.zeros(shape) if empty else base + scale * torch.randn(shape, generator=g)

    sd: dict = OrderedDict(logit_scale=torch.tensor(math.log(100.0)), positional_embedding=r(77, width, scale=0.01),
                           text_projection=r(width, proj, scale=width**-0.5))
    for i in range(text_depth):
        b = f"transformer.resblocks.{i}."
        sd.update({b + "attn.in_proj_weight": r(3 * width, width, scale=width**-0.5), b + "attn.in_proj_bias": r(3 * width),
                   b + "attn.out_proj.weight": r(width, width, scale=width**-0.5), b + "attn.out_proj.bias": r(width),
                   b + "ln_1.weight": r(width, base=1.0), b + "ln_1.bias": r(width),
                   b + "mlp.c_fc.weight": r(4 * width, width, scale=width**-0.5), b + "mlp.c_fc.bias": r(4 * width),
                   b + "mlp.c_proj.weight": r(width, 4 * width, scale=(4 * width) ** -0.5), b + "mlp.c_proj.bias": r(width),
                   b + "ln_2.weight": r(width, base=1.0), b + "ln_2.bias": r(width)})
    sd.update({"token_embedding.weight": r(vocab, width, scale=0.02), "ln_final.weight": r(width, base=1.0),
               "ln_final.bias": r(width)})
    sd.update({"Hamburger.lower_bread.0.weight": r(nmf, dim, 1, 1), "Hamburger.lower_bread.0.bias": r(nmf),
               "Hamburger.upper_bread.0.weight": r(dim, nmf, 1, 1), "Hamburger.upper_bread.1.weight": r(dim, base=1.0),
               "Hamburger.upper_bread.1.bias": r(dim), "Hamburger.upper_bread.1.running_mean": r(dim),
               "Hamburger.upper_bread.1.running_var": r(dim, base=1.0), "Hamburger.upper_bread.1.num_batches_tracked": torch.tensor(7)})
    _vit(sd, g, dim, depth, patch, empty)
    sd.update({"aff_proj.norm.weight": r(2 * dim, base=1.0), "aff_proj.norm.bias": r(2 * dim),
               "aff_proj.fc1.weight": r(2 * dim, 2 * dim, scale=(2 * dim) ** -0.5), "aff_proj.fc1.bias": r(2 * dim),
               "aff_proj.fc2.weight": r(dim, 2 * dim, scale=(2 * dim) ** -0.5), "aff_proj.fc2.bias": r(dim)})
    _conv_bn(sd, g, "aff_ego_proj.", dim, 1, empty)
    _conv_bn(sd, g, "aff_exo_proj.", dim, 1, empty)
    sd["attnpool.positional_embedding"] = r(197, dim, scale=0.5)
    for name in "kqv":  # sharp random attention, so the refinement matters
        sd[f"attnpool.{name}_proj.weight"], sd[f"attnpool.{name}_proj.bias"] = r(dim, dim, scale=3 * dim**-0.5), r(dim)
    sd["attnpool.c_proj.weight"], sd["attnpool.c_proj.bias"] = r(proj, dim, scale=dim**-0.5), r(proj)
    sd.update({"prompt_learner.ctx": r(16, width, scale=0.02), "prompt_learner.token_prefix": r(c, 1, width, scale=0.02),
               "prompt_learner.token_suffix": r(c, 60, width, scale=0.02), "fc.weight": r(c, dim, scale=dim**-0.5),
               "fc.bias": r(c)})
    return sd


def official_looptrans(c: int = 36, dim: int = 384, depth: int = 12, patch: int = 16, cluster_layers: int = 8,
                       seed: int = 0, empty: bool = False, with_cluster: bool = True) -> dict:
    """A LoopTrans file as train.py writes it (looptrans.md §6, file order), random values;
    ``aff_fc`` has C + 15 rows; ``with_cluster=False`` drops the training-only ``cluster.*``."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.05, base: float = 0.0) -> T:
        return torch.zeros(shape) if empty else base + scale * torch.randn(shape, generator=g)

    sd: dict = OrderedDict()
    _vit(sd, g, dim, depth, patch, empty)
    if with_cluster:  # all cross layers, all self layers, all norms, all FFNs (§6)
        sd["cluster.tokens.weight"] = r(4, dim, scale=1.0)
        for kind in ("cross_attn_layers", "self_attn_layers"):
            for i in range(cluster_layers):
                b = f"cluster.{kind}.{i}."
                sd.update({b + "in_proj_weight": r(3 * dim, dim, scale=dim**-0.5), b + "in_proj_bias": r(3 * dim),
                           b + "out_proj.weight": r(dim, dim, scale=dim**-0.5), b + "out_proj.bias": r(dim)})
        for i in range(cluster_layers):
            sd[f"cluster.norm_layers.{i}.weight"], sd[f"cluster.norm_layers.{i}.bias"] = r(dim, base=1.0), r(dim)
        for i in range(cluster_layers):
            b = f"cluster.ffn_layers.{i}.net."
            sd.update({b + "0.weight": r(4 * dim, dim, scale=dim**-0.5), b + "0.bias": r(4 * dim),
                       b + "3.weight": r(dim, 4 * dim, scale=(4 * dim) ** -0.5), b + "3.bias": r(dim)})
    sd.update({"aff_proj.norm.weight": r(dim, scale=0.1, base=1.0), "aff_proj.norm.bias": r(dim),
               "aff_proj.fc1.weight": r(4 * dim, dim, scale=dim**-0.5), "aff_proj.fc1.bias": r(4 * dim),
               "aff_proj.fc2.weight": r(dim, 4 * dim, scale=0.5 * dim**-0.5), "aff_proj.fc2.bias": r(dim)})
    _conv_bn(sd, g, "pixel_dec.", dim, 2, empty)
    _conv_bn(sd, g, "scam.", dim, 2, empty)
    sd["aff_fc.weight"], sd["aff_fc.bias"] = r(c + 15, dim, 1, 1, scale=dim**-0.5), r(c + 15, scale=1.0)
    return sd


TINY_LOOPTRANS = dict(dim=96, depth=4, patch=8, cluster_layers=2)
TINY_LOOPTRANS_OVERRIDES = {"backbone": "tiny_vit", "cluster_layers": 2, "cluster_heads": 4}


TINY_WSMA = dict(dim=96, depth=4, patch=8, width=64, text_depth=2, vocab=514, proj=64)
TINY_WSMA_OVERRIDES = {"backbone": "tiny_vit", "text_encoder": "tiny_clip", "attnpool_heads": 8}


# ----------------------------------------------------------------------------- independent reference paths
def ref_dino_keys(sd: dict, x: T, blocks: list[int], heads: int, patch: int) -> dict[int, T]:
    """Official DINO forward on raw ``vit_model.*`` tensors; descriptor ``[B, T, 6d + h]`` per block."""
    p = "vit_model."
    t = F.conv2d(x, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    b, _, dim = t.shape
    t = torch.cat([sd[p + "cls_token"].expand(b, -1, -1), t], 1) + sd[p + "pos_embed"]
    hd = dim // heads
    out = {}
    for i in range(max(blocks) + 1):
        q_ = f"{p}blocks.{i}."
        y = F.layer_norm(t, (dim,), sd[q_ + "norm1.weight"], sd[q_ + "norm1.bias"], eps=1e-6)
        q, k, v = (y @ sd[q_ + "attn.qkv.weight"].t() + sd[q_ + "attn.qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, -1, heads, hd).transpose(1, 2) for z in (q, k, v))  # (B, H, T, d)
        if i in blocks:
            out[i] = k.permute(0, 2, 3, 1).reshape(b, -1, dim)  # desc[b, t, d*H + h] = K[b, h, t, d]
        a = (q @ k.transpose(-1, -2) * hd**-0.5).softmax(-1)
        t = t + (a @ v).transpose(1, 2).reshape(b, -1, dim) @ sd[q_ + "attn.proj.weight"].t() + sd[q_ + "attn.proj.bias"]
        y = F.layer_norm(t, (dim,), sd[q_ + "norm2.weight"], sd[q_ + "norm2.bias"], eps=1e-6)
        y = F.gelu(y @ sd[q_ + "mlp.fc1.weight"].t() + sd[q_ + "mlp.fc1.bias"])
        t = t + y @ sd[q_ + "mlp.fc2.weight"].t() + sd[q_ + "mlp.fc2.bias"]
    return out


def ref_mlp(sd: dict, x: T) -> T:
    y = F.layer_norm(x, x.shape[-1:], sd["aff_proj.norm.weight"], sd["aff_proj.norm.bias"], eps=1e-5)
    y = F.gelu(y @ sd["aff_proj.fc1.weight"].t() + sd["aff_proj.fc1.bias"])
    return y @ sd["aff_proj.fc2.weight"].t() + sd["aff_proj.fc2.bias"]


def ref_conv_bn(sd: dict, prefix: str, x: T, depth: int) -> T:
    for j in range(depth):
        c, n = f"{prefix}{3 * j}.", f"{prefix}{3 * j + 1}."
        x = F.conv2d(x, sd[c + "weight"], sd[c + "bias"], padding=1)
        x = (x - sd[n + "running_mean"][:, None, None]) / torch.sqrt(sd[n + "running_var"][:, None, None] + 1e-5)
        x = F.relu(x * sd[n + "weight"][:, None, None] + sd[n + "bias"][:, None, None])
    return x


def ref_locate(sd: dict, x: T, labels: T, heads: int = 6, depth: int = 12, patch: int = 16) -> T:
    """locate.md §4: raw CAM_y at 14x14."""
    desc = ref_dino_keys(sd, x, [depth - 1], heads, patch)[depth - 1][:, 1:]
    p = (desc + ref_mlp(sd, desc)).transpose(1, 2).reshape(x.shape[0], -1, 14, 14)
    cam = F.conv2d(ref_conv_bn(sd, "aff_ego_proj.", p, 2), sd["aff_fc.weight"], sd["aff_fc.bias"])
    return cam[torch.arange(x.shape[0]), labels]


def ref_looptrans(sd: dict, x: T, labels: T, heads: int = 6, depth: int = 12, patch: int = 16) -> T:
    """looptrans.md §4: P = D + aff_proj(D) -> aff_fc(pixel_dec(P)) over C + 15 -> raw CAM_y at 14x14."""
    desc = ref_dino_keys(sd, x, [depth - 1], heads, patch)[depth - 1][:, 1:]
    p = (desc + ref_mlp(sd, desc)).transpose(1, 2).reshape(x.shape[0], -1, 14, 14)
    logits = F.conv2d(ref_conv_bn(sd, "pixel_dec.", p, 2), sd["aff_fc.weight"], sd["aff_fc.bias"])
    return logits[torch.arange(x.shape[0]), labels]


def ref_text(sd: dict, ids: T, heads: int) -> T:
    """wsma.md §4 step 3: (prefix | ctx | suffix) + token_embedding[ids] + positions -> T (C, E)."""
    c = ids.shape[0]
    x = torch.cat([sd["prompt_learner.token_prefix"], sd["prompt_learner.ctx"].expand(c, -1, -1),
                   sd["prompt_learner.token_suffix"]], 1)
    x = x + sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    w = x.shape[-1]
    mask = torch.full((77, 77), float("-inf")).triu(1)
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in sd:
        b = f"transformer.resblocks.{i}."
        y = F.layer_norm(x, (w,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"], eps=1e-5)
        q, k, v = (y @ sd[b + "attn.in_proj_weight"].t() + sd[b + "attn.in_proj_bias"]).chunk(3, -1)
        q, k, v = (z.reshape(c, 77, heads, -1).transpose(1, 2) for z in (q, k, v))
        a = (q @ k.transpose(-1, -2) / math.sqrt(w // heads) + mask).softmax(-1)
        x = x + (a @ v).transpose(1, 2).reshape(c, 77, w) @ sd[b + "attn.out_proj.weight"].t() + sd[b + "attn.out_proj.bias"]
        y = F.layer_norm(x, (w,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"], eps=1e-5)
        y = y @ sd[b + "mlp.c_fc.weight"].t() + sd[b + "mlp.c_fc.bias"]
        x = x + (y * torch.sigmoid(1.702 * y)) @ sd[b + "mlp.c_proj.weight"].t() + sd[b + "mlp.c_proj.bias"]
        i += 1
    x = F.layer_norm(x, (w,), sd["ln_final.weight"], sd["ln_final.bias"], eps=1e-5)
    return F.normalize(x[torch.arange(c), ids.argmax(-1)] @ sd["text_projection"], dim=-1)


def ref_wsma_one(sd: dict, x: T, label: int, text: T, vit_heads: int, pool_heads: int, depth: int, patch: int) -> T:
    """wsma.md §4 steps 1-11 for ONE image (test.py runs batch 1)."""
    keys = ref_dino_keys(sd, x[None], [depth - 2, depth - 1], vit_heads, patch)
    desc = torch.cat([keys[depth - 2], keys[depth - 1]], -1)[:, 1:]
    p = ref_mlp(sd, desc)[0]  # (196, D)
    dim = p.shape[-1]
    seq = torch.cat([p.mean(0, keepdim=True), p]) + sd["attnpool.positional_embedding"]
    q, k, v = (seq @ sd[f"attnpool.{n}_proj.weight"].t() + sd[f"attnpool.{n}_proj.bias"] for n in "qkv")
    hd = dim // pool_heads
    q, k, v = (z.reshape(197, pool_heads, hd).transpose(0, 1) for z in (q, k, v))
    a = (q @ k.transpose(-1, -2) * hd**-0.5).softmax(-1)
    out = (a @ v).transpose(0, 1).reshape(197, dim) @ sd["attnpool.c_proj.weight"].t() + sd["attnpool.c_proj.bias"]
    vn = out[1:] / out[1:].abs()  # batch-axis L2 norm at batch 1 = sign
    s = vn @ text[label]
    gate = torch.sigmoid(s / s.norm())
    pm = p.t().reshape(1, dim, 14, 14)
    e = ref_conv_bn(sd, "aff_ego_proj.", gate.reshape(1, 1, 14, 14) * pm + pm, 1)[0]
    cam = (sd["fc.weight"][label][:, None, None] * e).mean(0)
    att = a.mean(0)[1:, 1:]
    for _ in range(3):
        att = att / att.sum(0, keepdim=True)
        att = att / att.sum(1, keepdim=True)
    att = (att + att.t()) / 2
    cam1 = (att @ att @ cam.reshape(196)).reshape(14, 14)

    def mm(z: T) -> T:
        return (z - z.min()) / (z.max() - z.min() + 1e-10)

    cam, cam1 = mm(cam), mm(cam1)
    cam1 = torch.where(cam < 0.2, torch.zeros_like(cam1), cam1)
    return mm(cam + cam1)


def imagenet(x: torch.Tensor) -> torch.Tensor:
    """The official test loaders' Normalize (ImageNet statistics) of [0, 1] images."""
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- tests
def test_key_tables_match_the_spec_counts() -> None:
    assert len(official_keys("locate")) == 186 and len(official_keys("wsma")) == 342
    for method, builder, sizes in (("locate", official_locate, (28_177_960, 28_173_725)),
                                   ("wsma", official_wsma, (91_356_456, 91_008_669))):
        for c, n in zip((36, 25), sizes, strict=True):
            sd = builder(c=c, empty=True)
            assert list(sd) == official_keys(method)  # same keys, same file order
            assert sum(v.numel() for v in sd.values()) == n


def test_real_size_mappings_cover_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the released sizes, the renamed official keys and shapes are exactly the model's."""
    monkeypatch.delenv("AFFORD_CLIP_BPE", raising=False)
    wsma = WSMA(WSMAConfig(), HICO_IIF_AFFORDANCES)  # no vocabulary: placeholder ids
    own = {k: tuple(v.shape) for k, v in wsma.state_dict().items() if k != "prompt_ids"}
    conv = {k: tuple(v.shape) for k, v in to_afford_names(official_wsma(c=10, empty=True), "wsma").items()}
    assert conv == own
    locate = LOCATE(LOCATEConfig(), SEEN_AFFORDANCES)
    own = {k: tuple(v.shape) for k, v in locate.state_dict().items()}
    conv = {k: tuple(v.shape) for k, v in to_afford_names(official_locate(c=36, empty=True), "locate").items()}
    assert conv == own


def test_import_locate_matches_official_inference(tmp_path) -> None:
    sd = official_locate(c=25, dim=96, depth=4, patch=8)
    torch.save(sd, tmp_path / "best_model_9_1.405_0.372_1.157.pth")
    run_dir = import_official("locate", tmp_path / "best_model_9_1.405_0.372_1.157.pth", tmp_path / "run",
                              model_overrides={"backbone": "tiny_vit"})
    run = load_run(run_dir)
    assert run.info["split"] == "Unseen" and run.classes[0] == "carry" and len(run.classes) == 25
    x, labels = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1)), torch.tensor([4, 0, 24])
    cams = run.method.predict(x, labels)  # images in [0, 1]: the backbone normalises them itself
    torch.testing.assert_close(cams, ref_locate(sd, imagenet(x), labels, heads=4, depth=4, patch=8), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cams, run.method.predict(x, labels), atol=0, rtol=0)
    torch.testing.assert_close(cams[2:], run.method.predict(x[2:], labels[2:]), atol=1e-5, rtol=1e-5)


def test_import_wsma_matches_official_inference(tmp_path) -> None:
    sd = official_wsma(c=10, **TINY_WSMA)
    torch.save(sd, tmp_path / "best_model.pth.tar")
    run_dir = import_official("wsma", tmp_path / "best_model.pth.tar", tmp_path / "run", model_overrides=TINY_WSMA_OVERRIDES)
    run = load_run(run_dir)
    assert run.info["split"] == "HICO-IIF" and run.config.model.faithful and run.config.model.tokenizer is None
    assert run.config.train.epochs == 13 and run.config.train.scheduler == "none"
    g = torch.Generator().manual_seed(2)
    x, labels = torch.rand(3, 3, 112, 112, generator=g), torch.tensor([0, 7, 7])
    maps = run.method.predict(x, labels)
    prompts = [" ".join(["X"] * 16) + " " + c.replace("_", " ") + "." for c in HICO_IIF_AFFORDANCES]
    ids = ClipBPETokenizer.char_level()(prompts)
    text = ref_text(sd, ids, heads=4)
    for i in range(3):
        expected = ref_wsma_one(sd, imagenet(x)[i], int(labels[i]), text, vit_heads=4, pool_heads=8, depth=4, patch=8)
        torch.testing.assert_close(maps[i], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(maps[i : i + 1], run.method.predict(x[i : i + 1], labels[i : i + 1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(maps, run.method.predict(x, labels), atol=0, rtol=0)


def test_unreadable_and_wrong_files_are_rejected(tmp_path) -> None:
    loc = official_locate(c=10, dim=96, depth=4, patch=8)
    torch.save(loc, tmp_path / "locate.pth")
    data = (tmp_path / "locate.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(AffordError, match=r"truncated\.pth: cannot read the checkpoint"):
        import_official("locate", tmp_path / "truncated.pth", tmp_path / "r1")
    with pytest.raises(AffordError, match=r"official LOCATE checkpoint \(it has 'aff_ego_proj.3.weight'\).*--method locate"):
        import_official("wsma", tmp_path / "locate.pth", tmp_path / "r2")
    torch.save(official_wsma(c=10, **TINY_WSMA), tmp_path / "wsma.pth")
    with pytest.raises(AffordError, match=r"official WSMA checkpoint.*--method wsma"):
        import_official("locate", tmp_path / "wsma.pth", tmp_path / "r3")
    with pytest.raises(AffordError, match="not found"):
        import_official("locate", tmp_path / "nope.pth", tmp_path / "r4")
    # a text file and bytes that start like a pickle: torch.load raised KeyError / IndexError
    (tmp_path / "text.pth").write_text("hello\n")
    (tmp_path / "pickle_start.pth").write_bytes(b"\x80\x02}q")
    for name in ("text.pth", "pickle_start.pth"):
        with pytest.raises(AffordError, match=rf"{name}: cannot read the checkpoint"):
            import_official("locate", tmp_path / name, tmp_path / "r5")
    nan = official_locate(c=10, dim=96, depth=4, patch=8)
    nan["aff_proj.fc1.bias"][0] = float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(AffordError, match=r"nan\.pth: NaN or infinite values in .*aff_proj\.fc1\.bias"):
        import_official("locate", tmp_path / "nan.pth", tmp_path / "r6")
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3", "r4", "r5", "r6"))


def test_key_class_count_shape_and_vocabulary_errors(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    over = {"backbone": "tiny_vit"}
    bad = official_locate(c=10, dim=96, depth=4, patch=8)
    del bad["aff_proj.fc1.bias"]
    bad["aff_proj.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "keys.pth")
    with pytest.raises(AffordError) as e:
        import_official("locate", tmp_path / "keys.pth", tmp_path / "r", model_overrides=over)
    msg = str(e.value)
    assert "missing keys (1) [aff_proj.fc1.bias]" in msg and "unexpected keys (1) [aff_proj.extra.weight]" in msg
    assert "\n" not in msg
    torch.save(official_locate(c=7, dim=96, depth=4, patch=8), tmp_path / "seven.pth")
    with pytest.raises(AffordError, match="has 7 classes"):
        import_official("locate", tmp_path / "seven.pth", tmp_path / "r", model_overrides=over)
    # Any class list works when given explicitly.
    run_dir = import_official("locate", tmp_path / "seven.pth", tmp_path / "r7", model_overrides=over,
                              classnames=[f"a{i}" for i in range(7)])
    assert load_run(run_dir).classes == tuple(f"a{i}" for i in range(7))
    with pytest.raises(AffordError, match="already holds a run"):
        import_official("locate", tmp_path / "seven.pth", tmp_path / "r7", model_overrides=over,
                        classnames=[f"a{i}" for i in range(7)])
    wrong = official_locate(c=10, dim=96, depth=4, patch=8)
    wrong["aff_fc.weight"] = torch.zeros(10, 96, 3, 3)
    torch.save(wrong, tmp_path / "shape.pth")
    with pytest.raises(AffordError, match="shape"):
        import_official("locate", tmp_path / "shape.pth", tmp_path / "r", model_overrides=over)
    # WSMA needs the CLIP vocabulary once, to tokenise the prompts (the hub fallback fails offline).
    monkeypatch.delenv("AFFORD_CLIP_BPE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    torch.save(official_wsma(c=10, dim=96, depth=4, patch=8, empty=True), tmp_path / "rn50.pth")  # RN50 text tower
    with pytest.raises(AffordError, match=r"cannot tokenise the WSMA prompts: .*--tokenizer.*hub lookup failed"):
        import_official("wsma", tmp_path / "rn50.pth", tmp_path / "r",
                        model_overrides={**TINY_WSMA_OVERRIDES, "text_encoder": "clip_rn50"})
    with pytest.raises(AffordError, match="expected one of 'locate', 'looptrans', 'selectivecl', 'wsma'"):
        import_official("loop", tmp_path / "shape.pth", tmp_path / "r")


# ----------------------------------------------------------------------------- LoopTrans
def test_looptrans_key_table_and_real_size_mapping() -> None:
    """299 entries in file order, the spec's element counts, and the renamed keys cover the model."""
    keys = official_keys("looptrans")
    assert len(keys) == 299
    for c, n in ((36, 47_105_719), (25, 47_101_484)):
        sd = official_looptrans(c=c, empty=True)
        assert list(sd) == keys  # same keys, same file order
        assert sum(v.numel() for v in sd.values()) == n
    model = LoopTrans(LoopTransConfig(), SEEN_AFFORDANCES)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    conv = {k: tuple(v.shape) for k, v in to_afford_names(official_looptrans(c=36, empty=True), "looptrans").items()}
    assert conv == own


def test_import_looptrans_matches_official_inference(tmp_path) -> None:
    sd = official_looptrans(c=25, **TINY_LOOPTRANS)
    torch.save(sd, tmp_path / "best_model_12_1.160_0.430_1.382.pth")
    run_dir = import_official("looptrans", tmp_path / "best_model_12_1.160_0.430_1.382.pth", tmp_path / "run",
                              model_overrides=TINY_LOOPTRANS_OVERRIDES)
    run = load_run(run_dir)
    assert run.info["split"] == "Unseen" and len(run.classes) == 25 and run.info["cluster"]["kind"] == "file"
    x, labels = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(3)), torch.tensor([24, 0, 7])
    cams = run.method.predict(x, labels)
    torch.testing.assert_close(cams, ref_looptrans(sd, imagenet(x), labels, heads=4, depth=4, patch=8),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cams, run.method.predict(x, labels), atol=0, rtol=0)
    torch.testing.assert_close(cams[1:], run.method.predict(x[1:], labels[1:]), atol=1e-5, rtol=1e-5)
    cluster = run.method.cluster.state_dict()
    assert set(cluster) == {k[len("cluster."):] for k in sd if k.startswith("cluster.")}
    for k, v in cluster.items():
        torch.testing.assert_close(v, sd["cluster." + k], atol=0, rtol=0)


def test_import_looptrans_without_cluster_keys(tmp_path) -> None:
    """test.py's model has no cluster module: such a file imports, with a recorded random cluster."""
    sd = official_looptrans(c=36, **TINY_LOOPTRANS, with_cluster=False)
    assert not any(k.startswith("cluster.") for k in sd)
    torch.save(sd, tmp_path / "no_cluster.pth")
    run = load_run(import_official("looptrans", tmp_path / "no_cluster.pth", tmp_path / "run",
                                   model_overrides=TINY_LOOPTRANS_OVERRIDES))
    assert run.info["split"] == "Seen" and len(run.classes) == 36 and run.info["cluster"]["kind"] == "random"
    x, labels = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(4)), torch.tensor([35, 3])
    torch.testing.assert_close(run.method.predict(x, labels),
                               ref_looptrans(sd, imagenet(x), labels, heads=4, depth=4, patch=8), atol=1e-4, rtol=1e-4)


def test_looptrans_wrong_files_are_rejected(tmp_path) -> None:
    partial = official_looptrans(c=25, **TINY_LOOPTRANS)
    del partial["cluster.ffn_layers.1.net.3.bias"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(AffordError) as e:
        import_official("looptrans", tmp_path / "partial.pth", tmp_path / "r0", model_overrides=TINY_LOOPTRANS_OVERRIDES)
    msg = str(e.value)
    assert "missing keys (1) [cluster.ffn_layers.1.net.3.bias]" in msg and "unexpected" not in msg and "\n" not in msg
    torch.save(official_looptrans(c=25, **TINY_LOOPTRANS), tmp_path / "looptrans.pth")
    data = (tmp_path / "looptrans.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(AffordError, match=r"truncated\.pth: cannot read the checkpoint"):
        import_official("looptrans", tmp_path / "truncated.pth", tmp_path / "r1")
    with pytest.raises(AffordError, match=r"official LOOPTRANS checkpoint.*--method looptrans"):
        import_official("locate", tmp_path / "looptrans.pth", tmp_path / "r2")
    torch.save(official_locate(c=25, dim=96, depth=4, patch=8), tmp_path / "locate.pth")
    with pytest.raises(AffordError, match=r"official LOCATE checkpoint.*--method locate"):
        import_official("looptrans", tmp_path / "locate.pth", tmp_path / "r3")
    assert not any((tmp_path / r).exists() for r in ("r0", "r1", "r2", "r3"))


# ----------------------------------------------------------------------------- malformed files
def _import_error(method: str, sd: dict, tmp_path, **kwargs: object) -> str:
    """The one-line AffordError of importing ``sd``; nothing may be written."""
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(AffordError) as e:
        import_official(method, tmp_path / "bad.pth", tmp_path / "run", **kwargs)  # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'bad.pth'}: ") and not (tmp_path / "run").exists(), msg
    return msg


_LOC = dict(c=36, dim=96, depth=4, patch=8)
_WSMA_C = dict(c=36, **TINY_WSMA)
_LT = dict(c=36, **TINY_LOOPTRANS)
_MALFORMED = [  # (method, builder kwargs, key, bad tensor, expected shape in the message)
    ("locate", _LOC, "vit_model.blocks.3.attn.qkv.weight", torch.zeros(4, 96), "[288, 96]"),
    ("locate", _LOC, "vit_model.blocks.0.attn.qkv.weight", torch.zeros(300, 96), "[288, 96]"),
    ("locate", _LOC, "vit_model.blocks.1.attn.qkv.weight", torch.zeros(1, 96), "[288, 96]"),
    ("locate", _LOC, "vit_model.blocks.2.attn.qkv.bias", torch.zeros(2), "[288]"),
    ("locate", _LOC, "vit_model.blocks.0.attn.qkv.bias", torch.tensor(0.0), "[288]"),
    ("locate", _LOC, "vit_model.pos_embed", torch.zeros(1, 196, 96), "[1, 197, 96]"),
    ("locate", _LOC, "aff_ego_proj.1.num_batches_tracked", torch.tensor([3]), "[]"),
    ("wsma", _WSMA_C, "logit_scale", torch.zeros(2), "[]"),
    ("wsma", _WSMA_C, "text_projection", torch.zeros(64, 64, 1), "[64, 64]"),
    ("wsma", _WSMA_C, "transformer.resblocks.0.attn.in_proj_bias", torch.zeros(2), "[192]"),
    ("wsma", _WSMA_C, "transformer.resblocks.1.attn.in_proj_weight", torch.zeros(4, 64), "[192, 64]"),
    ("wsma", _WSMA_C, "transformer.resblocks.1.attn.in_proj_weight", torch.tensor(1.0), "[192, 64]"),
    ("looptrans", _LT, "cluster.self_attn_layers.1.in_proj_weight", torch.zeros(4, 96), "[288, 96]"),
]
_BUILDERS = {"locate": official_locate, "wsma": official_wsma, "looptrans": official_looptrans}
_OVERRIDES = {"locate": {"backbone": "tiny_vit"}, "wsma": TINY_WSMA_OVERRIDES, "looptrans": TINY_LOOPTRANS_OVERRIDES}


@pytest.mark.parametrize(("method", "kwargs", "key", "bad", "want"), _MALFORMED,
                         ids=[f"{m}-{k}-{list(b.shape)}" for m, _, k, b, _ in _MALFORMED])
def test_wrong_shapes_are_named_by_the_official_key(tmp_path, method: str, kwargs: dict, key: str, bad: T,
                                                    want: str) -> None:
    """A malformed tensor is one line naming the file's own key (not afford's) and both shapes,
    checked before the q|k|v splits and transposes that used to crash on it."""
    sd = _BUILDERS[method](**kwargs)
    sd[key] = bad
    msg = _import_error(method, sd, tmp_path, model_overrides=_OVERRIDES[method])
    assert f"{key}: shape {list(bad.shape)}, expected {want}" in msg, msg
    assert not any(name in msg for name in ("backbone.", "text_encoder.", "k_proj", "visual_projection")), msg


def test_shape_errors_list_several_keys_in_one_line(tmp_path) -> None:
    sd = official_locate(**_LOC)
    for i in range(4):
        sd[f"vit_model.blocks.{i}.attn.qkv.weight"] = torch.zeros(300, 96)
    sd["aff_proj.fc1.bias"] = torch.zeros(7)
    sd["aff_exo_proj.3.weight"] = torch.zeros(96, 96, 1, 1)
    msg = _import_error("locate", sd, tmp_path, model_overrides={"backbone": "tiny_vit"})
    assert "6 tensor(s) do not fit the LOCATE model" in msg and "(+1 more)" in msg, msg
    assert "vit_model.blocks.0.attn.qkv.weight: shape [300, 96], expected [288, 96]" in msg, msg


def test_classifier_without_class_rows_is_one_line(tmp_path) -> None:
    sd = official_locate(**_LOC)
    sd["aff_fc.weight"] = torch.tensor(1.0)
    msg = _import_error("locate", sd, tmp_path, model_overrides={"backbone": "tiny_vit"})
    assert "aff_fc.weight: shape [], expected one row per class" in msg, msg
    sd = official_looptrans(**_LT)
    sd["aff_fc.weight"] = torch.zeros(15, 96, 1, 1)  # the noise rows only
    msg = _import_error("looptrans", sd, tmp_path, model_overrides=TINY_LOOPTRANS_OVERRIDES)
    assert "aff_fc.weight: shape [15, 96, 1, 1], expected one row per class plus 15 noise rows" in msg, msg


@pytest.mark.parametrize(("key", "bad", "want"), [
    ("aff_fc.weight", torch.ones(36, 96, 1, 1, dtype=torch.int64), "dtype int64, expected a floating-point dtype"),
    ("aff_proj.fc1.bias", torch.ones(384, dtype=torch.bool), "dtype bool, expected a floating-point dtype"),
    ("aff_ego_proj.1.num_batches_tracked", torch.tensor(3.7), "dtype float32, expected an integer dtype (int64)"),
    ("aff_exo_proj.4.num_batches_tracked", torch.tensor(True), "dtype bool, expected an integer dtype (int64)"),
])
def test_wrong_dtypes_are_refused(tmp_path, key: str, bad: T, want: str) -> None:
    """Every entry is float32 except ``*.num_batches_tracked`` (int64): an integer or bool weight
    would be silently cast, a float counter silently truncated."""
    sd = official_locate(**_LOC)
    sd[key] = bad
    msg = _import_error("locate", sd, tmp_path, model_overrides={"backbone": "tiny_vit"})
    assert f"{key}: {want}" in msg, msg


def test_half_and_double_precision_files_are_up_cast(tmp_path) -> None:
    sd = official_locate(**_LOC)
    mixed = {k: (v.half() if "blocks" in k else v.bfloat16() if k.startswith("aff_proj") else v.double()
                 if k.startswith("aff_fc") else v) if v.is_floating_point() else v.int() for k, v in sd.items()}
    torch.save(mixed, tmp_path / "mixed.pth")
    run = load_run(import_official("locate", tmp_path / "mixed.pth", tmp_path / "run", model_overrides={"backbone": "tiny_vit"}))
    state = run.method.state_dict()
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert all(v.dtype == torch.int64 for k, v in state.items() if k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("method", ["locate", "wsma", "looptrans"])
def test_official_names_round_trip_through_the_model(method: str) -> None:
    """``from_afford`` (the shapes a model expects, in the file's naming) inverts ``to_afford``."""
    from afford.factory import method_entry, official_format

    fmt = official_format(method)
    _, cfg = method_entry(method)
    model = {"locate": LOCATE, "wsma": WSMA, "looptrans": LoopTrans}[method](
        cfg(**fmt.model_overrides(dict(_OVERRIDES[method]), None)), SEEN_AFFORDANCES)
    own = {k: v for k, v in model.state_dict().items() if k != "prompt_ids"}
    official = fmt.from_afford(own)
    assert sorted(official) == sorted(fmt.keys(*fmt.depths(model)))
    back = fmt.to_afford(official)
    assert sorted(back) == sorted(own)
    for k, v in own.items():
        torch.testing.assert_close(back[k], v.float() if v.is_floating_point() else v, atol=0, rtol=0)


def test_converters_refuse_malformed_fused_and_projection_tensors() -> None:
    """Other callers of the renames (backbone weight files) get one line, not a zip()/t() crash."""
    from afford.backbones.convert import dino_to_hf_vit, openai_text_to_hf, openai_visual_to_hf

    with pytest.raises(AffordError, match=r"^blocks\.3\.attn\.qkv\.weight: shape \[4, 384\], expected 3\*W rows"):
        dino_to_hf_vit({"cls_token": torch.zeros(1, 1, 384), "blocks.3.attn.qkv.weight": torch.zeros(4, 384)})
    with pytest.raises(AffordError, match=r"^transformer\.resblocks\.0\.attn\.in_proj_bias: shape \[\]"):
        openai_text_to_hf({"transformer.resblocks.0.attn.in_proj_bias": torch.tensor(0.0)})
    with pytest.raises(AffordError, match=r"^text_projection: shape \[64, 64, 1\], expected a 2-D projection matrix"):
        openai_text_to_hf({"text_projection": torch.zeros(64, 64, 1)})
    with pytest.raises(AffordError, match=r"^visual\.proj: shape \[96\], expected a 2-D"):
        openai_visual_to_hf({"visual.proj": torch.zeros(96)})


# ----------------------------------------------------------------------------- reproducibility, flags
def test_looptrans_import_without_cluster_is_reproducible(tmp_path) -> None:
    """The training-only cluster module a file lacks is initialised under a fixed seed: two
    imports are byte-identical, whatever the caller's RNG, which the import leaves untouched."""
    torch.save(official_looptrans(**_LT, with_cluster=False), tmp_path / "no_cluster.pth")
    weights = []
    for i in range(2):
        torch.manual_seed(1000 + i)
        before = torch.get_rng_state()
        run_dir = import_official("looptrans", tmp_path / "no_cluster.pth", tmp_path / f"run{i}",
                                  model_overrides=TINY_LOOPTRANS_OVERRIDES)
        assert torch.equal(torch.get_rng_state(), before)
        weights.append((run_dir / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]
    assert load_run(tmp_path / "run0").info["cluster"]["kind"] == "random"


@pytest.mark.parametrize("method", ["locate", "looptrans"])
def test_tokenizer_is_refused_for_methods_without_prompts(tmp_path, method: str) -> None:
    sd = official_locate(**_LOC) if method == "locate" else official_looptrans(**_LT)
    torch.save(sd, tmp_path / "f.pth")
    with pytest.raises(AffordError, match=rf"^--tokenizer: {method} has no text prompts$"):
        import_official(method, tmp_path / "f.pth", tmp_path / "run", tokenizer=tmp_path / "vocab.txt.gz",
                        model_overrides=_OVERRIDES[method])
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- no network
def _unreachable_hub(monkeypatch: pytest.MonkeyPatch, tmp_path) -> list[bool]:
    """No vocabulary, an empty HF cache, HF_HUB_OFFLINE unset and a hub endpoint nothing listens
    on; returns the ``local_files_only`` of every CLIPTokenizer lookup (an online one fails at once
    here instead of retrying for minutes)."""
    import socket

    from transformers import CLIPTokenizer

    for var in ("AFFORD_CLIP_BPE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # a free port: nothing listens there once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    calls: list[bool] = []
    real = CLIPTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, local_files_only=False, **kw):  # noqa: ANN001
        calls.append(local_files_only)
        if not local_files_only:
            raise OSError("online lookup attempted")
        return real(cls, name, *args, local_files_only=True, **kw)

    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", classmethod(from_pretrained))
    return calls


def test_hub_fallback_fails_fast_without_network(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --tokenizer or $AFFORD_CLIP_BPE the hub's tokenizer is the last resort: the cache is
    tried first and the hub only when a quick connection to $HF_ENDPOINT opens."""
    import time

    calls = _unreachable_hub(monkeypatch, tmp_path)
    torch.save(official_wsma(c=10, dim=96, depth=4, patch=8, empty=True), tmp_path / "rn50.pth")
    start = time.monotonic()
    with pytest.raises(AffordError) as e:
        import_official("wsma", tmp_path / "rn50.pth", tmp_path / "r",
                        model_overrides={**TINY_WSMA_OVERRIDES, "text_encoder": "clip_rn50"})
    assert time.monotonic() - start < 60
    msg = str(e.value)
    assert calls == [True], calls  # the cache only: the unreachable hub is never asked
    assert "\n" not in msg and "cannot tokenise the WSMA prompts" in msg and "--tokenizer" in msg, msg
    assert "is not in the Hugging Face cache and http://127.0.0.1:" in msg and "is unreachable" in msg, msg


def test_hub_probe_honours_hf_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from afford.hub import hub_unreachable

    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}/")
        assert hub_unreachable(timeout=5) is None
    why = hub_unreachable(timeout=5)
    assert why is not None and why.startswith(f"http://127.0.0.1:{port} is unreachable (127.0.0.1:{port}: "), why


def test_the_import_verb_and_afford_list(tmp_path, capsys) -> None:
    """`afford import` end to end through the CLI (a full-size ViT-S/16 LOCATE file of the Unseen split), and
    `afford list` naming every method, preset, protocol and refiner there is."""
    from afford.cli import main
    from afford.factory import METHODS, list_presets
    from afford.metrics.saliency import PROTOCOLS
    from afford.refine.defaults import REFINERS

    sd = official_locate(c=25)
    torch.save(sd, tmp_path / "best.pth")
    assert main(["import", "--method", "locate", "--file", str(tmp_path / "best.pth"), "--out", str(tmp_path / "run"),
                 "-q"]) == 0
    run = load_run(tmp_path / "run")
    assert run.info["method"] == "locate" and run.info["split"] == "Unseen" and len(run.classes) == 25
    torch.testing.assert_close(run.method.aff_fc.weight, sd["aff_fc.weight"], atol=0, rtol=0)
    capsys.readouterr()
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in [*METHODS, *list_presets(), *PROTOCOLS, *REFINERS, "dino_vits16", "clip_vitb16"]:
        assert name in listed, name


def test_training_wrappers_pickled_objects_and_foreign_out_folders(tmp_path) -> None:
    """A training script's checkpoint ({'model': sd, 'optimizer': ..., 'epoch': 3}) was refused as 'entries
    that are not tensors'; a pickled module or a file that would run code got torch's advice to load it
    unsafely; a non-empty --out lost its model.safetensors."""
    import os

    from safetensors.torch import load_file

    loc = official_locate(c=10, dim=96, depth=4, patch=8)
    TINY = {"backbone": "tiny_vit"}  # noqa: N806
    torch.save(loc, tmp_path / "plain.pth")
    plain = load_file(import_official("locate", tmp_path / "plain.pth", tmp_path / "plain", model_overrides=TINY) / "model.safetensors")
    for key in ("model", "model_state_dict", "state_dict"):
        torch.save({key: loc, "optimizer": {"lr": torch.tensor(0.1)}, "epoch": 3}, tmp_path / f"{key}.pth")
        got = load_file(import_official("locate", tmp_path / f"{key}.pth", tmp_path / key, model_overrides=TINY) / "model.safetensors")
        assert got.keys() == plain.keys() and all(torch.equal(got[k], plain[k]) for k in got)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    for name, obj in (("evil.pth", r"\(posix.system\)"), ("module.pth", r"\(torch.nn.modules.linear.Linear\)")):
        with pytest.raises(AffordError, match=rf"{name}: holds a pickled Python object {obj}, not only tensors") as e:
            import_official("locate", tmp_path / name, tmp_path / "r", model_overrides=TINY)
        assert "weights_only" not in str(e.value) and "\x1b" not in str(e.value)
    assert not (tmp_path / "PWNED").exists()
    import zipfile

    with zipfile.ZipFile(tmp_path / "ckpt.zip", "w") as z:
        z.write(tmp_path / "plain.pth", "plain.pth")
    with pytest.raises(AffordError, match=r"ckpt\.zip: a zip archive, not a torch.save file: unzip it"):
        import_official("locate", tmp_path / "ckpt.zip", tmp_path / "r", model_overrides=TINY)
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(AffordError, match=r"empty\.pth: expected a state dict \(key -> tensor\), got an empty dict"):
        import_official("locate", tmp_path / "empty.pth", tmp_path / "r", model_overrides=TINY)
    with pytest.raises(AffordError, match=r": a folder; expected the checkpoint file"):
        import_official("locate", tmp_path / "plain", tmp_path / "r", model_overrides=TINY)
    hf = tmp_path / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"theirs")
    with pytest.raises(AffordError, match=r"hf_model: not empty \(config.json\); choose a new --out"):
        import_official("locate", tmp_path / "plain.pth", hf, model_overrides=TINY)
    assert (hf / "model.safetensors").read_bytes() == b"theirs"
    assert not (tmp_path / "r").exists()


def test_a_vocabulary_that_is_not_the_towers_is_one_line(tmp_path) -> None:
    """A corrupt bpe file was a gzip traceback; a truncated one (100 merges) was accepted and changed
    WSMA's prompts and maps."""
    import gzip

    from afford.backbones import create_text_encoder

    (tmp_path / "plain.txt.gz").write_text("not gzip")
    with pytest.raises(AffordError, match=r"plain\.txt\.gz: not a gzipped CLIP BPE vocabulary"):
        ClipBPETokenizer.from_openai_gz(tmp_path / "plain.txt.gz")
    with gzip.open(tmp_path / "three.txt.gz", "wt") as f:
        f.write("#version\na b c\n")
    with pytest.raises(AffordError, match=r"three\.txt\.gz: merge rule 1 is 'a b c'; expected two symbols"):
        ClipBPETokenizer.from_openai_gz(tmp_path / "three.txt.gz")
    with gzip.open(tmp_path / "short.txt.gz", "wt") as f:
        f.write("#version\nh e\nl l\n")  # 2 merges: 516 ids, where the tiny tower has 514
    enc = create_text_encoder("tiny_clip", tokenizer=str(tmp_path / "short.txt.gz"))
    with pytest.raises(AffordError, match=r"tokenizer's vocabulary has 516 ids, the text tower's 514"):
        enc.tokenize("a photo of a cup")
