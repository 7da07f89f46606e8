"""Resolve a device name for training and inference alike (``auto`` = CUDA when available)."""

from __future__ import annotations

import torch

from afford.errors import AffordError

DEVICE_HELP = "auto (CUDA when available), cpu, cuda, cuda:N"


def resolve_device(name: str, field: str = "--device") -> torch.device:
    """``torch.device`` for ``name``; errors name ``field`` (``train.device`` or ``--device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise AffordError(f"{field}: unknown device '{name}' (use {DEVICE_HELP})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AffordError(f"{field}: CUDA requested but not available on this machine")
    return dev
