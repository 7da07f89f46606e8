"""Vision backbones: official-format parity, key order, CLS attention, saliency, ClearCLIP.

The references below are written from the specs (locate.md §3.1/§4, selectivecl.md §3.2/§4)
in plain torch with the *official* parameter names, so they test the key conversion as well as
the forward.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from afford.backbones import create_backbone, dino_saliency, list_backbones
from afford.errors import AffordError

torch.manual_seed(0)


# ----------------------------------------------------------------------------- DINO reference
class _Attn(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class _Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attn(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim)


class RefDino(nn.Module):
    """facebookresearch/dino ViT with its state-dict names; forward per locate.md §4."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, image: int) -> None:
        super().__init__()
        self.heads, self.patch = heads, patch
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.5)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.ModuleList([_Block(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        with torch.no_grad():  # non-trivial norms/biases so a swapped tensor cannot hide
            for name, p in self.named_parameters():
                if "norm" in name:
                    p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
                elif name.endswith("bias"):
                    p.normal_(0, 0.1)

    def _attend(self, blk: _Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, d)
        a = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return k, a, (a @ v).transpose(1, 2).reshape(b, t, c)

    def pos(self, gh: int, gw: int) -> torch.Tensor:
        """DINO's interpolate_pos_encoding: bicubic by the scale factor (g + 0.1) / sqrt(N) per axis."""
        n = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(n))
        if (gh, gw) == (side, side):
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / math.sqrt(n), (gw + 0.1) / math.sqrt(n)),
                             mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)

    def forward(self, img: torch.Tensor, layers: tuple[int, ...]) -> dict[str, object]:
        x = self.patch_embed.proj(img).flatten(2).transpose(1, 2)
        gh, gw = img.shape[-2] // self.patch, img.shape[-1] // self.patch
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos(gh, gw)
        keys, attn = {}, None
        for i, blk in enumerate(self.blocks):
            k, a, o = self._attend(blk, x)
            b, h, t, d = k.shape
            desc = torch.empty(b, t, d * h)
            for hh in range(h):  # desc[b, t, d*heads + h] = K[b, h, t, d], written out literally
                for dd in range(d):
                    desc[:, :, dd * h + hh] = k[:, hh, :, dd]
            keys[i] = desc
            attn = a
            x = x + blk.attn.proj(o)
            x = x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))
        to_map = lambda z: z[:, 1:].transpose(1, 2).reshape(z.shape[0], -1, gh, gw)  # noqa: E731
        return {"keys": [to_map(keys[i]) for i in layers], "cls_attn": attn[:, :, 0, 1:].reshape(-1, self.heads, gh, gw),
                "tokens": to_map(self.norm(x))}


def _save_ref(tmp_path, ref: nn.Module, name: str = "dino_pretrain.pth") -> str:
    path = tmp_path / name
    torch.save(ref.state_dict(), path)
    return str(path)


def test_official_dino_file_matches_reference_tiny(tmp_path) -> None:
    ref = RefDino(96, 4, 4, 8, 112).eval()
    bb = create_backbone("tiny_vit", weights=_save_ref(tmp_path, ref), layers=(-2, -1))
    img = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        want = ref(bb.normalize(img), layers=(2, 3))
    got = bb(img)
    for g, w in zip(got.keys, want["keys"], strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.cls_attn, want["cls_attn"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.tokens[-1], want["tokens"], atol=1e-4, rtol=1e-4)
    assert got.layers == (2, 3)


def test_official_dino_at_another_input_size_matches_dinos_own_interpolation(tmp_path) -> None:
    """A 96x128 input (12x16 grid from a 14x14 table): the tower's keys, CLS attention and tokens equal
    DINO's forward with its interpolate_pos_encoding, written out in RefDino."""
    ref = RefDino(96, 4, 4, 8, 112).eval()
    bb = create_backbone("tiny_vit", weights=_save_ref(tmp_path, ref), layers=(-1,))
    img = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        want = ref(bb.normalize(img), layers=(3,))
    got = bb(img)
    assert got.keys[0].shape == (2, 96, 12, 16)
    torch.testing.assert_close(got.keys[0], want["keys"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.cls_attn, want["cls_attn"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.tokens[-1], want["tokens"], atol=1e-4, rtol=1e-4)


def test_official_dino_vits16_shapes_match_reference(tmp_path) -> None:
    ref = RefDino(384, 12, 6, 16, 224).eval()
    bb = create_backbone("dino_vits16", weights=_save_ref(tmp_path, ref, "dino_deitsmall16_pretrain.pth"),
                         return_tokens=False)
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = ref(bb.normalize(img), layers=(11,))
    got = bb(img)
    assert got.keys[0].shape == (1, 384, 14, 14) and got.tokens == []
    torch.testing.assert_close(got.keys[0], want["keys"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.cls_attn, want["cls_attn"], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- generic invariants
def _block_input(bb, img: torch.Tensor, index: int) -> torch.Tensor:
    """The residual stream entering block ``index``, captured from the previous block's output."""
    store = {}
    blocks = bb._blocks()
    hook = blocks[index - 1].register_forward_hook(lambda m, i, o: store.setdefault("x", o))
    bb(img)
    hook.remove()
    return store["x"]


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_dinov2", "tiny_clip"])
def test_keys_and_cls_attn_equal_hand_computation(name: str) -> None:
    bb = create_backbone(name, return_tokens=False)
    with torch.no_grad():  # distinct norms, so reading the keys after the wrong one shows
        for m in bb.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    img = torch.randn(2, 3, 112, 112)
    feats = bb(img)
    last = bb.num_layers - 1
    x = _block_input(bb, img, last)
    blk = bb._blocks()[last]
    # the block's first norm by its transformers name (the pre-attention LayerNorm), not afford's accessor
    norm = getattr(blk, {"tiny_vit": "layernorm_before", "tiny_dinov2": "norm1", "tiny_clip": "layer_norm1"}[name])
    attn = bb._attention(blk)
    y = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    k = F.linear(y, attn.k_proj.weight, attn.k_proj.bias)  # (B, T, heads*d) head-major
    q = F.linear(y, attn.q_proj.weight, attn.q_proj.bias)
    heads, d = bb.num_heads, bb.embed_dim // bb.num_heads
    key_map = feats.keys[0]
    for c in [0, 1, heads, 5 * heads + 2, bb.embed_dim - 1]:  # reference channel c = j*heads + h
        j, h = divmod(c, heads)
        torch.testing.assert_close(key_map[:, c].flatten(1), k[:, 1:, h * d + j], atol=1e-6, rtol=1e-5)
    qh = q.reshape(2, -1, heads, d).transpose(1, 2)
    kh = k.reshape(2, -1, heads, d).transpose(1, 2)
    full = (qh @ kh.transpose(-1, -2) * d**-0.5).softmax(-1)  # (B, heads, T, T)
    torch.testing.assert_close(feats.cls_attn.flatten(2), full[:, :, 0, 1:], atol=1e-6, rtol=1e-5)
    mass = feats.cls_attn.sum(dim=(-2, -1)) + full[:, :, 0, 0]
    torch.testing.assert_close(mass, torch.ones_like(mass))


def _hand_saliency(cls_attn: torch.Tensor, heads: list[int]) -> torch.Tensor:
    out = torch.zeros(cls_attn.shape[0], *cls_attn.shape[2:])
    for b in range(cls_attn.shape[0]):
        maps = []
        for h in heads:
            a = cls_attn[b, h]
            maps.append((a > a.mean()).float())
        s = sum(maps) / len(maps)
        s = (s - s.min()) / (s.max() - s.min() + 1e-12)
        out[b] = (s > s.mean()).float()
    return out


def test_saliency_is_binary_and_matches_hand_computation() -> None:
    bb = create_backbone("tiny_vit")
    feats = bb(torch.randn(3, 3, 112, 112))
    assert set(feats.saliency.unique().tolist()) <= {0.0, 1.0}
    assert feats.saliency.sum() > 0
    torch.testing.assert_close(feats.saliency, _hand_saliency(feats.cls_attn, [0, 1, 3]))


def test_saliency_head_selection() -> None:
    a = torch.rand(2, 6, 7, 7)
    s = dino_saliency(a)
    torch.testing.assert_close(s, _hand_saliency(a, [0, 1, 3]))
    a2 = a.clone()
    a2[:, [2, 4, 5]] = torch.rand(2, 3, 7, 7)  # heads outside [0,1,3] must not matter
    torch.testing.assert_close(dino_saliency(a2), s)
    three = torch.rand(1, 3, 5, 5)  # fewer than 4 heads: all heads are averaged
    torch.testing.assert_close(dino_saliency(three), _hand_saliency(three, [0, 1, 2]))


def test_mean_head_saliency_is_looptrans_continuous_map() -> None:
    """LoopTrans: the raw CLS attention of heads [0, 1, 3] averaged, then min-max (no binarisation);
    the other heads do not matter; fewer than 4 heads: all of them."""
    from afford.modules.saliency import mean_head_saliency

    a = torch.rand(2, 6, 5, 5, dtype=torch.float64)
    m = (a[:, 0] + a[:, 1] + a[:, 3]) / 3
    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
    got = mean_head_saliency(a)
    torch.testing.assert_close(got.double(), (m - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert got.amin() == 0 and 0.999 < float(got.amax()) <= 1.0 and len(got.unique()) > 2
    a2 = a.clone()
    a2[:, [2, 4, 5]] = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(mean_head_saliency(a2), got)
    three = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    m3 = three.mean(1)
    torch.testing.assert_close(mean_head_saliency(three).double(), (m3 - m3.min()) / (m3.max() - m3.min()),
                               rtol=1e-5, atol=1e-6)


def test_other_input_size_interpolates_positions() -> None:
    bb = create_backbone("tiny_vit", layers=(0, -1))
    feats = bb(torch.randn(1, 3, 96, 128))
    assert feats.keys[0].shape == (1, 96, 12, 16) and feats.tokens[1].shape == (1, 96, 12, 16)
    assert feats.cls_attn.shape == (1, 4, 12, 16) and feats.saliency.shape == (1, 12, 16)


def test_stops_after_deepest_needed_block() -> None:
    bb = create_backbone("tiny_vit", layers=(1,), return_tokens=False)
    called: list[int] = []
    for i, blk in enumerate(bb._blocks()):
        blk.register_forward_hook(lambda m, inp, out, i=i: called.append(i))
    bb(torch.randn(1, 3, 112, 112))
    assert called == [0]  # block 1 contributes only its key projection
    called.clear()
    bb(torch.randn(1, 3, 112, 112), return_tokens=True)
    assert called == [0, 1]


def test_frozen_and_trainable_modes() -> None:
    frozen = create_backbone("tiny_vit")
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    out = frozen(torch.randn(1, 3, 112, 112))
    assert not out.keys[0].requires_grad
    live = create_backbone("tiny_vit", trainable=True)
    assert live.training
    out = live(torch.randn(1, 3, 112, 112))
    (out.keys[0].sum() + out.tokens[0].sum()).backward()
    grad = live.model.layers[0].attention.k_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_save_pretrained_round_trip(tmp_path) -> None:
    bb = create_backbone("tiny_dinov2")
    bb.save_pretrained(tmp_path / "m")
    again = create_backbone("tiny_dinov2", weights=tmp_path / "m")
    img = torch.randn(1, 3, 112, 112)
    a, b = bb(img), again(img)
    torch.testing.assert_close(a.keys[0], b.keys[0], atol=0, rtol=0)
    torch.testing.assert_close(a.tokens[0], b.tokens[0], atol=0, rtol=0)


def test_mismatched_official_file_gives_one_error(tmp_path) -> None:
    sd = RefDino(96, 3, 4, 8, 112).state_dict()  # one block short of tiny_vit
    sd["head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(AffordError) as err:
        create_backbone("tiny_vit", weights=path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "missing keys" in msg and "layers.3.attention.k_proj.weight" in msg
    assert "unexpected keys" in msg and "head.weight" in msg


def test_bad_names_and_options() -> None:
    with pytest.raises(AffordError, match="did you mean: dino_vits16"):
        create_backbone("dino_vit16")
    with pytest.raises(AffordError, match="unknown option"):
        create_backbone("tiny_vit", hiden_size=8)
    with pytest.raises(AffordError, match="out of range"):
        create_backbone("tiny_vit", layers=(7,))
    with pytest.raises(AffordError, match="neither an existing file"):
        create_backbone("tiny_vit", weights="/nonexistent/dino.pth")
    assert {"dino_vits16", "dino_vits8", "dino_vitb16", "dinov2_vits14", "dinov2_vitb14", "clip_vitb16",
            "tiny_vit", "tiny_dinov2", "tiny_clip"} <= set(list_backbones())


def test_attributes() -> None:
    bb = create_backbone("dino_vits16", num_hidden_layers=1)
    assert (bb.embed_dim, bb.patch_size, bb.num_heads) == (384, 16, 6)
    assert bb.mean == (0.485, 0.456, 0.406) and bb.name == "dino_vits16"
    clip = create_backbone("tiny_clip")
    assert clip.token_dim == 64 and clip.mean[0] == pytest.approx(0.48145466)


def test_bf16_returns_float32_close_to_fp32() -> None:
    bb = create_backbone("tiny_vit")
    fast = create_backbone("tiny_vit", dtype=torch.bfloat16)
    fast.load_state_dict(bb.state_dict())
    img = torch.randn(1, 3, 112, 112)
    a, b = bb(img), fast(img)
    assert b.keys[0].dtype == torch.float32 and b.cls_attn.dtype == torch.float32
    cos = F.cosine_similarity(a.keys[0].flatten(), b.keys[0].flatten(), dim=0)
    assert cos > 0.99


# ----------------------------------------------------------------------------- CLIP + ClearCLIP
class RefClipVisual(nn.Module):
    """OpenAI CLIP VisionTransformer (state-dict names of ``visual.*``), QuickGELU."""

    def __init__(self, width: int, layers: int, heads: int, patch: int, image: int, out: int) -> None:
        super().__init__()
        self.heads = heads
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.5)
        self.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width) * 0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList()
        for _ in range(layers):
            blk = nn.Module()
            blk.ln_1, blk.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            blk.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            blk.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), c_proj=nn.Linear(4 * width, width)))
            self.transformer.resblocks.append(blk)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out) * width**-0.5)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "ln_" in name:
                    p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
                elif name.endswith("bias"):
                    p.normal_(0, 0.1)

    def forward(self, img: torch.Tensor, clearclip: bool) -> torch.Tensor:
        x = self.conv1(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        x = self.ln_pre(x)
        blocks = self.transformer.resblocks
        for i, blk in enumerate(blocks):
            y = blk.ln_1(x)
            if clearclip and i == len(blocks) - 1:
                b, t, c = y.shape
                d = c // self.heads
                q, _, v = F.linear(y, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
                q = q.reshape(b, t, self.heads, d).transpose(1, 2)
                v = v.reshape(b, t, self.heads, d).transpose(1, 2)
                o = ((q @ q.transpose(-1, -2)) * d**-0.5).softmax(-1) @ v
                x = blk.attn.out_proj(o.transpose(1, 2).reshape(b, t, c))  # replaces x: no residual, no MLP
                break
            x = x + blk.attn(y, y, y, need_weights=False)[0]
            h = blk.mlp.c_fc(blk.ln_2(x))
            x = x + blk.mlp.c_proj(h * torch.sigmoid(1.702 * h))
        self.cls = self.ln_post(x)[:, 0] @ self.proj  # CLIP's image embedding (the class token's row)
        return self.ln_post(x)[:, 1:] @ self.proj


@pytest.mark.parametrize("clearclip", [False, True])
def test_openai_clip_visual_file_and_clearclip_match_reference(tmp_path, clearclip: bool) -> None:
    ref = RefClipVisual(96, 4, 4, 8, 112, 64).eval()
    sd = {f"visual.{k}": v for k, v in ref.state_dict().items()}
    sd.update({"positional_embedding": torch.zeros(77, 64), "input_resolution": torch.tensor(112)})  # text side
    path = tmp_path / "ViT-tiny.pt"
    torch.save(sd, path)
    bb = create_backbone("tiny_clip", weights=path, clearclip=clearclip)
    img = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        want = ref(bb.normalize(img), clearclip=clearclip)
    feats = bb(img)
    got = feats.tokens[-1]
    assert got.shape == (2, 64, 14, 14)
    torch.testing.assert_close(feats.cls_token, ref.cls, atol=1e-4, rtol=1e-4)  # CLIP4HOI's global embedding
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), want, atol=1e-5, rtol=1e-5)


def test_method_checkpoint_import_with_prefix(tmp_path) -> None:
    """A LOCATE-style file stores the DINO weights under ``vit_model.`` next to its heads."""
    from afford.backbones.convert import load_checkpoint_file, strip_prefix

    ref = RefDino(96, 4, 4, 8, 112).eval()
    sd = {f"vit_model.{k}": v for k, v in ref.state_dict().items()}
    sd["aff_fc.weight"] = torch.zeros(36, 96, 1, 1)
    torch.save(sd, tmp_path / "best_model.pth")
    bb = create_backbone("tiny_vit", return_tokens=False)
    bb.load_official_state_dict(strip_prefix(load_checkpoint_file(tmp_path / "best_model.pth"), "vit_model."),
                                "best_model.pth")
    img = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        want = ref(bb.normalize(img), layers=(3,))
    torch.testing.assert_close(bb(img).keys[0], want["keys"][0], atol=1e-5, rtol=1e-5)


# The published statistics, typed from the papers' code (not imported from afford).
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _norm(x: torch.Tensor, stats: tuple) -> torch.Tensor:
    return (x - torch.tensor(stats[0]).view(1, 3, 1, 1)) / torch.tensor(stats[1]).view(1, 3, 1, 1)


@pytest.mark.parametrize("name,stats", [("tiny_vit", _IMAGENET), ("tiny_dinov2", _IMAGENET), ("tiny_clip", _CLIP)])
def test_each_backbone_normalises_its_own_input(name: str, stats: tuple) -> None:
    """Datasets hand out [0, 1] images; the backbone applies its family's statistics."""
    torch.manual_seed(0)
    bb = create_backbone(name, return_tokens=False)
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(bb.normalize(x), _norm(x, stats), atol=1e-6, rtol=0)
    # The forward sees exactly the normalised pixels: hook the patch embedding's input.
    seen = {}
    conv = next(m for m in bb.model.modules() if isinstance(m, nn.Conv2d))
    h = conv.register_forward_hook(lambda m, i, o: seen.update(pixels=i[0]))
    bb(x)
    h.remove()
    torch.testing.assert_close(seen["pixels"], _norm(x, stats), atol=1e-6, rtol=0)


def test_clip_with_imagenet_input_stats_reproduces_the_reference_quirk() -> None:
    """SelectiveCL feeds CLIP the ImageNet-normalised tensor; ``input_stats='imagenet'`` does so."""
    torch.manual_seed(0)
    own = create_backbone("tiny_clip")
    quirk = create_backbone("tiny_clip", input_stats="imagenet")
    quirk.model.load_state_dict(own.model.state_dict())
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    # The image whose CLIP normalisation equals the ImageNet normalisation of x:
    same_pixels = _norm(x, _IMAGENET) * torch.tensor(_CLIP[1]).view(1, 3, 1, 1) + torch.tensor(_CLIP[0]).view(1, 3, 1, 1)
    torch.testing.assert_close(quirk(x).tokens[0], own(same_pixels).tokens[0], atol=1e-4, rtol=1e-4)
    assert (quirk(x).tokens[0] - own(x).tokens[0]).abs().max() > 1e-3  # the quirk changes the features
    assert "input_stats='imagenet'" in repr(quirk)
    with pytest.raises(AffordError, match="input_stats"):
        create_backbone("tiny_clip", input_stats="clip")


def test_dino_position_embeddings_follow_dinos_interpolation() -> None:
    """DINO interpolates with the scale factor (g + 0.1) / sqrt(N), not to a target size: at 448 px
    the keys moved by up to 6 with transformers' resize-to-size."""
    import math

    import torch.nn.functional as F

    from afford.backbones.vit import dino_position_embeddings

    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 8, generator=g)
    assert dino_position_embeddings(pos, 14, 14) is pos  # native grid: untouched
    for gh, gw in ((28, 28), (10, 10), (14, 20)):
        got = dino_position_embeddings(pos, gh, gw)
        grid = pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
        want = F.interpolate(grid, scale_factor=((gh + 0.1) / math.sqrt(196), (gw + 0.1) / math.sqrt(196)),
                             mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, gh * gw, 8)
        torch.testing.assert_close(got, torch.cat([pos[:, :1], want], 1))
        by_size = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        assert float((by_size.permute(0, 2, 3, 1).reshape(1, gh * gw, 8) - want).abs().max()) > 1e-2


def test_a_local_copy_of_a_hub_dino_gets_dinos_layernorm_eps(tmp_path) -> None:
    """The hub's facebook/dino-* configs store layer_norm_eps 1e-12 (DINO: 1e-6); the override was applied
    to hub names only, so the same weights downloaded into a directory ran with 1e-12."""
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16, layer_norm_eps=1e-12), add_pooling_layer=False).save_pretrained(tmp_path / "d")
    bb = create_backbone("dino_vits16", weights=tmp_path / "d")
    assert bb.model.config.layer_norm_eps == 1e-6 and bb.model.layernorm.eps == 1e-6
