"""AGD20K-format splits and the train/test datasets built on them (protocol.md §1, §2).

Any tree in the AGD20K layout works: AGD20K Seen/Unseen, HICO-IIF and SynthAGD. A split is
opened once with :func:`open_split`, which resolves the folder, fixes the class list (index order
= CAM channel order) and refuses a tree whose folders are not in that list, so a misspelt folder
fails at start-up instead of silently becoming a new class.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from afford.data.gt_cache import GTCache, load_gt
from afford.data.layout import (
    EXTRAS_MASK,
    SUBTREES,
    Group,
    Scan,
    folder_objects,
    is_gt_mask,
    read_class_list,
    resolve_split_root,
    scan_subtree,
    subtree_path,
    unknown_folders,
)
from afford.data.sampling import (
    SAMPLINGS,
    anchor_plus_random_indices,
    consecutive_window_indices,
    sample_generator,
    view_generator,
)
from afford.data.transforms import TrainTransform, eval_transform, load_rgb
from afford.errors import AffordError, did_you_mean

__all__ = [
    "AffordanceTestSet", "AffordanceTrainSet", "TrainImageSet", "GTCache", "Split", "TestItem", "load_gt", "open_split",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestItem:
    """One evaluated egocentric test image and its GT heatmap."""

    affordance: str
    object: str
    name: str  # file stem, shared by the image and its GT png
    image: Path
    gt: Path

    @property
    def key(self) -> str:
        """The reference GT-cache key ``<aff>_<obj>_<name>.png`` (protocol.md §1.6), for display: with
        class names that hold underscores two GT files can share it (``a``/``b_c`` and ``a_b``/``c``)."""
        return f"{self.affordance}_{self.object}_{self.name}.png"

    @property
    def gt_id(self) -> str:
        """``<aff>/<obj>/<name>``: names the GT file uniquely (afford's GT cache is keyed by it)."""
        return f"{self.affordance}/{self.object}/{self.name}"


@dataclass
class Split:
    """One opened split: its folder, class list and (cached, sorted) directory listings."""

    root: Path
    name: str
    affordances: tuple[str, ...]
    objects: tuple[str, ...]
    class_source: str = "built-in"
    test_folder: str = "testset"
    _scans: dict[str, Scan] = field(default_factory=dict, repr=False, compare=False)
    _test_items: list[TestItem] | None = field(default=None, repr=False, compare=False)

    def scan(self, subtree: str) -> Scan:
        """Listing of 'exocentric', 'egocentric', 'test_egocentric' or 'GT' (read once)."""
        if subtree not in self._scans:
            self._scans[subtree] = scan_subtree(subtree_path(self.root, subtree, self.test_folder))
        return self._scans[subtree]

    def _groups(self, subtree: str) -> dict[Group, list[Path]]:
        return {k: list(v) for k, v in self.scan(subtree).groups.items() if v}

    def exo_groups(self) -> dict[Group, list[Path]]:
        """(aff, obj) -> sorted exocentric training images."""
        return self._groups("exocentric")

    def ego_groups(self) -> dict[Group, list[Path]]:
        """(aff, obj) -> sorted egocentric training images."""
        return self._groups("egocentric")

    def label(self, affordance: str) -> int:
        """Class index of an affordance (its CAM channel)."""
        try:
            return self.affordances.index(affordance)
        except ValueError:
            raise AffordError(f"{self.name}: unknown affordance '{affordance}'"
                              + did_you_mean(affordance, self.affordances)) from None

    def test_items(self) -> list[TestItem]:
        """Sorted egocentric test images that have ``GT/<aff>/<obj>/<stem>.png``.

        Images without GT are skipped, as LOCATE's test loader does, and counted in the log (once).
        """
        if self._test_items is None:
            self._test_items = self._list_test_items()
        return list(self._test_items)

    def _list_test_items(self) -> list[TestItem]:
        gt_files = {(p.parent, p.stem): p for files in self.scan("GT").groups.values() for p in files
                    if is_gt_mask(p)}
        gt_root = subtree_path(self.root, "GT", self.test_folder)
        items, missing = [], 0
        for (aff, obj), images in self.scan("test_egocentric").groups.items():
            for img in images:
                gt = gt_files.get((gt_root / aff / obj, img.stem))
                if gt is not None:
                    items.append(TestItem(aff, obj, img.stem, img, gt))
                else:
                    missing += 1
        if missing:
            log.info("%s: %d of %d egocentric test images have no GT png and are skipped",
                     self.name, missing, missing + len(items))
        shared = Counter(it.gt for it in items)
        if twice := [it.image for it in items if shared[it.gt] > 1]:
            log.warning("%s: %d test images share a file stem with another in their folder (first: %s), so one GT "
                        "scores each of them, as the reference loader does; remove the copies to score each GT "
                        "once", self.name, len(twice), twice[0])
        n_gt = sum(len(v) for v in self.scan("GT").groups.values())
        if n_gt != len(items):
            log.info("%s: %d GT files, %d test images with GT", self.name, n_gt, len(items))
        return items

    def extras_mask(self, affordance: str, obj: str, stem: str, kind: str) -> Path | None:
        """SynthAGD's ``kind`` ("object" or "part") mask of an egocentric image (train or test), if any."""
        p = self.root.parent / EXTRAS_MASK.format(split=self.root.name, aff=affordance, obj=obj, stem=stem, kind=kind)
        return p if p.is_file() else None

    def object_mask(self, item: TestItem) -> Path | None:
        """SynthAGD's object mask for a test image (for the whole-object baseline), if any."""
        return self.extras_mask(item.affordance, item.object, item.name, "object")

    def part_mask(self, item: TestItem) -> Path | None:
        """SynthAGD's affordance-part mask for a test image, if any."""
        return self.extras_mask(item.affordance, item.object, item.name, "part")


def open_split(data_root: str | Path, split: str | None = None, test_folder: str = "testset") -> Split:
    """Open ``data_root/<split>`` (or ``data_root`` itself) and check it against its class list.

    ``split`` is Seen, Unseen, HICO-IIF/HICO or any folder name; ``test_folder='testsetv2'``
    selects Cross-View-AG+'s second test set (protocol.md §1.7).
    """
    root, name = resolve_split_root(data_root, split)
    scans = {s: scan_subtree(subtree_path(root, s, test_folder)) for s in SUBTREES}
    for scan in scans.values():
        if scan.unreadable:
            path, err = scan.unreadable[0]
            raise AffordError(f"{path}: folder not readable ({err})")
    classes = read_class_list(root, name, scans)
    unknown = unknown_folders(scans, classes)
    if unknown:
        path, msg = unknown[0]
        more = f"; {len(unknown) - 1} more, run `afford data check`" if len(unknown) > 1 else ""
        raise AffordError(f"{path}: {msg}{more}")
    objects = classes.objects if classes.objects is not None else folder_objects(scans)
    n_skipped = sum(len(s.non_images) for s in scans.values())
    log.info(
        "%s (%s): %d affordances (%s class list), %d objects; images: %d exocentric, %d egocentric "
        "train, %d egocentric test, %d GT%s", name, root, len(classes.affordances), classes.source,
        len(objects), scans["exocentric"].n_images, scans["egocentric"].n_images,
        scans["test_egocentric"].n_images, scans["GT"].n_images,
        f"; {n_skipped} non-image files skipped" if n_skipped else "",
    )
    return Split(root, name, classes.affordances, objects, classes.source, test_folder, scans)


def _check_views(views: int) -> int:
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise AffordError(f"data.cache_views: expected a non-negative integer, got {views!r}")
    return views


class AffordanceTrainSet(Dataset):
    """Exocentric training samples with exocentric and egocentric partners.

    Length = number of exocentric images whose (aff, obj) also has egocentric training images
    (protocol.md §1.1); the others are skipped and counted. Item::

        {"exo": (n_exo, 3, S, S) float32, "ego": (3, S, S) float32,
         "label": int64 scalar (affordance index), "object": str}

    ``sampling='anchor_plus_random'`` puts the anchor first, then distinct partners from its folder
    (methods.md §1.4); ``'wsma'`` takes ``n_exo`` consecutive files from a random start (§2.3).
    Each item's draws (partners, egocentric image, crops, flips) come from a generator seeded by
    (seed, epoch, index): call :meth:`set_epoch` before each epoch. DataLoader workers hold copies
    of the dataset, so use ``persistent_workers=False`` (the default) for the epoch to reach them.
    ``views > 0`` (the frozen-feature cache): each image's crop and flip are one of ``views`` fixed
    views of that image (:func:`afford.data.sampling.view_generator`), the view drawn per sample.
    """

    def __init__(
        self,
        split: Split,
        n_exo: int = 3,
        transform: TrainTransform | None = None,
        sampling: str = "anchor_plus_random",
        seed: int = 0,
        cache_images: bool = False,
        views: int = 0,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise AffordError(f"sampling: expected one of {', '.join(SAMPLINGS)}, got '{sampling}'"
                              + did_you_mean(sampling, SAMPLINGS))
        if n_exo < 1:
            raise AffordError(f"n_exo: expected a positive number of exocentric images, got {n_exo}")
        self.split, self.n_exo, self.sampling, self.seed = split, n_exo, sampling, seed
        self.transform = transform if transform is not None else TrainTransform()
        self.epoch = 0
        self.views = _check_views(views)
        # Decoded images kept in memory (per process): decoding is ~20 % of a small-model step on
        # SynthAGD; AGD20K at full resolution would need several GB, hence opt-in.
        self._decoded: dict[Path, Image.Image] | None = {} if cache_images else None
        ego = split.ego_groups()
        self._exo: list[list[Path]] = []
        self._ego: list[list[Path]] = []
        self._group_info: list[tuple[int, str]] = []  # (label, object) per group
        self._samples: list[tuple[int, int]] = []  # (group id, position in group)
        skipped = 0
        for (aff, obj), files in split.exo_groups().items():
            if (aff, obj) not in ego:
                skipped += len(files)
                continue
            gid = len(self._exo)
            self._exo.append(files)
            self._ego.append(ego[(aff, obj)])
            self._group_info.append((split.label(aff), obj))
            self._samples += [(gid, i) for i in range(len(files))]
        self.labels: list[int] = [self._group_info[g][0] for g, _ in self._samples]
        if skipped:
            log.info("%s: %d exocentric images skipped (no egocentric training images for their "
                     "affordance/object)", split.name, skipped)
        if not self._samples:
            raise AffordError(f"{split.root / 'trainset'}: no exocentric image has egocentric "
                              "training images of the same affordance/object")
        log.info("%s train set: %d samples in %d affordance/object groups, %s sampling, %d exo each",
                 split.name, len(self._samples), len(self._exo), sampling, n_exo)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws ``__getitem__`` reproduces."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._samples)

    def exo_paths(self, index: int) -> list[Path]:
        """The exocentric files sample ``index`` uses in the current epoch (for inspection)."""
        return self._draw(index)[0]

    def ego_path(self, index: int) -> Path:
        """The egocentric file sample ``index`` uses in the current epoch (for inspection)."""
        return self._draw(index)[1]

    def _draw(self, index: int) -> tuple[list[Path], Path, torch.Generator]:
        gid, pos = self._samples[index]
        g = sample_generator(self.seed, self.epoch, index)
        files = self._exo[gid]
        if self.sampling == "anchor_plus_random":
            idx = anchor_plus_random_indices(len(files), pos, self.n_exo, g)
        else:
            idx = consecutive_window_indices(len(files), self.n_exo, g)
        egos = self._ego[gid]
        ego = egos[int(torch.randint(0, len(egos), (1,), generator=g).item())]
        return [files[i] for i in idx], ego, g

    def _view(self, path: Path, g: torch.Generator) -> torch.Generator:
        """The crop/flip generator of ``path``: the sample's own, or one of its fixed views."""
        if not self.views:
            return g
        v = int(torch.randint(0, self.views, (1,), generator=g).item())
        return view_generator(self.seed, path.relative_to(self.split.root).as_posix(), v)

    def _load(self, path: Path) -> Image.Image:
        if self._decoded is None:
            return load_rgb(path)
        img = self._decoded.get(path)
        if img is None:
            img = self._decoded[path] = load_rgb(path)  # transforms return new images, never mutate
        return img

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self._samples):
            raise IndexError(index)
        exo_files, ego_file, g = self._draw(index)
        exo = torch.stack([self.transform(self._load(p), self._view(p, g)) for p in exo_files])
        ego = self.transform(self._load(ego_file), self._view(ego_file, g))
        label, obj = self._group_info[self._samples[index][0]]
        return {"exo": exo, "ego": ego, "label": torch.tensor(label, dtype=torch.int64), "object": obj}


class TrainImageSet(Dataset):
    """Every training image of a split (egocentric and exocentric), without labels, for
    label-free pretraining (LoopTrans's cluster module). Item: ``{"image": (3, S, S)}``.

    Files are sorted (egocentric first, then exocentric); each item's crop and flip come from a
    generator seeded by (seed, epoch, index), as in :class:`AffordanceTrainSet`.
    """

    def __init__(self, split: Split, transform: TrainTransform | None = None, seed: int = 0,
                 cache_images: bool = False, views: int = 0) -> None:
        self.split, self.seed, self.epoch = split, seed, 0
        self.views = _check_views(views)
        self.transform = transform if transform is not None else TrainTransform()
        self.files: list[Path] = [p for groups in (split.ego_groups(), split.exo_groups())
                                  for key in sorted(groups) for p in groups[key]]
        if not self.files:
            raise AffordError(f"{split.root / 'trainset'}: no training images")
        self._decoded: dict[Path, Image.Image] | None = {} if cache_images else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.files):
            raise IndexError(index)
        path = self.files[index]
        if self._decoded is None:
            img = load_rgb(path)
        else:
            img = self._decoded.get(path) or self._decoded.setdefault(path, load_rgb(path))
        g = sample_generator(self.seed, self.epoch, index)
        if self.views:  # one of the image's fixed views (frozen-feature cache)
            v = int(torch.randint(0, self.views, (1,), generator=g).item())
            g = view_generator(self.seed, self.files[index].relative_to(self.split.root).as_posix(), v)
        return {"image": self.transform(img, g)}


class AffordanceTestSet(Dataset):
    """Egocentric test images with GT, square-resized. Item::

        {"image": (3, S, S) float32, "label": int64 scalar, "index": int}

    ``index`` points into :attr:`items` (the TestItem, hence the GT) so that batches can be
    scored against native-resolution GT from a :class:`GTCache`.
    """

    def __init__(
        self,
        split: Split,
        size: int = 224,
    ) -> None:
        self.split, self.size = split, size
        self.items: list[TestItem] = split.test_items()
        self.labels: list[int] = [split.label(it.affordance) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.items):
            raise IndexError(index)
        image = eval_transform(load_rgb(self.items[index].image), self.size)
        return {"image": image, "label": torch.tensor(self.labels[index], dtype=torch.int64),
                "index": index}
