"""LOCATE's released checkpoints (checkpoints/locate.md): key table and renaming."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from afford.backbones.convert import dino_to_hf_vit, strip_prefix
from afford.methods.base import Method
from afford.methods.official import (
    OfficialFormat,
    aff_proj_keys,
    as_float,
    conv_bn_keys,
    dino_from_afford,
    dino_keys,
)


def locate_keys(vit_depth: int = 12, text_depth: int = 0) -> list[str]:
    """Every entry of a released LOCATE file (186 at full depth), in file order."""
    return [*dino_keys(vit_depth), *aff_proj_keys(), *conv_bn_keys("aff_ego_proj.", 2),
            *conv_bn_keys("aff_exo_proj.", 2), "aff_fc.weight", "aff_fc.bias"]


def locate_to_afford(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DINO under ``vit_model.`` -> ``backbone.model.``; the heads already share afford's names."""
    out = {f"backbone.model.{k}": v for k, v in dino_to_hf_vit(strip_prefix(sd, "vit_model.")).items()}
    out.update({k: v for k, v in sd.items() if not k.startswith("vit_model.")})
    return as_float(out)


def _depths(model: Method) -> tuple[int, int]:
    return model.backbone.num_layers, 0


LOCATE_OFFICIAL = OfficialFormat(
    method="locate", markers=("aff_ego_proj.3.weight", "aff_exo_proj.3.weight"), classifier="aff_fc.weight", keys=locate_keys, depths=_depths,
    to_afford=locate_to_afford, from_afford=dino_from_afford,
)
