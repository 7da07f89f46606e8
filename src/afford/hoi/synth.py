"""SynthHOI: a seeded HOI detection benchmark in the HICO-DET layout, built from the SynthAGD world.

Why: HICO-DET images cannot be downloaded offline, and an HOI pipeline needs a dataset that has
what makes HICO-DET hard (several people and objects per image, pairs with several verbs, pairs
without interaction, a long tail of rare classes, compositions never seen in training) and that
every machine can generate in seconds. The page ``docs/synthhoi.md`` is its specification.

``generate_synthhoi(out, seed=0)`` writes::

    <out>/instances_train2015.json, <out>/instances_test2015.json   (fredzzhang/hicodet layout)
    <out>/images/train2015/*.jpg, <out>/images/test2015/*.jpg
    <out>/detections_gt_{train,test}2015.json                        the annotated instances as cached
                                                                     detections (a perfect detector)
    <out>/zero_shot_uc.json                                          unseen-composition HOI ids
    <out>/synthhoi.json                                              generator settings + counts

An image is a grid of tiles (SynthAGD renderings): *interaction* tiles (a person using an object:
one pair, verb = the affordance, plus ``hold`` when the use grips the object's holding part),
*object* tiles (an object alone: every person of the image forms a ``no_interaction`` pair with
it) and plain background tiles. Boxes are written as HICO-DET's are: 1-based pixel indices, both
corners inclusive. Every file is a function of (seed, split, image index) only: same seed,
identical bytes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from afford.errors import AffordError
from afford.hoi.types import ImageGT
from afford.synthagd.generate import render_ego, render_exo
from afford.synthagd.render import background
from afford.synthagd.shapes import bbox
from afford.synthagd.world import VOCAB, make_world

VERSION = "2"  # 2: object tiles without distractors, float boxes, unseen classes that leave every other class drawn
log = logging.getLogger(__name__)
#: the label of people in the ground-truth detection files (SynthHOI has no "person" object)
HUMAN_LABEL = -1
NO_INTERACTION = "no_interaction"
SPLIT_FILES = {"train": "train2015", "test": "test2015"}
_SPLIT_ID = {"train": 1, "test": 2}


def vocabulary() -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """``(objects, verbs, classes)``: objects and verbs alphabetical, classes as (object, verb)
    index pairs grouped by object (HICO-DET's order): its affordances, then ``no_interaction``."""
    objects = sorted(VOCAB)
    verbs = sorted({a for uses in VOCAB.values() for a in uses} | {NO_INTERACTION})
    classes = [(objects.index(o), verbs.index(v)) for o in objects for v in [*sorted(VOCAB[o]), NO_INTERACTION]]
    return objects, verbs, classes


def secondary_verb(obj: str, verb: str) -> str | None:
    """``hold`` when the use grips the part the object is held by (cutting with a knife holds it)."""
    use, hold = VOCAB[obj][verb], VOCAB[obj].get("hold")
    if verb == "hold" or hold is None or use.grip is None:
        return None
    return "hold" if use.grip in hold.parts else None


def class_weights(n: int, rng: np.random.Generator, exponent: float = 2.0) -> np.ndarray:
    """A Zipf-like long tail over the interaction classes in a seeded order (the rare tail)."""
    w = 1.0 / (np.arange(n) + 1.0) ** exponent
    return w[rng.permutation(n)] / w.sum()


def _secondary_class(c: int, classes: list[tuple[int, int]], objects: list[str], verbs: list[str]) -> int | None:
    o, v = classes[c]
    extra = secondary_verb(objects[o], verbs[v])
    return None if extra is None else classes.index((o, verbs.index(extra)))


def drawable(classes: list[tuple[int, int]], objects: list[str], verbs: list[str], held_out: set[int]) -> list[int]:
    """Interaction classes a training scene may draw when ``held_out`` are unseen: a pair carries
    all its verbs, so a class whose second verb is held out goes too (pair-level removal)."""
    ni = verbs.index(NO_INTERACTION)
    return [c for c, (_, v) in enumerate(classes) if v != ni and c not in held_out
            and _secondary_class(c, classes, objects, verbs) not in held_out]


def unseen_compositions(classes: list[tuple[int, int]], objects: list[str], verbs: list[str], k: int,
                        rng: np.random.Generator) -> list[int]:
    """``k`` interaction classes held out of training whose verb and object both stay seen (drawn
    in training by another class), and whose removal leaves every other class drawable (holding out
    ``hold tennis_racket`` also removed ``hit tennis_racket``, whose pairs carry ``hold``: a "seen"
    class without a training pair). Fewer than ``k`` such classes is an AffordError."""
    if k <= 0:
        return []
    ni = verbs.index(NO_INTERACTION)
    inter = [c for c, (_, v) in enumerate(classes) if v != ni]
    chosen: list[int] = []
    for c in rng.permutation(inter):
        trial = {*chosen, int(c)}
        left = drawable(classes, objects, verbs, trial)
        objs, vbs = {classes[u][0] for u in left}, {classes[u][1] for u in left}
        if set(left) == set(inter) - trial and all(classes[u][0] in objs and classes[u][1] in vbs for u in trial):
            chosen.append(int(c))
            if len(chosen) == k:
                return sorted(chosen)
    raise AffordError(f"synth-hoi: --unseen {k}: only {len(chosen)} interaction classes can be held out with their "
                      "verb and object still trained and every other class still drawn")


def _tile_box(box: list[int], ox: int, oy: int) -> list[float]:
    """A 0-based end-exclusive tile box -> 1-based inclusive image box, floats as HICO-DET's files hold."""
    x1, y1, x2, y2 = box
    return [float(x1 + ox + 1), float(y1 + oy + 1), float(x2 + ox), float(y2 + oy)]


def render_image(world: dict, split: str, index: int, seed: int, tile: int, grid: int,
                 classes: list[tuple[int, int]], objects: list[str], verbs: list[str],
                 probs: np.ndarray, difficulty: float, force: int | None = None) -> tuple[Image.Image, dict]:
    """One scene and its annotation entry (``boxes_h``, ``boxes_o``, ``hoi``, ``object``, ``verb``).

    ``force``: the class of the scene's first interaction (so every class occurs at least once)."""
    rng = np.random.default_rng([seed, 77, _SPLIT_ID[split], index])
    n = grid * grid
    n_inter = int(rng.choice([0, 1, 2, 3], p=[0.03, 0.42, 0.4, 0.15]))
    n_inter = min(max(n_inter, 1 if force is not None else 0), n)
    n_obj = int(rng.integers(0, 2 if n_inter else 3))
    kinds = ["inter"] * n_inter + ["object"] * n_obj + ["empty"] * (n - n_inter - n_obj)
    kinds = [kinds[i] for i in rng.permutation(n)]
    first = kinds.index("inter") if "inter" in kinds else -1
    canvas = Image.new("RGB", (tile * grid, tile * grid))
    persons: list[list[int]] = []
    ann: dict[str, list] = {"boxes_h": [], "boxes_o": [], "hoi": [], "object": [], "verb": []}
    alone: list[tuple[list[int], int]] = []
    ni = verbs.index(NO_INTERACTION)
    for t, kind in enumerate(kinds):
        ox, oy = (t % grid) * tile, (t // grid) * tile
        trng = np.random.default_rng([seed, 78, _SPLIT_ID[split], index, t])
        if kind == "inter":
            c = int(trng.choice(len(probs), p=probs))
            if t == first and force is not None:
                c = force
            o, v = classes[c]
            img, rec = render_exo(world, objects[o], verbs[v], tile, trng, difficulty)
            h, ob = _tile_box(rec["human_box"], ox, oy), _tile_box(rec["object_box"], ox, oy)
            persons.append(h)
            for verb in filter(None, (verbs[v], secondary_verb(objects[o], verbs[v]))):
                vi = verbs.index(verb)
                _add(ann, h, ob, classes.index((o, vi)), o, vi)
        elif kind == "object":
            o = int(trng.integers(len(objects)))
            aff = sorted(VOCAB[objects[o]])[0]
            # an object alone: no distractor of another category (it would carry no box and no pair)
            img, obj_mask, _ = render_ego(world, objects[o], aff, tile, trng, difficulty, distractors=())
            box = bbox(obj_mask)
            if box is not None:
                alone.append((_tile_box(list(box), ox, oy), o))
        else:  # floor and clutter only: nothing to annotate
            img = Image.fromarray(background(tile, trng, difficulty).image())
        canvas.paste(img, (ox, oy))
    for h in persons:
        for ob, o in alone:
            _add(ann, h, ob, classes.index((o, ni)), o, ni)
    return canvas, ann


def _add(ann: dict, h: list[int], o_box: list[int], hoi: int, obj: int, verb: int) -> None:
    ann["boxes_h"].append(h)
    ann["boxes_o"].append(o_box)
    ann["hoi"].append(hoi)
    ann["object"].append(obj)
    ann["verb"].append(verb)


#: the largest image side SynthHOI writes (tile x grid): HICO-DET's images are at most 640 px
MAX_IMAGE_SIDE = 2048


def generate_synthhoi(out: str | Path, seed: int = 0, n_train: int = 2000, n_test: int = 500, tile: int = 112,
                      grid: int = 2, n_unseen: int = 6, difficulty: float = 0.5, jpeg_quality: int = 90,
                      progress: bool = False, overwrite: bool = False) -> dict:
    """Write SynthHOI under ``out``; returns a summary (counts, seconds, images per second)."""
    out = Path(out)
    for name, value, lo in (("n_train", n_train, 1), ("n_test", n_test, 1), ("tile", tile, 48), ("grid", grid, 1)):
        if int(value) < lo:
            raise AffordError(f"synth-hoi: {name} must be at least {lo}, got {value}")
    if not 0 <= int(seed) < 2**63:
        raise AffordError(f"synth-hoi: seed must be an integer in [0, 2^63), got {seed}")
    if not 0.0 <= float(difficulty) <= 1.0:  # nan fails too
        raise AffordError(f"synth-hoi: difficulty must be in [0, 1], got {difficulty}")
    if tile * grid > MAX_IMAGE_SIDE:
        raise AffordError(f"synth-hoi: tile x grid = {tile * grid} px a side; at most {MAX_IMAGE_SIDE} (the images are "
                          "tile x grid pixels square)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise AffordError(f"{out}: already exists and is not empty (pass --overwrite)")
        shutil.rmtree(out)
    from afford.hoi.detector import write_ground_truth_detections  # the model stack, only when generating

    world = make_world(seed)
    objects, verbs, classes = vocabulary()
    rng = np.random.default_rng([seed, 79, zlib.crc32(b"synthhoi")])
    ni = verbs.index(NO_INTERACTION)
    inter = [c for c, (_, v) in enumerate(classes) if v != ni]
    unseen = unseen_compositions(classes, objects, verbs, n_unseen, rng)
    w = class_weights(len(inter), rng)
    train_p = np.zeros(len(classes))
    train_p[inter] = w
    allowed = set(drawable(classes, objects, verbs, set(unseen)))
    train_p[[c for c in inter if c not in allowed]] = 0.0
    train_p /= train_p.sum()
    test_p = np.zeros(len(classes))
    test_p[inter] = 1.0 / len(inter)  # every class in the test set, the rare ones included
    t0 = time.perf_counter()
    summary: dict = {"version": VERSION, "seed": seed, "tile": tile, "grid": grid, "difficulty": difficulty,
                     "unseen": unseen}
    for split, count, probs in (("train", n_train, train_p), ("test", n_test, test_p)):
        every = [int(c) for c in np.flatnonzero(probs)]  # each drawable class at least once, first
        if count < len(every):
            log.warning("synth-hoi: %d %s images cannot hold each of its %d interaction classes once; some classes "
                        "(and, for training, possibly an unseen class's object or verb) will be missing",
                        count, split, len(every))
        img_dir = out / "images" / SPLIT_FILES[split]
        img_dir.mkdir(parents=True, exist_ok=True)
        filenames, sizes, annotation, empty = [], [], [], []
        for i in tqdm(range(count), disable=not progress, desc=f"SynthHOI {split}", unit="img"):
            img, ann = render_image(world, split, i, seed, tile, grid, classes, objects, verbs, probs, difficulty,
                                    force=every[i] if i < len(every) else None)
            name = f"SYNTHHOI_{SPLIT_FILES[split]}_{i:08d}.jpg"
            img.save(img_dir / name, "JPEG", quality=jpeg_quality, optimize=False, subsampling=0)
            filenames.append(name)
            sizes.append([img.width, img.height])
            annotation.append(ann)
            if not ann["hoi"]:
                empty.append(i)
        summary[split] = {"images": count, "pairs": sum(len(a["hoi"]) for a in annotation), "empty": len(empty)}
        if split == "train":
            counts = np.bincount([h for a in annotation for h in a["hoi"]], minlength=len(classes))
        rare = [c for c in range(len(classes)) if counts[c] < 10]
        doc = {"annotation": annotation, "filenames": filenames, "size": sizes, "empty": empty,
               "objects": objects, "verbs": verbs,
               "correspondence": [[c, o, v] for c, (o, v) in enumerate(classes)],
               "rare": rare, "non_rare": [c for c in range(len(classes)) if c not in rare],
               "source": f"SynthHOI v{VERSION} seed {seed}"}
        (out / f"instances_{SPLIT_FILES[split]}.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        gts = [ImageGT(*(np.asarray(a[k], np.float64).reshape(-1, 4) for k in ("boxes_h", "boxes_o")),
                       *(np.asarray(a[k], np.int64) for k in ("hoi", "object", "verb"))) for a in annotation]
        write_ground_truth_detections(out / f"detections_gt_{SPLIT_FILES[split]}.json", filenames, gts, HUMAN_LABEL)
    seconds = time.perf_counter() - t0
    summary["rare"] = int(sum(counts < 10))
    summary["classes"] = len(classes)
    (out / "zero_shot_uc.json").write_text(json.dumps(unseen) + "\n")
    (out / "synthhoi.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    n = n_train + n_test
    return {**summary, "seconds": round(seconds, 3), "images_per_second": round(n / max(seconds, 1e-9), 1)}
