"""LoopTrans's released checkpoints (checkpoints/looptrans.md): key table and renaming.

A ``best_model_*.pth`` written by the reference ``train.py`` holds 299 entries: the DINO
backbone, the heads, and 113 ``cluster.*`` entries of the frozen cluster module, which are
training-only (``test.py`` drops them through ``strict=False``). afford imports strictly: the
186 inference keys are required, the ``cluster.*`` group is imported when present and must
then be complete; a file without it gets a randomly initialised (recorded) cluster module,
the same in every import (the model is built under ``IMPORT_SEED``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from afford.backbones.convert import dino_to_hf_vit, strip_prefix
from afford.methods.base import Method
from afford.methods.official import (
    IMPORT_SEED,
    OfficialFormat,
    aff_proj_keys,
    as_float,
    conv_bn_keys,
    dino_from_afford,
    dino_keys,
)

NOISE_CLASSES = 15  # aff_fc has C + 15 outputs (looptrans.md §2)


def cluster_keys(layers: int = 8, prefix: str = "cluster.") -> list[str]:
    """The cluster module's entries (looptrans.md §3.2), in file order."""
    mha = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    keys = ["tokens.weight"]
    keys += [f"cross_attn_layers.{i}.{k}" for i in range(layers) for k in mha]
    keys += [f"self_attn_layers.{i}.{k}" for i in range(layers) for k in mha]
    keys += [f"norm_layers.{i}.{k}" for i in range(layers) for k in ("weight", "bias")]
    keys += [f"ffn_layers.{i}.net.{j}.{k}" for i in range(layers) for j in (0, 3) for k in ("weight", "bias")]
    return [prefix + k for k in keys]


def looptrans_keys(vit_depth: int = 12, cluster_layers: int = 8) -> list[str]:
    """Every entry of a released LoopTrans file (299 at full size), in file order."""
    return [*dino_keys(vit_depth), *cluster_keys(cluster_layers), *aff_proj_keys(), *conv_bn_keys("pixel_dec.", 2),
            *conv_bn_keys("scam.", 2), "aff_fc.weight", "aff_fc.bias"]


def looptrans_to_afford(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DINO under ``vit_model.`` -> ``backbone.model.``; heads and cluster keep their names."""
    out = {f"backbone.model.{k}": v for k, v in dino_to_hf_vit(strip_prefix(sd, "vit_model.")).items()}
    out.update({k: v for k, v in sd.items() if not k.startswith("vit_model.")})
    return as_float(out)


def _depths(model: Method) -> tuple[int, int]:
    return model.backbone.num_layers, len(model.cluster.cross_attn_layers)


def _finish(model: Method, converted: dict[str, Tensor], source: str) -> dict[str, Any]:
    """Record where the cluster module came from; keep the model's random one if the file has none."""
    if any(k.startswith("cluster.") for k in converted):
        return {"cluster": {"kind": "file", "path": source, "how": "the cluster.* entries of the imported checkpoint "
                            "(training-only; inference never uses them)"}}
    converted.update({f"cluster.{k}": v for k, v in model.cluster.state_dict().items()})
    return {"cluster": {"kind": "random", "seed": IMPORT_SEED,
                        "how": "not in the imported file (training-only); randomly initialised under a fixed seed"}}


LOOPTRANS_OFFICIAL = OfficialFormat(
    method="looptrans", markers=("pixel_dec.0.weight", "scam.0.weight"), classifier="aff_fc.weight",
    keys=looptrans_keys, depths=_depths, to_afford=looptrans_to_afford, from_afford=dino_from_afford,
    finish=_finish,
    extra_classes=NOISE_CLASSES, optional_prefix="cluster.", full_depths=(12, 8),
    run_info={"cluster_keys": "training-only (looptrans.md §3.2); imported when present, never used at inference"},
)
