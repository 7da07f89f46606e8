"""Import the released LOCATE and WSMA checkpoints into afford run directories.

The official files (checkpoints/locate.md §2, wsma.md §2) are plain ``torch.save`` state dicts
written from a GPU model: DINO ViT-S/16 under ``vit_model.``, the trained heads under the same
names afford's methods use, and for WSMA the fine-tuned CLIP RN50 text tower at the root. This
module checks a file against the official key list (one error naming every missing and
unexpected key), infers the split from the class count, renames the backbone/text keys to the
transformers modules afford builds on, loads strictly, and writes ``run.json`` +
``model.safetensors`` so ``load_run``, ``afford eval`` and ``afford predict`` treat the result
like any trained run. Imported WSMA runs use ``faithful=True`` (the reference's batch-axis
gate at batch 1 and its prompt quirk), because that is the function the weights were trained
and evaluated under.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from afford.backbones.convert import dino_to_hf_vit, load_strict, openai_text_to_hf, strip_prefix
from afford.checkpoint import RUN_FILE, WEIGHTS, save_weights, write_run_info
from afford.config import RunConfig
from afford.data.classes import HICO_IIF_AFFORDANCES, SEEN_AFFORDANCES, UNSEEN_AFFORDANCES
from afford.errors import AffordError
from afford.factory import create_method, method_entry
from afford.methods.wsma import WSMA_RECIPE

#: Class count of the released classifier -> (split name, class list in index order).
SPLITS_BY_CLASS_COUNT: dict[int, tuple[str, tuple[str, ...]]] = {
    36: ("Seen", SEEN_AFFORDANCES),
    25: ("Unseen", UNSEEN_AFFORDANCES),
    10: ("HICO-IIF", HICO_IIF_AFFORDANCES),
}
#: Keys that only one method's file holds; used to recognise a file of the other method.
MARKERS: dict[str, tuple[str, ...]] = {
    "locate": ("aff_fc.weight",),
    "wsma": ("prompt_learner.ctx", "attnpool.c_proj.weight", "Hamburger.lower_bread.0.weight", "text_projection"),
}
CLASSIFIER = {"locate": "aff_fc.weight", "wsma": "fc.weight"}


# ----------------------------------------------------------------------------- official key lists
def dino_keys(depth: int = 12, prefix: str = "vit_model.") -> list[str]:
    """Official DINO ViT names (locate.md §7), in file order."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        keys += [f"blocks.{i}.{m}.{k}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                 for k in ("weight", "bias")]
    keys += ["norm.weight", "norm.bias"]
    return [prefix + k for k in keys]


def clip_text_keys(depth: int = 12) -> list[str]:
    """OpenAI CLIP text-tower names at the root, with ``logit_scale`` (wsma.md §6)."""
    keys = ["logit_scale", "positional_embedding", "text_projection"]
    for i in range(depth):
        b = f"transformer.resblocks.{i}."
        keys += [b + "attn.in_proj_weight", b + "attn.in_proj_bias", b + "attn.out_proj.weight", b + "attn.out_proj.bias"]
        keys += [b + f"{m}.{k}" for m in ("ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2") for k in ("weight", "bias")]
    return keys + ["token_embedding.weight", "ln_final.weight", "ln_final.bias"]


def _bn(prefix: str) -> list[str]:
    return [prefix + k for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _conv_bn(prefix: str, depth: int) -> list[str]:
    keys: list[str] = []
    for j in range(depth):
        keys += [f"{prefix}{3 * j}.weight", f"{prefix}{3 * j}.bias", *_bn(f"{prefix}{3 * j + 1}.")]
    return keys


def official_keys(method: str, vit_depth: int = 12, text_depth: int = 12) -> list[str]:
    """Every entry of a released ``method`` file (186 LOCATE / 342 WSMA at full depth)."""
    mlp = [f"aff_proj.{m}.{k}" for m in ("norm", "fc1", "fc2") for k in ("weight", "bias")]
    if method == "locate":
        return [*dino_keys(vit_depth), *mlp, *_conv_bn("aff_ego_proj.", 2), *_conv_bn("aff_exo_proj.", 2),
                "aff_fc.weight", "aff_fc.bias"]
    ham = ["Hamburger.lower_bread.0.weight", "Hamburger.lower_bread.0.bias", "Hamburger.upper_bread.0.weight",
           *_bn("Hamburger.upper_bread.1.")]
    pool = ["attnpool.positional_embedding"] + [f"attnpool.{p}_proj.{k}" for p in "kqvc" for k in ("weight", "bias")]
    prompts = ["prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix"]
    return [*clip_text_keys(text_depth), *ham, *dino_keys(vit_depth), *mlp, *_conv_bn("aff_ego_proj.", 1),
            *_conv_bn("aff_exo_proj.", 1), *pool, *prompts, "fc.weight", "fc.bias"]


# ----------------------------------------------------------------------------- reading
def read_official_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a released plain state dict on the CPU (it was saved from CUDA tensors)."""
    p = Path(path)
    if not p.is_file():
        raise AffordError(f"{p}: checkpoint file not found")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AffordError(f"{p}: cannot read the checkpoint (truncated download or not a torch.save file: {first})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # tolerate a re-saved wrapper; the releases are plain
    if not isinstance(obj, Mapping) or not obj:
        raise AffordError(f"{p}: expected a state dict (key -> tensor), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise AffordError(f"{p}: entries that are not tensors: {_listing(sorted(map(str, bad)))}")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # DataParallel re-saves
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def detect_method(sd: Mapping[str, Tensor]) -> str | None:
    """'locate' / 'wsma' when the file holds only that method's marker keys, else None."""
    found = [m for m, keys in MARKERS.items() if any(k in sd for k in keys)]
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


# ----------------------------------------------------------------------------- conversion
def to_afford_names(sd: Mapping[str, Tensor], method: str) -> dict[str, Tensor]:
    """Rename official keys to afford's modules; head names are already identical."""
    out = {f"backbone.model.{k}": v for k, v in dino_to_hf_vit(strip_prefix(sd, "vit_model.")).items()}
    text_names = set(clip_text_keys(0)) | {k for k in sd if k.startswith("transformer.resblocks.")}
    if method == "wsma":
        text, logit_scale = openai_text_to_hf({k: v for k, v in sd.items() if k in text_names})
        out.update({f"text_encoder.model.{k}": v for k, v in text.items()})
        if logit_scale is not None:
            out["text_encoder.logit_scale"] = logit_scale.reshape(())
    skip = text_names if method == "wsma" else set()
    out.update({k: v for k, v in sd.items() if not k.startswith("vit_model.") and k not in skip})
    return {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}


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
        method: ``"locate"`` or ``"wsma"``.
        tokenizer: WSMA only: the CLIP BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``, a
            directory, or a callable) used once to tokenise the prompts; the ids are stored in the
            run, so later loading needs no vocabulary. Default: ``$AFFORD_CLIP_BPE``.
        classnames: the class list in index order; default: the built-in list of the split the
            class count identifies (36 Seen, 25 Unseen, 10 HICO-IIF).
        model_overrides: model-config fields to change (e.g. tiny architectures in tests).

    Returns the run directory. Raises AffordError for an unreadable file, a file of the other
    method, missing/unexpected keys, wrong shapes or an unknown class count.
    """
    method = method.lower()
    if method not in MARKERS:
        raise AffordError(f"--method: expected 'locate' or 'wsma', got {method!r}")
    out = Path(out_run_dir)
    if (out / RUN_FILE).exists():
        raise AffordError(f"{out}: already holds a run; choose a new --out directory")
    sd = read_official_file(file)
    source = str(file)
    found = detect_method(sd)
    if found is not None and found != method:
        marker = next(k for k in MARKERS[found] if k in sd)
        raise AffordError(f"{source}: this is an official {found.upper()} checkpoint (it has '{marker}'), "
                          f"not {method.upper()}; use --method {found}")

    _, cfg_cls = method_entry(method)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    overrides = dict(model_overrides or {})
    if unknown := sorted(set(overrides) - fields):
        raise AffordError(f"model_overrides: unknown {method} config fields {unknown}")
    if method == "wsma":
        overrides = {"faithful": True, "tokenizer": tokenizer, **overrides}
    model_cfg = cfg_cls(**overrides)

    classifier = CLASSIFIER[method]
    if classifier not in sd:
        check_keys(sd, official_keys(method), method, source)  # lists everything that is missing
    n_classes = int(sd[classifier].shape[0])
    if classnames is not None:
        classes = tuple(classnames)
        if len(classes) != n_classes:
            raise AffordError(f"{source}: '{classifier}' has {n_classes} classes but {len(classes)} class names were given")
        split = "custom"
    elif n_classes in SPLITS_BY_CLASS_COUNT:
        split, classes = SPLITS_BY_CLASS_COUNT[n_classes]
    else:
        raise AffordError(f"{source}: '{classifier}' has {n_classes} classes; official checkpoints have 36 (Seen), "
                          "25 (Unseen) or 10 (HICO-IIF); pass the class names for another split")

    model = create_method(method, model_cfg, classes)
    vit_depth = model.backbone.num_layers
    text_depth = len(model.text_encoder.model.text_model.encoder.layers) if method == "wsma" else 0
    check_keys(sd, official_keys(method, vit_depth, text_depth), method, source)
    converted = to_afford_names(sd, method)
    if method == "wsma":
        if model._ids_pending:
            raise AffordError(f"{source}: importing WSMA needs the CLIP BPE vocabulary to tokenise the prompts; "
                              "pass --tokenizer bpe_simple_vocab_16e6.txt.gz or set $AFFORD_CLIP_BPE")
        converted["prompt_ids"] = model.prompt_ids.clone()  # afford state; not in the official file
    load_strict(model, converted, source)

    # The prompt ids are in the weights, so the run must not depend on the vocabulary's path.
    saved_cfg = dataclasses.replace(model_cfg, tokenizer=None) if method == "wsma" else model_cfg
    run_cfg = RunConfig(method=method, model=saved_cfg)
    run_cfg.data.split = split
    if method == "wsma":
        for section, values in WSMA_RECIPE.items():
            for k, v in values.items():
                setattr(getattr(run_cfg, section), k, v)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / WEIGHTS)  # weights first: run.json marks a complete run
    write_run_info(out, run_cfg, classes, {"split": split, "imported_from": str(Path(file).resolve()),
                                           "official": True, "faithful": method == "wsma"})
    return out
