"""Reading the AGD20K directory layout (protocol.md §1.1) without judging it.

Shared by the loaders (``agd20k.py``, which raise on a bad tree) and by ``check.py`` (which
reports every problem instead). Listings are always sorted, so nothing depends on the order
in which the file system returns entries (methods.md §9, defect 11).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from afford.data.classes import BUILTIN_AFFORDANCES, HICO_IIF_AFFORDANCES, OBJECTS
from afford.errors import AffordError, did_you_mean

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})
SUBTREES: tuple[str, ...] = ("exocentric", "egocentric", "test_egocentric", "GT")
CLASS_FILE = "afford_classes.json"
# SynthAGD extras (not part of AGD20K), relative to the data root that holds the split folders:
# ``extras/<Split>/hoi.json`` and the object/part mask of every egocentric image at EXTRAS_MASK.
# Written by ``afford.synthagd``, read by ``Split.extras_mask``.
EXTRAS_DIR = "extras"
EXTRAS_MASK = EXTRAS_DIR + "/{split}/masks/{aff}/{obj}/{stem}_{kind}.png"
# Folder names under which the HICO-IIF split is published (WSMA: HICO-IIF, SelectiveCL: HICO).
HICO_NAMES: tuple[str, ...] = ("HICO-IIF", "HICO")
KNOWN_SPLITS: tuple[str, ...] = ("Seen", "Unseen", *HICO_NAMES)

Group = tuple[str, str]  # (affordance, object)


def subtree_path(root: Path, subtree: str, test_folder: str = "testset") -> Path:
    """Folder of one of the four AGD20K sub-trees of a split root."""
    return {
        "exocentric": root / "trainset" / "exocentric",
        "egocentric": root / "trainset" / "egocentric",
        "test_egocentric": root / test_folder / "egocentric",
        "GT": root / test_folder / "GT",
    }[subtree]


def is_gt_mask(p: Path) -> bool:
    """GT masks are .png in any case (as images are matched case-insensitively)."""
    return p.suffix.lower() == ".png"


def is_image(p: Path) -> bool:
    """Images are .jpg/.jpeg/.png in any case; everything else (e.g. testsetv2 .json) is skipped."""
    return p.suffix.lower() in IMAGE_SUFFIXES


def _sorted_entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda p: p.name)


@dataclass
class Scan:
    """One sub-tree ``<aff>/<obj>/<file>`` as found on disk.

    ``groups`` maps (aff, obj) to the sorted image paths (also for empty object folders, so that
    the checker can report them); ``affordance_dirs`` and ``object_dirs`` list every folder seen.
    """

    base: Path
    exists: bool = False
    groups: dict[Group, list[Path]] = field(default_factory=dict)
    affordance_dirs: list[str] = field(default_factory=list)
    object_dirs: list[Group] = field(default_factory=list)
    empty_affordances: list[str] = field(default_factory=list)
    non_images: list[Path] = field(default_factory=list)
    stray_files: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(len(v) for v in self.groups.values())


def scan_subtree(base: Path) -> Scan:
    """List ``base/<aff>/<obj>/*`` (sorted). Never raises: unreadable folders are recorded."""
    scan = Scan(base=base, exists=base.is_dir())
    if not scan.exists:
        return scan
    try:
        aff_entries = _sorted_entries(base)
    except OSError as e:
        scan.unreadable.append((base, str(e)))
        return scan
    for aff_dir in aff_entries:
        if not aff_dir.is_dir():
            scan.stray_files.append(aff_dir)
            continue
        scan.affordance_dirs.append(aff_dir.name)
        try:
            obj_entries = _sorted_entries(aff_dir)
        except OSError as e:
            scan.unreadable.append((aff_dir, str(e)))
            continue
        obj_dirs = [p for p in obj_entries if p.is_dir()]
        scan.stray_files += [p for p in obj_entries if not p.is_dir()]
        if not obj_dirs:
            scan.empty_affordances.append(aff_dir.name)
        for obj_dir in obj_dirs:
            key = (aff_dir.name, obj_dir.name)
            scan.object_dirs.append(key)
            try:
                files = _sorted_entries(obj_dir)
            except OSError as e:
                scan.unreadable.append((obj_dir, str(e)))
                continue
            scan.groups[key] = [p for p in files if p.is_file() and is_image(p)]
            scan.non_images += [p for p in files if not (p.is_file() and is_image(p))]
    return scan


def canonical_split_name(split: str) -> str:
    """'seen' -> 'Seen', 'hico' -> 'HICO-IIF'; any other name is returned unchanged."""
    for known in KNOWN_SPLITS:
        if split.lower() == known.lower():
            return "HICO-IIF" if known in HICO_NAMES else known
    return split


def _holds_split(folder: Path) -> bool:
    return (folder / "trainset").is_dir() or (folder / "testset").is_dir()


def resolve_split_root(data_root: str | Path, split: str | None) -> tuple[Path, str]:
    """Find the split folder: ``data_root/<split>`` (any accepted spelling), else ``data_root``.

    Returns (split root, canonical split name). ``split=None`` means ``data_root`` is itself a
    split folder.
    """
    data_root = Path(data_root).expanduser()
    if not data_root.is_dir():
        raise AffordError(f"{data_root}: data root not found (expected an AGD20K-style folder)")
    if split is not None:
        name = canonical_split_name(split)
        spellings = list(HICO_NAMES) if name == "HICO-IIF" else [split, name]
        children = {p.name: p for p in _sorted_entries(data_root) if p.is_dir()}
        for s in spellings:  # exact spelling first, then case-insensitive
            if s in children:
                return children[s], name
        for s in spellings:
            for child_name, child in children.items():
                if child_name.lower() == s.lower():
                    return child, name
        own = canonical_split_name(data_root.name)
        if _holds_split(data_root) and (own == name or own not in KNOWN_SPLITS):
            return data_root, name
        splits = [c for c, p in children.items() if _holds_split(p)]
        raise AffordError(
            f"{data_root}: no split folder '{split}' and no trainset/ or testset/ here"
            + (did_you_mean(split, splits) or (f" (found: {', '.join(splits)})" if splits else ""))
        )
    if _holds_split(data_root):
        return data_root, canonical_split_name(data_root.name)
    raise AffordError(f"{data_root}: expected trainset/ and testset/ here, or pass a split name")


def find_split_roots(data_root: Path) -> list[tuple[Path, str]]:
    """Every split folder under ``data_root`` (Seen, Unseen, HICO-IIF, ...), or the root itself."""
    out = []
    if data_root.is_dir():
        for child in _sorted_entries(data_root):
            if child.is_dir() and _holds_split(child):
                out.append((child, canonical_split_name(child.name)))
    if not out and _holds_split(data_root):
        out.append((data_root, canonical_split_name(data_root.name)))
    return out


@dataclass(frozen=True)
class ClassList:
    """Affordances in index order; ``objects`` is None when only the folders can tell."""

    affordances: tuple[str, ...]
    objects: tuple[str, ...] | None
    source: str  # "file", "built-in" or "folders"


def _read_class_file(path: Path) -> ClassList:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AffordError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise AffordError(f"{path}: expected an object {{\"affordances\": [...], \"objects\": [...]}}")
    lists: dict[str, tuple[str, ...] | None] = {}
    for key in ("affordances", "objects"):
        value = data.get(key)
        if key == "objects" and value is None:
            lists[key] = None
            continue
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise AffordError(f"{path}: field '{key}' must be a non-empty list of names")
        if len(set(value)) != len(value):
            raise AffordError(f"{path}: field '{key}' lists a name twice")
        lists[key] = tuple(value)
    affordances = lists["affordances"]
    assert affordances is not None
    return ClassList(affordances, lists["objects"], "file")


def read_class_list(root: Path, name: str, scans: dict[str, Scan]) -> ClassList:
    """Class list of a split: ``afford_classes.json``, else built-in, else sorted folder names.

    The index order is the CAM channel order, hence part of every checkpoint: a folder listing
    is the last resort and is logged, because adding one folder would renumber the classes.
    """
    if (root / CLASS_FILE).is_file():
        return _read_class_file(root / CLASS_FILE)
    if name in BUILTIN_AFFORDANCES:
        # HICO-IIF object folders are not fixed by the spec (protocol.md §2): read them from disk.
        objects = None if BUILTIN_AFFORDANCES[name] is HICO_IIF_AFFORDANCES else OBJECTS
        return ClassList(BUILTIN_AFFORDANCES[name], objects, "built-in")
    affs = sorted({a for s in scans.values() for a in s.affordance_dirs})
    log.info("%s: no %s and no built-in list for split '%s'; using the %d sorted affordance "
             "folder names as the class list", root, CLASS_FILE, name, len(affs))
    return ClassList(tuple(affs), None, "folders")


def folder_objects(scans: dict[str, Scan]) -> tuple[str, ...]:
    """Sorted object folder names found in any sub-tree."""
    return tuple(sorted({o for s in scans.values() for _, o in s.object_dirs}))


def unknown_folders(scans: dict[str, Scan], classes: ClassList) -> list[tuple[Path, str]]:
    """(folder, message) for every affordance/object folder that is not in the class list."""
    out = []
    for scan in scans.values():
        for aff in scan.affordance_dirs:
            if aff not in classes.affordances:
                out.append((scan.base / aff, f"affordance '{aff}' is not in the class list"
                            + did_you_mean(aff, classes.affordances)))
        if classes.objects is None:
            continue
        for aff, obj in scan.object_dirs:
            if obj not in classes.objects:
                out.append((scan.base / aff / obj, f"object '{obj}' is not in the object list"
                            + did_you_mean(obj, classes.objects)))
    return out
