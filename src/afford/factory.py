"""One literal registry: method name -> (class, default config dataclass)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from afford.errors import AffordError, did_you_mean

# name -> ("module:Class", "module:ConfigClass"); imported lazily so a broken optional method
# never stops the others from loading.
METHODS: dict[str, tuple[str, str]] = {
    "locate": ("afford.methods.locate:LOCATE", "afford.methods.locate:LOCATEConfig"),
    "wsma": ("afford.methods.wsma:WSMA", "afford.methods.wsma:WSMAConfig"),
}


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def list_methods() -> list[str]:
    return sorted(METHODS)


def method_entry(name: str) -> tuple[type, type]:
    """(Method class, config dataclass) for ``name``; AffordError for an unknown method."""
    key = name.lower()
    if key not in METHODS:
        raise AffordError(f"unknown method '{name}'{did_you_mean(key, METHODS)}; known: {', '.join(METHODS)}")
    cls_ref, cfg_ref = METHODS[key]
    return _load(cls_ref), _load(cfg_ref)


def create_method(name: str, model_cfg: Any, classnames: Sequence[str]):
    """Instantiate a method from its config dataclass and the class list (index order)."""
    cls, _ = method_entry(name)
    return cls(model_cfg, classnames)


def packaged_config(name: str) -> Path | None:
    """Resolve a config shipped with the package (``locate_seen`` or ``locate_seen.yaml``)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    candidate = resources.files("afford") / "configs" / f"{stem}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None
