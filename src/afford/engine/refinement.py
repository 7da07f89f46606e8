"""AffinityNet refinement wired to run directories: ``afford refine train`` and ``--refine``.

Two refiners, named explicitly (affinity.md §12.2):

- ``affinity``: the AffinityNet head trained on the run's own CAMs by ``afford refine train``
  (the engine's loop, :mod:`afford.refine.head_training`), saved in ``RUN/affinity/``
  (``refiner.json`` + ``model.safetensors`` beside the head's own run record, checkpoints and
  log). Refused when the run has none.
- ``affinity-free``: the training-free affinity on the run's frozen features (§12.2 b).

Either way the refiner's settings are reported next to the numbers. Features come from the
method's declared :meth:`~afford.methods.base.Grounder.features` hook, never from its attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from afford import checkpoint as ckpt
from afford.checkpoint import LoadedRun, load_run
from afford.engine.evaluator import MapFn
from afford.errors import AffordError, did_you_mean
from afford.factory import affordance_run_info
from afford.refine.affinity_head import AffinityHead, pair_grid
from afford.refine.defaults import DEFAULT_BLEND, DEFAULT_EPOCHS, DEFAULT_RADIUS, DEFAULT_STEPS, REFINERS
from afford.refine.head_training import check_head_config, label_settings
from afford.refine.refiner import AffinityRefiner

REFINER_DIR = "affinity"
CONFIG_FILE = "refiner.json"
FORMAT = "afford.affinity_refiner"

RefineFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (cams (B,h,w), images) -> (B,h,w)


def refined(map_fn: MapFn, refine: RefineFn | None) -> MapFn:
    """``map_fn`` followed by ``refine`` (on the same images); ``map_fn`` itself when None.

    The one place a refiner is composed with a model, for the CLI, the demo and the predictor.
    """
    if refine is None:
        return map_fn

    def fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return refine(map_fn(images, labels), images)

    return fn


# ----------------------------------------------------------------------------- persistence
def save_refiner(refiner: AffinityRefiner, directory: Path, write_head: bool = True) -> Path:
    """``refiner.json`` (settings, head shape) + the head's ``model.safetensors`` when trained
    (``write_head=False``: the training run already wrote exactly those weights there)."""
    directory.mkdir(parents=True, exist_ok=True)
    head = refiner.head.config() if refiner.head is not None else None
    if refiner.head is not None and write_head:
        ckpt.save_weights(refiner.head, directory / ckpt.WEIGHTS)  # weights first: the json marks completion
    ckpt.write_json(directory / CONFIG_FILE, {"format": FORMAT, "version": 3, "params": refiner.params, "head": head})
    return directory


def load_refiner(directory: Path, **overrides: object) -> AffinityRefiner:
    """Read a saved refiner; ``overrides`` (e.g. ``steps=16``) replace stored settings."""
    path = directory / CONFIG_FILE
    config = ckpt.read_json(path, f"refiner config (expected {CONFIG_FILE} written by save_refiner)")
    if config.get("format") != FORMAT:
        raise AffordError(f"{path}: format: expected {FORMAT!r}, got {config.get('format')!r}")
    try:
        p = config["params"]
        kwargs: dict[str, object] = {
            "beta": float(p["beta"]), "steps": int(p["t"]), "radius": int(p["gamma"]), "blend": float(p["lambda"]),
            "kind": p["kind"], "scale": float(p["scale"]), "dense_limit": int(p["dense_limit"]),
        }
        # version 2 recorded psa's α whatever the label mode: not a record of how the labels were made
        labels = p["labels"] if config.get("version", 2) >= 3 else {
            "label_mode": "unrecorded (refiner.json version 2)", "alpha_low": p["alpha_low"],
            "alpha_high": p["alpha_high"]}
        head_shape = config.get("head")
        if head_shape is not None:
            head_shape = ([int(d) for d in head_shape["in_dims"]], [int(w) for w in head_shape["widths"]])
    except (KeyError, TypeError, ValueError) as e:
        raise AffordError(f"{path}: params/head: missing or malformed entry {e}") from None
    if unknown := sorted(set(overrides) - set(kwargs)):
        raise AffordError(f"refine override: unknown parameter {unknown[0]!r}, expected one of {sorted(kwargs)}")
    head = None
    if head_shape is not None:
        head = AffinityHead(*head_shape)
        ckpt.load_weights(head, directory / ckpt.WEIGHTS, "affinity head")
    return AffinityRefiner(head, labels=labels, **{**kwargs, **overrides})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- runs
def check_refiner(kind: str) -> None:
    if kind not in REFINERS:
        raise AffordError(f"--refine: unknown refinement {kind!r}{did_you_mean(kind, REFINERS)}; "
                          f"choose from {', '.join(REFINERS)}")


def refiner_for_run(run: LoadedRun, kind: str = "affinity", **overrides: object) -> RefineFn:
    """``fn(cams (B,h,w), images (B,3,S,S)) -> refined (B,h,w)`` in [0, 1], with ``.params``."""
    check_refiner(kind)
    saved = run.path / REFINER_DIR
    if kind == "affinity":
        if not (saved / CONFIG_FILE).is_file():
            raise AffordError(f"{run.path}: --refine affinity needs a trained affinity head ({saved / CONFIG_FILE}); "
                              f"train one with 'afford refine train --checkpoint {run.path}', or use --refine affinity-free")
        refiner = load_refiner(saved, **overrides)
    else:
        opts: dict = {"steps": DEFAULT_STEPS, "blend": DEFAULT_BLEND, "radius": DEFAULT_RADIUS, **overrides}
        refiner = AffinityRefiner(**opts)
    method = run.method

    def fn(cams: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        feats = method.features(images.to(next(method.parameters()).device))
        return refiner(cams.to(feats[0].device).float(), feats).cpu()

    fn.params = {"refine": kind, **refiner.params}  # type: ignore[attr-defined]
    return fn


def train_refiner_for_run(
    run_dir: str | Path, data_root: str | None = None, split: str | None = None, epochs: int = DEFAULT_EPOCHS,
    seed: int = 0, batch_size: int = 16, progress: bool = True, steps: int = DEFAULT_STEPS,
    blend: float = DEFAULT_BLEND, radius: int = DEFAULT_RADIUS, resume: bool = False,
    overrides: Sequence[str] = (), device: str | None = None,
) -> Path:
    """Train an affinity head on the run's egocentric training images and CAMs, with the engine,
    into ``RUN/affinity/`` (a run of its own: checkpoints, log, exact ``resume``); then write the
    refiner (``refiner.json``: the propagation settings ``steps``/``blend`` beside the head)."""
    from afford.config import load_config
    from afford.engine.trainer import train

    run = load_run(run_dir)
    out = run.path / REFINER_DIR
    if (out / ckpt.RUN_FILE).exists() and not resume:
        raise AffordError(f"{out}: already holds an affinity head (or its interrupted training); pass --resume to "
                          f"continue it, or remove the folder to train a new one")
    d = run.config.data
    data = {"root": data_root or run.info.get("data_root") or d.root, "split": split or run.info.get("split") or d.split,
            "resize": d.resize, "crop": d.crop, "square_resize": d.square_resize, "sampling": d.sampling,
            "cache_images": d.cache_images, "test_size": d.test_size}
    sets = [f"model.teacher={run.path.resolve()}", f"model.radius={radius}", f"train.epochs={epochs}",
            f"train.seed={seed}", f"train.batch_size={batch_size}", f"train.device={device or run.config.train.device}",
            *(f"data.{k}={v}" for k, v in data.items()), *overrides]
    cfg = load_config("affinity_refiner", sets)
    _check_before_training(run, cfg, steps, blend)
    if resume and ckpt.completed_epochs(out):
        _check_same_teacher(out, run.path)
    train(cfg, out, resume=resume, progress=progress)
    info = ckpt.read_run_info(out)
    head = AffinityHead(info["head"]["in_dims"], info["head"]["widths"])
    ckpt.load_weights(head, out / ckpt.WEIGHTS, "affinity head")
    m = cfg.model
    refiner = AffinityRefiner(head.eval(), steps=steps, blend=blend, radius=m.radius, labels=label_settings(m))
    return save_refiner(refiner, out, write_head=False)


def _check_same_teacher(out: Path, teacher: Path) -> None:
    """A resumed head goes on learning from the teacher it started with: its weights file must be the
    one recorded (the run trained on since would have changed it). The teacher is known by content:
    a run folder moved or copied elsewhere keeps its head, and the record takes the new path."""
    info = ckpt.read_run_info(out)
    recorded = info.get("teacher", {})
    now = ckpt.file_sha256(teacher / ckpt.WEIGHTS)
    if recorded.get("sha256") not in (None, now):
        raise AffordError(f"{out}: the affinity head was trained on {teacher}'s weights with sha256 "
                          f"{recorded['sha256'][:12]}..., which are now {now[:12]}... (the run was trained on since); "
                          "remove the folder and train a new head")
    path = str(teacher.resolve())
    if info["config"]["model"].get("teacher") != path:  # the run moved: same weights, new place
        info["config"]["model"]["teacher"] = path
        info["teacher"] = {**recorded, "path": path}
        ckpt.write_json(out / ckpt.RUN_FILE, info)


def _check_before_training(run: LoadedRun, cfg: Any, steps: int, blend: float) -> None:
    """Every setting that would fail after the head's run folder exists (a rerun is then refused as
    'already holds an affinity head'), checked first: labels, propagation, the radius on the grid."""
    check_head_config(cfg.model)
    AffinityRefiner(None, steps=steps, blend=blend, radius=cfg.model.radius)  # raises on a bad t / λ / radius
    affordance_run_info(run.path)
    size = cfg.data.crop
    with torch.no_grad():
        h, w = run.method.features(torch.zeros(1, 3, size, size, device=next(run.method.parameters()).device))[0].shape[-2:]
    try:
        pair_grid(int(h), int(w), cfg.model.radius)
    except AffordError:
        raise AffordError(f"--radius {cfg.model.radius}: too large for the teacher's {h}x{w} feature grid at {size} px "
                          f"(pairs need h > radius - 1 and w > 2 (radius - 1)); largest: {min(h, (w + 1) // 2)}") from None
