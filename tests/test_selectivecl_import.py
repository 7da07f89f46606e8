"""Importing official SelectiveCL files: key table, conversion, parity with the official inference path.

The official-layout state dicts are built here from the spec's key list (checkpoints/selectivecl.md
§6) with random values; the expected maps come from an independent re-implementation of the
official inference path (§4 steps 1-8) on those raw ``vit_model.*`` / ``net.*`` / head tensors, so a
wrong rename, q/k/v split, ClearCLIP block, prompt or calibration shows up as a value error.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from afford.backbones.tokenizer import ClipBPETokenizer
from afford.checkpoint import load_run
from afford.data.classes import SEEN_AFFORDANCES, UNSEEN_AFFORDANCES
from afford.errors import AffordError
from afford.importers import import_official, official_keys, to_afford_names
from afford.methods.selectivecl import SelectiveCL, SelectiveCLConfig
from test_importers import _conv_bn, _vit, imagenet, official_locate, ref_conv_bn, ref_dino_keys, ref_mlp

T = torch.Tensor

TINY_OVERRIDES = {"backbone": "tiny_vit", "clip": "tiny_clip"}
TINY_DEPTHS = (4, 4, 2)  # DINO blocks, CLIP image blocks, CLIP text blocks
TINY = dict(dim=96, depth=4, patch=8, width=96, layers=4, clip_patch=8, embed=64, text_width=64, text_layers=2,
            vocab=514)
_BLOCK = ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
          "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
          "mlp.c_proj.weight", "mlp.c_proj.bias")


# ----------------------------------------------------------------------------- the spec's key list (§6)
def _resblock_shapes(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {prefix + "ln_1.weight": (width,), prefix + "ln_1.bias": (width,),
            prefix + "attn.in_proj_weight": (3 * width, width), prefix + "attn.in_proj_bias": (3 * width,),
            prefix + "attn.out_proj.weight": (width, width), prefix + "attn.out_proj.bias": (width,),
            prefix + "ln_2.weight": (width,), prefix + "ln_2.bias": (width,),
            prefix + "mlp.c_fc.weight": (4 * width, width), prefix + "mlp.c_fc.bias": (4 * width,),
            prefix + "mlp.c_proj.weight": (width, 4 * width), prefix + "mlp.c_proj.bias": (width,)}


def _conv_bn_shapes(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for conv, bn in ((0, 1), (3, 4)):
        out.update({f"{prefix}{conv}.weight": (dim, dim, 3, 3), f"{prefix}{conv}.bias": (dim,),
                    f"{prefix}{bn}.weight": (dim,), f"{prefix}{bn}.bias": (dim,),
                    f"{prefix}{bn}.running_mean": (dim,), f"{prefix}{bn}.running_var": (dim,),
                    f"{prefix}{bn}.num_batches_tracked": ()})
    return out


def release_shapes(c: int = 36) -> OrderedDict[str, tuple[int, ...]]:
    """selectivecl.md §6 at the released size, in file order: key -> shape."""
    s: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    s["vit_model.cls_token"], s["vit_model.pos_embed"] = (1, 1, 384), (1, 197, 384)
    s["vit_model.patch_embed.proj.weight"], s["vit_model.patch_embed.proj.bias"] = (384, 3, 16, 16), (384,)
    for i in range(12):
        b = f"vit_model.blocks.{i}."
        s.update({b + "norm1.weight": (384,), b + "norm1.bias": (384,), b + "attn.qkv.weight": (1152, 384),
                  b + "attn.qkv.bias": (1152,), b + "attn.proj.weight": (384, 384), b + "attn.proj.bias": (384,),
                  b + "norm2.weight": (384,), b + "norm2.bias": (384,), b + "mlp.fc1.weight": (1536, 384),
                  b + "mlp.fc1.bias": (1536,), b + "mlp.fc2.weight": (384, 1536), b + "mlp.fc2.bias": (384,)})
    s["vit_model.norm.weight"], s["vit_model.norm.bias"] = (384,), (384,)
    s["net.positional_embedding"], s["net.text_projection"], s["net.logit_scale"] = (77, 512), (512, 512), ()
    s["net.visual.class_embedding"], s["net.visual.positional_embedding"] = (768,), (197, 768)
    s["net.visual.proj"], s["net.visual.conv1.weight"] = (768, 512), (768, 3, 16, 16)
    s["net.visual.ln_pre.weight"], s["net.visual.ln_pre.bias"] = (768,), (768,)
    for i in range(12):
        s.update(_resblock_shapes(f"net.visual.transformer.resblocks.{i}.", 768))
    s["net.visual.ln_post.weight"], s["net.visual.ln_post.bias"] = (768,), (768,)
    for i in range(12):
        s.update(_resblock_shapes(f"net.transformer.resblocks.{i}.", 512))
    s["net.token_embedding.weight"] = (49408, 512)
    s["net.ln_final.weight"], s["net.ln_final.bias"] = (512,), (512,)
    s.update({"aff_proj.norm.weight": (384,), "aff_proj.norm.bias": (384,), "aff_proj.fc1.weight": (1536, 384),
              "aff_proj.fc1.bias": (1536,), "aff_proj.fc2.weight": (384, 1536), "aff_proj.fc2.bias": (384,)})
    s["aff_classifier.weight"], s["aff_classifier.bias"] = (c, 384, 1, 1), (c,)
    s["K_contrast_projection.weight"], s["K_contrast_projection.bias"] = (384, 384, 1, 1), (384,)
    s["pixel_contrast_projection.weight"], s["pixel_contrast_projection.bias"] = (384, 384, 1, 1), (384,)
    s.update(_conv_bn_shapes("aff_ego_proj.", 384))
    s.update(_conv_bn_shapes("aff_exo_proj.", 384))
    return s


def _group(key: str) -> str:
    if key.startswith("vit_model."):
        return "vit_model"
    if key.startswith("net.visual."):
        return "net.visual"
    return "net" if key.startswith("net.") else key.split(".")[0]


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def meta_official(c: int = 36) -> dict[str, T]:
    """The released file's entries as meta tensors (shapes and dtypes only, nothing allocated)."""
    return {k: torch.empty(shape, device="meta", dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
            for k, shape in release_shapes(c).items()}


# ----------------------------------------------------------------------------- a tiny official file
def official_selectivecl(c: int = 36, dim: int = 96, depth: int = 4, patch: int = 8, width: int = 96, layers: int = 4,
                         clip_patch: int = 8, embed: int = 64, text_width: int = 64, text_layers: int = 2,
                         vocab: int = 514, seed: int = 0) -> OrderedDict[str, T]:
    """A SelectiveCL file as train.py writes it (§1 order, §6 names), random values at sane scales."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.05, base: float = 0.0) -> T:
        return base + scale * torch.randn(shape, generator=g)

    def blocks(prefix: str, n: int, w: int) -> None:
        for i in range(n):
            b = f"{prefix}{i}."
            sd.update({b + "ln_1.weight": r(w, base=1.0), b + "ln_1.bias": r(w),
                       b + "attn.in_proj_weight": r(3 * w, w, scale=w**-0.5), b + "attn.in_proj_bias": r(3 * w),
                       b + "attn.out_proj.weight": r(w, w, scale=w**-0.5), b + "attn.out_proj.bias": r(w),
                       b + "ln_2.weight": r(w, base=1.0), b + "ln_2.bias": r(w),
                       b + "mlp.c_fc.weight": r(4 * w, w, scale=w**-0.5), b + "mlp.c_fc.bias": r(4 * w),
                       b + "mlp.c_proj.weight": r(w, 4 * w, scale=(4 * w) ** -0.5), b + "mlp.c_proj.bias": r(w)})

    sd: OrderedDict[str, T] = OrderedDict()
    _vit(sd, g, dim, depth, patch, False)
    sd["net.positional_embedding"] = r(77, text_width, scale=0.01)
    sd["net.text_projection"] = r(text_width, embed, scale=text_width**-0.5)
    sd["net.logit_scale"] = torch.tensor(math.log(100.0))
    v = "net.visual."
    grid = 1 + (112 // clip_patch) ** 2
    sd.update({v + "class_embedding": r(width, scale=0.5), v + "positional_embedding": r(grid, width, scale=0.5),
               v + "proj": r(width, embed, scale=width**-0.5),
               v + "conv1.weight": r(width, 3, clip_patch, clip_patch, scale=(3 * clip_patch**2) ** -0.5),
               v + "ln_pre.weight": r(width, base=1.0), v + "ln_pre.bias": r(width)})
    blocks(v + "transformer.resblocks.", layers, width)
    sd[v + "ln_post.weight"], sd[v + "ln_post.bias"] = r(width, base=1.0), r(width)
    blocks("net.transformer.resblocks.", text_layers, text_width)
    sd["net.token_embedding.weight"] = r(vocab, text_width, scale=0.1)
    sd["net.ln_final.weight"], sd["net.ln_final.bias"] = r(text_width, base=1.0), r(text_width)
    sd.update({"aff_proj.norm.weight": r(dim, scale=0.1, base=1.0), "aff_proj.norm.bias": r(dim),
               "aff_proj.fc1.weight": r(4 * dim, dim, scale=dim**-0.5), "aff_proj.fc1.bias": r(4 * dim),
               "aff_proj.fc2.weight": r(dim, 4 * dim, scale=(4 * dim) ** -0.5), "aff_proj.fc2.bias": r(dim)})
    sd["aff_classifier.weight"], sd["aff_classifier.bias"] = r(c, dim, 1, 1, scale=dim**-0.5), r(c, scale=1.0)
    sd["K_contrast_projection.weight"], sd["K_contrast_projection.bias"] = r(dim, dim, 1, 1, scale=dim**-0.5), r(dim)
    sd["pixel_contrast_projection.weight"] = r(dim, dim, 1, 1, scale=dim**-0.5)
    sd["pixel_contrast_projection.bias"] = r(dim)
    _conv_bn(sd, g, "aff_ego_proj.", dim, 2, False)
    _conv_bn(sd, g, "aff_exo_proj.", dim, 2, False)
    return sd


# ----------------------------------------------------------------------------- independent reference (§4)
def ref_action_prompt(name: str) -> str:
    """§4 step 1: "an item to " + n, then " with" unless n already contains "with"."""
    return "an item to " + name + ("" if "with" in name else " with")


def _ln(x: T, sd: dict, prefix: str) -> T:
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], eps=1e-5)


def _mha(y: T, sd: dict, b: str, heads: int, mask: T | None = None, query_query: bool = False) -> T:
    """OpenAI nn.MultiheadAttention on raw ``in_proj``/``out_proj``; ClearCLIP uses q q^T (k unused)."""
    n, t, w = y.shape
    hd = w // heads
    q, k, v = (y @ sd[b + "attn.in_proj_weight"].t() + sd[b + "attn.in_proj_bias"]).chunk(3, -1)
    q, k, v = (z.reshape(n, t, heads, hd).transpose(1, 2) for z in (q, k, v))  # head h: rows hd*h.. of each third
    scores = (q @ (q if query_query else k).transpose(-1, -2)) * hd**-0.5
    if mask is not None:
        scores = scores + mask
    o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, w)
    return o @ sd[b + "attn.out_proj.weight"].t() + sd[b + "attn.out_proj.bias"]


def _mlp(y: T, sd: dict, b: str) -> T:
    y = y @ sd[b + "mlp.c_fc.weight"].t() + sd[b + "mlp.c_fc.bias"]
    return (y * torch.sigmoid(1.702 * y)) @ sd[b + "mlp.c_proj.weight"].t() + sd[b + "mlp.c_proj.bias"]  # QuickGELU


def ref_text_feature(sd: dict, ids: T, heads: int) -> T:
    """§4 step 2 for ONE prompt ``ids (1, 77)``: causal pre-LN blocks, ln_final, EOT row @ text_projection."""
    x = sd["net.token_embedding.weight"][ids] + sd["net.positional_embedding"]
    mask = torch.full((77, 77), float("-inf")).triu(1)
    i = 0
    while f"net.transformer.resblocks.{i}.ln_1.weight" in sd:
        b = f"net.transformer.resblocks.{i}."
        x = x + _mha(_ln(x, sd, b + "ln_1."), sd, b, heads, mask=mask)
        x = x + _mlp(_ln(x, sd, b + "ln_2."), sd, b)
        i += 1
    x = _ln(x, sd, "net.ln_final.")
    return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["net.text_projection"]


def ref_clip_patches(sd: dict, x: T, heads: int, layers: int, patch: int) -> T:
    """§4 step 3: ClearCLIP patch embeddings ``V (B, 196, E)`` on the ImageNet-normalised input."""
    v = "net.visual."
    t = F.conv2d(x, sd[v + "conv1.weight"], stride=patch).flatten(2).transpose(1, 2)  # row-major patches
    n, _, w = t.shape
    t = torch.cat([sd[v + "class_embedding"].expand(n, 1, w), t], 1) + sd[v + "positional_embedding"]
    t = _ln(t, sd, v + "ln_pre.")
    for i in range(layers - 1):
        b = f"{v}transformer.resblocks.{i}."
        t = t + _mha(_ln(t, sd, b + "ln_1."), sd, b, heads)
        t = t + _mlp(_ln(t, sd, b + "ln_2."), sd, b)
    last = f"{v}transformer.resblocks.{layers - 1}."
    t = _mha(_ln(t, sd, last + "ln_1."), sd, last, heads, query_query=True)  # replaces x: no residual, no MLP
    return _ln(t, sd, v + "ln_post.")[:, 1:] @ sd[v + "proj"]


def ref_local_mean(m: T) -> T:
    """§4 step 7: 3x3 mean over the neighbours that exist (4 at corners, 6 on edges, 9 inside)."""
    h, w = m.shape[-2:]
    out = torch.empty_like(m)
    for i in range(h):
        for j in range(w):
            nb = [m[..., a, b] for a in range(i - 1, i + 2) for b in range(j - 1, j + 2) if 0 <= a < h and 0 <= b < w]
            out[..., i, j] = torch.stack(nb, -1).mean(-1)
    return out


def ref_selectivecl(sd: dict, x: T, labels: T, classes: tuple[str, ...], vit_heads: int = 4, depth: int = 4,
                    patch: int = 8, clip_heads: int = 4, clip_layers: int = 4, clip_patch: int = 8,
                    text_heads: int = 4) -> dict[str, T]:
    """§4 steps 1-8 on the raw official tensors: ``{"raw": M, "calibrated": S·M, "calibrated_mean": S·M_mean}``
    plus the min-max affinity ``S`` (for the non-degeneracy checks). ``x``: ImageNet-normalised."""
    n = x.shape[0]
    tok = ClipBPETokenizer.char_level()
    text = torch.cat([ref_text_feature(sd, tok([ref_action_prompt(classes[int(y)])]), text_heads) for y in labels])
    v = ref_clip_patches(sd, x, clip_heads, clip_layers, clip_patch)  # (B, 196, E)
    cos = F.cosine_similarity(v, text[:, None, :], dim=-1).reshape(n, 14, 14)
    lo, hi = cos.flatten(1).min(1).values[:, None, None], cos.flatten(1).max(1).values[:, None, None]
    s = (cos - lo) / (hi - lo)  # no epsilon
    desc = ref_dino_keys(sd, x, [depth - 1], vit_heads, patch)[depth - 1][:, 1:]  # (B, 196, D)
    p = ref_mlp(sd, desc).transpose(1, 2).reshape(n, -1, 14, 14)  # no residual
    logits = F.conv2d(ref_conv_bn(sd, "aff_ego_proj.", p, 2), sd["aff_classifier.weight"], sd["aff_classifier.bias"])
    m = logits[torch.arange(n), labels]
    return {"raw": m, "calibrated": s * m, "calibrated_mean": s * ref_local_mean(m), "S": s, "text": text}


# ----------------------------------------------------------------------------- shared tiny import
@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[OrderedDict[str, T], Path]:
    tmp = tmp_path_factory.mktemp("selectivecl")
    sd = official_selectivecl(c=25, **TINY)
    file = tmp / "best_model_14_1.243_0.388_1.227.pth"
    torch.save(sd, file)
    return sd, import_official("selectivecl", file, tmp / "run", model_overrides=TINY_OVERRIDES)


# ----------------------------------------------------------------------------- 1. key table
def test_key_table_matches_the_spec_at_release_size() -> None:
    keys = official_keys("selectivecl")
    assert len(keys) == 492
    for c, total in ((36, 178_094_377), (25, 178_090_142)):
        shapes = release_shapes(c)
        assert list(shapes) == keys  # same keys, same file order
        assert sum(_numel(s) for s in shapes.values()) == total
    shapes = release_shapes(36)
    counts: dict[str, int] = {}
    elements: dict[str, int] = {}
    for k, s in shapes.items():
        grp = _group(k)
        counts[grp] = counts.get(grp, 0) + 1
        elements[grp] = elements.get(grp, 0) + _numel(s)
    heads = ("aff_proj", "aff_classifier", "K_contrast_projection", "pixel_contrast_projection", "aff_ego_proj",
             "aff_exo_proj")
    assert (counts["vit_model"], counts["net.visual"], counts["net"], sum(counts[h] for h in heads)) == (150, 152, 150, 40)
    assert set(counts) == {"vit_model", "net.visual", "net", *heads}
    assert elements == {"vit_model": 21_665_664, "net.visual": 86_192_640, "net": 63_428_097, "aff_proj": 1_182_336,
                        "aff_classifier": 13_860, "K_contrast_projection": 147_840,
                        "pixel_contrast_projection": 147_840, "aff_ego_proj": 2_658_050, "aff_exo_proj": 2_658_050}


def test_tiny_builder_is_in_file_order() -> None:
    assert list(official_selectivecl(c=25, **TINY)) == official_keys("selectivecl", *TINY_DEPTHS)


def test_real_size_mapping_covers_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The renamed release keys and shapes are exactly the real-size model's (minus ``prompt_ids``)."""
    monkeypatch.delenv("AFFORD_CLIP_BPE", raising=False)
    with torch.device("meta"):
        model = SelectiveCL(SelectiveCLConfig(), SEEN_AFFORDANCES)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "prompt_ids"}
    assert "prompt_ids" in model.state_dict()  # afford-only buffer, filled at import
    conv = {k: tuple(v.shape) for k, v in to_afford_names(meta_official(36), "selectivecl").items()}
    assert conv == own


# ----------------------------------------------------------------------------- 2. import parity
def test_import_matches_official_inference(imported: tuple[OrderedDict[str, T], Path]) -> None:
    sd, run_dir = imported
    run = load_run(run_dir)
    assert run.info["split"] == "Unseen" and len(run.classes) == 25 and tuple(run.classes) == UNSEEN_AFFORDANCES
    c = len(UNSEEN_AFFORDANCES)
    tok = ClipBPETokenizer.char_level()
    ids = run.method.prompt_ids
    assert torch.equal(ids[:c], tok([ref_action_prompt(n) for n in UNSEEN_AFFORDANCES]))
    assert torch.equal(ids[c:], tok([f"a person {n} an item" for n in UNSEEN_AFFORDANCES]))

    x, labels = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(5)), torch.tensor([24, 0, 7])
    ref = ref_selectivecl(sd, imagenet(x), labels, UNSEEN_AFFORDANCES)
    # The reference is not degenerate: the affinity varies over positions and the texts differ.
    assert bool((ref["S"].flatten(1).std(1) > 0.1).all())
    assert float(F.normalize(ref["text"][0], dim=0) @ F.normalize(ref["text"][1], dim=0)) < 0.999
    assert float((ref["calibrated"] - ref["raw"]).abs().max()) > 1e-2
    assert float((ref["calibrated_mean"] - ref["calibrated"]).abs().max()) > 1e-2
    for name in ("raw", "calibrated", "calibrated_mean"):
        got = run.method.predict(x, labels, name)
        assert got.shape == (3, 14, 14)
        torch.testing.assert_close(got, ref[name], atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(got, run.method.predict(x, labels, name), atol=0, rtol=0)  # deterministic
        torch.testing.assert_close(got[1:], run.method.predict(x[1:], labels[1:], name), atol=1e-5, rtol=1e-5)
    # A class whose name already holds "with" ("cut_with": no second "with" in the prompt).
    assert UNSEEN_AFFORDANCES[3] == "cut_with"
    one = torch.tensor([3])
    torch.testing.assert_close(run.method.predict(x[:1], one), ref_selectivecl(sd, imagenet(x[:1]), one,
                               UNSEEN_AFFORDANCES)["calibrated"], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- 3. rejections
def _one_line_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(AffordError) as e:
        import_official(*args, **kwargs)  # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_wrong_files_are_rejected_in_one_line(tmp_path: Path) -> None:
    partial = official_selectivecl(c=25, **TINY)
    del partial["aff_ego_proj.4.running_var"]
    torch.save(partial, tmp_path / "partial.pth")
    msg = _one_line_error("selectivecl", tmp_path / "partial.pth", tmp_path / "r0", model_overrides=TINY_OVERRIDES)
    assert "missing keys (1) [aff_ego_proj.4.running_var]" in msg and "unexpected" not in msg, msg

    torch.save(official_selectivecl(c=25, **TINY), tmp_path / "selectivecl.pth")
    data = (tmp_path / "selectivecl.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    msg = _one_line_error("selectivecl", tmp_path / "truncated.pth", tmp_path / "r1", model_overrides=TINY_OVERRIDES)
    assert "truncated.pth: cannot read the checkpoint" in msg, msg

    torch.save(official_locate(c=25, dim=96, depth=4, patch=8), tmp_path / "locate.pth")
    msg = _one_line_error("selectivecl", tmp_path / "locate.pth", tmp_path / "r2", model_overrides=TINY_OVERRIDES)
    assert "LOCATE" in msg and "--method locate" in msg, msg

    try:
        msg = _one_line_error("locate", tmp_path / "selectivecl.pth", tmp_path / "r3",
                              model_overrides={"backbone": "tiny_vit"})
        assert "SELECTIVECL" in msg and "--method selectivecl" in msg, msg
    finally:
        assert not any((tmp_path / r).exists() for r in ("r0", "r1", "r2", "r3"))


# ----------------------------------------------------------------------------- 4. recorded outputs
def test_run_records_the_outputs(imported: tuple[OrderedDict[str, T], Path]) -> None:
    _, run_dir = imported
    run = load_run(run_dir)
    assert run.method.default_output == "calibrated"
    assert set(run.method.outputs) == {"calibrated", "raw", "calibrated_mean"}
    assert "outputs" in run.info
    assert all(name in run.info["outputs"] for name in ("calibrated", "raw", "calibrated_mean"))
    x, labels = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(6)), torch.tensor([3])
    torch.testing.assert_close(run.method.predict(x, labels), run.method.predict(x, labels, "calibrated"), atol=0, rtol=0)


# ----------------------------------------------------------------------------- 5. malformed tensors
_MALFORMED = [  # key, bad tensor, what the one-line message says about it
    ("net.logit_scale", torch.zeros(2), "shape [2], expected []"),
    ("net.visual.proj", torch.zeros(96, 64, 1), "shape [96, 64, 1], expected [96, 64]"),
    ("net.text_projection", torch.zeros(64), "shape [64], expected [64, 64]"),
    ("net.visual.transformer.resblocks.2.attn.in_proj_weight", torch.zeros(4, 96), "shape [4, 96], expected [288, 96]"),
    ("net.transformer.resblocks.1.attn.in_proj_bias", torch.tensor(0.0), "shape [], expected [192]"),
    ("vit_model.blocks.3.attn.qkv.weight", torch.zeros(2, 96), "shape [2, 96], expected [288, 96]"),
    ("K_contrast_projection.weight", torch.ones(96, 96, 1, 1, dtype=torch.int32), "dtype int32, expected a floating-point"),
    ("aff_exo_proj.1.num_batches_tracked", torch.tensor(2.0), "dtype float32, expected an integer dtype (int64)"),
    ("aff_classifier.weight", torch.tensor(1.0), "shape [], expected one row per class"),
]


@pytest.mark.parametrize(("key", "bad", "want"), _MALFORMED, ids=[k for k, _, _ in _MALFORMED])
def test_malformed_tensors_are_one_line_naming_the_official_key(tmp_path: Path, key: str, bad: T, want: str) -> None:
    sd = official_selectivecl(c=25, **TINY)
    sd[key] = bad
    torch.save(sd, tmp_path / "bad.pth")
    msg = _one_line_error("selectivecl", tmp_path / "bad.pth", tmp_path / "run", model_overrides=TINY_OVERRIDES)
    assert msg.startswith(f"{tmp_path / 'bad.pth'}: ") and f"{key}: {want}" in msg, msg
    assert not (tmp_path / "run").exists()


def test_half_precision_file_imports_as_float32(tmp_path: Path) -> None:
    sd = official_selectivecl(c=25, **TINY)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, tmp_path / "fp16.pth")
    run = load_run(import_official("selectivecl", tmp_path / "fp16.pth", tmp_path / "run", model_overrides=TINY_OVERRIDES))
    assert all(v.dtype == torch.float32 for v in run.method.state_dict().values() if v.is_floating_point())


def test_official_names_round_trip_through_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """``from_afford`` (the shapes the model expects, in the file's naming) inverts ``to_afford``."""
    from afford.factory import official_format

    monkeypatch.delenv("AFFORD_CLIP_BPE", raising=False)
    fmt = official_format("selectivecl")
    model = SelectiveCL(SelectiveCLConfig(**TINY_OVERRIDES), UNSEEN_AFFORDANCES)
    own = {k: v for k, v in model.state_dict().items() if k != "prompt_ids"}
    official = fmt.from_afford(own)
    assert sorted(official) == sorted(official_keys("selectivecl", *TINY_DEPTHS))
    back = fmt.to_afford(official)
    assert sorted(back) == sorted(own)
    for k, v in own.items():
        torch.testing.assert_close(back[k], v, atol=0, rtol=0)


def test_tokenizer_flag_is_accepted_with_prompts(tmp_path: Path) -> None:
    """SelectiveCL tokenises prompts, so --tokenizer is used (LOCATE/LoopTrans refuse it)."""
    torch.save(official_selectivecl(c=25, **TINY), tmp_path / "f.pth")
    run_dir = import_official("selectivecl", tmp_path / "f.pth", tmp_path / "run", model_overrides=TINY_OVERRIDES,
                              tokenizer=ClipBPETokenizer.char_level())
    assert (run_dir / "model.safetensors").is_file()
