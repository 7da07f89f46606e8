"""Zero-shot HICO-DET splits (hoi.md §8) and the training-time removal of unseen pairs (§8.6).

RF-UC, NF-UC and the UO ranges are shipped verbatim from the spec (GEN-VLKT's
``hico_unseen_index``), so a typo shows up as a failed count in the tests rather than as a silently
different benchmark. UV has no published id list here: it is derived from the verb names through the
dataset's correspondence, by name and without duplicates (ADA-CM#13).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from afford.errors import AffordError, did_you_mean
from afford.hoi.hicodet import HicoDet
from afford.hoi.types import ImageGT

__all__ = [
    "NF_UC", "RF_UC", "RemovalReport", "SPLIT_NAMES", "UO", "UO_OBJECTS", "UO_RANGES", "UV_VERBS",
    "remove_unseen", "unseen_object_hois", "unseen_verb_hois", "zero_shot_unseen",
]

HICO_CLASSES = 600

#: Rare-first unseen composition (VCL protocol), hoi.md §8.1: 120 ids, all rare.
RF_UC: tuple[int, ...] = (
    8, 22, 27, 44, 50, 55, 62, 66, 70, 76, 77, 80, 83, 84, 90, 99, 100, 104, 107, 127,
    135, 136, 149, 158, 168, 179, 181, 184, 188, 189, 192, 195, 198, 205, 206, 216, 222, 229, 238, 239,
    254, 255, 257, 260, 261, 262, 274, 279, 280, 281, 286, 289, 292, 303, 311, 315, 317, 325, 333, 334,
    345, 350, 351, 354, 358, 364, 379, 381, 389, 390, 391, 395, 397, 398, 399, 401, 402, 403, 405, 407,
    410, 416, 418, 427, 429, 436, 439, 440, 449, 463, 469, 474, 482, 485, 498, 499, 504, 509, 517, 520,
    522, 526, 531, 535, 539, 546, 547, 548, 552, 555, 556, 560, 581, 586, 592, 593, 595, 596, 597, 599,
)

#: Non-rare-first unseen composition, hoi.md §8.2: 120 ids, all non-rare.
NF_UC: tuple[int, ...] = (
    6, 7, 9, 11, 18, 19, 20, 23, 25, 29, 38, 41, 42, 45, 48, 53, 54, 56, 60, 61,
    64, 67, 73, 75, 89, 91, 93, 94, 106, 110, 115, 131, 139, 140, 141, 146, 152, 153, 154, 155,
    159, 162, 163, 169, 173, 176, 185, 190, 191, 193, 197, 208, 212, 215, 218, 223, 226, 228, 230, 240,
    245, 246, 248, 249, 250, 266, 284, 294, 297, 304, 308, 312, 320, 323, 329, 337, 338, 340, 346, 370,
    371, 374, 377, 383, 385, 387, 417, 446, 455, 456, 457, 459, 461, 470, 471, 472, 478, 479, 480, 481,
    483, 493, 506, 508, 515, 516, 518, 529, 534, 544, 559, 566, 572, 575, 576, 577, 582, 583, 589, 594,
)

#: Unseen objects, hoi.md §8.3.
UO_OBJECTS: tuple[str, ...] = (
    "baseball_bat", "clock", "dog", "elephant", "frisbee", "pizza", "refrigerator", "skateboard", "skis",
    "tennis_racket", "toothbrush", "zebra",
)
#: Inclusive HOI id ranges of the UO split, hoi.md §8.3 (100 ids: every HOI of the 12 objects).
UO_RANGES: tuple[tuple[int, int], ...] = (
    (111, 128), (224, 231), (290, 294), (313, 324), (336, 341), (418, 433), (453, 473), (533, 537),
    (558, 561), (595, 599),
)
UO: tuple[int, ...] = tuple(i for lo, hi in UO_RANGES for i in range(lo, hi + 1))

#: Unseen verbs, hoi.md §8.4 (84 HOIs on HICO-DET).
UV_VERBS: tuple[str, ...] = (
    "block", "dribble", "feed", "herd", "hose", "inspect", "install", "move", "park", "ride", "sail",
    "scratch", "sign", "squeeze", "stab", "stop_at", "swing", "tag", "toast", "wear",
)

SPLIT_NAMES = ("rf-uc", "nf-uc", "uo", "uv")


def _indices_of(names: tuple[str, ...], vocabulary: tuple[str, ...], field: str) -> set[int]:
    missing = [n for n in names if n not in vocabulary]
    if missing:
        raise AffordError(f"{field}: {missing[0]!r} is not in the dataset{did_you_mean(missing[0], vocabulary)}")
    return {vocabulary.index(n) for n in names}


def unseen_verb_hois(dataset: HicoDet) -> tuple[int, ...]:
    """Sorted distinct HOI ids whose verb is one of :data:`UV_VERBS` (84 on HICO-DET)."""
    verbs = _indices_of(UV_VERBS, dataset.verbs, "verbs")
    return tuple(int(i) for i in np.flatnonzero(np.isin(dataset.hoi_verb, sorted(verbs))))


def unseen_object_hois(dataset: HicoDet) -> tuple[int, ...]:
    """Sorted HOI ids whose object is one of :data:`UO_OBJECTS`; equals :data:`UO` on HICO-DET."""
    objects = _indices_of(UO_OBJECTS, dataset.objects, "objects")
    return tuple(int(i) for i in np.flatnonzero(np.isin(dataset.hoi_object, sorted(objects))))


def _check_official_order(dataset: HicoDet, key: str) -> None:
    """The named splits are lists of HOI ids in HICO's order (hoi.md §6): on a file whose 600 classes
    are ordered otherwise they name other classes. The object of each id must be HICO's (the 100 UO
    ids are exactly the HOIs of the 12 UO objects)."""
    try:
        same = unseen_object_hois(dataset) == UO
    except AffordError:
        same = False
    if not same:
        raise AffordError(f"{dataset.source}: its 600 HOI classes are not in HICO-DET's official order (the objects "
                          f"of the HOI ids differ), so the {key} split's ids would name other classes; give the "
                          "split as a file of this file's HOI ids instead")


def _read_ids(file: Path, n: int) -> tuple[int, ...]:
    """HOI ids from a JSON list (or ``{"unseen": [...]}``) or a text file (whitespace/commas, ``#`` comments)."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise AffordError(f"{file}: not readable ({type(e).__name__})") from None
    entries: list[tuple[str, object]] = []  # (where, value)
    if file.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise AffordError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(raw, dict) and "unseen" in raw:
            raw = raw["unseen"]
        if not isinstance(raw, list):
            raise AffordError(f"{file}: expected a JSON list of HOI ids (or {{\"unseen\": [...]}})")
        entries = [(f"entry {j}", v) for j, v in enumerate(raw)]
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            for tok in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
                if tok:
                    entries.append((f"line {lineno}", int(tok) if re.fullmatch(r"[+-]?\d+", tok) else tok))
    if not entries:
        raise AffordError(f"{file}: no HOI ids; expected ids 0..{n - 1}")
    seen: set[int] = set()
    for where, v in entries:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise AffordError(f"{file}: {where}: {v!r} is not an HOI id 0..{n - 1}")
        if v in seen:
            raise AffordError(f"{file}: {where}: HOI {v} is listed twice")
        seen.add(v)
    return tuple(sorted(seen))


def zero_shot_unseen(name_or_file: str | Path, dataset: HicoDet) -> tuple[int, ...]:
    """Sorted unseen HOI ids of a named split (``rf-uc``, ``nf-uc``, ``uo``, ``uv``) or of a file."""
    key = str(name_or_file).strip().lower().replace("_", "-")
    if key in SPLIT_NAMES:
        if dataset.num_classes != HICO_CLASSES:
            raise AffordError(f"{dataset.source}: the {key} split is defined on the {HICO_CLASSES} HICO-DET "
                              f"classes, this file has {dataset.num_classes}")
        _check_official_order(dataset, key)
        if key == "uv":
            return unseen_verb_hois(dataset)
        return {"rf-uc": RF_UC, "nf-uc": NF_UC, "uo": UO}[key]
    path = Path(name_or_file).expanduser()
    if not path.is_file():
        raise AffordError(f"zero-shot split {str(name_or_file)!r}: expected {', '.join(SPLIT_NAMES)} or a file of "
                          f"HOI ids{did_you_mean(key, SPLIT_NAMES)}")
    return _read_ids(path, dataset.num_classes)


@dataclass(frozen=True)
class RemovalReport:
    """What :func:`remove_unseen` took out; ``kept`` maps new image positions to original ones."""

    removed_rows: int
    removed_pairs: int
    dropped_images: int  # images emptied by the removal
    dropped_empty: int  # images that had no pairs to begin with
    kept: tuple[int, ...]

    def message(self) -> str:
        return (f"zero-shot removal: {self.removed_pairs} pairs ({self.removed_rows} rows) with an unseen HOI "
                f"removed; {self.dropped_images} images left without pairs and {self.dropped_empty} already "
                f"empty images dropped; {len(self.kept)} images kept")


def _pair_ids(a: ImageGT) -> np.ndarray:
    """Row -> pair id; a pair is an identical (human box, object box) within the image."""
    if len(a) == 0:
        return np.zeros(0, np.int64)
    return np.unique(np.concatenate([a.boxes_h, a.boxes_o], 1), axis=0, return_inverse=True)[1].reshape(-1)


def remove_unseen(dataset: HicoDet, unseen: tuple[int, ...] | list[int],
                  drop_empty: bool = True) -> tuple[HicoDet, RemovalReport]:
    """Training annotations without unseen HOIs (hoi.md §8.6, GEN-VLKT's rule).

    Every pair carrying an unseen HOI loses all its rows, not only the unseen one, so no box of an
    unseen interaction is trained on as another class. With ``drop_empty`` (the default, as in
    GEN-VLKT) images left with no pairs are dropped, as are images that had none.
    """
    ids = np.asarray(list(unseen), np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= dataset.num_classes):
        raise AffordError(f"unseen HOI ids: expected 0..{dataset.num_classes - 1}, got {int(ids.min())}.."
                          f"{int(ids.max())}")
    removed_rows = removed_pairs = dropped = dropped_empty = 0
    kept: list[int] = []
    annotations: list[ImageGT] = []
    for i, a in enumerate(dataset.annotations):
        pair = _pair_ids(a)
        bad_pairs = np.unique(pair[np.isin(a.hoi, ids)])
        keep = ~np.isin(pair, bad_pairs)
        removed_pairs += int(bad_pairs.size)
        removed_rows += int((~keep).sum())
        if drop_empty and not keep.any():
            dropped += len(a) > 0
            dropped_empty += len(a) == 0
            continue
        kept.append(i)
        annotations.append(a if keep.all() else ImageGT(boxes_h=a.boxes_h[keep], boxes_o=a.boxes_o[keep],
                                                        hoi=a.hoi[keep], obj=a.obj[keep], verb=a.verb[keep]))
    out = replace(dataset, filenames=tuple(dataset.filenames[i] for i in kept), sizes=dataset.sizes[kept],
                  annotations=tuple(annotations), empty=tuple(j for j, a in enumerate(annotations) if len(a) == 0))
    return out, RemovalReport(removed_rows, removed_pairs, dropped, dropped_empty, tuple(kept))


def check_same_classes(train: HicoDet, test: HicoDet, where: str) -> None:
    """Training and test files define one HOI class list (ids, objects, verbs): training counts (rare
    classes, the frequency prior) and unseen ids are applied to the test classes by id."""
    if not np.array_equal(train.correspondence, test.correspondence) or train.objects != test.objects \
            or train.verbs != test.verbs:
        raise AffordError(f"{where}: the training file {train.source} and the test file {test.source} define "
                          "different HOI classes (correspondence/objects/verbs)")


def report_groups(test: HicoDet, unseen: Sequence[int]) -> tuple[dict[str, list[int]], list[str]]:
    """Unseen/seen for a zero-shot setting, else rare/non-rare: ``(groups, empty)``, the groups that
    have classes and the names of those that have none (every class of a small training set is
    rare: no non-rare mAP, reported n/a rather than failing after training)."""
    if unseen:
        out = {"unseen": sorted(unseen), "seen": [c for c in range(test.num_classes) if c not in set(unseen)]}
    else:
        out = {"rare": list(test.rare), "non_rare": list(test.non_rare)}
    return {k: v for k, v in out.items() if v}, sorted(k for k, v in out.items() if not v)
