"""SelectiveCL's released checkpoints (checkpoints/selectivecl.md): key table and renaming.

A ``best_model_*.pth`` is the whole model's state dict: 492 entries with the frozen DINO
ViT-S/16 (``vit_model.*``), both towers of OpenAI CLIP ViT-B/16 in open_clip naming (``net.*``)
and the heads. Every entry is mapped strictly: the towers onto the transformers models afford
builds, the heads by name. ``K_contrast_projection`` / ``pixel_contrast_projection`` /
``aff_exo_proj`` are training-only but imported (the run can continue training). The prompt
token ids are not in the file: they are tokenised once at import and stored in the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import Tensor

from afford.backbones.convert import (
    dino_to_hf_vit,
    hf_text_to_openai,
    hf_visual_to_openai,
    openai_text_to_hf,
    openai_visual_to_hf,
    strip_prefix,
)
from afford.methods.base import Method
from afford.methods.official import (
    OfficialFormat,
    aff_proj_keys,
    as_float,
    conv_bn_keys,
    dino_from_afford,
    dino_keys,
)

_BLOCK = ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
          "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
          "mlp.c_proj.weight", "mlp.c_proj.bias")


def _resblocks(prefix: str, depth: int) -> list[str]:
    return [f"{prefix}{i}.{k}" for i in range(depth) for k in _BLOCK]


def selectivecl_keys(vit_depth: int = 12, visual_depth: int = 12, text_depth: int = 12) -> list[str]:
    """Every entry of a released SelectiveCL file (492 at full size), in file order (§1)."""
    visual = ["net.visual.class_embedding", "net.visual.positional_embedding", "net.visual.proj",
              "net.visual.conv1.weight", "net.visual.ln_pre.weight", "net.visual.ln_pre.bias",
              *_resblocks("net.visual.transformer.resblocks.", visual_depth),
              "net.visual.ln_post.weight", "net.visual.ln_post.bias"]
    text = [*_resblocks("net.transformer.resblocks.", text_depth), "net.token_embedding.weight",
            "net.ln_final.weight", "net.ln_final.bias"]
    heads = [*aff_proj_keys(), "aff_classifier.weight", "aff_classifier.bias", "K_contrast_projection.weight",
             "K_contrast_projection.bias", "pixel_contrast_projection.weight", "pixel_contrast_projection.bias",
             *conv_bn_keys("aff_ego_proj.", 2), *conv_bn_keys("aff_exo_proj.", 2)]
    return [*dino_keys(vit_depth), "net.positional_embedding", "net.text_projection", "net.logit_scale",
            *visual, *text, *heads]


def selectivecl_to_afford(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``vit_model.`` -> ``backbone.model.``, ``net.visual.`` -> ``clip.model.``, the other ``net.``
    entries -> ``text_encoder.model.`` (+ its logit scale); heads keep their names."""
    out = {f"backbone.model.{k}": v for k, v in dino_to_hf_vit(strip_prefix(sd, "vit_model.")).items()}
    net = strip_prefix(sd, "net.")
    out.update({f"clip.model.{k}": v for k, v in openai_visual_to_hf(net).items()})
    text, logit_scale = openai_text_to_hf(net)
    out.update({f"text_encoder.model.{k}": v for k, v in text.items()})
    if logit_scale is not None:
        out["text_encoder.logit_scale"] = logit_scale.reshape(())
    out.update({k: v for k, v in sd.items() if not k.startswith(("vit_model.", "net."))})
    return as_float(out)


def selectivecl_from_afford(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`selectivecl_to_afford` (without ``prompt_ids``, afford's own state)."""
    towers = ("clip.model.", "text_encoder.model.", "text_encoder.logit_scale", "prompt_ids")
    out = dino_from_afford({k: v for k, v in sd.items() if not k.startswith(towers)})
    out.update({f"net.{k}": v for k, v in hf_visual_to_openai(strip_prefix(sd, "clip.model.")).items()})
    out.update({f"net.{k}": v for k, v in hf_text_to_openai(strip_prefix(sd, "text_encoder.model.")).items()})
    if "text_encoder.logit_scale" in sd:
        out["net.logit_scale"] = sd["text_encoder.logit_scale"]
    return out


def _depths(model: Method) -> tuple[int, int, int]:
    return (model.backbone.num_layers, model.clip.num_layers,
            len(model.text_encoder.model.text_model.encoder.layers))


def _finish(model: Method, converted: dict[str, Tensor], source: str) -> None:
    """Tokenise the prompts (the vocabulary is resolved here, once) and store the ids in the run."""
    if model._ids_pending:
        model.tokenize_prompts()  # raises one line naming the ways to provide the vocabulary
    converted["prompt_ids"] = model.prompt_ids.clone()  # afford state; not in the official file


SELECTIVECL_OFFICIAL = OfficialFormat(
    method="selectivecl",
    markers=("K_contrast_projection.weight", "pixel_contrast_projection.weight", "aff_classifier.weight"),
    classifier="aff_classifier.weight", keys=selectivecl_keys, depths=_depths, to_afford=selectivecl_to_afford,
    from_afford=selectivecl_from_afford,
    model_overrides=lambda overrides, tokenizer: {"tokenizer": tokenizer, **overrides},
    finish=_finish, full_depths=(12, 12, 12),
    # The prompt ids are in the weights, so the run must not depend on the vocabulary's path.
    saved_config=lambda cfg: dataclasses.replace(cfg, tokenizer=None),
    run_info={"outputs": "calibrated (b, default: what the paper reports), raw (a), calibrated_mean (c)",
              "clip_input": "ImageNet-normalised, as the reference"},
)
