"""HICO-DET annotations in the ``fredzzhang/hicodet`` JSON layout (hoi.md §6, §12).

The file is checked while it is read, because a wrong index here does not crash later: it silently
moves a pair to another class in the mAP. :func:`load_hicodet` stops at the first problem with one
line naming the file, the image and the field; :func:`read_hicodet` (used by ``afford data check``)
collects every problem instead and drops only the bad rows.

Boxes are kept exactly as in the file (1-based pixel indices, both corners inclusive) and object
indices in the file's alphabetical order. Code written for COCO-80 order (GEN-VLKT and kin) must go
through :func:`alpha_to_coco80` / :func:`coco80_to_alpha`, which map by name, never by position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from afford.errors import AffordError, did_you_mean, first_line
from afford.hoi.types import ImageGT

__all__ = [
    "COCO80_NAMES", "Finding", "HicoDet", "RARE_THRESHOLD", "alpha_to_coco80", "coco80_to_alpha",
    "load_hicodet", "rare_from_counts", "read_hicodet", "resolve_hicodet",
]

REQUIRED_KEYS = ("annotation", "filenames", "size", "objects", "verbs", "correspondence")
IMAGE_KEYS = ("boxes_h", "boxes_o", "hoi", "object", "verb")
#: a HOI class with fewer training pairs than this is rare (ho-rcnn ``eval_one.m``: ``num_inst < 10``).
RARE_THRESHOLD = 10
#: folders searched under a root for the images of a split, first match wins.
IMAGE_DIRS = ("images/{split}", "hico_20160224_det/images/{split}")

#: The 80 COCO categories in COCO-80 (contiguous, 0-based) order, spelt as HICO-DET spells them.
COCO80_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic_light", "fire_hydrant", "stop_sign", "parking_meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports_ball", "kite",
    "baseball_bat", "baseball_glove", "skateboard", "surfboard", "tennis_racket", "bottle",
    "wine_glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot_dog", "pizza", "donut", "cake", "chair", "couch", "potted_plant", "bed",
    "dining_table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell_phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy_bear",
    "hair_drier", "toothbrush",
)


class Finding(NamedTuple):
    """One problem found while reading: ``where`` names the image (or field), ``message`` the rest."""

    kind: str
    where: str
    message: str
    warning: bool = False


@dataclass(frozen=True, eq=False)
class HicoDet:
    """One split of HICO-DET, annotations aligned with ``filenames``.

    ``sizes``: ``(N, 2)`` int64 ``[w, h]``; ``correspondence``: ``(K, 3)`` int64 ``[hoi, object, verb]``
    with objects in the file's (alphabetical) order. ``rare``/``non_rare`` are empty when the file has
    no lists; fill them with :func:`rare_from_counts` on the training split.
    """

    filenames: tuple[str, ...]
    sizes: np.ndarray
    annotations: tuple[ImageGT, ...]
    empty: tuple[int, ...]
    objects: tuple[str, ...]
    verbs: tuple[str, ...]
    correspondence: np.ndarray
    rare: tuple[int, ...]
    non_rare: tuple[int, ...]
    image_dir: Path | None
    source: Path

    @property
    def num_classes(self) -> int:
        return int(self.correspondence.shape[0])

    @property
    def hoi_object(self) -> np.ndarray:
        """``(K,)`` object index of each HOI class."""
        return self.correspondence[:, 1]

    @property
    def hoi_verb(self) -> np.ndarray:
        """``(K,)`` verb index of each HOI class."""
        return self.correspondence[:, 2]

    @property
    def hoi_names(self) -> tuple[str, ...]:
        """``"verb object"`` per HOI class, with the file's underscores (``"no_interaction zebra"``)."""
        return tuple(f"{self.verbs[v]} {self.objects[o]}" for _, o, v in self.correspondence.tolist())

    @property
    def num_pairs(self) -> int:
        """Annotated rows over all images: one per (pair, HOI), the official instance count."""
        return sum(len(a) for a in self.annotations)

    def __len__(self) -> int:
        return len(self.filenames)


def rare_from_counts(train: HicoDet, threshold: int = RARE_THRESHOLD) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(rare, non_rare)`` from training counts: rare = fewer than ``threshold`` annotated pairs.

    Use it when the file has no ``rare`` list: ``dataclasses.replace(test, rare=r, non_rare=n)``.
    """
    counts = np.zeros(train.num_classes, np.int64)
    for a in train.annotations:
        np.add.at(counts, a.hoi, 1)
    rare = tuple(int(i) for i in np.flatnonzero(counts < threshold))
    return rare, tuple(int(i) for i in np.flatnonzero(counts >= threshold))


def _name_index(objects: Sequence[str]) -> dict[str, int]:
    objects = list(objects)
    if len(objects) != len(COCO80_NAMES) or len(set(objects)) != len(objects):
        raise AffordError(f"objects: expected the 80 distinct COCO object names, got {len(objects)} "
                          f"({len(set(objects))} distinct)")
    for name in objects:
        if name not in COCO80_NAMES:
            raise AffordError(f"objects: {name!r} is not a COCO-80 name{did_you_mean(name, COCO80_NAMES)}")
    return {name: i for i, name in enumerate(objects)}


def alpha_to_coco80(objects: Sequence[str]) -> np.ndarray:
    """``(80,)`` int64: entry ``a`` is the COCO-80 index of ``objects[a]`` (matched by name)."""
    index = _name_index(objects)
    coco = {name: i for i, name in enumerate(COCO80_NAMES)}
    out = np.empty(len(COCO80_NAMES), np.int64)
    for name, a in index.items():
        out[a] = coco[name]
    return out


def coco80_to_alpha(objects: Sequence[str]) -> np.ndarray:
    """``(80,)`` int64: entry ``c`` is the index in ``objects`` of ``COCO80_NAMES[c]`` (matched by name)."""
    index = _name_index(objects)
    return np.array([index[name] for name in COCO80_NAMES], np.int64)


def resolve_hicodet(path: str | Path, split: str | None = None) -> tuple[Path, Path | None]:
    """``(json file, image folder or None)`` for a JSON file or a root holding ``instances_{split}.json``.

    ``split`` defaults to ``test2015`` in a folder; a file is read as given unless ``split`` is
    asked for and the file is named for another one (``instances_test2015.json`` asked as
    ``train2015``): refused, as counting rare classes or training on the test annotations would
    otherwise go unnoticed.
    """
    p = Path(path).expanduser()
    if p.is_file():
        named = re.fullmatch(r"instances_(train2015|test2015)\.json", p.name)  # the official names only
        if split is not None and named and named.group(1) != split:
            raise AffordError(f"{p}: this is the {named.group(1)} file, but the {split} annotations are needed "
                              f"here; give instances_{split}.json or the folder holding both")
        return p, None
    split = split or "test2015"
    if not p.is_dir():
        raise AffordError(f"{p}: no such file or folder; expected instances_{split}.json or a folder holding it")
    file = p / f"instances_{split}.json"
    if not file.is_file():
        found = sorted(x.name for x in p.glob("instances_*.json"))
        hint = f" (found: {', '.join(found)})" if found else ""
        raise AffordError(f"{p}: no instances_{split}.json in this folder{hint}")
    return file, split_image_dir(p, split)


def split_image_dir(root: str | Path, split: str = "test2015") -> Path | None:
    """The folder of a split's images under a HICO-DET root (:data:`IMAGE_DIRS`, first found), or None."""
    root = Path(root)
    return next((root / d.format(split=split) for d in IMAGE_DIRS if (root / d.format(split=split)).is_dir()), None)


class _Reader:
    """Collects findings; in strict mode the first error becomes a one-line AffordError."""

    def __init__(self, source: Path, strict: bool) -> None:
        self.source, self.strict, self.findings = source, strict, []

    def add(self, kind: str, where: str, message: str, warning: bool = False) -> None:
        if self.strict and not warning:
            raise AffordError(f"{self.source}: {where}: {message}")
        self.findings.append(Finding(kind, where, message, warning))

    def fatal(self, field: str, message: str) -> AffordError:
        """An error that leaves nothing to read; raised in both modes."""
        return AffordError(f"{self.source}: {field}: {message}")


def _int_list(r: _Reader, raw: Any, field: str, n: int) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise r.fatal(field, f"expected a list of indices, got {type(raw).__name__}")
    for j, x in enumerate(raw):
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < n:
            raise r.fatal(f"{field}[{j}]", f"{x!r} is not an index 0..{n - 1}")
    if len(set(raw)) != len(raw):
        raise r.fatal(field, "lists an index twice")
    return tuple(raw)


def _names(r: _Reader, raw: Any, field: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise r.fatal(field, "expected a non-empty list of names")
    if len(set(raw)) != len(raw):
        raise r.fatal(field, "lists a name twice")
    return tuple(raw)


def _correspondence(r: _Reader, raw: Any, n_obj: int, n_verb: int) -> np.ndarray:
    try:
        corr = np.asarray(raw)
    except ValueError:
        corr = np.zeros(0)
    if corr.ndim != 2 or corr.shape[1] != 3 or corr.shape[0] == 0 or corr.dtype.kind not in "iu":
        raise r.fatal("correspondence", "expected a list of [hoi, object, verb] integer triples")
    corr = corr.astype(np.int64)
    bad = np.flatnonzero((corr[:, 0] != np.arange(len(corr))) | (corr[:, 1] < 0) | (corr[:, 1] >= n_obj)
                         | (corr[:, 2] < 0) | (corr[:, 2] >= n_verb))
    if bad.size:
        i = int(bad[0])
        raise r.fatal(f"correspondence[{i}]", f"{corr[i].tolist()}: expected [{i}, object 0..{n_obj - 1}, "
                      f"verb 0..{n_verb - 1}]")
    return corr


#: Largest image side accepted in a ``size`` field (JPEG's limit); 1e300 was cast to int64 garbage.
MAX_IMAGE_SIDE = 65535


def _sizes(r: _Reader, raw: Any, n: int) -> np.ndarray:
    try:
        sizes = np.asarray(raw, dtype=np.float64).reshape(n, 2) if isinstance(raw, list) and len(raw) == n else None
    except (TypeError, ValueError):
        sizes = None
    if sizes is None:
        raise r.fatal("size", "expected one [width, height] pair per image")
    bad = np.flatnonzero(~np.isfinite(sizes).all(1) | (sizes <= 0).any(1) | (sizes != np.round(sizes)).any(1)
                         | (sizes > MAX_IMAGE_SIDE).any(1))
    if bad.size:
        raise r.fatal(f"size[{int(bad[0])}]", f"{raw[int(bad[0])]!r}: expected positive integer [width, height] "
                      f"of at most {MAX_IMAGE_SIDE} px")
    return sizes.astype(np.int64)


def _empty_gt() -> ImageGT:
    z = np.zeros((0, 4), np.float64)
    i = np.zeros(0, np.int64)
    return ImageGT(boxes_h=z, boxes_o=z.copy(), hoi=i, obj=i.copy(), verb=i.copy())


def _boxes(raw: Any, n: int) -> np.ndarray | None:
    try:
        b = np.asarray(raw)  # numbers only: float64 would turn the string "12.5" into 12.5 silently
    except (TypeError, ValueError):
        return None
    if b.size and b.dtype.kind not in "iuf":  # strings, booleans, nested objects
        return None
    b = b.astype(np.float64)
    if n == 0 and b.size == 0:
        return np.zeros((0, 4), np.float64)
    return b if b.shape == (n, 4) and np.isfinite(b).all() else None


def _indices(raw: Any) -> np.ndarray | None:
    if isinstance(raw, list) and any(isinstance(x, bool) for x in raw):
        return None  # JSON true beside integers would be read as 1
    try:
        b = np.asarray(raw)
    except (TypeError, ValueError):  # ragged nesting
        return None
    if b.ndim != 1 or (b.size and b.dtype.kind not in "iu"):
        return None
    return b.astype(np.int64)


def _image(r: _Reader, where: str, ann: Any, corr: np.ndarray, n_obj: int, n_verb: int) -> ImageGT:
    """Parse one image's annotation; bad images become empty, bad rows are dropped (lenient mode)."""
    if not isinstance(ann, dict) or any(k not in ann for k in IMAGE_KEYS):
        missing = [k for k in IMAGE_KEYS if not isinstance(ann, dict) or k not in ann]
        r.add("bad_annotation", where, f"annotation lacks {', '.join(missing)}; expected keys {', '.join(IMAGE_KEYS)}")
        return _empty_gt()
    lists = {k: ann[k] for k in IMAGE_KEYS}
    lens = {k: len(v) if isinstance(v, list) else -1 for k, v in lists.items()}
    if len(set(lens.values())) != 1 or -1 in lens.values():
        shown = ", ".join(f"{k}={n if n >= 0 else 'not a list'}" for k, n in lens.items())
        r.add("bad_annotation", where, f"annotation lists differ in length ({shown}); expected one entry per pair")
        return _empty_gt()
    n = lens["hoi"]
    boxes = {k: _boxes(lists[k], n) for k in ("boxes_h", "boxes_o")}
    idx = {k: _indices(lists[k]) for k in ("hoi", "object", "verb")}
    for k, v in (*boxes.items(), *idx.items()):
        if v is None:
            what = "[x1, y1, x2, y2] finite numbers per pair" if k.startswith("boxes") else "integer indices"
            r.add("bad_annotation", where, f"{k}: expected {what}")
            return _empty_gt()
    hoi, obj, verb = idx["hoi"], idx["object"], idx["verb"]
    keep = np.ones(n, bool)
    for k, v, hi in (("hoi", hoi, len(corr)), ("object", obj, n_obj), ("verb", verb, n_verb)):
        bad = (v < 0) | (v >= hi)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            r.add("unknown_class", where, f"{k}[{j}] = {int(v[j])} is out of range; expected 0..{hi - 1}"
                  + (f" ({int(bad.sum())} rows)" if bad.sum() > 1 else ""))
            keep &= ~bad
    ok = np.flatnonzero(keep)
    wrong = ok[(corr[hoi[ok], 1] != obj[ok]) | (corr[hoi[ok], 2] != verb[ok])]
    if wrong.size:
        j = int(wrong[0])
        r.add("class_mismatch", where, f"row {j}: hoi {int(hoi[j])} is [object {int(corr[hoi[j], 1])}, verb "
              f"{int(corr[hoi[j], 2])}] in correspondence, but the row says object {int(obj[j])}, verb {int(verb[j])}"
              + (f" ({wrong.size} rows)" if wrong.size > 1 else ""))
        keep[wrong] = False
    return ImageGT(boxes_h=boxes["boxes_h"][keep], boxes_o=boxes["boxes_o"][keep], hoi=hoi[keep],
                   obj=obj[keep], verb=verb[keep])


def _parse(file: Path, image_dir: Path | None, strict: bool) -> tuple[HicoDet, list[Finding]]:
    r = _Reader(file, strict)
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AffordError(f"{file}: not readable as JSON ({first_line(e)})") from None
    if not isinstance(raw, dict):
        raise r.fatal("top level", f"expected a JSON object with keys {', '.join(REQUIRED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise r.fatal("keys", f"missing {', '.join(missing)}; expected the fredzzhang/hicodet layout "
                      f"({', '.join(REQUIRED_KEYS)})")
    filenames = raw["filenames"]
    if not isinstance(filenames, list) or not all(isinstance(x, str) for x in filenames):
        raise r.fatal("filenames", "expected a list of image file names")
    if not filenames:
        raise r.fatal("filenames", "no images (an mAP over nothing would read as 0.00)")
    seen: dict[str, int] = {}
    for i, name in enumerate(filenames):
        if name in seen:  # detections are keyed by file name: the two images could not be told apart
            raise r.fatal(f"filenames[{i}]", f"{name!r} is listed twice (also at [{seen[name]}])")
        seen[name] = i
    lens = {k: len(raw[k]) if isinstance(raw[k], list) else -1 for k in ("filenames", "size", "annotation")}
    if len(set(lens.values())) != 1:
        shown = ", ".join(f"{k}={n if n >= 0 else 'not a list'}" for k, n in lens.items())
        raise r.fatal("lengths", f"filenames, size and annotation must have one entry per image ({shown})")
    objects, verbs = _names(r, raw["objects"], "objects"), _names(r, raw["verbs"], "verbs")
    corr = _correspondence(r, raw["correspondence"], len(objects), len(verbs))
    sizes = _sizes(r, raw["size"], len(filenames))
    k = len(corr)
    rare = _int_list(r, raw["rare"], "rare", k) if "rare" in raw else None
    non_rare = _int_list(r, raw["non_rare"], "non_rare", k) if "non_rare" in raw else None
    if rare is not None and non_rare is not None:
        if set(rare) & set(non_rare) or len(rare) + len(non_rare) != k:
            raise r.fatal("rare/non_rare", f"expected two disjoint lists covering all {k} HOI classes")
    elif rare is not None or non_rare is not None:  # one list given: the other is its complement
        given = set(rare or ()) | set(non_rare or ())
        rest = tuple(i for i in range(k) if i not in given)
        rare, non_rare = (rare, rest) if rare is not None else (rest, non_rare)
    annotations = tuple(_image(r, f"image {i} ({name})", ann, corr, len(objects), len(verbs))
                        for i, (name, ann) in enumerate(zip(filenames, raw["annotation"], strict=True)))
    empty = tuple(i for i, a in enumerate(annotations) if len(a) == 0)
    listed = raw.get("empty")
    if "empty" in raw and not (isinstance(listed, list)
                               and all(isinstance(i, int) and not isinstance(i, bool) for i in listed)):
        r.add("empty_mismatch", "empty", "expected a list of image indices; afford uses the annotations",
              warning=True)
    elif "empty" in raw and sorted(listed) != list(empty):
        r.add("empty_mismatch", "empty", f"lists {len(listed)} images but {len(empty)} have no pairs; "
              "afford uses the annotations", warning=True)
    dataset = HicoDet(filenames=tuple(filenames), sizes=sizes, annotations=annotations, empty=empty,
                      objects=objects, verbs=verbs, correspondence=corr, rare=rare or (),
                      non_rare=non_rare or (), image_dir=image_dir, source=file)
    return dataset, r.findings


def load_hicodet(path: str | Path, split: str | None = None, image_dir: str | Path | None = None) -> HicoDet:
    """Load a JSON file, or ``instances_{split}.json`` under a root (default ``test2015``); the first
    problem raises one line. A file named for another split than an explicit ``split`` is refused.

    With a root, ``images/{split}/`` (or ``hico_20160224_det/images/{split}/``) becomes ``image_dir``
    when present; ``image_dir`` overrides it.
    """
    file, found = resolve_hicodet(path, split)
    return _parse(file, Path(image_dir) if image_dir is not None else found, strict=True)[0]


def read_hicodet(path: str | Path, split: str | None = None,
                 image_dir: str | Path | None = None) -> tuple[HicoDet, list[Finding]]:
    """Like :func:`load_hicodet` but keeps going: bad rows are dropped and reported as findings.

    Still raises :class:`AffordError` when nothing can be read (no file, bad JSON, missing keys,
    filenames/size/annotation of different lengths, a broken class list).
    """
    file, found = resolve_hicodet(path, split)
    return _parse(file, Path(image_dir) if image_dir is not None else found, strict=False)
