"""Name -> backbone registry: ``create_backbone``, ``list_backbones``, ``create_text_encoder``.

One literal dict per kind, timm/segment-anything style. ``weights=None`` always builds a
*randomly initialised* model of the right architecture and never touches the network; the hub
name in each entry is what to pass as ``weights`` for the released checkpoint. ``weights`` may
also be a local ``save_pretrained`` directory or an official file (DINO ``*_pretrain.pth``,
OpenAI CLIP ``.pt``), converted on load (see :mod:`afford.backbones.convert`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTModel,
)

from afford.backbones.clip_text import CLIPTextEncoder, hub_fallback, resolve_tokenizer
from afford.backbones.clip_vision import CLIPViT
from afford.backbones.convert import (
    convert_vision_state_dict,
    is_openai_clip,
    load_checkpoint_file,
    load_strict,
    openai_text_to_hf,
)
from afford.backbones.dinov2 import DinoV2ViT
from afford.backbones.vit import DinoViT, VisionBackbone
from afford.errors import AffordError, did_you_mean, first_line
from afford.hub import from_hub


@dataclass(frozen=True)
class Family:
    """How to build one architecture family on transformers."""

    config_cls: type
    model_cls: type
    wrapper: type[VisionBackbone]
    model_kwargs: dict[str, Any] = field(default_factory=dict)


_DINO = Family(ViTConfig, ViTModel, DinoViT, {"add_pooling_layer": False})
_DINOV2 = Family(Dinov2Config, Dinov2Model, DinoV2ViT)
_CLIP = Family(CLIPVisionConfig, CLIPVisionModelWithProjection, CLIPViT)


def _dino(hidden: int, heads: int, patch: int, layers: int = 12, image: int = 224) -> dict[str, Any]:
    # Official DINO ViT: pre-norm, LayerNorm eps 1e-6, exact GELU, qkv bias (locate.md §3.1).
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=4 * hidden, patch_size=patch, image_size=image, layer_norm_eps=1e-6,
                hidden_act="gelu", qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _dinov2(hidden: int, heads: int, patch: int = 14, layers: int = 12, image: int = 518) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=4,
                patch_size=patch, image_size=image, layer_norm_eps=1e-6, layerscale_value=1.0)


def _clip(hidden: int, heads: int, patch: int, proj: int, layers: int = 12, image: int = 224) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=4 * hidden, patch_size=patch, image_size=image, projection_dim=proj,
                hidden_act="quick_gelu", layer_norm_eps=1e-5)


#: name -> (family, config kwargs, hub name to pass as ``weights`` for the released weights)
BACKBONES: dict[str, tuple[Family, dict[str, Any], str | None]] = {
    "dino_vits16": (_DINO, _dino(384, 6, 16), "facebook/dino-vits16"),
    "dino_vits8": (_DINO, _dino(384, 6, 8), "facebook/dino-vits8"),
    "dino_vitb16": (_DINO, _dino(768, 12, 16), "facebook/dino-vitb16"),
    "dinov2_vits14": (_DINOV2, _dinov2(384, 6), "facebook/dinov2-small"),
    "dinov2_vitb14": (_DINOV2, _dinov2(768, 12), "facebook/dinov2-base"),
    "clip_vitb16": (_CLIP, _clip(768, 12, 16, 512), "openai/clip-vit-base-patch16"),
    # Tiny models for tests and the demo (112 px, patch 8 -> 14x14 grid like the real 224/16).
    "tiny_vit": (_DINO, _dino(96, 4, 8, layers=4, image=112), None),
    "tiny_dinov2": (_DINOV2, _dinov2(96, 4, patch=8, layers=4, image=112), None),
    "tiny_clip": (_CLIP, _clip(96, 4, 8, 64, layers=4, image=112), None),
}

_WRAPPER_OPTIONS = {"dtype", "return_tokens", "clearclip", "input_stats"}


def list_backbones() -> list[str]:
    """Registered vision backbone names."""
    return sorted(BACKBONES)


def create_backbone(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    layers: Sequence[int] = (-1,),
    trainable: bool = False,
    **overrides: Any,
) -> VisionBackbone:
    """Build a vision backbone returning :class:`~afford.backbones.features.Features`.

    Args:
        name: a registry name (:func:`list_backbones`).
        weights: None (random init, offline), a hub name (e.g. ``"facebook/dino-vits16"``), a
            ``save_pretrained`` directory, or an official file (DINO ``*_pretrain.pth``, OpenAI
            ``ViT-B-16.pt``, or a safetensors/torch file with transformers names).
        layers: 0-based block indices (negative from the end); ``(-2, -1)`` = WSMA's blocks 11+12.
        trainable: train jointly instead of running frozen under ``no_grad``.
        **overrides: ``dtype`` (``torch.bfloat16``), ``return_tokens``, ``clearclip`` (CLIP only),
            ``input_stats`` (``"imagenet"`` feeds ImageNet-normalised pixels to any family),
            or any config field of the architecture (e.g. ``num_hidden_layers=2``).
    """
    if name not in BACKBONES:
        raise AffordError(f"backbone: unknown name {name!r}{did_you_mean(name, BACKBONES)}; known: {list_backbones()}")
    family, base, _hub = BACKBONES[name]
    opts = {k: overrides.pop(k) for k in list(overrides) if k in _WRAPPER_OPTIONS}
    if "clearclip" in opts and family is not _CLIP:
        raise AffordError(f"clearclip: only CLIP backbones have a ClearCLIP mode, not {name!r}")
    cfg_kwargs = {**base, **_check_config_fields(family.config_cls, overrides, name)}
    model = _build(family, cfg_kwargs, weights, name, overrides)
    return family.wrapper(model, name, layers=layers, trainable=trainable, **opts)


def _check_config_fields(config_cls: type, overrides: dict[str, Any], name: str) -> dict[str, Any]:
    """Reject typos: transformers configs would silently store unknown keyword arguments."""
    known = set(config_cls().to_dict())
    for k in overrides:
        if k not in known:
            raise AffordError(f"{name}: unknown option {k!r}{did_you_mean(k, known | _WRAPPER_OPTIONS)}")
    return overrides


def _build(family: Family, cfg_kwargs: dict[str, Any], weights: Any, name: str, user_cfg: dict[str, Any]) -> nn.Module:
    kind, where = resolve_weights(weights)
    if kind in ("dir", "hub"):
        # Released DINO uses LayerNorm eps 1e-6; the hub's configs (and so a downloaded copy in a local
        # directory) store 1e-12. A user's own option still wins.
        extra = {"layer_norm_eps": 1e-6} if family is _DINO else {}
        return _from_pretrained(family.model_cls, where, {**extra, **user_cfg, **family.model_kwargs})
    model = family.model_cls(family.config_cls(**cfg_kwargs), **family.model_kwargs)
    if kind == "file":
        sd = convert_vision_state_dict(load_checkpoint_file(where))
        load_strict(model, sd, f"{where} (as {name})")
    return model


def resolve_weights(weights: str | os.PathLike[str] | None) -> tuple[str, str]:
    """Classify ``weights`` as ("random"|"dir"|"file"|"hub", location) without network access."""
    if weights is None:
        return "random", ""
    p = Path(weights).expanduser()
    if p.is_dir():
        return "dir", str(p)
    if p.is_file():
        return "file", str(p)
    s = str(weights)
    looks_like_file = s.endswith((".pt", ".pth", ".bin", ".safetensors", ".tar", ".gz")) or s.startswith(
        ("/", ".", "~")
    )
    if looks_like_file or s.count("/") != 1:
        raise AffordError(f"weights: {s} is neither an existing file/directory nor a hub name 'org/model'")
    return "hub", s


def _from_pretrained(model_cls: Any, where: str, kwargs: dict[str, Any]) -> nn.Module:
    """A hub-layout directory, or a hub name (cache first, the hub only when it answers)."""
    try:
        if Path(where).expanduser().is_dir():
            return model_cls.from_pretrained(where, **kwargs)
        return from_hub(model_cls.from_pretrained, where, **kwargs)
    except AffordError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # offline hub, wrong model type, corrupt files  # not MemoryError or bugs
        msg = first_line(exc)
        raise AffordError(f"weights: could not load {where!r} as {model_cls.__name__}: {msg}") from None


# ----------------------------------------------------------------------------- text encoders
def stored_logit_scale(model: nn.Module, where: str, kind: str) -> torch.Tensor | None:
    """CLIP's learned temperature for a text tower loaded from a directory or hub name: the text
    model drops it, so it comes from the config afford wrote (``afford_logit_scale``) or from the
    full CLIP checkpoint's root ``logit_scale`` (OpenAI's: ln 100); None when neither has it."""
    if (value := getattr(model.config, "afford_logit_scale", None)) is not None:
        return torch.tensor(float(value))
    if kind == "dir":
        file: str | Path | None = Path(where).expanduser() / "model.safetensors"
    else:
        from huggingface_hub import try_to_load_from_cache

        file = try_to_load_from_cache(where, "model.safetensors")
    if not isinstance(file, (str, Path)) or not Path(file).is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor("logit_scale").float().reshape(()) if "logit_scale" in f.keys() else None


def _text(proj: int, hidden: int = 512, heads: int = 8, layers: int = 12, vocab: int = 49408) -> dict[str, Any]:
    # OpenAI CLIP text tower: causal, QuickGELU, LayerNorm eps 1e-5, 77 positions (wsma.md §3.2).
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=heads,
                num_hidden_layers=layers, max_position_embeddings=77, projection_dim=proj,
                hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                pad_token_id=0)


#: name -> (config kwargs, hub name or None). ``clip_rn50`` has no transformers release: load
#: OpenAI ``RN50.pt`` (only its text tower is used, WSMA).
TEXT_ENCODERS: dict[str, tuple[dict[str, Any], str | None]] = {
    "clip_vitb16": (_text(512), "openai/clip-vit-base-patch16"),
    "clip_rn50": (_text(1024), None),
    "tiny_clip": (_text(64, hidden=64, heads=4, layers=2, vocab=514), None),
}


def list_text_encoders() -> list[str]:
    """Registered text encoder names."""
    return sorted(TEXT_ENCODERS)


def create_text_encoder(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    trainable: bool = False,
    tokenizer: str | os.PathLike[str] | Callable[..., torch.Tensor] | None = None,
    **overrides: Any,
) -> CLIPTextEncoder:
    """Build a CLIP text tower (``tokenize``, ``encode_text``, ``encode_prompt_embeddings``).

    Args:
        name: ``clip_vitb16`` (SelectiveCL), ``clip_rn50`` (WSMA) or ``tiny_clip`` (tests).
        weights: None (random), hub name, ``save_pretrained`` directory, or an OpenAI CLIP
            ``.pt`` archive / plain state dict (text keys at the root; ``visual.*`` ignored).
        trainable: WSMA fine-tunes the text tower; SelectiveCL keeps it frozen. Frozen towers
            still pass gradients to their *inputs* (CoOp context vectors).
        tokenizer: a ``bpe_simple_vocab_16e6.txt.gz`` path, a directory/hub name with
            ``vocab.json`` + ``merges.txt``, or a callable; default: ``$AFFORD_CLIP_BPE``, then the
            model's own tokenizer files (:func:`~afford.backbones.clip_text.resolve_tokenizer`),
            then, on first use, the hub's ``openai/clip-vit-base-patch16`` tokenizer.
        **overrides: config fields (e.g. ``num_hidden_layers=2``).
    """
    if name not in TEXT_ENCODERS:
        raise AffordError(
            f"text encoder: unknown name {name!r}{did_you_mean(name, TEXT_ENCODERS)}; known: {list_text_encoders()}"
        )
    base, _hub = TEXT_ENCODERS[name]
    cfg = {**base, **_check_config_fields(CLIPTextConfig, overrides, name)}
    kind, where = resolve_weights(weights)
    logit_scale = None
    if kind in ("dir", "hub"):
        model = _from_pretrained(CLIPTextModelWithProjection, where, dict(overrides))
        logit_scale = stored_logit_scale(model, where, kind)
    else:
        model = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
        if kind == "file":
            sd = load_checkpoint_file(where)
            if is_openai_clip(sd):
                sd, logit_scale = openai_text_to_hf(sd)
            load_strict(model, sd, f"{where} (as {name})")  # method files: see load_official_state_dict
    tok = resolve_tokenizer(name, tokenizer, kind, where, int(model.config.max_position_embeddings))
    return CLIPTextEncoder(model, tok, name, trainable=trainable, logit_scale=logit_scale,
                           fallback_tokenizer=hub_fallback(int(model.config.vocab_size)))
