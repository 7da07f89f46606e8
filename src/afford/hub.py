"""The Hugging Face hub without minutes of silent retries: the local cache first, then the hub
only once a quick connection to it opens (huggingface_hub retries every file for minutes when
there is no network before it fails)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from afford.errors import AffordError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds to wait for a TCP connection to the hub before declaring it unreachable.
HUB_PROBE_TIMEOUT = 3.0


def from_hub(load: Callable[..., T], name: str, **kwargs: Any) -> T:
    """``load(name, **kwargs)`` (a ``from_pretrained``) from the local cache, else from the hub
    when it answers; else one AffordError saying the model is neither cached nor reachable.
    Errors other than "not cached" (a wrong model type, corrupt files) propagate as they are."""
    try:
        return load(name, local_files_only=True, **kwargs)
    except OSError as exc:  # transformers' "not found in the cache" (EnvironmentError)
        cached = first_line(exc)
    if offline():
        raise AffordError(f"{name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set ({cached})")
    if (why := hub_unreachable()) is not None:
        raise AffordError(f"{name!r} is not in the Hugging Face cache and {why}: download it where there is a "
                          f"network (huggingface-cli download {name}) or pass a local directory")
    log.info("fetching %s from the Hugging Face hub", name)
    return load(name, **kwargs)


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Why the hub cannot be reached within ``timeout`` seconds, or None when a TCP connection opens."""
    endpoint, host, port = _hub_address()
    result: list[str | None] = []
    probe = threading.Thread(target=lambda: result.append(_connect(host, port, timeout)), daemon=True)
    probe.start()
    probe.join(timeout)  # also bounds a name lookup that hangs
    if result and result[0] is None:
        return None
    why = result[0] if result else f"no answer within {timeout:g} s"
    return f"{endpoint} is unreachable ({host}:{port}: {why})"


def _hub_address() -> tuple[str, str, int]:
    """(endpoint, host, port) to probe: ``$HF_ENDPOINT`` as huggingface_hub reads it, or the proxy
    its requests would go through."""
    endpoint = (os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co").rstrip("/")
    url = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return endpoint, url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def _connect(host: str, port: int, timeout: float) -> str | None:
    """Open and close one TCP connection; the error's first line, or None."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return first_line(exc)
    return None


def offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at import)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
