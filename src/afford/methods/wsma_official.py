"""WSMA's released checkpoints (checkpoints/wsma.md): key table, renaming and the faithful mode.

Imported WSMA runs use ``faithful=True`` (the reference's batch-axis gate at batch 1 and its
prompt quirk), because that is the function the weights were trained and evaluated under. The
prompt token ids are not in the file: they are tokenised once at import (CLIP BPE vocabulary,
fetched from the hub when none is given) and stored in the run, so later loading needs none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from afford.backbones.convert import dino_to_hf_vit, hf_text_to_openai, openai_text_to_hf, strip_prefix
from afford.errors import AffordError
from afford.methods.base import Method
from afford.methods.official import (
    OfficialFormat,
    aff_proj_keys,
    as_float,
    bn_keys,
    clip_text_keys,
    conv_bn_keys,
    dino_from_afford,
    dino_keys,
)


def wsma_keys(vit_depth: int = 12, text_depth: int = 12) -> list[str]:
    """Every entry of a released WSMA file (342 at full depth), in file order."""
    ham = ["Hamburger.lower_bread.0.weight", "Hamburger.lower_bread.0.bias", "Hamburger.upper_bread.0.weight",
           *bn_keys("Hamburger.upper_bread.1.")]
    pool = ["attnpool.positional_embedding"] + [f"attnpool.{p}_proj.{k}" for p in "kqvc" for k in ("weight", "bias")]
    prompts = ["prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix"]
    return [*clip_text_keys(text_depth), *ham, *dino_keys(vit_depth), *aff_proj_keys(), *conv_bn_keys("aff_ego_proj.", 1),
            *conv_bn_keys("aff_exo_proj.", 1), *pool, *prompts, "fc.weight", "fc.bias"]


def wsma_to_afford(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DINO -> ``backbone.model.``, the root CLIP text tower -> ``text_encoder.model.`` (+ logit scale)."""
    out = {f"backbone.model.{k}": v for k, v in dino_to_hf_vit(strip_prefix(sd, "vit_model.")).items()}
    text_names = set(clip_text_keys(0)) | {k for k in sd if k.startswith("transformer.resblocks.")}
    text, logit_scale = openai_text_to_hf({k: v for k, v in sd.items() if k in text_names})
    out.update({f"text_encoder.model.{k}": v for k, v in text.items()})
    if logit_scale is not None:
        out["text_encoder.logit_scale"] = logit_scale.reshape(())
    out.update({k: v for k, v in sd.items() if not k.startswith("vit_model.") and k not in text_names})
    return as_float(out)


def wsma_from_afford(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`wsma_to_afford` (without ``prompt_ids``, afford's own state)."""
    text = ("text_encoder.model.", "text_encoder.logit_scale", "prompt_ids")
    out = dino_from_afford({k: v for k, v in sd.items() if not k.startswith(text)})
    out.update(hf_text_to_openai(strip_prefix(sd, "text_encoder.model.")))
    if "text_encoder.logit_scale" in sd:
        out["logit_scale"] = sd["text_encoder.logit_scale"]
    return out


def _depths(model: Method) -> tuple[int, int]:
    return model.backbone.num_layers, len(model.text_encoder.model.text_model.encoder.layers)


def _overrides(overrides: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    return {"faithful": True, "tokenizer": tokenizer, **overrides}


def _finish(model: Method, converted: dict[str, Tensor], source: str) -> None:
    if model._ids_pending:  # construction stays offline; the import is where the ids are needed
        try:
            model.tokenize_prompts()
        except AffordError as exc:
            raise AffordError(f"{source}: cannot tokenise the WSMA prompts: {exc}") from None
    converted["prompt_ids"] = model.prompt_ids.clone()  # afford state; not in the official file


WSMA_OFFICIAL = OfficialFormat(
    method="wsma",
    markers=("prompt_learner.ctx", "attnpool.c_proj.weight", "Hamburger.lower_bread.0.weight", "text_projection"),
    classifier="fc.weight", keys=wsma_keys, depths=_depths, to_afford=wsma_to_afford, from_afford=wsma_from_afford,
    model_overrides=_overrides,
    finish=_finish,
    # The prompt ids are in the weights, so the run must not depend on the vocabulary's path.
    saved_config=lambda cfg: dataclasses.replace(cfg, tokenizer=None),
    run_info={"faithful": True},
)
