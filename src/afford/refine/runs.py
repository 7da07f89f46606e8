"""Wire AffinityNet refinement to run directories: ``afford refine train`` and ``--refine affinity``.

A trained refiner lives in ``RUN/affinity/`` (``refiner.json`` + head weights). Without one,
``--refine affinity`` uses the training-free affinity on the run's frozen backbone features
(affinity.md §12.2 b). Either way the refiner's settings are reported next to the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from afford.checkpoint import LoadedRun, load_run
from afford.data.agd20k import AffordanceTrainSet, open_split
from afford.data.transforms import TrainTransform
from afford.errors import AffordError
from afford.refine.refiner import AffinityRefiner
from afford.refine.train import AffinityTrainConfig, train_affinity_head

REFINER_DIR = "affinity"
# Propagation defaults for a 14x14 grid. t = 256 over-smooths 196 nodes (affinity.md §12.3). These
# were chosen on held-out SynthAGD images (test indices 4-7 of an 8-per-pair generation, disjoint from
# the 4 the demo reports), from t in {2, 4, 16}, lambda in {0, 0.5}, gamma in {3, 5}: never on a
# test set that is reported.
DEFAULT_STEPS = 16
DEFAULT_BLEND = 0.5
DEFAULT_RADIUS = 5


def _features(run: LoadedRun) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    backbone = run.method.backbone  # every WSAG method reads its features through afford.backbones

    def fn(images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [k.float() for k in backbone(images).keys]

    return fn


def refiner_for_run(run: LoadedRun, kind: str = "affinity", **overrides: object) -> Callable:
    """``fn(cams (B,h,w), images (B,3,S,S)) -> refined (B,h,w)`` for the run, with ``.params``."""
    if kind != "affinity":
        raise AffordError(f"--refine: unknown refinement '{kind}' (known: affinity)")
    saved = run.path / REFINER_DIR
    if (saved / "refiner.json").is_file():
        refiner = AffinityRefiner.load(saved, **overrides)
    else:
        opts: dict = {"steps": DEFAULT_STEPS, "blend": DEFAULT_BLEND, "radius": DEFAULT_RADIUS}
        opts.update(overrides)
        refiner = AffinityRefiner(**opts)
    feature_fn = _features(run)

    def fn(cams: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        feats = feature_fn(images.to(next(run.method.parameters()).device))
        return refiner(cams.to(feats[0].device).float(), feats).cpu()

    fn.params = refiner.params  # type: ignore[attr-defined]
    return fn


def train_refiner_for_run(
    run_dir: str | Path, data_root: str | None = None, split: str | None = None, epochs: int = 3,
    seed: int = 0, batch_size: int = 16, progress: bool = True, steps: int = DEFAULT_STEPS,
    blend: float = DEFAULT_BLEND, radius: int = DEFAULT_RADIUS,
) -> Path:
    """Train an affinity head on the run's egocentric training images and CAMs; save it in the run."""
    run = load_run(run_dir)
    cfg = run.config
    sp = open_split(data_root or run.info.get("data_root") or cfg.data.root, split or run.info.get("split") or cfg.data.split)
    if sp.affordances != run.classes:
        raise AffordError(f"{sp.root}: the run was trained on {len(run.classes)} classes, this split has {len(sp.affordances)}")
    ds = AffordanceTrainSet(sp, n_exo=1, seed=seed, cache_images=cfg.data.cache_images, transform=TrainTransform(
        resize=cfg.data.resize, crop=cfg.data.crop, flip=True, square=cfg.data.square_resize))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    out = run.path / REFINER_DIR
    out.mkdir(exist_ok=True)
    log = (out / "log.jsonl").open("w")
    tcfg = AffinityTrainConfig(radius=radius, epochs=epochs, seed=seed, mean=run.method.backbone.mean,
                               std=run.method.backbone.std)
    bar = tqdm(total=epochs * len(loader), desc="affinity head", disable=not progress)

    def log_fn(step: int, vals: dict[str, float]) -> None:
        log.write(json.dumps({"step": step, **vals}) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{vals['loss']:.3f}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = train_affinity_head(
            loader, lambda x, y: run.method.predict(x, y), _features(run), tcfg, set_epoch=ds.set_epoch, log_fn=log_fn
        )
    bar.close()
    log.close()
    AffinityRefiner(head, steps=steps, blend=blend, radius=radius, alpha_low=tcfg.alpha_low,
                    alpha_high=tcfg.alpha_high).save(out)
    return out
