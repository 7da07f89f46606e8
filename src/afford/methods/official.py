"""How a method's released checkpoint maps onto afford's modules: the per-method import table.

Each method with an official release declares one :class:`OfficialFormat` beside its code
(``methods/<m>_official.py``) and names it in the registry (:data:`afford.factory.METHODS`);
:func:`afford.importers.import_official` is generic and never branches on a method's name. The
shared key tables of the backbones the releases use (DINO ViT, OpenAI CLIP text) live here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from afford.backbones.convert import hf_vit_to_dino
from afford.methods.base import Method


@dataclass(frozen=True)
class OfficialFormat:
    """One released checkpoint layout.

    Attributes:
        method: registry name.
        markers: keys only this method's files hold (to recognise a file of another method).
        classifier: the key whose first dimension is the class count.
        keys: ``keys(*depths)`` -> every official key in file order; ``depths`` as ``full_depths``.
        depths: the depths of a built model (same order), to check a file of a tiny test model.
        to_afford: official state dict -> afford's names (float32).
        from_afford: the inverse renaming (no dtype change), applied to a built model's state dict
            to get the shapes it expects in the release's own naming: a file is checked against
            those before ``to_afford`` splits or transposes anything, and errors name its keys.
        model_overrides: ``(overrides, tokenizer)`` -> the model-config fields an import sets
            (e.g. WSMA's ``faithful=True``); user overrides win.
        finish: ``(model, converted, source)`` adds afford state that is not in the file
            (WSMA's prompt ids), raising AffordError when it cannot; may return extra
            ``run.json`` fields (what it found).
        extra_classes: classifier rows beyond the affordance classes (LoopTrans's 15 noise classes).
        optional_prefix: a key group the release may omit (LoopTrans's training-only ``cluster.*``);
            when any of its keys is present, all must be.
        full_depths: the depths of the released architecture (DINO first, then the method's other
            towers), for error listings.
        saved_config: model config -> what ``run.json`` records (no machine-local paths).
        run_info: extra ``run.json`` fields.
    """

    method: str
    markers: tuple[str, ...]
    classifier: str
    keys: Callable[..., list[str]]
    depths: Callable[[Method], tuple[int, ...]]
    to_afford: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]
    from_afford: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]
    model_overrides: Callable[[dict[str, Any], Any], dict[str, Any]] = lambda overrides, tokenizer: overrides
    finish: Callable[[Method, dict[str, Tensor], str], dict[str, Any] | None] = lambda model, converted, source: None
    extra_classes: int = 0
    optional_prefix: str | None = None
    full_depths: tuple[int, ...] = (12, 12)
    saved_config: Callable[[Any], Any] = lambda cfg: cfg
    run_info: dict[str, Any] = field(default_factory=dict)


#: Global seed an import builds its model under: state a release lacks (LoopTrans's training-only
#: cluster module) is then the same in every import of the same file.
IMPORT_SEED = 0


# ----------------------------------------------------------------------------- shared key tables
def dino_keys(depth: int = 12, prefix: str = "vit_model.") -> list[str]:
    """Official DINO ViT names (locate.md §7), in file order."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        keys += [f"blocks.{i}.{m}.{k}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                 for k in ("weight", "bias")]
    keys += ["norm.weight", "norm.bias"]
    return [prefix + k for k in keys]


def clip_text_keys(depth: int = 12) -> list[str]:
    """OpenAI CLIP text-tower names at the root, with ``logit_scale`` (wsma.md §6)."""
    keys = ["logit_scale", "positional_embedding", "text_projection"]
    for i in range(depth):
        b = f"transformer.resblocks.{i}."
        keys += [b + "attn.in_proj_weight", b + "attn.in_proj_bias", b + "attn.out_proj.weight", b + "attn.out_proj.bias"]
        keys += [b + f"{m}.{k}" for m in ("ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2") for k in ("weight", "bias")]
    return keys + ["token_embedding.weight", "ln_final.weight", "ln_final.bias"]


def bn_keys(prefix: str) -> list[str]:
    return [prefix + k for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def conv_bn_keys(prefix: str, depth: int) -> list[str]:
    """``conv_bn_relu_stack`` entries: conv at 3j, BatchNorm at 3j+1."""
    keys: list[str] = []
    for j in range(depth):
        keys += [f"{prefix}{3 * j}.weight", f"{prefix}{3 * j}.bias", *bn_keys(f"{prefix}{3 * j + 1}.")]
    return keys


def aff_proj_keys() -> list[str]:
    """The ``aff_proj`` Mlp both LOCATE and WSMA release."""
    return [f"aff_proj.{m}.{k}" for m in ("norm", "fc1", "fc2") for k in ("weight", "bias")]


def dino_from_afford(sd: Mapping[str, Tensor], prefix: str = "vit_model.") -> dict[str, Tensor]:
    """``backbone.model.*`` back to the release's DINO names under ``prefix``; the rest unchanged."""
    vit = {k[len("backbone.model."):]: v for k, v in sd.items() if k.startswith("backbone.model.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.model.")}
    return {f"{prefix}{k}": v for k, v in hf_vit_to_dino(vit).items()} | rest


def as_float(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The releases were saved from GPU models, some in half precision: afford stores float32."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
