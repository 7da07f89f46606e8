"""Configuration: dataclass defaults <- YAML preset <- ``key=value`` overrides, type-checked.

A config has four sections. ``model`` is the method's own dataclass (its defaults are the
paper's); ``data``, ``train`` and ``eval`` are shared by every method. Unknown keys are errors
that name the key and the valid choices, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from afford.errors import AffordError, did_you_mean


@dataclass
class DataConfig:
    """Where the AGD20K-format data lives and how images are prepared."""

    root: str = "data/AGD20K"  # the folder holding Seen/, Unseen/, HICO-IIF/ (AGD20K layout)
    split: str = "Seen"  # Seen | Unseen | HICO-IIF, or any split folder under root
    resize: int = 256  # short side (or square side when square_resize) before the random crop
    crop: int = 224  # training crop side
    square_resize: bool = False  # LoopTrans uses a square Resize((256, 256))
    test_size: int = 224  # square side of test images (maps are resized to each image after)
    n_exo: int = 3  # exocentric images per training sample
    sampling: str = "anchor_plus_random"  # afford.data.sampling.SAMPLINGS: "anchor_plus_random" | "consecutive_window"
    num_workers: int = 0  # DataLoader worker processes
    cache_images: bool = False  # keep decoded training images in memory (small datasets: SynthAGD)
    # Frozen-feature cache (afford.engine.feature_cache): frozen towers' outputs stored on disk per
    # distinct input; training crops then come from cache_views fixed views per image.
    feature_cache: bool = False  # store frozen towers' outputs on disk (exact for frozen towers)
    cache_views: int = 4  # with feature_cache: each image's crop and flip is one of this many fixed views
    cache_dir: str = ""  # "" = $AFFORD_CACHE/features (default ~/.cache/afford/features)


@dataclass
class TrainConfig:
    """Shared optimisation recipe (methods.md §0.3); method presets change what differs."""

    epochs: int = 15  # may grow on --resume, never shrink below the epochs done
    batch_size: int = 16  # global batch (split over --nproc processes)
    optimizer: str = "sgd"  # "sgd" (every reference) | "adamw" (demo: tiny ViT from scratch)
    lr: float = 1e-3  # base rate; each method's LR groups scale it (afford train logs them)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 (SGD) or decoupled (AdamW) weight decay
    nesterov: bool = True  # SGD with Nesterov momentum
    scheduler: str = "step"  # "step" (every step_size epochs x gamma) | "poly" (per step, psa) | "none"
    step_size: int = 5  # "step": epochs between rate drops
    gamma: float = 0.1  # "step": factor of each drop
    poly_power: float = 0.9  # "poly": lr x (1 - step / total steps) ** poly_power
    seed: int = 0  # every random draw derives from (seed, epoch, step): exact resume
    bf16: bool = False  # autocast bf16 (for GPUs; about 6x slower than fp32 on CPUs without AMX)
    device: str = "auto"  # auto (CUDA when there is one) | cpu | cuda | cuda:N
    log_every: int = 10  # steps between log.jsonl lines (0 or 1: every step)
    max_steps_per_epoch: int = 0  # 0 = full epoch; >0 caps the epoch (demo, smoke tests)
    select: str = "last"  # "last" | "best-on-test" (the literature's choice, protocol.md §5)
    keep_checkpoints: int = 2  # newest checkpoints/epoch_NNN kept (0: all)
    grad_clip: float = 0.0  # 0 = off (the references do not clip)


@dataclass
class EvalConfig:
    """Evaluation protocol (protocol.md §3); ``exact`` reproduces the reference NaN behaviour.

    ``output`` names which of the method's outputs is scored (None: the method's default, e.g.
    WSMA's refined map); ``exclude_empty_gt`` drops all-zero GT images (kept by the literature).
    """

    protocol: str = "standard"  # afford.metrics.saliency.PROTOCOLS (afford list)
    exact: bool = False  # the reference's NaN NSS on constant maps, bit for bit
    batch_size: int = 16  # test images per forward
    exclude_empty_gt: bool = False  # drop all-zero GT images (the literature keeps them)
    output: str | None = None  # which of the method's outputs is scored (None: its default)


@dataclass
class RunConfig:
    method: str
    model: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
        }


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the annotated field type, or raise naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except AffordError:
                continue
        raise AffordError(f"{where}: cannot use {value!r} as {tp}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise AffordError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_convert(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # YAML reads --set k=1 as the integer 1
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise AffordError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise AffordError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):  # exact: through a float, a seed past 2^53 changed
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise AffordError(f"{where}: expected an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise AffordError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):  # YAML reads true/yes/on as a boolean: 1.0 would be a silent guess
            raise AffordError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise AffordError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise AffordError(f"{where}: expected a string, got {value!r}")
        if isinstance(value, bool):  # YAML reads yes/no/on/off as booleans: 'no' would become "False"
            raise AffordError(f"{where}: expected a string, got {value!r} (YAML reads yes/no/on/off as "
                              "true/false: quote the value)")
        return str(value)
    return value


def _apply(obj: Any, values: dict[str, Any], section: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    for key, value in values.items():
        if key not in names:
            raise AffordError(f"unknown config key '{section}.{key}'{did_you_mean(key, names)}")
        setattr(obj, key, _convert(value, hints[key], f"{section}.{key}"))


SECTIONS = ("model", "data", "train", "eval")


def build_config(method: str, preset: dict[str, Any] | None = None, overrides: list[str] = ()) -> RunConfig:
    """Method defaults <- preset dict (parsed YAML) <- ``section.key=value`` overrides."""
    from afford.factory import method_entry

    if isinstance(overrides, str):  # iterated, "train.epochs=2" was eleven one-character overrides
        raise AffordError(f"overrides: a list of 'section.key=value' strings, got the string {overrides!r} "
                          "(write [...] around it)")
    _, model_cls = method_entry(method)
    cfg = RunConfig(method=method, model=model_cls())
    preset = dict(preset or {})
    preset.pop("method", None)
    for section, values in preset.items():
        if section not in SECTIONS:
            raise AffordError(f"unknown config section '{section}'{did_you_mean(section, SECTIONS)}")
        if not isinstance(values, dict):
            raise AffordError(f"config section '{section}' must be a mapping of key: value")
        _apply(getattr(cfg, section), values, section)
    for item in overrides:
        if "=" not in item:
            raise AffordError(f"--set expects key=value, got '{item}'")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise AffordError(
                f"unknown config key '{dotted}': use section.key with section in {', '.join(SECTIONS)}"
            )
        _apply(getattr(cfg, parts[0]), {parts[1]: yaml.safe_load(raw) if raw.strip() else ""}, parts[0])
    validate(cfg)
    return cfg


#: (section, key) -> lowest allowed value; checked before anything runs.
_AT_LEAST: dict[tuple[str, str], float] = {
    ("data", "resize"): 1, ("data", "crop"): 1, ("data", "test_size"): 1, ("data", "n_exo"): 1,
    ("data", "num_workers"): 0, ("data", "cache_views"): 0,
    ("train", "epochs"): 1, ("train", "batch_size"): 1, ("train", "log_every"): 0,
    ("train", "max_steps_per_epoch"): 0, ("train", "keep_checkpoints"): 0,
    ("train", "momentum"): 0.0, ("train", "weight_decay"): 0.0, ("train", "poly_power"): 0.0,
    ("train", "grad_clip"): 0.0, ("eval", "batch_size"): 1,
}


def validate(cfg: RunConfig) -> None:
    """Ranges and choices of the shared sections, named ``section.key``: a zero batch or crop, a
    NaN learning rate or an unknown protocol would otherwise fail deep inside a run, or not at all."""
    import math

    from afford.metrics.saliency import PROTOCOLS

    for (section, key), low in _AT_LEAST.items():
        value = getattr(getattr(cfg, section), key)
        if not math.isfinite(value) or value < low:
            kind = "an integer" if isinstance(value, int) else "a number"
            raise AffordError(f"{section}.{key}: expected {kind} >= {low}, got {value!r}")
    if not 0 <= cfg.train.seed < 2**63:  # torch's generators take 64-bit seeds; the data generators refuse < 0
        raise AffordError(f"train.seed: expected an integer in [0, 2^63), got {cfg.train.seed}")
    if not math.isfinite(cfg.train.lr) or cfg.train.lr <= 0:
        raise AffordError(f"train.lr: expected a finite number > 0, got {cfg.train.lr!r}")
    if cfg.train.scheduler == "step" and (cfg.train.step_size < 1 or not cfg.train.gamma > 0):
        raise AffordError(f"train.step_size / train.gamma: the step scheduler needs step_size >= 1 and gamma > 0, "
                          f"got {cfg.train.step_size} / {cfg.train.gamma}")
    if cfg.data.crop > cfg.data.resize:
        raise AffordError(f"data.crop: the training crop ({cfg.data.crop}) must not exceed data.resize "
                          f"({cfg.data.resize})")
    if cfg.eval.protocol not in PROTOCOLS:
        raise AffordError(f"eval.protocol: expected one of {', '.join(PROTOCOLS)}, got {cfg.eval.protocol!r}"
                          f"{did_you_mean(cfg.eval.protocol, PROTOCOLS)}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping: PyYAML keeps the last one
    silently, so ``train: {epochs: 2, epochs: 30}`` trained 30 epochs without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a YAML error (its first line alone said only what the
    parser was doing, e.g. 'while scanning for the next token')."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML preset (``method:`` names the method) and apply ``key=value`` overrides."""
    p = Path(path)
    if not p.is_file():
        from afford.factory import packaged_config

        packaged = packaged_config(str(path))
        if packaged is None:
            from afford.factory import list_presets

            raise AffordError(f"{path}: config file not found, nor a packaged preset of that name"
                              f"{did_you_mean(str(path), list_presets())} (afford list)")
        p = packaged
    try:
        preset = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a safe loader)
    except yaml.YAMLError as e:
        raise AffordError(f"{p}: not valid YAML ({_yaml_problem(e)})") from None
    except UnicodeDecodeError as e:
        raise AffordError(f"{p}: not a UTF-8 text file (byte {e.start}); a config is YAML text") from None
    except OSError as e:
        raise AffordError(f"{p}: cannot read the config ({e.strerror or e})") from None
    if not isinstance(preset, dict) or "method" not in preset:
        raise AffordError(f"{p}: a config must be a mapping with a 'method:' key")
    return build_config(str(preset["method"]), preset, overrides)


def config_from_dict(d: dict[str, Any], source: str | Path | None = None) -> RunConfig:
    """Rebuild a RunConfig from ``RunConfig.to_dict()`` output (run.json); errors name ``source``."""
    try:
        return build_config(d["method"], {k: v for k, v in d.items() if k in SECTIONS})
    except AffordError as e:
        if source is None:
            raise
        raise AffordError(f"{source}: config: {e}") from None


def field_notes(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field of a config dataclass, read from its source: the
    documentation of a key lives beside its default, and ``afford list --config`` prints it."""
    import inspect
    import io
    import tokenize

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    notes: dict[str, str] = {}
    names = {f.name for f in fields(cls)}
    line_name: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        row, col = tok.start
        if tok.type == tokenize.NAME and row not in line_name and tok.string in names and col > 0:
            line_name[row] = tok.string
        elif tok.type == tokenize.COMMENT and row in line_name:
            notes.setdefault(line_name[row], tok.string.lstrip("# ").strip())
    return notes


def describe_config(cfg: RunConfig) -> list[str]:
    """``section.key: value`` for every key of ``cfg``, with the method's default where the preset
    or an override changed it, and the key's note from the source."""
    lines = [f"method: {cfg.method}"]
    for section in SECTIONS:
        obj = getattr(cfg, section)
        default = type(obj)()
        notes = field_notes(type(obj))
        for f in fields(obj):
            value, base = getattr(obj, f.name), getattr(default, f.name)
            text = f"{section}.{f.name}: {value!r}"
            if value != base:
                text += f"  (default {base!r})"
            if notes.get(f.name):
                text += f"  # {notes[f.name]}"
            lines.append(text)
    return lines
