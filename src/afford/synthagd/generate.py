"""SynthAGD: a seeded procedural affordance benchmark in the exact AGD20K layout (synthagd.md).

``generate(out, split="seen", seed=0, size=224)`` writes::

    <out>/<Seen|Unseen>/trainset/exocentric/<aff>/<obj>/<obj>_exo_<i>.jpg   interaction images
    <out>/<Seen|Unseen>/trainset/egocentric/<aff>/<obj>/<obj>_ego_<i>.jpg   object alone
    <out>/<Seen|Unseen>/testset/egocentric/<aff>/<obj>/<obj>_test_<i>.jpg
    <out>/<Seen|Unseen>/testset/GT/<aff>/<obj>/<obj>_test_<i>.png       8-bit point-Gaussian GT
    <out>/<Seen|Unseen>/afford_classes.json
    <out>/extras/<Seen|Unseen>/masks/<aff>/<obj>/<name>_{object,part}.png  every egocentric image
    <out>/extras/<Seen|Unseen>/hoi.json                                   boxes of every exo image

Determinism: each image draws from its own generator seeded by (seed, split, role, pair, index),
so files are byte-identical for the same arguments whatever the generation order; the world
(object geometry and palettes) depends on the seed only, so Seen and Unseen share objects.

``difficulty`` (0..1, default 1 = the spec's realism) scales what makes the task hard but not
different: object rotation range, background contrast, clutter count, distractor probability,
blur and pixel noise. 0 gives upright-ish objects on calm backgrounds, useful for smoke demos.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from afford.data.layout import CLASS_FILE, EXTRAS_DIR, EXTRAS_MASK, subtree_path
from afford.errors import AffordError
from afford.synthagd.actor import build_actor
from afford.synthagd.render import Canvas, Placement, background, draw_object, place
from afford.synthagd.shapes import bbox, raster, short_side, transform
from afford.synthagd.world import VOCAB, ObjectSpec, make_world, split_pairs

VERSION = "2"  # 2: Unseen training images without held-out distractors
SPLITS: dict[str, str] = {"seen": "Seen", "unseen": "Unseen"}
_SPLIT_ID = {"seen": 1, "unseen": 2}
_ROLE_ID = {"exo": 1, "ego": 2, "test": 3}


def image_rng(seed: int, split: str, role: str, aff: str, obj: str, index: int) -> np.random.Generator:
    """The generator of one image: a function of its identity only, never of generation order."""
    pair = zlib.crc32(f"{aff}/{obj}".encode())
    return np.random.default_rng([seed, _SPLIT_ID[split], _ROLE_ID[role], pair, index])


# ----------------------------------------------------------------------------- scenes
def _tilt(spec: ObjectSpec, rng: np.random.Generator, difficulty: float, exo: bool) -> float:
    """Rotation in degrees: small for upright things, larger for hand-held tools."""
    if spec.upright:
        return float(rng.uniform(-1, 1) * (4 + (10 if exo else 20) * difficulty))
    return float(rng.uniform(-1, 1) * (20 + (35 if exo else 70) * difficulty))


def _finish(canvas: Canvas, rng: np.random.Generator, difficulty: float) -> Image.Image:
    """Optional sensor noise and blur (probability and strength scale with difficulty)."""
    if difficulty > 0:
        # Luminance grain: one value per pixel, shared by the three channels (cheap, camera-like).
        grain = rng.standard_normal((canvas.flat.shape[0], 1), dtype=np.float32)
        canvas.flat += grain * np.float32(0.02 * difficulty)
    img = Image.fromarray(canvas.image())
    if rng.uniform() < 0.3 * difficulty:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8)) * canvas.size / 224))
    return img


def _masks(pl: Placement, size: int) -> list[np.ndarray]:
    return [raster(transform(p.shapes, pl.A, pl.b), size) for p in pl.spec.parts]


def _visible(masks: list[np.ndarray], spec: ObjectSpec, parts: tuple[str, ...]) -> np.ndarray:
    """Visible pixels of ``parts`` after z-order occlusion by later parts of the same object."""
    labels = np.zeros(masks[0].shape, dtype=np.uint8)
    for k, m in enumerate(masks):
        labels[m] = k + 1
    ids = [k + 1 for k, p in enumerate(spec.parts) if p.name in parts]
    return np.isin(labels, ids)


def render_ego(world: dict[str, ObjectSpec], obj: str, aff: str, size: int, rng: np.random.Generator,
               difficulty: float = 1.0, distractors: Sequence[str] | None = None) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Object alone on a textured background, sometimes over a distractor of another category
    (one of ``distractors``, default every category of the world). Returns the image, the object
    mask and the affordance-part mask (both visible, bool)."""
    spec = world[obj]
    canvas = background(size, rng, difficulty)
    if rng.uniform() < 0.35 * difficulty:
        others = [o for o in sorted(distractors if distractors is not None else world) if o != obj]
        if others:
            dspec = world[others[int(rng.integers(len(others)))]]
            dpl = place(dspec, size, rng, float(rng.uniform(0.25, 0.4)), _tilt(dspec, rng, 1.0, False),
                        bool(rng.uniform() < 0.5))
            draw_object(canvas, dpl, _masks(dpl, size), rng)
    pl = place(spec, size, rng, float(rng.uniform(0.5, 0.8)), _tilt(spec, rng, difficulty, False),
               bool(rng.uniform() < 0.5))
    masks = _masks(pl, size)
    obj_mask = draw_object(canvas, pl, masks, rng, float(rng.uniform(0.85, 1.15)))
    part_mask = _visible(masks, spec, VOCAB[obj][aff].parts)
    return _finish(canvas, rng, difficulty), obj_mask, part_mask


def render_exo(world: dict[str, ObjectSpec], obj: str, aff: str, size: int, rng: np.random.Generator,
               difficulty: float = 1.0) -> tuple[Image.Image, dict]:
    """The interaction: object plus actor (and tool target). Returns the image and its HOI record
    (human box = union of actor pieces, object box = amodal object, xyxy end-exclusive pixels)."""
    spec, use = world[obj], VOCAB[obj][aff]
    canvas = background(size, rng, difficulty)
    if use.tilt is not None:
        tilt = float(rng.uniform(*use.tilt)) * (1 if rng.uniform() < 0.5 else -1)
    else:
        tilt = _tilt(spec, rng, difficulty, True)
    pl = place(spec, size, rng, float(rng.uniform(0.45, 0.7)), tilt, bool(rng.uniform() < 0.5))
    masks = _masks(pl, size)
    part_mask = _visible(masks, spec, use.parts)
    layers, occ = build_actor(use, pl, part_mask, rng, size)
    for ly in layers:
        if not ly.front:
            canvas.fill(raster(ly.shapes, size), ly.tex, rng, np.eye(2) * pl.scale, np.zeros(2))
    obj_mask = draw_object(canvas, pl, masks, rng, float(rng.uniform(0.85, 1.15)))
    for ly in layers:
        if ly.front:
            canvas.fill(raster(ly.shapes, size), ly.tex, rng, np.eye(2) * pl.scale, np.zeros(2))
    human = raster([s for ly in layers if ly.human for s in ly.shapes], size)
    record = {"human_box": list(bbox(human) or (0, 0, 0, 0)), "object_box": list(bbox(obj_mask) or (0, 0, 0, 0)),
              "verb": aff, "object": obj, "occlusion": round(occ, 4)}
    return _finish(canvas, rng, difficulty), record


def gt_heatmap(part_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """AGD20K-style GT: 3-8 points uniform in the part, a Gaussian of sigma = short side / 6 at
    each, summed and scaled to a peak of 255 (uint8, truncated as AGD20K's files are)."""
    idx = np.flatnonzero(part_mask)
    n = int(rng.integers(3, 9))
    pts = idx[rng.integers(0, idx.size, n)]
    py, px = np.divmod(pts, part_mask.shape[1])
    sigma = max(1.0, short_side(part_mask) / 6.0)
    gy = np.exp(-((np.arange(part_mask.shape[0])[None, :] - py[:, None]) ** 2) / (2 * sigma**2))
    gx = np.exp(-((np.arange(part_mask.shape[1])[None, :] - px[:, None]) ** 2) / (2 * sigma**2))
    g = gy.T @ gx
    return np.floor(g / g.max() * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- writing
def _save_jpg(img: Image.Image, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=quality, optimize=False, subsampling=0)


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path, "PNG", compress_level=6)


def _check(split: str, seed: int, size: int, counts: dict[str, int], difficulty: float, quality: int) -> str:
    key = split.lower()
    if key not in SPLITS:
        raise AffordError(f"split: expected 'seen' or 'unseen', got {split!r}")
    if not isinstance(seed, int) or seed < 0:
        raise AffordError(f"seed: expected an integer >= 0, got {seed!r}")
    if not 32 <= size <= 1024:
        raise AffordError(f"size: expected 32..1024 pixels, got {size}")
    for name, v in counts.items():
        if v < 0:
            raise AffordError(f"{name}: expected a count >= 0, got {v}")
    if not 0.0 <= difficulty <= 1.0:
        raise AffordError(f"difficulty: expected a value in [0, 1], got {difficulty}")
    if not 50 <= quality <= 100:
        raise AffordError(f"jpeg_quality: expected 50..100, got {quality}")
    return key


def generate(out: Path | str, split: str = "seen", seed: int = 0, size: int = 224, n_exo: int = 40,
             n_ego: int = 10, n_test: int = 5, progress: bool = False, difficulty: float = 1.0,
             jpeg_quality: int = 90, overwrite: bool = False) -> dict:
    """Write one SynthAGD split under ``out`` and return a summary (counts, seconds, classes).

    Counts are per (affordance, object) pair. An existing non-empty split folder is an error unless
    ``overwrite`` (then it and its extras are replaced), so stale files never mix with new ones.
    """
    key = _check(split, seed, size, {"n_exo": n_exo, "n_ego": n_ego, "n_test": n_test}, difficulty, jpeg_quality)
    out = Path(out)
    name = SPLITS[key]
    root, extras = out / name, out / EXTRAS_DIR / name
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise AffordError(f"{root}: already exists and is not empty (pass overwrite=True / --overwrite)")
        shutil.rmtree(root)
        shutil.rmtree(extras, ignore_errors=True)
    world = make_world(seed)
    train, test = split_pairs(key)
    jobs = [("exo", p, i) for p in train for i in range(n_exo)] + [("ego", p, i) for p in train for i in range(n_ego)]
    jobs += [("test", p, i) for p in test for i in range(n_test)]
    # Unseen: training images never show a held-out category, not even as a distractor (it leaked
    # into 16 % of the egocentric training images); Seen holds none out, so its images are unchanged.
    held_out = {o for _, o in test} - {o for _, o in train}
    train_distractors = [o for o in sorted(world) if o not in held_out]
    # The tree is the one the reader defines (afford.data.layout), never retyped here.
    exo_rel = subtree_path(Path(), "exocentric").as_posix()  # "trainset/exocentric", kept in hoi.json
    ego_dir = {"ego": subtree_path(root, "egocentric"), "test": subtree_path(root, "test_egocentric")}
    gt_dir = subtree_path(root, "GT")
    t0 = time.perf_counter()
    hoi: list[dict] = []
    counts = {"exocentric": 0, "egocentric": 0, "test": 0, "gt": 0, "masks": 0}
    for role, (aff, obj), i in tqdm(jobs, disable=not progress, desc=f"SynthAGD {name}", unit="img"):
        rng = image_rng(seed, key, role, aff, obj, i)
        stem = f"{obj}_{role}_{i:06d}"  # unique across train/test: masks share one extras folder
        if role == "exo":
            img, rec = render_exo(world, obj, aff, size, rng, difficulty)
            rel = f"{exo_rel}/{aff}/{obj}/{stem}.jpg"
            _save_jpg(img, root / rel, jpeg_quality)
            hoi.append({"file": rel, "width": size, "height": size, **rec})
            counts["exocentric"] += 1
            continue
        img, obj_mask, part_mask = render_ego(world, obj, aff, size, rng, difficulty,
                                              train_distractors if role == "ego" else None)
        _save_jpg(img, ego_dir[role] / aff / obj / f"{stem}.jpg", jpeg_quality)
        for kind, mask in (("object", obj_mask), ("part", part_mask)):
            _save_png(mask.astype(np.uint8) * 255,
                      out / EXTRAS_MASK.format(split=name, aff=aff, obj=obj, stem=stem, kind=kind))
        counts["masks"] += 2
        if role == "test":
            _save_png(gt_heatmap(part_mask if part_mask.any() else obj_mask, rng),
                      gt_dir / aff / obj / f"{stem}.png")
            counts["test"] += 1
            counts["gt"] += 1
        else:
            counts["egocentric"] += 1
    seconds = time.perf_counter() - t0
    affs = sorted({a for a, _ in train + test})
    objs = sorted({o for _, o in train + test})
    classes = {"affordances": affs, "objects": objs, "source": "SynthAGD", "seed": seed, "size": size,
               "version": VERSION, "split": name, "difficulty": difficulty,
               "parts": {o: {a: list(VOCAB[o][a].parts) for a in sorted(VOCAB[o]) if a in affs} for o in objs}}
    for subtree in ("exocentric", "egocentric", "test_egocentric", "GT"):  # a count of 0 leaves it empty, not absent
        subtree_path(root, subtree).mkdir(parents=True, exist_ok=True)
    (root / CLASS_FILE).write_text(json.dumps(classes, indent=1, sort_keys=True) + "\n")
    extras.mkdir(parents=True, exist_ok=True)
    (extras / "hoi.json").write_text(json.dumps({"source": "SynthAGD", "split": name, "box_format": "xyxy",
                                                 "images": hoi}, indent=1, sort_keys=True) + "\n")
    n_img = counts["exocentric"] + counts["egocentric"] + counts["test"]
    return {"split": name, "root": str(root), "counts": counts, "images": n_img,
            "pairs": {"train": len(train), "test": len(test)}, "affordances": affs, "objects": objs,
            "seconds": round(seconds, 3), "images_per_second": round(n_img / max(seconds, 1e-9), 1)}
