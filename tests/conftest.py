"""Shared fixtures: a tiny SynthAGD tree generated once per session, CPU threads capped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models are dominated by per-op overhead: on a loaded 2-core machine two intra-op
    threads spin against each other and make these tests ~10x slower than one thread."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep GT caches out of the user's home directory during tests."""
    os.environ["AFFORD_CACHE"] = str(tmp_path_factory.mktemp("afford_cache"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SynthAGD Seen split (64 px) shared by engine/CLI tests."""
    from afford.synthagd import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, split="seen", seed=0, size=64, n_exo=4, n_ego=2, n_test=1)
    return root


TINY_OVERRIDES = ["model.backbone=tiny_vit", "model.train_backbone=true", "data.resize=64", "data.crop=56",
                  "data.test_size=56", "train.batch_size=4", "train.epochs=1", "train.max_steps_per_epoch=2"]


@pytest.fixture(scope="session")
def tiny_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LOCATE run (tiny ViT, 2 steps) on ``synth_root``, shared by CLI/refine tests."""
    from afford.config import build_config
    from afford.engine.trainer import train

    out = tmp_path_factory.mktemp("runs") / "locate"
    train(build_config("locate", overrides=[f"data.root={synth_root}", *TINY_OVERRIDES]), out, progress=False)
    return out


def _hicodet_test_file() -> Path:
    """The real HICO-DET test annotations (../shared/data beside the repository, as the project
    lays it out; ``$AFFORD_HICODET_TEST`` overrides)."""
    repo = Path(__file__).resolve().parents[1]
    for p in (os.environ.get("AFFORD_HICODET_TEST", ""), repo.parent / "shared/data/hicodet/instances_test2015.json",
              repo / "shared/data/hicodet/instances_test2015.json", "/work/shared/data/hicodet/instances_test2015.json"):
        if p and Path(p).is_file():
            return Path(p)
    raise FileNotFoundError("HICO-DET test annotations not found: expected ../shared/data/hicodet/"
                            "instances_test2015.json beside the repository, or set $AFFORD_HICODET_TEST")


HICODET_TEST = _hicodet_test_file
