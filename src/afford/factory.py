"""The method registry: one entry per method names everything the rest of afford needs.

Each :class:`MethodSpec` names the method's class, its config dataclass, its recipe (the
packaged preset whose ``data``/``train`` sections are the paper's training recipe), its official
checkpoint format (or None) and the task it trains on. The CLI's choices, the importer and the
trainer's task all derive from here, so adding a method is one entry, not a hunt for branches.
Entries are ``"module:attr"`` strings imported lazily, so a broken optional method never stops
the others from loading.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afford.errors import AffordError, did_you_mean
from afford.labels import LabelSpace

if TYPE_CHECKING:
    from collections.abc import Sequence

    from afford.config import RunConfig
    from afford.methods.base import Method
    from afford.methods.official import OfficialFormat


@dataclass(frozen=True)
class MethodSpec:
    cls: str  # "module:Class"
    config: str  # "module:ConfigDataclass"
    recipe: str  # packaged preset holding the paper's data/train recipe
    task: str = "affordance"  # key of afford.engine.tasks.TASKS
    official: str | None = None  # "module:OfficialFormat" of the released checkpoints
    title: str = ""  # how reports name it (the paper's spelling); defaults to the key upper-cased
    # A run this method's config points at, trained first by pipelines that train from scratch
    # (``afford demo``): (method whose run it is, the config key that takes the run directory).
    needs: tuple[str, str] | None = None

    def display_name(self, key: str) -> str:
        return self.title or key.upper()


METHODS: dict[str, MethodSpec] = {
    "locate": MethodSpec("afford.methods.locate:LOCATE", "afford.methods.locate:LOCATEConfig", "locate_seen",
                         official="afford.methods.locate_official:LOCATE_OFFICIAL"),
    "wsma": MethodSpec("afford.methods.wsma:WSMA", "afford.methods.wsma:WSMAConfig", "wsma_seen",
                       official="afford.methods.wsma_official:WSMA_OFFICIAL"),
    "looptrans": MethodSpec("afford.methods.looptrans:LoopTrans", "afford.methods.looptrans:LoopTransConfig",
                            "looptrans_seen", official="afford.methods.looptrans_official:LOOPTRANS_OFFICIAL",
                            title="LoopTrans", needs=("looptrans_cluster", "model.cluster_weights")),
    "selectivecl": MethodSpec("afford.methods.selectivecl:SelectiveCL", "afford.methods.selectivecl:SelectiveCLConfig",
                              "selectivecl_seen", official="afford.methods.selectivecl_official:SELECTIVECL_OFFICIAL",
                              title="SelectiveCL"),
    # afford's tiny CLIP trained on SynthAGD's weak labels: the offline demo's SelectiveCL affinity.
    "synth_clip": MethodSpec("afford.methods.synth_clip:SynthCLIP", "afford.methods.synth_clip:SynthCLIPConfig",
                             "synth_clip_synthagd_demo", title="SynthAGD tiny CLIP (afford)"),
    # CLIP4HOI as reconstructed from the paper and UPT/THID (hoi.md §2; no code was released).
    "clip4hoi": MethodSpec("afford.methods.clip4hoi:CLIP4HOI", "afford.methods.clip4hoi:CLIP4HOIConfig",
                           "clip4hoi_hicodet", task="hoi", title="CLIP4HOI (reconstruction)"),
    # LoopTrans's cluster module, pretrained without labels on a split's training images.
    "looptrans_cluster": MethodSpec("afford.methods.looptrans_cluster:LoopTransCluster",
                                    "afford.methods.looptrans_cluster:LoopTransClusterConfig",
                                    "looptrans_cluster_seen", task="images", title="LoopTrans cluster module"),
    # AffinityNet's head trained on a run's CAMs (afford refine train; affinity.md §12.2).
    "affinity": MethodSpec("afford.refine.head_training:AffinityHeadTraining",
                           "afford.refine.head_training:AffinityHeadConfig", "affinity_refiner", task="affinity",
                           title="AffinityNet head"),
}


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def list_methods() -> list[str]:
    """The method names ``create_method`` and a config's ``method:`` accept, sorted."""
    return sorted(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The registry entry of ``name``; AffordError for an unknown method."""
    key = name.lower()
    if key not in METHODS:
        raise AffordError(f"unknown method '{name}'{did_you_mean(key, METHODS)}; known: {', '.join(METHODS)}")
    return METHODS[key]


def method_entry(name: str) -> tuple[type, type]:
    """(Method class, config dataclass) for ``name``; AffordError for an unknown method."""
    spec = method_spec(name)
    return _load(spec.cls), _load(spec.config)


def create_method(name: str, model_cfg: Any, labels: LabelSpace | Sequence[str]) -> Method:
    """Instantiate a method from its config dataclass and its label space (a list of names is
    an affordance label space, index order)."""
    cls, _ = method_entry(name)
    return cls(model_cfg, LabelSpace.coerce(labels))


def official_methods() -> list[str]:
    """Methods whose released checkpoints ``afford import`` converts."""
    return sorted(m for m, s in METHODS.items() if s.official)


def official_format(name: str) -> OfficialFormat:
    spec = method_spec(name)
    if spec.official is None:
        raise AffordError(f"--method: {name} has no official checkpoint importer; "
                          f"expected one of {', '.join(official_methods())}")
    return _load(spec.official)


def recipe_config(name: str) -> RunConfig:
    """The method's paper recipe as a RunConfig (its packaged preset, no overrides)."""
    from afford.config import load_config

    return load_config(method_spec(name).recipe)


def packaged_config(name: str) -> Path | None:
    """Resolve a config shipped with the package (``locate_seen`` or ``locate_seen.yaml``)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    candidate = resources.files("afford") / "configs" / f"{stem}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def list_presets() -> list[str]:
    """Names of the packaged presets (``afford list``)."""
    return sorted(p.name[:-5] for p in (resources.files("afford") / "configs").iterdir() if p.name.endswith(".yaml"))


def affordance_run_info(path: str | Path) -> dict:
    """run.json of an affordance run, or one line pointing HOI runs at the HOI commands."""
    from afford.checkpoint import read_run_info

    info = read_run_info(Path(path))
    if info.get("labels", {}).get("task") == "hoi":
        raise AffordError(f"{path}: a {info['method']} run (HOI detection), not an affordance model; "
                          "use 'afford hoi eval' / 'afford hoi predict'")
    task = method_spec(info["method"]).task
    if task == "affinity":
        teacher = info.get("teacher", {}).get("path", "its teacher run")
        raise AffordError(f"{path}: an AffinityNet head, which refines another run's maps; use "
                          f"'--checkpoint {teacher} --refine affinity'")
    if task != "affordance":
        raise AffordError(f"{path}: a {info['method']} run is a training stage that makes no maps (task {task!r})")
    return info
