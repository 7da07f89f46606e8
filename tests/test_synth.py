"""SynthAGD: determinism, layout, GT semantics, the Unseen split, HOI boxes and baseline ordering."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from afford.errors import AffordError
from afford.synthagd import UNSEEN_OBJECTS, VOCAB, generate, gt_heatmap, image_rng, make_world, split_pairs

SIZE = 96


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_seen")
    return out, generate(out, "seen", seed=3, size=SIZE, n_exo=2, n_ego=1, n_test=3)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_unseen")
    return out, generate(out, "unseen", seed=3, size=64, n_exo=1, n_ego=1, n_test=1)


def test_byte_identical_for_same_seed_and_different_for_other_seed(tmp_path: Path) -> None:
    kw = {"size": 40, "n_exo": 1, "n_ego": 1, "n_test": 1}
    generate(tmp_path / "a", seed=7, **kw)
    generate(tmp_path / "b", seed=7, **kw)
    generate(tmp_path / "c", seed=8, **kw)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    n_pairs = len(split_pairs("seen")[0])
    assert len(a) == 2 + n_pairs * (3 + 1 + 4) and a == b  # json x2; jpg x3, GT, masks x4
    assert a.keys() == c.keys()
    differ = sum(a[k] != c[k] for k in a if k.endswith(".jpg"))
    assert differ == sum(k.endswith(".jpg") for k in a)


def test_each_image_depends_on_its_own_index_not_on_how_many_are_drawn(tmp_path: Path) -> None:
    """Image i of a pair is the same whatever n_exo / n_ego / n_test are: a demo at 2 test images per pair
    shows the first 2 of a 3-image run (refine/defaults.py's tuning images stay disjoint from the demo's)."""
    generate(tmp_path / "a", seed=7, size=40, n_exo=1, n_ego=1, n_test=1)
    generate(tmp_path / "b", seed=7, size=40, n_exo=2, n_ego=2, n_test=2)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    images = [k for k in a if k.endswith((".jpg", ".png"))]
    assert len(b) > len(a) and len(images) > 100
    assert all(a[k] == b[k] for k in images)


def test_world_depends_on_seed_only_and_colour_does_not_name_the_role() -> None:
    w0, w0b, w1 = make_world(0), make_world(0), make_world(1)
    assert w0["knife"].parts[0].texture == w0b["knife"].parts[0].texture
    assert w0["knife"].parts[0].texture != w1["knife"].parts[0].texture
    assert not np.allclose(w0["knife"].parts[1].shapes[0][0], w1["knife"].parts[1].shapes[0][0])
    # The parts that "hold" names on different objects do not share a colour.
    hold = [w0[o].part(VOCAB[o]["hold"].parts[0]).texture.a for o in VOCAB if "hold" in VOCAB[o]]
    assert len(hold) >= 6 and np.std(np.array(hold), axis=0).mean() > 0.1


def test_layout_counts_and_class_file(seen: tuple[Path, dict]) -> None:
    out, summary = seen
    root = out / "Seen"
    pairs = sorted((a, o) for o in VOCAB for a in VOCAB[o])
    assert summary["counts"] == {"exocentric": 2 * len(pairs), "egocentric": len(pairs),
                                 "test": 3 * len(pairs), "gt": 3 * len(pairs), "masks": 8 * len(pairs)}
    for a, o in pairs:
        assert len(list((root / "trainset/exocentric" / a / o).glob("*.jpg"))) == 2
        assert len(list((root / "trainset/egocentric" / a / o).glob("*.jpg"))) == 1
        assert len(list((root / "testset/egocentric" / a / o).glob("*.jpg"))) == 3
        assert len(list((root / "testset/GT" / a / o).glob("*.png"))) == 3
    classes = json.loads((root / "afford_classes.json").read_text())
    assert classes["affordances"] == sorted({a for a, _ in pairs}) and 10 <= len(classes["affordances"]) <= 14
    assert classes["objects"] == sorted(VOCAB) and classes["source"] == "SynthAGD"
    assert (classes["seed"], classes["size"]) == (3, SIZE)
    for img in (root / "trainset/egocentric").rglob("*.jpg"):
        a, o = img.parts[-3], img.parts[-2]
        for kind in ("object", "part"):
            m = np.asarray(Image.open(out / "extras/Seen/masks" / a / o / f"{img.stem}_{kind}.png"))
            assert m.shape == (SIZE, SIZE) and set(np.unique(m)) <= {0, 255} and m.max() == 255


def test_gt_is_a_point_heatmap_inside_the_part(seen: tuple[Path, dict]) -> None:
    out, _ = seen
    fracs, part_vs_object = [], []
    for gt_path in sorted((out / "Seen/testset/GT").rglob("*.png")):
        a, o, stem = gt_path.parts[-3], gt_path.parts[-2], gt_path.stem
        gt_img = Image.open(gt_path)
        jpg = Image.open(out / "Seen/testset/egocentric" / a / o / f"{stem}.jpg")
        assert gt_img.mode == "L" and gt_img.size == jpg.size
        gt = np.asarray(gt_img).astype(np.float64)
        assert gt.max() == 255
        part = np.asarray(Image.open(out / "extras/Seen/masks" / a / o / f"{stem}_part.png")) > 0
        obj = np.asarray(Image.open(out / "extras/Seen/masks" / a / o / f"{stem}_object.png")) > 0
        assert (part & ~obj).sum() == 0 and part.sum() < obj.sum()
        fracs.append(gt[part].sum() / gt.sum())
        part_vs_object.append(part.sum() / obj.sum())
    assert np.median(fracs) > 0.7 and min(fracs) > 0.3
    assert np.median(part_vs_object) < 0.6  # the part is a part, not the object


def test_gt_heatmap_matches_a_brute_force_reference() -> None:
    mask = np.zeros((60, 80), dtype=bool)
    mask[20:32, 10:70] = True  # a 60x12 bar: short side 12 -> sigma 2
    gt = gt_heatmap(mask, np.random.default_rng(0))
    # Replay the same draws: n in 3..8, then n pixel indices uniform over the part.
    rng = np.random.default_rng(0)
    n = int(rng.integers(3, 9))
    idx = np.flatnonzero(mask)[rng.integers(0, mask.sum(), n)]
    rr, cc = np.mgrid[:60, :80]
    ref = np.zeros((60, 80))
    for i in idx:
        r, c = divmod(int(i), 80)
        assert mask[r, c]
        ref += np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 2.0**2))
    ref = ref / ref.max() * 255
    assert 3 <= n <= 8 and gt.dtype == np.uint8 and gt.max() == 255
    assert np.abs(gt.astype(np.float64) - ref).max() < 1.0 + 1e-9  # floor, never round
    assert (gt.astype(np.float64) <= ref + 1e-9).all()


def test_unseen_holds_out_whole_objects(unseen: tuple[Path, dict]) -> None:
    out, summary = unseen
    root = out / "Unseen"
    test_objs = {p.name for p in (root / "testset/egocentric").glob("*/*")}
    train_objs = {p.name for p in (root / "trainset/exocentric").glob("*/*")}
    train_objs |= {p.name for p in (root / "trainset/egocentric").glob("*/*")}
    assert test_objs == set(UNSEEN_OBJECTS) and not (test_objs & train_objs)
    test_affs = {p.name for p in (root / "testset/egocentric").iterdir()}
    train_affs = {p.name for p in (root / "trainset/exocentric").iterdir()}
    assert test_affs == train_affs
    classes = json.loads((root / "afford_classes.json").read_text())
    assert classes["affordances"] == sorted(test_affs)
    train, test = split_pairs("unseen")
    assert summary["counts"]["exocentric"] == len(train) and summary["counts"]["test"] == len(test)
    assert len(list((out / "extras/Unseen/masks").rglob("*_part.png"))) == len(train) + len(test)


def test_hoi_boxes(seen: tuple[Path, dict]) -> None:
    out, summary = seen
    hoi = json.loads((out / "extras/Seen/hoi.json").read_text())["images"]
    assert len(hoi) == summary["counts"]["exocentric"]
    occ = []
    for r in hoi:
        assert (out / "Seen" / r["file"]).is_file()
        assert r["verb"] == r["file"].split("/")[2] and r["object"] == r["file"].split("/")[3]
        for box in (r["human_box"], r["object_box"]):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        h, o = r["human_box"], r["object_box"]
        assert min(h[2], o[2]) > max(h[0], o[0]) and min(h[3], o[3]) > max(h[1], o[1])
        occ.append(r["occlusion"])
    assert 0.2 <= np.median(occ) <= 0.6 and np.mean((np.array(occ) >= 0.1) & (np.array(occ) <= 0.7)) > 0.85


def _blur(m: np.ndarray, sigma: float) -> np.ndarray:
    r = int(3 * sigma) + 1
    x = np.arange(-r, r + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    m = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 0, m)
    return np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 1, m)


def test_baselines_centre_worse_than_object_worse_than_part_oracle(seen: tuple[Path, dict]) -> None:
    from afford.metrics.saliency import kld, prepare_gt, prepare_prediction, sim

    out, _ = seen
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centre = np.exp(-((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / (2 * (SIZE / 4) ** 2))
    preds: dict[str, list[np.ndarray]] = {"centre": [], "object": [], "part": []}
    gts = []
    for gt_path in sorted((out / "Seen/testset/GT").rglob("*.png")):
        a, o, stem = gt_path.parts[-3], gt_path.parts[-2], gt_path.stem
        gts.append(torch.from_numpy(np.array(Image.open(gt_path))))
        masks = out / "extras/Seen/masks" / a / o
        preds["centre"].append(centre)
        for kind in ("object", "part"):
            m = np.asarray(Image.open(masks / f"{stem}_{kind}.png")) / 255.0
            preds[kind].append(_blur(m, SIZE / 32))
    G = prepare_gt(gts)
    res = {}
    for k, v in preds.items():
        P = prepare_prediction(torch.from_numpy(np.stack(v)))
        res[k] = (kld(P, G).mean().item(), sim(P, G).mean().item())
    (kc, sc), (ko, so), (kp, sp) = res["centre"], res["object"], res["part"]
    assert kc > ko + 0.5 and sc < so, res
    assert kp < ko - 0.5 and sp > 1.5 * so, res


def test_user_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(AffordError, match="split"):
        generate(tmp_path, split="both")
    with pytest.raises(AffordError, match="size"):
        generate(tmp_path, size=8)
    with pytest.raises(AffordError, match="difficulty"):
        generate(tmp_path, difficulty=2.0)
    generate(tmp_path, size=32, n_exo=0, n_ego=0, n_test=1)
    with pytest.raises(AffordError, match="not empty"):
        generate(tmp_path, size=32, n_exo=0, n_ego=0, n_test=1)
    s = generate(tmp_path, size=32, n_exo=0, n_ego=0, n_test=1, overwrite=True, difficulty=0.0)
    assert s["counts"]["test"] == len(split_pairs("seen")[1])
    # a count of 0 leaves its sub-tree empty, not absent (data check called the tree NOT USABLE)
    assert (tmp_path / "Seen" / "trainset" / "exocentric").is_dir() and (tmp_path / "Seen" / "trainset" / "egocentric").is_dir()


def test_image_rng_is_a_function_of_identity_only() -> None:
    a = image_rng(0, "seen", "exo", "hold", "knife", 5).integers(1 << 30)
    b = image_rng(0, "seen", "exo", "hold", "knife", 5).integers(1 << 30)
    c = image_rng(0, "seen", "exo", "hold", "knife", 6).integers(1 << 30)
    d = image_rng(0, "unseen", "exo", "hold", "knife", 5).integers(1 << 30)
    assert a == b and len({a, c, d}) == 3


def test_unseen_training_images_never_show_a_held_out_category(tmp_path: Path, monkeypatch) -> None:
    """A distractor was drawn from every category: 16 % of Unseen's egocentric training images showed
    a held-out test object. Seen holds none out, so its images keep every category as distractors."""
    import sys

    gen_mod = sys.modules["afford.synthagd.generate"]  # the package exports a function of that name
    drawn: dict[str, set[str]] = {}
    real_place = gen_mod.place

    def spy(spec, size, rng, span, *a, **kw):  # the distractor is the object placed at span 0.25-0.4
        if span < 0.45:
            drawn.setdefault(current["role"], set()).add(spec.name)
        return real_place(spec, size, rng, span, *a, **kw)

    current = {"role": ""}
    real_render = gen_mod.render_ego

    def render(*args, **kw):
        current["role"] = "train" if args[6:] and args[6] is not None else "test"
        return real_render(*args, **kw)

    monkeypatch.setattr(gen_mod, "place", spy)
    monkeypatch.setattr(gen_mod, "render_ego", render)
    generate(tmp_path / "u", split="unseen", size=32, n_exo=1, n_ego=12, n_test=4)
    assert drawn["train"] and not drawn["train"] & set(UNSEEN_OBJECTS)
    drawn.clear()
    generate(tmp_path / "s", split="seen", size=32, n_exo=1, n_ego=12, n_test=1)
    assert drawn["train"] & set(UNSEEN_OBJECTS)  # Seen: every category, as before
