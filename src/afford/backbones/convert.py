"""Read official weight files and rename their keys to the transformers modules we build on.

Supported sources (checkpoints/locate.md §3.1, wsma.md §3.2, selectivecl.md §3.2):

* DINO ``*_pretrain.pth`` (facebookresearch/dino names: ``cls_token``, ``pos_embed``,
  ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
  ``norm``) -> ``transformers.ViTModel``. The fused ``qkv`` rows are q | k | v, each head-major,
  which is exactly the layout of the separate q/k/v Linears, so a row split suffices.
* OpenAI CLIP ``.pt`` (TorchScript archive or plain state dict; fp16 values are up-cast) ->
  ``CLIPVisionModelWithProjection`` (``visual.*``) and ``CLIPTextModelWithProjection`` (root
  text keys). ``in_proj_weight`` is split into q/k/v; ``proj``/``text_projection`` are used as
  ``x @ W`` upstream, hence transposed into a Linear weight.

Loading is strict: any difference is reported as ONE :class:`AffordError` listing the missing,
unexpected and wrongly shaped keys, because a silently half-loaded backbone (LoopTrans'
``strict=False``, methods.md §9 #9) produces plausible-looking but wrong maps.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from afford.errors import UNREADABLE_PICKLE, AffordError, first_line, unreadable_checkpoint

StateDict = dict[str, Tensor]

#: Entries of an OpenAI archive that are metadata, not parameters of either tower.
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")


def load_checkpoint_file(path: str | os.PathLike[str]) -> StateDict:
    """Load a weight file into a flat ``{name: float tensor}`` dict on the CPU.

    Accepts safetensors, plain ``torch.save`` dicts (optionally wrapped under ``state_dict``,
    ``model`` or DINO's ``teacher``, with ``module.``/``backbone.`` prefixes as written by
    DDP/DINO training) and TorchScript archives such as OpenAI's ``ViT-B-16.pt``.
    """
    p = Path(path)
    if not p.is_file():
        raise AffordError(f"{p}: weight file not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _floatify(load_file(str(p)))
    try:
        if _is_torchscript(p):  # OpenAI's CLIP .pt files
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                obj = torch.jit.load(str(p), map_location="cpu").state_dict()
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except UNREADABLE_PICKLE as exc:
        if "Weights only load failed" in str(exc):
            raise unreadable_checkpoint(p, exc, "weight file") from None
        raise AffordError(f"{p}: not a readable torch/TorchScript/safetensors weight file ({first_line(exc)})") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise AffordError(f"{p}: expected a state dict, got {type(obj).__name__}")
    for wrapper in ("teacher", "state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = strip_prefix(sd, "module.")
    if any(k.startswith("backbone.") for k in sd):
        # DINO training checkpoints: keep the ViT, drop the projection head (``head.*``).
        sd = strip_prefix(sd, "backbone.")
    return _floatify(sd)


def _is_torchscript(p: Path) -> bool:
    """TorchScript archives are zip files carrying serialized ``code/`` next to the data."""
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _floatify(sd: Mapping[str, Tensor]) -> StateDict:
    """Up-cast half-precision entries (OpenAI ships fp16) so parity checks run in float32."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def strip_prefix(sd: Mapping[str, Tensor], prefix: str) -> StateDict:
    """Keep the entries under ``prefix`` (e.g. ``vit_model.`` in a LOCATE file), renamed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- format detection
def is_dino_official(sd: Mapping[str, Tensor]) -> bool:
    """True for facebookresearch/dino ViT names."""
    return "cls_token" in sd and any(k.startswith("blocks.") for k in sd)


def is_openai_clip(sd: Mapping[str, Tensor]) -> bool:
    """True for OpenAI CLIP names (either tower)."""
    return "visual.conv1.weight" in sd or "positional_embedding" in sd or "visual.class_embedding" in sd


# ----------------------------------------------------------------------------- fused q|k|v, x @ W
_QKV = ("q_proj", "k_proj", "v_proj")


def split_qkv(key: str, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows q | k | v of a fused projection; a malformed one is a user's file, not a bug."""
    if v.dim() == 0 or v.shape[0] == 0 or v.shape[0] % 3:
        raise AffordError(f"{key}: shape {list(v.shape)}, expected 3*W rows (q | k | v) of a fused attention projection")
    q, k, val = (part.clone() for part in v.chunk(3, dim=0))
    return q, k, val


def fuse_qkv(parts: Mapping[str, Tensor]) -> Tensor:
    """Inverse of :func:`split_qkv`: ``{q_proj, k_proj, v_proj}`` -> the fused rows."""
    return torch.cat([parts[name] for name in _QKV], dim=0)


def transposed(key: str, v: Tensor) -> Tensor:
    """An ``x @ W`` matrix (``proj``, ``text_projection``) as a Linear weight; 2-D only."""
    if v.dim() != 2:
        raise AffordError(f"{key}: shape {list(v.shape)}, expected a 2-D projection matrix")
    return v.t().contiguous()


# ----------------------------------------------------------------------------- DINO -> ViTModel
_DINO_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def dino_to_hf_vit(sd: Mapping[str, Tensor]) -> StateDict:
    """Rename an official DINO ViT state dict to ``transformers.ViTModel`` names.

    Unknown entries (e.g. a projection head) are passed through unchanged so the strict load
    reports them as unexpected instead of dropping them silently.
    """
    out: StateDict = {}
    block = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
    for k, v in sd.items():
        if k == "cls_token":
            out["embeddings.cls_token"] = v
        elif k == "pos_embed":
            out["embeddings.position_embeddings"] = v
        elif k.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            out["layernorm." + k.rsplit(".", 1)[1]] = v
        elif (m := block.match(k)) is not None:
            i, mod, kind = m.groups()
            base = f"layers.{i}."
            if mod == "attn.qkv":
                for name, part in zip(_QKV, split_qkv(k, v), strict=True):
                    out[f"{base}attention.{name}.{kind}"] = part
            elif mod in _DINO_BLOCK:
                out[f"{base}{_DINO_BLOCK[mod]}.{kind}"] = v
            else:
                out[k] = v
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- OpenAI CLIP
_OPENAI_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_OPENAI_VISUAL = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_OPENAI_TEXT = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}


def _openai_resblocks(sd: Mapping[str, Tensor], src: str, dst: str) -> tuple[StateDict, set[str]]:
    """Convert ``{src}N.*`` residual blocks to HF ``{dst}N.*``; return (converted, used keys)."""
    out: StateDict = {}
    used: set[str] = set()
    pat = re.compile(re.escape(src) + r"(\d+)\.(.+)$")
    for k, v in sd.items():
        m = pat.match(k)
        if m is None:
            continue
        i, rest = m.groups()
        base = f"{dst}{i}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            for name, part in zip(_QKV, split_qkv(k, v), strict=True):
                out[f"{base}self_attn.{name}.{kind}"] = part
            used.add(k)
        else:
            mod, kind = rest.rsplit(".", 1)
            if mod in _OPENAI_BLOCK:
                out[f"{base}{_OPENAI_BLOCK[mod]}.{kind}"] = v
                used.add(k)
    return out, used


def openai_visual_to_hf(sd: Mapping[str, Tensor]) -> StateDict:
    """OpenAI ``visual.*`` (ViT) entries -> ``CLIPVisionModelWithProjection`` names.

    Text-tower and metadata entries are ignored (a full CLIP file holds both towers); any other
    ``visual.*`` entry is passed through so the strict load reports it.
    """
    out, used = _openai_resblocks(sd, "visual.transformer.resblocks.", "vision_model.encoder.layers.")
    for k, v in sd.items():
        if k in used or not k.startswith("visual."):
            continue
        if k in _OPENAI_VISUAL:
            out[_OPENAI_VISUAL[k]] = v
        elif k == "visual.proj":
            out["visual_projection.weight"] = transposed(k, v)
        else:
            out[k] = v
    return out


def openai_text_to_hf(sd: Mapping[str, Tensor]) -> tuple[StateDict, Tensor | None]:
    """OpenAI root text entries -> ``CLIPTextModelWithProjection`` names, plus ``logit_scale``.

    ``visual.*`` and archive metadata are ignored; other unknown root entries are passed through
    so the strict load reports them (e.g. a whole WSMA checkpoint given by mistake).
    """
    out, used = _openai_resblocks(sd, "transformer.resblocks.", "text_model.encoder.layers.")
    logit_scale = sd.get("logit_scale")
    for k, v in sd.items():
        if k in used or k.startswith("visual.") or k in OPENAI_META_KEYS or k == "logit_scale":
            continue
        if k in _OPENAI_TEXT:
            out[_OPENAI_TEXT[k]] = v
        elif k == "text_projection":
            out["text_projection.weight"] = transposed(k, v)
        else:
            out[k] = v
    return out, logit_scale


# ----------------------------------------------------------------------------- back to official names
# The inverses give the shapes a built model expects in a release's own naming, so an import can
# check (and report) a file's tensors by the keys the user's file holds, before any q|k|v split.
def hf_vit_to_dino(sd: Mapping[str, Tensor]) -> StateDict:
    """Inverse of :func:`dino_to_hf_vit` (q/k/v re-fused); unknown entries pass through."""
    simple = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
              "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    blocks = {hf: dino for dino, hf in _DINO_BLOCK.items()}
    out: StateDict = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    block = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)$")
    for k, v in sd.items():
        m = block.match(k)
        if k in simple:
            out[simple[k]] = v
        elif k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif m is not None and m.group(2) in {f"attention.{n}" for n in _QKV}:
            qkv.setdefault(f"blocks.{m.group(1)}.attn.qkv.{m.group(3)}", {})[m.group(2)[len("attention."):]] = v
        elif m is not None and m.group(2) in blocks:
            out[f"blocks.{m.group(1)}.{blocks[m.group(2)]}.{m.group(3)}"] = v
        else:
            out[k] = v
    return out | {k: fuse_qkv(parts) for k, parts in qkv.items()}


def _hf_resblocks_to_openai(sd: Mapping[str, Tensor], src: str, dst: str) -> tuple[StateDict, set[str]]:
    """Inverse of :func:`_openai_resblocks`: HF ``{src}N.*`` -> ``{dst}N.*``; (converted, used keys)."""
    names = {hf: oa for oa, hf in _OPENAI_BLOCK.items()}
    out: StateDict = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    used: set[str] = set()
    pat = re.compile(re.escape(src) + r"(\d+)\.(.+)\.(weight|bias)$")
    for k, v in sd.items():
        m = pat.match(k)
        if m is None:
            continue
        i, mod, kind = m.groups()
        if mod in {f"self_attn.{n}" for n in _QKV}:
            qkv.setdefault(f"{dst}{i}.attn.in_proj_{kind}", {})[mod[len("self_attn."):]] = v
        elif mod in names:
            out[f"{dst}{i}.{names[mod]}.{kind}"] = v
        else:
            continue
        used.add(k)
    return out | {k: fuse_qkv(parts) for k, parts in qkv.items()}, used


def hf_visual_to_openai(sd: Mapping[str, Tensor]) -> StateDict:
    """Inverse of :func:`openai_visual_to_hf`; unknown entries pass through."""
    return _hf_tower_to_openai(sd, "vision_model.encoder.layers.", "visual.transformer.resblocks.", _OPENAI_VISUAL,
                               "visual_projection.weight", "visual.proj")


def hf_text_to_openai(sd: Mapping[str, Tensor]) -> StateDict:
    """Inverse of :func:`openai_text_to_hf` (without ``logit_scale``); unknown entries pass through."""
    return _hf_tower_to_openai(sd, "text_model.encoder.layers.", "transformer.resblocks.", _OPENAI_TEXT,
                               "text_projection.weight", "text_projection")


def _hf_tower_to_openai(sd: Mapping[str, Tensor], hf_layers: str, openai_layers: str, table: Mapping[str, str],
                        hf_proj: str, openai_proj: str) -> StateDict:
    """One CLIP tower back to OpenAI names: the blocks, the renamed singletons of ``table``
    (OpenAI -> HF) and the projection, which OpenAI stores transposed."""
    out, used = _hf_resblocks_to_openai(sd, hf_layers, openai_layers)
    simple = {hf: oa for oa, hf in table.items()} | {hf_proj: openai_proj}
    for k, v in sd.items():
        if k not in used:
            out[simple.get(k, k)] = v.t() if k == hf_proj else v
    return out


def convert_vision_state_dict(sd: Mapping[str, Tensor]) -> StateDict:
    """Detect DINO / OpenAI-visual naming and convert; transformers names pass unchanged."""
    if is_dino_official(sd):
        return dino_to_hf_vit(sd)
    if "visual.conv1.weight" in sd or "visual.class_embedding" in sd:
        return openai_visual_to_hf(sd)
    return dict(sd)


# ----------------------------------------------------------------------------- strict loading
def load_strict(module: nn.Module, sd: Mapping[str, Tensor], source: str) -> None:
    """Load ``sd`` into ``module`` or raise ONE AffordError naming every mismatch.

    ``source`` names the file in the message. Non-persistent buffers are not expected.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in set(own) & set(sd) if sd[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches {_short(shapes)}")
        raise AffordError(f"{source}: state dict does not match the model: " + "; ".join(parts))
    module.load_state_dict(dict(sd), strict=True)


def _short(items: list[str], limit: int = 20) -> str:
    """Render a key list on one line, eliding the tail of very long lists."""
    shown = ", ".join(items[:limit])
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"({len(items)}): [{shown}{more}]"
