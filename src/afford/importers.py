"""Import released method checkpoints into afford run directories, for any registered format.

The official files (checkpoints/locate.md §2, wsma.md §2) are plain ``torch.save`` state dicts
written from a GPU model. Each method declares its layout as an
:class:`~afford.methods.official.OfficialFormat` in the registry; this module is generic: it
checks a file against the format's key list (one error naming every missing and unexpected
key), recognises a file of another method, infers the split from the class count, renames,
loads strictly and writes ``run.json`` + ``model.safetensors`` with the method's recipe, so
``load_run``, ``afford eval`` and ``afford predict`` treat the result like any trained run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from afford.backbones.convert import load_strict
from afford.checkpoint import RUN_FILE, WEIGHTS, save_weights, write_run_info
from afford.data.classes import HICO_IIF_AFFORDANCES, SEEN_AFFORDANCES, UNSEEN_AFFORDANCES
from afford.errors import UNREADABLE_PICKLE, AffordError, unreadable_checkpoint
from afford.factory import (
    METHODS,
    create_method,
    method_entry,
    official_format,
    official_methods,
    recipe_config,
)
from afford.labels import LabelSpace
from afford.methods.official import IMPORT_SEED, OfficialFormat

#: Class count of the released classifier -> (split name, class list in index order).
SPLITS_BY_CLASS_COUNT: dict[int, tuple[str, tuple[str, ...]]] = {
    36: ("Seen", SEEN_AFFORDANCES),
    25: ("Unseen", UNSEEN_AFFORDANCES),
    10: ("HICO-IIF", HICO_IIF_AFFORDANCES),
}
def official_keys(method: str, *depths: int | None) -> list[str]:
    """Every entry of a released ``method`` file, at the release's depths unless given.

    Depths in the format's order (``full_depths``): the DINO ViT, then the second tower (the text
    tower for WSMA, the cluster module for LoopTrans, CLIP's image and text towers for SelectiveCL).
    """
    fmt = official_format(method)
    given = list(depths) + [None] * (len(fmt.full_depths) - len(depths))
    return fmt.keys(*(full if d is None else d for full, d in zip(fmt.full_depths, given, strict=True)))


def to_afford_names(sd: Mapping[str, Tensor], method: str) -> dict[str, Tensor]:
    """Rename official keys to afford's modules (the method's format)."""
    return official_format(method).to_afford(sd)


# ----------------------------------------------------------------------------- reading
#: where a training script's checkpoint keeps the weights beside its optimizer and epoch
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def read_official_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a released plain state dict on the CPU (it was saved from CUDA tensors)."""
    p = Path(path)
    if not p.is_file():
        raise AffordError(f"{p}: " + ("a folder; expected the checkpoint file (.pth) inside it" if p.is_dir() else
                                     "checkpoint file not found"))
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except UNREADABLE_PICKLE as exc:
        raise unreadable_checkpoint(p, exc) from None
    if isinstance(obj, Mapping):  # tolerate a training checkpoint's wrapper; the releases are plain
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is not None:
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        got = "an empty dict" if isinstance(obj, Mapping) else type(obj).__name__
        raise AffordError(f"{p}: expected a state dict (key -> tensor), got {got}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise AffordError(f"{p}: entries that are not tensors: {_listing(sorted(map(str, bad)))}")
    nonfinite = [k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:  # a diverged training's save or a damaged file: every map would be NaN
        raise AffordError(f"{p}: NaN or infinite values in {_listing(sorted(map(str, nonfinite)))}")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # DataParallel re-saves
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def detect_method(sd: Mapping[str, Tensor]) -> str | None:
    """The registered method whose marker keys the file holds, when exactly one does, else None."""
    found = [m for m in official_methods() if any(k in sd for k in official_format(m).markers)]
    if len(found) > 1:  # SelectiveCL files also hold LOCATE's conv-stack markers: the classifier decides
        found = [m for m in found if official_format(m).classifier in sd] or found
    return found[0] if len(found) == 1 else None


def _listing(items: Sequence[str], limit: int = 10) -> str:
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"({len(items)}) [{', '.join(items[:limit])}{more}]"


def check_keys(sd: Mapping[str, Tensor], expected: Sequence[str], method: str, source: str) -> None:
    """One AffordError listing the missing and unexpected keys, in official naming."""
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = ([f"missing keys {_listing(missing)}"] if missing else []) + (
            [f"unexpected keys {_listing(unexpected)}"] if unexpected else [])
        raise AffordError(f"{source}: not an official {method.upper()} checkpoint: " + "; ".join(parts))


def tensor_problem(key: str, got: Tensor, want: Tensor) -> str | None:
    """Why the file's ``got`` cannot fill ``want`` (the model's tensor, official naming), or None.

    Float slots take any floating dtype (half-precision releases are up-cast); integer slots
    (``num_batches_tracked``) take an integer dtype only.
    """
    if want.is_floating_point() and not got.is_floating_point():
        return f"{key}: dtype {str(got.dtype).removeprefix('torch.')}, expected a floating-point dtype"
    if not want.is_floating_point() and (got.is_floating_point() or got.is_complex() or got.dtype == torch.bool):
        return f"{key}: dtype {str(got.dtype).removeprefix('torch.')}, expected an integer dtype (int64)"
    if got.shape != want.shape:
        return f"{key}: shape {list(got.shape)}, expected {list(want.shape)}"
    return None


def check_tensors(sd: Mapping[str, Tensor], fmt: OfficialFormat, model: torch.nn.Module, source: str,
                  limit: int = 5) -> None:
    """One AffordError naming the file's own keys whose shape or dtype the model cannot take.

    Runs before renaming, because the q|k|v splits and transposes crash on a malformed tensor and
    afford's names would not tell the user which entry of their file is wrong.
    """
    want = fmt.from_afford({k: torch.empty_like(v, device="meta") for k, v in model.state_dict().items()})
    problems = [p for k, v in sd.items() if k in want and (p := tensor_problem(k, v, want[k])) is not None]
    if problems:
        more = f"; ... (+{len(problems) - limit} more)" if len(problems) > limit else ""
        raise AffordError(f"{source}: {len(problems)} tensor(s) do not fit the {fmt.method.upper()} model: "
                          + "; ".join(problems[:limit]) + more)


def class_count(sd: Mapping[str, Tensor], fmt: OfficialFormat, source: str) -> int:
    """Affordance classes of the file, from the classifier's rows (before a model exists to check it)."""
    weight = sd[fmt.classifier]
    if weight.dim() == 0 or weight.shape[0] <= fmt.extra_classes:
        rows = "one row per class" + (f" plus {fmt.extra_classes} noise rows" if fmt.extra_classes else "")
        raise AffordError(f"{source}: {fmt.classifier}: shape {list(weight.shape)}, expected {rows}")
    return int(weight.shape[0]) - fmt.extra_classes


def build_model(method: str, model_cfg: Any, labels: LabelSpace) -> torch.nn.Module:
    """The model under a fixed seed, so state the file lacks is the same in every import; the
    caller's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(IMPORT_SEED)
        return create_method(method, model_cfg, labels)


def expected_keys(fmt: OfficialFormat, sd: Mapping[str, Tensor], depths: tuple[int, ...]) -> list[str]:
    """The format's keys at ``depths``, without its optional group when the file has none of it."""
    keys = fmt.keys(*depths)
    prefix = fmt.optional_prefix
    if prefix and not any(k.startswith(prefix) for k in sd):
        keys = [k for k in keys if not k.startswith(prefix)]
    return keys


# ----------------------------------------------------------------------------- import
def import_official(
    method: str,
    file: str | os.PathLike[str],
    out_run_dir: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | Callable[..., Tensor] | None = None,
    classnames: Sequence[str] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Convert a released ``method`` checkpoint ``file`` into the run directory ``out_run_dir``.

    Args:
        method: a method with an official format (``afford.factory.official_methods()``).
        tokenizer: methods with text prompts only (WSMA, SelectiveCL; refused for the others): the
            CLIP BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``, a directory, or a callable) used
            once to tokenise the prompts; the ids are stored in the run, so later loading needs no
            vocabulary. Default: ``$AFFORD_CLIP_BPE``.
        classnames: the class list in index order; default: the built-in list of the split the
            class count identifies (36 Seen, 25 Unseen, 10 HICO-IIF).
        model_overrides: model-config fields to change (e.g. tiny architectures in tests).

    Returns the run directory. Raises AffordError for an unreadable file, a file of the other
    method, missing/unexpected keys, wrong shapes or dtypes (named by the file's own keys) or an
    unknown class count. The model is built under a fixed seed, so an import is reproducible.
    """
    method = method.lower()
    if method not in METHODS or METHODS[method].official is None:
        raise AffordError(f"--method: expected one of {', '.join(repr(m) for m in official_methods())}, got {method!r}")
    fmt = official_format(method)
    _, cfg_cls = method_entry(method)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    if tokenizer is not None and "tokenizer" not in fields:
        raise AffordError(f"--tokenizer: {method} has no text prompts")
    out = Path(out_run_dir)
    if (out / RUN_FILE).exists():
        raise AffordError(f"{out}: already holds a run; choose a new --out directory")
    if out.is_dir() and (other := sorted(p.name for p in out.iterdir() if p.name not in (WEIGHTS, WEIGHTS + ".tmp"))):
        raise AffordError(f"{out}: not empty ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); "
                          "choose a new --out directory (an import writes its run into a folder of its own)")
    sd = read_official_file(file)
    source = str(file)
    found = detect_method(sd)
    if found is not None and found != method:
        marker = next(k for k in official_format(found).markers if k in sd)
        raise AffordError(f"{source}: this is an official {found.upper()} checkpoint (it has '{marker}'), "
                          f"not {method.upper()}; use --method {found}")

    overrides = dict(model_overrides or {})
    if unknown := sorted(set(overrides) - fields):
        raise AffordError(f"model_overrides: unknown {method} config fields {unknown}")
    model_cfg = cfg_cls(**fmt.model_overrides(overrides, tokenizer))

    classifier = fmt.classifier
    if classifier not in sd:
        check_keys(sd, expected_keys(fmt, sd, fmt.full_depths), method, source)  # lists everything missing
    n_classes = class_count(sd, fmt, source)
    what = f"'{classifier}' has {n_classes} classes" + (f" (+ {fmt.extra_classes} noise classes)" if fmt.extra_classes else "")
    if classnames is not None:
        classes = tuple(classnames)
        if len(classes) != n_classes:
            raise AffordError(f"{source}: {what} but {len(classes)} class names were given")
        split = "custom"
    elif n_classes in SPLITS_BY_CLASS_COUNT:
        split, classes = SPLITS_BY_CLASS_COUNT[n_classes]
    else:
        raise AffordError(f"{source}: {what}; official checkpoints have 36 (Seen), 25 (Unseen) or 10 (HICO-IIF); "
                          "for another class list, import it from Python: afford.importers.import_official(..., "
                          "classnames=[...])")

    labels = LabelSpace.affordances(classes)
    model = build_model(method, model_cfg, labels)
    check_keys(sd, expected_keys(fmt, sd, fmt.depths(model)), method, source)
    check_tensors(sd, fmt, model, source)
    converted = fmt.to_afford(sd)
    found = fmt.finish(model, converted, source) or {}
    load_strict(model, converted, source)

    # The paper's data/train recipe from the registry; the model section is the import's own.
    run_cfg = dataclasses.replace(recipe_config(method), model=fmt.saved_config(model_cfg))
    run_cfg.data.split = split
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / WEIGHTS)  # weights first: run.json marks a complete run
    write_run_info(out, run_cfg, labels, {"split": split, "imported_from": str(Path(file).resolve()),
                                          "official": True, **fmt.run_info, **found})
    return out
