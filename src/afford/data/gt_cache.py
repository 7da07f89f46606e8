"""Ground-truth heatmaps: loading, and an on-disk cache of the raw arrays (protocol.md §1.6).

The reference repos pickle a ``{"<aff>_<obj>_<name>.png": uint8 H×W}`` dict per split, and one
of them uses the Unseen file for every split (methods.md §9, defect 3). Here the cache file name
is a hash of the split root and of every GT file's path, size and mtime, so a cache can never be
read for the wrong split or for edited files, and the arrays stay raw uint8 at native resolution.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from afford.data.transforms import DECODE_ERRORS, load_gray

if TYPE_CHECKING:
    from afford.data.agd20k import Split, TestItem

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 2: the GT files whose size differs from their image are stored too; 3: keyed by
#: TestItem.gt_id (the reference key can name two files), 16-bit GT scaled instead of clipped
PROGRESS_MIN_ITEMS = 200  # below this a progress bar is noise


def load_gt(path: str | Path) -> np.ndarray:
    """A GT heatmap as raw uint8 (H, W), read as grayscale like the reference ``process_gt``."""
    return load_gray(path, "GT png")


def image_size(path: Path) -> tuple[int, int] | None:
    """(W, H) from the image header only (no decode); None when unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except DECODE_ERRORS:
        return None


def default_cache_dir() -> Path:
    """``$AFFORD_CACHE`` if set, else ``~/.cache/afford``."""
    env = os.environ.get("AFFORD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "afford"


def _fingerprint(split: Split, items: list[TestItem]) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{split.root.resolve()}|{split.name}".encode())
    for it in items:
        st = it.gt.stat()
        h.update(f"|{it.gt.relative_to(split.root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


class GTCache(Mapping["TestItem", np.ndarray]):
    """TestItem (or its ``gt_id``) -> raw uint8 (H, W) GT, for one split.

    Built once by reading every GT png of ``split.test_items()``, stored as one ``.npz`` in
    ``cache_dir`` (default :func:`default_cache_dir`), and loaded from there on the next run.
    While building, a GT whose size differs from its image is logged (protocol.md §1.1) and kept.
    """

    def __init__(self, split: Split, cache_dir: str | Path | None = None) -> None:
        self.items: list[TestItem] = split.test_items()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.path = self.cache_dir / f"gt_{split.name}_{_fingerprint(split, self.items)}.npz"
        self.mismatched: list[str] = []  # gt_ids of GT files whose size differs from their image
        self._arrays: dict[str, np.ndarray] | None = self._read() if self.path.is_file() else None
        self.from_disk = self._arrays is not None
        if self._arrays is None:
            self._arrays = self._build()
            self._write()
        elif self.mismatched:  # said again on every run, not only the one that built the cache
            log.warning("%d of %d GT files differ in size from their image (first: %s); 'afford data check' "
                        "lists them", len(self.mismatched), len(self.items), self.mismatched[0])
        log.info("GT cache for %s: %d heatmaps (%s %s)", split.name, len(self._arrays),
                 "loaded from" if self.from_disk else "written to", self.path)

    def _build(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        mismatched = 0
        bar = tqdm(self.items, desc="reading GT", unit="png", disable=len(self.items) < PROGRESS_MIN_ITEMS)
        for it in bar:
            gt = load_gt(it.gt)
            size = image_size(it.image)
            if size is not None and size != (gt.shape[1], gt.shape[0]):
                mismatched += 1
                self.mismatched.append(it.gt_id)
                log.warning("%s: GT is %dx%d but its image %s is %dx%d", it.gt, gt.shape[1],
                            gt.shape[0], it.image.name, *size)
            arrays[it.gt_id] = gt
        if mismatched:
            log.warning("%d of %d GT files differ in size from their image", mismatched, len(self.items))
        return arrays

    def _read(self) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                keys = [str(k) for k in z["keys"]]
                arrays = {k: z[f"a{i}"] for i, k in enumerate(keys)}
                self.mismatched = [str(k) for k in z["mismatched"]]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated: not a zip at all
            log.warning("%s: unreadable GT cache (%s); rebuilding it", self.path, e)
            return None
        if set(arrays) != {it.gt_id for it in self.items}:
            log.warning("%s: GT cache does not match the split; rebuilding it", self.path)
            return None
        return arrays

    def _write(self) -> None:
        assert self._arrays is not None
        keys = list(self._arrays)
        payload = {f"a{i}": self._arrays[k] for i, k in enumerate(keys)}
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez_compressed(buf, keys=np.array(keys), mismatched=np.array(self.mismatched, dtype=str), **payload)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, self.path)  # atomic: a concurrent reader never sees half a file
        except OSError as e:
            log.warning("%s: could not write the GT cache (%s); it will be rebuilt next time", self.path, e)

    def __getitem__(self, item: TestItem | str) -> np.ndarray:
        assert self._arrays is not None
        return self._arrays[item if isinstance(item, str) else item.gt_id]

    def __contains__(self, item: object) -> bool:
        key = item if isinstance(item, str) else getattr(item, "gt_id", None)
        return self._arrays is not None and key in self._arrays

    def __iter__(self) -> Iterator[TestItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
