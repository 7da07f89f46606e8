"""afford: weakly supervised affordance grounding and CLIP-based HOI detection.

Public entry points (imported lazily so ``import afford`` stays cheap)::

    afford.create_backbone(name, weights)      # DINO / DINOv2 / CLIP features on transformers
    afford.create_method(name, cfg, classes)   # LOCATE, WSMA
    afford.list_methods()
    afford.Predictor(run_dir)                  # set_image / predict -> heatmaps
    afford.train(cfg, out) / afford.load_config(path, overrides)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "create_backbone": "afford.backbones",
    "list_backbones": "afford.backbones",
    "create_method": "afford.factory",
    "list_methods": "afford.factory",
    "Predictor": "afford.predictor",
    "train": "afford.engine.trainer",
    "load_config": "afford.config",
    "build_config": "afford.config",
    "load_run": "afford.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'afford' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
