"""Run directories: save and load ``{weights, config, classes, step}``.

Layout::

    RUN/run.json                      method, resolved config, label space, split, selection
    RUN/model.safetensors             the weights a user evaluates (selected epoch)
    RUN/checkpoints/epoch_003/        model.safetensors + state.pt (optimizer, scheduler, RNG)
    RUN/log.jsonl                     one JSON object per logged step / epoch

Inference never imports training code: this module depends on the factory only.
Every write is atomic (temporary name, then ``os.replace``), so a run killed at any moment
leaves either the previous or the new checkpoint, never a half-written one.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from afford import strict_json
from afford.backbones.convert import load_strict
from afford.config import RunConfig, config_from_dict
from afford.device import resolve_device
from afford.errors import UNREADABLE_PICKLE, AffordError
from afford.labels import LabelSpace
from afford.methods.base import Method

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
WEIGHTS = "model.safetensors"
STATE = "state.pt"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (run files, refiner files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, strict_json.dumps(obj, indent=2) + "\n")


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file written by :func:`write_json`; one-line errors naming the file."""
    if not path.is_file():
        raise AffordError(f"{path}: no {what} here")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AffordError(f"{path}: corrupt {what} ({e})") from None


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """State dict as safetensors (contiguous CPU copies; shared tensors de-duplicated)."""
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp))
    os.replace(tmp, path)


def load_weights(module: torch.nn.Module, path: Path, what: str = "checkpoint") -> None:
    """Strict load with one clear error listing missing and unexpected keys (defect #9)."""
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        hint = (f"; remove {path.parent} to resume from the epoch before it"
                if path.parent.name.startswith("epoch_") and path.parent.parent.name == "checkpoints" else "")
        raise AffordError(f"{path}: cannot read {what} weights ({e}){hint}") from None
    load_strict(module, sd, f"{path} ({what})")


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (provenance of weights a run builds on)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_run_weights(path: Path, method: str, field: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of a finished afford run of ``method`` that another method's config names in
    ``field`` (LoopTrans's cluster run, SelectiveCL's tiny CLIP run), and its provenance:
    ``{"kind": "afford-run", "path", "sha256", "model"}`` (the run's model config, to check)."""
    from safetensors.torch import load_file

    if not (path / RUN_FILE).is_file() or not (path / WEIGHTS).is_file():
        raise AffordError(f"{field}: {path} is a directory but not a finished afford run (no {RUN_FILE} / {WEIGHTS})")
    info = read_json(path / RUN_FILE, "run record")
    found = info.get("config", {}).get("method")
    if found != method:
        raise AffordError(f"{field}: {path} is a {found!r} run, not a {method} run")
    return load_file(str(path / WEIGHTS)), {"kind": "afford-run", "path": str(path.resolve()),
                                           "sha256": file_sha256(path / WEIGHTS),
                                           "model": dict(info["config"].get("model", {}))}


def software() -> dict[str, Any]:
    """What made a run: afford's version and, in a git checkout, its commit (``+dirty`` with local
    changes), and the versions of Python, torch and transformers. A saved run's figures can move when
    the library changes; this says which code made them."""
    import platform
    import subprocess
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("afford", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=5, check=True).stdout.strip()
        out["afford_commit"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # not a git checkout, or no git
        pass
    return out


def write_run_info(run_dir: Path, cfg: RunConfig, labels: LabelSpace, extra: dict[str, Any] | None = None) -> None:
    """``run.json``: the label space in full (``labels``) and its names as ``classes``, and the software
    that made it (:func:`software`)."""
    info = {"format": "afford-run/1", "method": cfg.method, "labels": labels.to_dict(), "classes": list(labels.names),
            "config": cfg.to_dict(), "software": software()}
    info.update(extra or {})
    write_json(run_dir / RUN_FILE, info)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    if not path.is_file():
        if run_dir.name == RUN_FILE and run_dir.is_file():
            raise AffordError(f"{run_dir}: give the run's folder ({run_dir.parent}), not its {RUN_FILE}")
        raise AffordError(f"{run_dir}: not an afford run directory (no {RUN_FILE})")
    info = read_json(path, "run file")
    for key in ("method", "classes", "config"):
        if key not in info:
            raise AffordError(f"{path}: missing field '{key}'")
    return info


def update_run_info(run_dir: Path, **fields: Any) -> None:
    info = read_run_info(run_dir)
    info.update(fields)
    write_json(run_dir / RUN_FILE, info)


# -- per-epoch checkpoints -------------------------------------------------------------------
def epoch_dir(run_dir: Path, epoch: int) -> Path:
    return run_dir / "checkpoints" / f"epoch_{epoch:03d}"


def save_epoch_checkpoint(run_dir: Path, epoch: int, method: torch.nn.Module, state: dict[str, Any],
                          keep: int = 2, protect: tuple[int, ...] = ()) -> Path:
    """Write ``checkpoints/epoch_NNN`` atomically (a temp dir renamed into place)."""
    final = epoch_dir(run_dir, epoch)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(method, tmp / WEIGHTS)
    torch.save(state, tmp / STATE)
    _fsync(tmp / WEIGHTS, tmp / STATE, tmp)  # on disk before the rename makes the epoch count as complete
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        done = completed_epochs(run_dir)
        for e in done[:-keep]:
            if e not in protect:
                shutil.rmtree(epoch_dir(run_dir, e), ignore_errors=True)
    return final


def _fsync(*paths: Path) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_epoch_state(run_dir: Path, epoch: int) -> dict[str, Any]:
    """The optimizer/scheduler/history state saved with ``epoch``; AffordError naming the file
    (and the way back to the epoch before) when it cannot be read."""
    path = epoch_dir(run_dir, epoch) / STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except UNREADABLE_PICKLE as e:  # truncated or overwritten file
        raise AffordError(f"{path}: cannot read the training state to resume from ({type(e).__name__}: {e}); "
                          f"remove {path.parent} to resume from the epoch before it") from None
    if not isinstance(state, dict) or "optimizer" not in state:
        raise AffordError(f"{path}: not an afford training state (expected a dict with 'optimizer'); "
                          f"remove {path.parent} to resume from the epoch before it")
    return state


def completed_epochs(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("epoch_") and not p.name.endswith(".tmp"):
            if (p / WEIGHTS).is_file() and (p / STATE).is_file():
                out.append(int(p.name.split("_")[1]))
    return sorted(out)


# -- loading a run for inference ----------------------------------------------------------------
@dataclass
class LoadedRun:
    method: Method
    labels: LabelSpace
    config: RunConfig
    info: dict[str, Any]
    path: Path

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labels.names


def run_labels(info: dict[str, Any], where: Path) -> LabelSpace:
    """The run's label space (runs written before ``labels`` existed: affordances = ``classes``)."""
    if "labels" in info:
        return LabelSpace.from_dict(info["labels"], f"{where}: labels")
    return LabelSpace.affordances(info["classes"])


def resolve_weights(run_dir: Path, info: dict[str, Any] | None = None) -> Path:
    """``RUN/model.safetensors``; for a run still training, its last complete epoch, said so.

    A finished run (its record names the selected epoch) without the file is an error: its last
    epoch is not necessarily the one it selected.
    """
    if (run_dir / WEIGHTS).is_file():
        return run_dir / WEIGHTS
    selection = (info or {}).get("selection")
    if selection:
        raise AffordError(f"{run_dir}: {WEIGHTS} is missing, but the run finished and selected epoch "
                          f"{selection.get('epoch')} ({selection.get('rule')}); restore the file (or copy "
                          f"checkpoints/epoch_{int(selection.get('epoch', 1)) - 1:03d}/{WEIGHTS} there)")
    done = completed_epochs(run_dir)
    if not done:
        raise AffordError(f"{run_dir}: run has no weights yet ({WEIGHTS} or checkpoints/epoch_*/)")
    log.warning("%s: still training (no %s): using its last complete epoch, %d", run_dir, WEIGHTS, done[-1] + 1)
    return epoch_dir(run_dir, done[-1]) / WEIGHTS


def load_run(path: str | Path, device: str | torch.device = "cpu",
             expect_classes: tuple[str, ...] | None = None) -> LoadedRun:
    """Build the run's method from run.json and load its weights strictly; eval mode."""
    from afford.factory import create_method

    run_dir = Path(path).expanduser()
    if run_dir.is_file():
        raise AffordError(f"{run_dir}: expected a run directory (made by 'afford train' or 'afford import')")
    device = resolve_device(str(device), "device")  # 'gpu', or cuda on a machine without one: one line
    info = read_run_info(run_dir)
    labels = run_labels(info, run_dir / RUN_FILE)
    classes = labels.names
    if expect_classes is not None and classes != tuple(expect_classes):
        unknown = [c for c in expect_classes if c not in classes]
        why = (" in a different order" if len(classes) == len(expect_classes) and not unknown else
               f" ({len(unknown)} of them unknown to the run, e.g. {unknown[0]!r})" if unknown else
               ", all among the run's")
        raise AffordError(f"{run_dir}: checkpoint has {len(classes)} classes, the dataset has {len(expect_classes)}{why}; "
                          f"a run scores a split with its own class list (it was made for "
                          f"{info.get('split') or 'another split'})")
    if info["config"].get("method") != info["method"]:
        raise AffordError(f"{run_dir / RUN_FILE}: 'method' is {info['method']!r} but the config is for "
                          f"{info['config'].get('method')!r}")
    cfg = config_from_dict(info["config"], run_dir / RUN_FILE)
    # The run's weights include the backbone, so never re-read the original pretrained files
    # (they may not exist on this machine): build every ``*_weights`` source randomly initialised.
    build_cfg = copy.deepcopy(cfg.model)
    for f in dataclasses.fields(build_cfg):
        if f.name.endswith("_weights"):
            setattr(build_cfg, f.name, None)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's draws alone
        method = create_method(cfg.method, build_cfg, labels)
    method.check_record(info, run_dir / RUN_FILE)
    load_weights(method, resolve_weights(run_dir, info))
    method.to(device).eval()
    return LoadedRun(method=method, labels=labels, config=cfg, info=info, path=run_dir)
