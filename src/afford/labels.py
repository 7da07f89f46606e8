"""What a model's class indices mean: the label space, stored in every run.

Affordance grounding has a flat list of affordances (index = CAM channel). HOI detection has
verbs, objects and the (verb, object) pairs that form its classes (HICO-DET's 600 from 117 verbs
and 80 objects). One dataclass holds either, so the factory, the checkpoint and the predictor
never assume a flat list, and ``run.json`` records exactly what the classifier's rows are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from afford.errors import AffordError, did_you_mean

TASKS: tuple[str, ...] = ("affordance", "hoi")


@dataclass(frozen=True)
class LabelSpace:
    """The classes of a model, in index order.

    Attributes:
        task: ``"affordance"`` or ``"hoi"``.
        names: one name per class index (affordances; HOI classes as ``"verb object"``).
        verbs, objects: HOI vocabularies (empty for affordances).
        pairs: HOI only, ``(verb index, object index)`` of each class, aligned with ``names``.
    """

    task: str
    names: tuple[str, ...]
    verbs: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise AffordError(f"labels.task: expected one of {TASKS}, got {self.task!r}")
        if not self.names:
            raise AffordError("labels.names: at least one class is needed")
        if len(set(self.names)) != len(self.names):
            dup = next(n for n in self.names if self.names.count(n) > 1)
            raise AffordError(f"labels.names: duplicate class name {dup!r}")
        if self.task == "hoi":
            if len(self.pairs) != len(self.names):
                raise AffordError(f"labels.pairs: expected one (verb, object) pair per class ({len(self.names)}), "
                                  f"got {len(self.pairs)}")
            for v, o in self.pairs:
                if not (0 <= v < len(self.verbs) and 0 <= o < len(self.objects)):
                    raise AffordError(f"labels.pairs: ({v}, {o}) outside {len(self.verbs)} verbs x "
                                      f"{len(self.objects)} objects")

    @classmethod
    def affordances(cls, names: Sequence[str]) -> LabelSpace:
        return cls(task="affordance", names=tuple(names))

    @classmethod
    def coerce(cls, labels: LabelSpace | Sequence[str]) -> LabelSpace:
        """A LabelSpace as is; a plain sequence of names is an affordance label space."""
        return labels if isinstance(labels, LabelSpace) else cls.affordances(labels)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Class index of ``name``; AffordError with a suggestion for an unknown name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise AffordError(f"unknown {self._noun} '{name}' for this model{did_you_mean(name, self.names)}") from None

    @property
    def _noun(self) -> str:
        return "affordance" if self.task == "affordance" else "interaction"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "names": list(self.names)}
        if self.task == "hoi":
            out.update(verbs=list(self.verbs), objects=list(self.objects), pairs=[list(p) for p in self.pairs])
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "labels") -> LabelSpace:
        """The label space a run recorded; a damaged record is an error naming ``where`` (the file)."""
        if not isinstance(d, dict) or "task" not in d or "names" not in d:
            raise AffordError(f"{where}: expected a mapping with 'task' and 'names'")

        def strings(key: str) -> tuple[str, ...]:
            value = d.get(key, [])
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise AffordError(f"{where}: labels.{key}: expected a list of names, got {value!r:.80}")
            return tuple(value)

        pairs = d.get("pairs", [])
        if not isinstance(pairs, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in p)
                for p in pairs):
            raise AffordError(f"{where}: labels.pairs: expected [verb index, object index] pairs, got {pairs!r:.80}")
        try:
            return cls(task=str(d["task"]), names=strings("names"), verbs=strings("verbs"),
                       objects=strings("objects"), pairs=tuple((v, o) for v, o in pairs))
        except AffordError as e:
            raise AffordError(f"{where}: {e}") from None
