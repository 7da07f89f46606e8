"""``afford data check --hoi``: validate HICO-DET annotations (and images, when present) up front.

Like the AGD20K check (:mod:`afford.data.check`), it never raises: every defect becomes a problem
with a kind, the image it concerns and a one-line message, and every image file is fully decoded.
Errors are what changes the mAP silently: a class index out of range or disagreeing with the
correspondence, an inverted box, a box outside the image (usually a sign of 0-based boxes in a
file that must be 1-based inclusive, hoi.md §12), a missing or undecodable image.

Typical use::

    report = check_hicodet("data/hicodet", split="test2015")
    print(report.format()); sys.exit(0 if report.ok else 1)
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

from afford.data.check import Problems
from afford.device import usable_cores
from afford.errors import AffordError
from afford.hoi.hicodet import HicoDet, read_hicodet

__all__ = ["HoiCheckReport", "check_hicodet"]

WARNING_KINDS = frozenset({"empty_mismatch", "no_rare_lists"})
PROGRESS_MIN_ITEMS = 200


@dataclass
class HoiCheckReport(Problems):
    """Result of :func:`check_hicodet`; ``ok`` is True only when nothing would change the results."""

    source: Path
    image_dir: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)

    def add(self, kind: str, where: str, message: str) -> None:
        severity = "warning" if kind in WARNING_KINDS else "error"
        self.problems.append({"kind": kind, "where": where, "message": message, "severity": severity})

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "source": str(self.source),
                "image_dir": str(self.image_dir) if self.image_dir else None, "counts": dict(self.counts),
                "n_errors": len(self.errors), "n_warnings": len(self.problems) - len(self.errors),
                "problems": list(self.problems)}

    def format(self) -> str:
        c = self.counts
        lines = [f"HICO-DET annotation check: {self.source}",
                 f"  image folder: {self.image_dir if self.image_dir else 'none (annotations only)'}"]
        if c:
            lines += [f"  images: {c['images']} ({c['empty']} without pairs)",
                      f"  pairs: {c['pairs']} rows ({c['box_pairs']} distinct human-object box pairs)",
                      f"  classes: {c['classes_present']} of {c['classes']} HOI classes present; "
                      f"{c['objects']} objects, {c['verbs']} verbs",
                      f"  rare: {c['rare']} rare, {c['non_rare']} non-rare" if c["rare"] + c["non_rare"]
                      else "  rare: not in the file (derive it from training counts)"]
        lines += ["", *self.verdict_lines("where")]
        return "\n".join(lines)

    to_text = format  # same name as the AGD20K report


def _counts(ds: HicoDet) -> dict[str, int]:
    present = np.zeros(ds.num_classes, bool)
    box_pairs = 0
    for a in ds.annotations:
        present[a.hoi] = True
        if len(a):
            box_pairs += len(np.unique(np.concatenate([a.boxes_h, a.boxes_o], 1), axis=0))
    return {"images": len(ds), "empty": len(ds.empty), "pairs": ds.num_pairs, "box_pairs": box_pairs,
            "classes": ds.num_classes, "classes_present": int(present.sum()), "objects": len(ds.objects),
            "verbs": len(ds.verbs), "rare": len(ds.rare), "non_rare": len(ds.non_rare)}


def _where(ds: HicoDet, i: int) -> str:
    return f"image {i} ({ds.filenames[i]})"


def _check_boxes(report: HoiCheckReport, ds: HicoDet) -> None:
    """Boxes are 1-based inclusive: 1 <= x1 <= x2 <= w and 1 <= y1 <= y2 <= h."""
    for i, (a, (w, h)) in enumerate(zip(ds.annotations, ds.sizes.tolist(), strict=True)):
        for name, b in (("boxes_h", a.boxes_h), ("boxes_o", a.boxes_o)):
            if not len(b):
                continue
            inverted = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
            outside = (b[:, 0] < 1) | (b[:, 1] < 1) | (b[:, 2] > w) | (b[:, 3] > h)
            for kind, bad, what in (("box_inverted", inverted, "has x2 < x1 or y2 < y1"),
                                    ("box_outside", outside, f"is not inside the {w}x{h} image "
                                     "(1-based inclusive: expected 1 <= x1, y1 and x2 <= w, y2 <= h)")):
                if bad.any():
                    j = int(np.flatnonzero(bad)[0])
                    more = f" ({int(bad.sum())} boxes)" if bad.sum() > 1 else ""
                    report.add(kind, _where(ds, i), f"{name}[{j}] = {b[j].tolist()} {what}{more}")


def box_problems(ds: HicoDet) -> list[dict[str, str]]:
    """The inverted and out-of-image GT boxes of a loaded split (what ``hoi eval`` warns about:
    the mAP scores the boxes as given)."""
    report = HoiCheckReport(source=ds.source)
    _check_boxes(report, ds)
    return report.problems


def _decode(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """Fully decode one image -> ((W, H), error); a truncated JPEG only fails in ``load()``."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size, None
    except Exception as e:  # noqa: BLE001 - whatever PIL raises, the file is unusable
        return None, f"{type(e).__name__}: {e}"


def _check_images(report: HoiCheckReport, ds: HicoDet, image_dir: Path, workers: int, progress: bool = True) -> None:
    paths = [image_dir / name for name in ds.filenames]
    fn: Callable[[Path], Any] = lambda p: _decode(p) if p.is_file() else (None, "missing")  # noqa: E731
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decodes without the GIL
        results = list(tqdm(pool.map(fn, paths), total=len(paths), desc="decoding HICO-DET", unit="img",
                            disable=not progress or len(paths) < PROGRESS_MIN_ITEMS))
    for i, (path, (size, err)) in enumerate(zip(paths, results, strict=True)):
        if err == "missing":
            report.add("missing_image", _where(ds, i), f"no file {path}")
        elif err is not None:
            report.add("corrupt_image", _where(ds, i), f"does not decode ({err})")
        elif size != tuple(ds.sizes[i].tolist()):
            report.add("size_mismatch", _where(ds, i), f"the file is {size[0]}x{size[1]} but the annotation "
                       f"says {ds.sizes[i, 0]}x{ds.sizes[i, 1]}")


def check_hicodet(root_or_file: str | Path, split: str | None = None, image_dir: str | Path | None = None,
                  workers: int | None = None, progress: bool = True) -> HoiCheckReport:
    """Check a HICO-DET JSON file, or ``instances_{split}.json`` (+ ``images/{split}/``) under a root."""
    report = HoiCheckReport(source=Path(root_or_file).expanduser())
    try:
        ds, findings = read_hicodet(root_or_file, split=split, image_dir=image_dir)
    except AffordError as e:
        report.add("unreadable", str(report.source), str(e).removeprefix(f"{report.source}: "))
        return report
    report.source, report.image_dir = ds.source, ds.image_dir
    for f in findings:
        report.add(f.kind, f.where, f.message)
    report.counts = _counts(ds)
    if not ds.rare and not ds.non_rare:
        report.add("no_rare_lists", "rare", "the file has no rare/non_rare lists; derive them from training "
                   "counts (rare_from_counts)")
    _check_boxes(report, ds)
    if ds.image_dir is not None:
        if ds.image_dir.is_dir():
            _check_images(report, ds, ds.image_dir, workers or min(8, usable_cores()), progress)
        else:
            report.add("missing_image_dir", str(ds.image_dir), "image folder does not exist")
    return report
