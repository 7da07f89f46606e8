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
    if dev.type not in ("cpu", "cuda") and not _available(dev.type):  # mps, xpu, ...: only where torch has them
        raise AffordError(f"{field}: '{dev.type}' is not available in this torch build on this machine "
                          f"(use {DEVICE_HELP})")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise AffordError(f"{field}: '{name}': there is one CPU device (use cpu)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AffordError(f"{field}: CUDA requested but not available on this machine")
    return dev


def compute_context(device: torch.device) -> str:
    """Where and in which precision a frozen module computes: the device type and the autocast the
    caller runs it under (``train.bf16`` wraps the whole step), both of which change its output, so
    both belong in the key of anything cached from it."""
    kind = device.type
    try:
        on, dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except (AttributeError, TypeError):  # torch < 2.4: per-device functions
        cpu = kind == "cpu"
        on = torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()
        dtype = torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()
    return f"{kind}|{dtype if on else 'no-autocast'}"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a 4-core allocation of a 64-core node
    is 4), which ``os.cpu_count()`` does not see."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _available(kind: str) -> bool:
    """Whether torch has a working ``kind`` backend here (``torch.backends.mps``, ``torch.xpu``, ...)."""
    backend = getattr(torch.backends, kind, None) or getattr(torch, kind, None)
    try:
        return bool(backend is not None and backend.is_available())
    except (AttributeError, RuntimeError, AssertionError):
        return False
