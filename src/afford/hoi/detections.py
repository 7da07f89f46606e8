"""Read an HOI detection file (``afford hoi eval --dets FILE``) into per-image arrays.

The format is one JSON object mapping an image file name to a list of rows
``[hoi, h_x1, h_y1, h_x2, h_y2, o_x1, o_y1, o_x2, o_y2, score]``: 0-based HOI index, 0-based pixel
coordinates (as a detector outputs them; the official rule adds 1 itself). Images absent from the
file have no detections. Every malformed entry is refused with one line naming the image and the
row, because a silently skipped row changes the mAP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from afford.errors import AffordError, first_line
from afford.hoi.types import ImageDetections

ROW = "[hoi, h_x1, h_y1, h_x2, h_y2, o_x1, o_y1, o_x2, o_y2, score]"


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are all distinct (files assembled from shards may repeat an image)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _RepeatedKey(k)
        out[k] = v
    return out


def read_image_mapping(path: str | Path, filenames: Sequence[str], what: str, subset: bool = False) -> dict:
    """A JSON file holding one object keyed by image file name (detections, cached detector
    outputs), checked against the dataset's file list; one-line errors naming the file.
    ``subset``: ``filenames`` are some of the file's images (a predictor's lookup), not the dataset."""
    p = Path(path)
    try:
        # utf-8-sig: a file saved by a Windows editor starts with a byte-order mark, plain UTF-8 otherwise
        obj = json.loads(p.read_text(encoding="utf-8-sig"), object_pairs_hook=_unique_keys)
    except _RepeatedKey as exc:
        raise AffordError(f"{p}: {exc.key!r} is listed twice in this {what} file (JSON keeps only the last list, "
                          "dropping the first's rows silently); merge its rows into one list") from None
    except FileNotFoundError:
        raise AffordError(f"{p}: {what} file not found (it does not exist)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AffordError(f"{p}: not a readable JSON {what} file ({type(exc).__name__}: {first_line(exc)})") from None
    _check_mapping(obj, () if subset else filenames, str(p), what, check_names=not subset)
    return obj


def _check_mapping(obj: object, filenames: Sequence[str], source: str, what: str, check_names: bool = True) -> None:
    if not isinstance(obj, Mapping):
        raise AffordError(f"{source}: expected a JSON object mapping image file names to {what}s, "
                          f"got {type(obj).__name__}")
    if not check_names:
        return
    known = set(filenames)
    unknown = [name for name in obj if name not in known]
    if unknown:
        raise AffordError(f"{source}: image {unknown[0]!r} is not in the dataset's file list "
                          f"({len(unknown)} unknown)")


def read_detections(path: str | Path, filenames: Sequence[str], num_classes: int = 600) -> list[ImageDetections | None]:
    """Detections aligned with ``filenames`` (None where the file has none for an image)."""
    obj = read_image_mapping(path, filenames, "detection")
    return parse_detections(obj, filenames, num_classes, str(path))


def parse_detections(obj: object, filenames: Sequence[str], num_classes: int = 600,
                     source: str = "detections") -> list[ImageDetections | None]:
    """Validate a decoded detection object; see the module docstring for the format."""
    _check_mapping(obj, filenames, source, f"list of {ROW}")
    index = {name: i for i, name in enumerate(filenames)}
    out: list[ImageDetections | None] = [None] * len(filenames)
    for name, rows in obj.items():
        out[index[name]] = _rows(rows, name, num_classes, source)
    return out


def _rows(rows: object, name: str, num_classes: int, source: str) -> ImageDetections:
    where = f"{source}: image {name!r}"
    if not isinstance(rows, list):
        raise AffordError(f"{where}: expected a list of rows {ROW}, got {type(rows).__name__}")
    for j, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != 10:
            raise AffordError(f"{where}, row {j}: expected 10 numbers {ROW}, got {r!r}"[:300])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r):
            raise AffordError(f"{where}, row {j}: every entry must be a number, got {r!r}"[:300])
        if not all(_finite(v) for v in r):
            raise AffordError(f"{where}, row {j}: non-finite value in {r!r}"[:300])
        hoi = r[0]
        if hoi != int(hoi) or not 0 <= hoi < num_classes:
            hint = " (indices are 0-based: a file counting from 1 is off by one)" if hoi == num_classes else ""
            raise AffordError(f"{where}, row {j}: HOI index {hoi!r} is not an integer in 0..{num_classes - 1}{hint}")
        if r[3] < r[1] or r[4] < r[2] or r[7] < r[5] or r[8] < r[6]:
            raise AffordError(f"{where}, row {j}: inverted box in {r!r} (expected [x1, y1, x2, y2] with x1 <= x2 and "
                              f"y1 <= y2; [x, y, w, h] boxes must be converted)"[:400])
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 10)
    return ImageDetections(hoi=a[:, 0].astype(np.int64), boxes_h=a[:, 1:5].copy(), boxes_o=a[:, 5:9].copy(),
                           scores=a[:, 9].copy())


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def detection_warnings(dets: Sequence[ImageDetections | None], filenames: Sequence[str], sizes: np.ndarray,
                       num_classes: int, source: str, class0_in_gt: bool = True) -> list[str]:
    """What in a valid detection file most likely means a mistake that scores near 0 without an
    error: few images covered, normalised or out-of-image coordinates, 1-based class indices.
    ``sizes``: ``(N, 2)`` ``[w, h]`` of the dataset's images; ``class0_in_gt``: HOI class 0 has a
    test pair (so a detector that finds half the classes should find it). An empty file is an error."""
    have = [i for i, d in enumerate(dets) if d is not None and len(d)]
    if not have:
        raise AffordError(f"{source}: no detections for any of the {len(dets)} images")
    out = []
    if len(have) < len(dets) / 2:
        out.append(f"{source}: detections for only {len(have)} of the {len(dets)} images; the others are scored "
                   "as having none (is this the whole file?)")
    boxes = np.concatenate([np.concatenate([dets[i].boxes_h, dets[i].boxes_o], 1) for i in have])  # type: ignore[union-attr]
    if float(np.abs(boxes).max()) <= 1.0:
        out.append(f"{source}: every box coordinate is within [-1, 1]: normalised boxes? expected 0-based pixel "
                   "coordinates")
    else:
        outside = [i for i in have if _beyond(dets[i], sizes[i])]  # type: ignore[arg-type]
        if outside:
            first = outside[0]
            out.append(f"{source}: {len(outside)} image(s) have boxes more than 1 pixel outside the image (first: "
                       f"{filenames[first]}, {int(sizes[first][0])} x {int(sizes[first][1])}); "
                       "expected 0-based pixel [x1, y1, x2, y2] in the original image size")
    classes = np.unique(np.concatenate([dets[i].hoi for i in have]))  # type: ignore[union-attr]
    if class0_in_gt and len(classes) >= num_classes // 2 and classes[0] > 0:
        out.append(f"{source}: {len(classes)} HOI classes detected but never class 0: indices are 0-based (a file "
                   "counting from 1 is off by one)")
    return out


def _beyond(d: ImageDetections, size: np.ndarray) -> bool:
    w, h = float(size[0]), float(size[1])
    b = np.concatenate([d.boxes_h, d.boxes_o])
    return bool((b[:, :2] < -1).any() or (b[:, 2] > w + 1).any() or (b[:, 3] > h + 1).any())


def write_detections(path: str | Path, filenames: Sequence[str], dets: Sequence[ImageDetections | None]) -> None:
    """The inverse of :func:`read_detections` (images without detections are left out)."""
    obj = {}
    for name, d in zip(filenames, dets, strict=True):
        if d is not None and len(d):
            obj[name] = np.concatenate([d.hoi[:, None].astype(np.float64), d.boxes_h, d.boxes_o, d.scores[:, None]],
                                       axis=1).tolist()
            for row in obj[name]:
                row[0] = int(row[0])
    Path(path).write_text(json.dumps(obj))
