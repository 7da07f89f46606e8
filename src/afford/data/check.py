"""``afford data check``: validate an AGD20K-format tree before a long run does it the hard way.

Unlike :func:`afford.data.agd20k.open_split`, which stops at the first problem, the checker never
raises on a broken tree: every finding becomes a problem with a kind, a path and a message, and
every image is fully decoded (a truncated JPEG opens fine and only fails in ``load()``).

Severity says whether the tree is usable. Errors make a loader fail or silently change results
(an undecodable file, a folder outside the class list, GT misaligned with its image, nothing to
train or test on). Warnings are things the loaders handle the way the reference code does and
which real AGD20K itself contains: test images without GT (skipped, like LOCATE), the known
all-zero GT (kept in the mean, protocol.md §1.5), empty folders, orphan GT files.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from afford.data.layout import (
    SUBTREES,
    ClassList,
    Scan,
    find_split_roots,
    folder_objects,
    is_gt_mask,
    read_class_list,
    resolve_split_root,
    scan_subtree,
    subtree_path,
    unknown_folders,
)
from afford.data.transforms import as_8bit
from afford.device import usable_cores
from afford.errors import AffordError

ERROR_KINDS = frozenset({
    "no_split", "missing_folder", "unreadable_folder", "bad_class_list", "unknown_class",
    "corrupt_image", "corrupt_gt", "gt_size_mismatch", "no_train_samples", "no_test_items",
    "check_failed",
})
WARNING_KINDS = frozenset({"missing_gt", "all_zero_gt", "gt_without_image", "shared_stem", "empty_folder", "no_egocentric",
                           "gt_not_grayscale", "unseen_object_in_training"})
KNOWN_ZERO_GT = ("hold", "bottle", "bottle_000341.png")
PROGRESS_MIN_ITEMS = 200
LABELS = {"exocentric": "exo", "egocentric": "ego train", "test_egocentric": "ego test", "GT": "GT"}


@dataclass
class SplitSummary:
    """Counts for one split; ``counts[subtree][(aff, obj)]`` is a number of images."""

    name: str
    root: Path
    class_source: str = "?"
    affordances: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    counts: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)
    n_test_with_gt: int = 0
    n_non_image_files: int = 0

    def totals(self) -> dict[str, int]:
        return {s: sum(self.counts.get(s, {}).values()) for s in SUBTREES}

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for sub, groups in self.counts.items():
            for (aff, obj), n in groups.items():
                counts.setdefault(sub, {}).setdefault(aff, {})[obj] = n
        return {"name": self.name, "root": str(self.root), "class_source": self.class_source,
                "affordances": list(self.affordances), "objects": list(self.objects),
                "counts": counts, "totals": self.totals(), "n_test_with_gt": self.n_test_with_gt,
                "n_non_image_files": self.n_non_image_files}

    def _table(self, by: int) -> list[str]:
        keys = sorted({k[by] for g in self.counts.values() for k in g})
        order = self.affordances if by == 0 else self.objects
        keys.sort(key=lambda k: (order.index(k) if k in order else len(order), k))
        width = max([len(k) for k in keys] + [10])
        head = f"  {'affordance' if by == 0 else 'object':<{width}}" + "".join(
            f"{LABELS[s]:>10}" for s in SUBTREES)
        rows = [head]
        for k in keys:
            cells = [sum(n for g, n in self.counts.get(s, {}).items() if g[by] == k) for s in SUBTREES]
            rows.append(f"  {k:<{width}}" + "".join(f"{c:>10}" for c in cells))
        rows.append(f"  {'total':<{width}}" + "".join(f"{c:>10}" for c in self.totals().values()))
        return rows


class Problems:
    """What every dataset check report shares: ``problems`` carry a severity, and a dataset is
    usable when none is an error (the CLI's exit status)."""

    problems: list[dict[str, str]]

    @property
    def errors(self) -> list[dict[str, str]]:
        return [p for p in self.problems if p["severity"] == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def verdict_lines(self, where: str) -> list[str]:
        """Errors first, then warnings (``where``: the problem field naming the place), then the verdict."""
        lines = [f"{p['severity'].upper():7} {p['kind']}: {p[where]}: {p['message']}"
                 for p in sorted(self.problems, key=lambda p: p["severity"] != "error")]
        n_err = len(self.errors)
        verdict = "OK: usable" if self.ok else "NOT USABLE"
        return [*lines, f"{verdict} ({n_err} errors, {len(self.problems) - n_err} warnings)"]


@dataclass
class CheckReport(Problems):
    """Result of :func:`check_tree`; ``ok`` is True only for a usable tree (no errors)."""

    root: Path
    splits: list[SplitSummary] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)

    def add(self, kind: str, path: Path | str, message: str) -> None:
        severity = "error" if kind in ERROR_KINDS else "warning"
        self.problems.append({"kind": kind, "path": str(path), "message": message, "severity": severity})

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "root": str(self.root), "n_errors": len(self.errors),
                "n_warnings": len(self.problems) - len(self.errors),
                "splits": [s.to_dict() for s in self.splits], "problems": list(self.problems)}

    def to_text(self) -> str:
        lines = [f"AGD20K tree check: {self.root}"]
        for s in self.splits:
            t = s.totals()
            lines += ["", f"[{s.name}] {s.root}",
                      f"  classes: {len(s.affordances)} affordances, {len(s.objects)} objects "
                      f"({s.class_source}); test images with GT: {s.n_test_with_gt}; GT files: {t['GT']}"
                      + (f"; non-image files skipped: {s.n_non_image_files}" if s.n_non_image_files else "")]
            if any(s.counts.values()):
                lines += ["", *s._table(0), "", *s._table(1)]
        lines += ["", *self.verdict_lines("path")]
        return "\n".join(lines)


def _decode(path: Path, gt: bool) -> tuple[tuple[int, int] | None, bool, str | None, str]:
    """Fully decode one file -> ((W, H), all_zero, error, mode). Any exception means a broken file."""
    try:
        with Image.open(path) as im:
            im.load()
            zero = gt and int(np.asarray(as_8bit(im).convert("L")).max()) == 0
            return im.size, zero, None, im.mode
    except Exception as e:  # noqa: BLE001 - whatever PIL raises, the file is unusable
        return None, False, f"{type(e).__name__}: {e}", ""


def _decode_all(paths: list[tuple[Path, bool]], workers: int, desc: str, progress: bool = True) -> list[Any]:
    # PIL releases the GIL while decoding, so threads give a real speed-up on 20k JPEGs.
    fn: Callable[[tuple[Path, bool]], Any] = lambda pg: _decode(*pg)  # noqa: E731
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(tqdm(pool.map(fn, paths), total=len(paths), desc=desc, unit="img",
                         disable=not progress or len(paths) < PROGRESS_MIN_ITEMS))


def _zero_gt_message(aff: str, obj: str, name: str) -> str:
    base = "GT is all zero: it scores KLD = SIM = NSS = 0 and is kept in the mean by default"
    if (aff, obj, name) == KNOWN_ZERO_GT:
        return base + "; this is the one known all-zero GT of real AGD20K Seen (protocol.md §1.5)"
    return base + "; real AGD20K has exactly one such file, Seen hold/bottle/bottle_000341.png (protocol.md §1.5)"


def _check_split(report: CheckReport, root: Path, name: str, workers: int, progress: bool = True) -> None:
    summary = SplitSummary(name=name, root=root)
    report.splits.append(summary)
    scans: dict[str, Scan] = {s: scan_subtree(subtree_path(root, s)) for s in SUBTREES}
    for sub, scan in scans.items():
        if not scan.exists:
            report.add("missing_folder", scan.base, f"missing; expected <affordance>/<object>/ folders ({LABELS[sub]})")
        for path, err in scan.unreadable:
            report.add("unreadable_folder", path, err)
        for aff in scan.empty_affordances:
            report.add("empty_folder", scan.base / aff, "affordance folder holds no object folders")
        for (aff, obj), files in scan.groups.items():
            if not files:
                report.add("empty_folder", scan.base / aff / obj, "object folder holds no images")
        summary.counts[sub] = {k: len(v) for k, v in scan.groups.items()}
        summary.n_non_image_files += len(scan.non_images) + len(scan.stray_files)
    try:
        classes = read_class_list(root, name, scans)
    except AffordError as e:
        report.add("bad_class_list", root / "afford_classes.json", str(e).split(": ", 1)[-1])
        classes = ClassList(tuple(sorted({a for s in scans.values() for a in s.affordance_dirs})), None, "folders")
    summary.class_source, summary.affordances = classes.source, classes.affordances
    summary.objects = classes.objects if classes.objects is not None else folder_objects(scans)
    for path, msg in unknown_folders(scans, classes):
        report.add("unknown_class", path, msg)

    exo, ego = scans["exocentric"].groups, scans["egocentric"].groups
    n_train = 0
    for (aff, obj), files in exo.items():
        if files and not ego.get((aff, obj)):
            report.add("no_egocentric", scans["egocentric"].base / aff / obj,
                       f"no egocentric training images; its {len(files)} exocentric images are not used")
        elif files:
            n_train += len(files)
    if scans["exocentric"].exists and n_train == 0:
        report.add("no_train_samples", root / "trainset", "no exocentric image has egocentric partners")

    # Decode everything once, then judge pairs from the results.
    todo = [(p, sub == "GT") for sub in SUBTREES for files in scans[sub].groups.values() for p in files]
    results = dict(zip([p for p, _ in todo], _decode_all(todo, workers, f"decoding {name}", progress), strict=True))
    for path, gt in todo:
        size, zero, err, mode = results[path]
        if err is not None:
            report.add("corrupt_gt" if gt else "corrupt_image", path, f"does not decode ({err})")
        elif zero:
            report.add("all_zero_gt", path, _zero_gt_message(path.parts[-3], path.parts[-2], path.name))
        if gt and err is None and mode not in ("L", "P"):
            report.add("gt_not_grayscale", path, f"GT is a {mode} image, not 8-bit grayscale as AGD20K's (protocol.md "
                       "§1.1); afford reads it as 8-bit grayscale (colour by luminance, 16-bit scaled by 1/257)")
    if name.lower() == "unseen":  # disjoint object sets are what Unseen means (protocol.md §1.3)
        train_objs = {o for sub in ("exocentric", "egocentric") for (_, o), f in scans[sub].groups.items() if f}
        for obj in sorted(train_objs & {o for (_, o), f in scans["test_egocentric"].groups.items() if f}):
            report.add("unseen_object_in_training", root / "testset", f"object {obj!r} is in the test set and in "
                       "training: Unseen's test objects must be absent from training (protocol.md §1.3)")

    gts = scans["GT"].groups
    for (aff, obj), images in scans["test_egocentric"].groups.items():
        gt_by_stem = {p.stem: p for p in gts.get((aff, obj), []) if is_gt_mask(p)}
        first_of_stem: dict[str, Path] = {}
        for img in images:
            if (other := first_of_stem.setdefault(img.stem, img)) is not img:
                report.add("shared_stem", img, f"same file stem as {other.name}: one GT scores both images (as the "
                           "reference loader does), and a --pred folder holds one map for both; keep one")
            gt = gt_by_stem.get(img.stem)
            if gt is None:
                report.add("missing_gt", img, f"no {scans['GT'].base / aff / obj / (img.stem + '.png')}; "
                           "the image is skipped in evaluation")
                continue
            summary.n_test_with_gt += 1
            img_size, gt_size = results[img][0], results[gt][0]
            if img_size and gt_size and img_size != gt_size:
                report.add("gt_size_mismatch", gt, f"GT is {gt_size[0]}x{gt_size[1]} but the image "
                           f"{img.name} is {img_size[0]}x{img_size[1]}")
    for (aff, obj), files in gts.items():
        stems = {p.stem for p in scans["test_egocentric"].groups.get((aff, obj), [])}
        for gt in files:
            if gt.stem not in stems:
                report.add("gt_without_image", gt, "no egocentric test image with this name; GT is unused")
    if scans["test_egocentric"].exists and summary.n_test_with_gt == 0:
        report.add("no_test_items", root / "testset", "no egocentric test image has a GT png")


def check_tree(data_root: str | Path, split: str | None = None, workers: int | None = None,
               progress: bool = True) -> CheckReport:
    """Check ``data_root/<split>``, or every split folder found (Seen, Unseen, HICO-IIF, ...)."""
    root = Path(data_root).expanduser()
    report = CheckReport(root=root)
    workers = workers or min(8, usable_cores())
    try:
        if split is not None:
            targets = [resolve_split_root(root, split)]
        else:
            targets = find_split_roots(root)
            if not targets:
                report.add("no_split", root, "no split folder (Seen, Unseen, HICO-IIF) and no trainset/ or testset/")
    except AffordError as e:
        report.add("no_split", root, str(e).split(": ", 1)[-1])
        targets = []
    for split_root, name in targets:
        try:
            _check_split(report, split_root, name, workers, progress)
        except Exception as e:  # noqa: BLE001 - the checker reports, it never crashes
            report.add("check_failed", split_root, f"checker stopped on this split ({type(e).__name__}: {e})")
    return report
