"""Hub names load from the local cache, else from the hub only when it answers (afford.hub)."""

from __future__ import annotations

import time

import pytest

from afford.backbones import create_backbone
from afford.errors import AffordError
from afford.hub import from_hub


class FakeLoader:
    """A ``from_pretrained`` that records its calls; ``cached`` decides the local-only answer."""

    def __init__(self, cached: bool) -> None:
        self.cached, self.calls = cached, []

    def __call__(self, name: str, **kwargs):
        self.calls.append(kwargs)
        if kwargs.get("local_files_only") and not self.cached:
            raise OSError(f"We couldn't find {name} in the cached files")
        return f"model {name}"


def test_a_cached_model_never_asks_the_hub(monkeypatch) -> None:
    monkeypatch.setattr("afford.hub.hub_unreachable", lambda: pytest.fail("probed the hub"))
    load = FakeLoader(cached=True)
    assert from_hub(load, "org/model", revision="r") == "model org/model"
    assert load.calls == [{"local_files_only": True, "revision": "r"}]


def test_an_uncached_model_is_fetched_only_from_a_hub_that_answers(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("afford.hub.hub_unreachable", lambda: None)
    load = FakeLoader(cached=False)
    assert from_hub(load, "org/model") == "model org/model"
    assert load.calls == [{"local_files_only": True}, {}]

    monkeypatch.setattr("afford.hub.hub_unreachable", lambda: "https://huggingface.co is unreachable (x)")
    load = FakeLoader(cached=False)
    with pytest.raises(AffordError, match=r"'org/model' is not in the Hugging Face cache and https://huggingface.co "
                                          r"is unreachable .*huggingface-cli download org/model"):
        from_hub(load, "org/model")
    assert load.calls == [{"local_files_only": True}]  # no online attempt: no minutes of retries

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load = FakeLoader(cached=False)
    with pytest.raises(AffordError, match="HF_HUB_OFFLINE is set"):
        from_hub(load, "org/model")
    assert load.calls == [{"local_files_only": True}]


@pytest.mark.parametrize("build", [
    lambda: create_backbone("dino_vits16", weights="facebook/dino-vits16"),
    lambda: __import__("afford.hoi.detector", fromlist=["DetrDetector"]).DetrDetector(
        "facebook/detr-resnet-50", revision="no_timm"),
])
def test_backbones_and_the_detector_fail_fast_when_the_hub_is_out_of_reach(build, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("afford.hub.hub_unreachable", lambda: "https://huggingface.co is unreachable (test)")
    t0 = time.perf_counter()
    with pytest.raises(AffordError, match="not in the Hugging Face cache and https://huggingface.co is unreachable"):
        build()
    assert time.perf_counter() - t0 < 30


def test_offline_flags_proxy_probe_and_device_names(monkeypatch) -> None:
    """Every spelling huggingface_hub accepts for its offline flags; the hub probe goes to the proxy the
    requests would use (not to huggingface.co itself) unless the host is bypassed; --device auto and an
    unavailable CUDA."""
    import torch

    from afford.device import resolve_device
    from afford.hub import _hub_address, offline

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        assert not offline()
        for value in ("1", "ON", "yes", "True "):
            monkeypatch.setenv(var, value)
            assert offline(), (var, value)
        monkeypatch.setenv(var, "0")
        assert not offline()
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr("urllib.request.getproxies", lambda: {})
    assert _hub_address() == ("https://huggingface.co", "huggingface.co", 443)
    monkeypatch.setattr("urllib.request.getproxies", lambda: {"https": "proxy.local:3128"})
    monkeypatch.setattr("urllib.request.proxy_bypass", lambda host: False)
    assert _hub_address() == ("https://huggingface.co", "proxy.local", 3128)
    monkeypatch.setattr("urllib.request.proxy_bypass", lambda host: host == "huggingface.co")
    assert _hub_address()[1:] == ("huggingface.co", 443)
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080/")
    monkeypatch.setattr("urllib.request.getproxies", lambda: {})
    assert _hub_address() == ("http://mirror.example:8080", "mirror.example", 8080)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(AffordError, match="train.device: CUDA requested but not available"):
        resolve_device("cuda:0", field="train.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
