"""Tests for afford.data: transforms, split opening, GT cache, train/test datasets, sampling."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import afford.data.gt_cache as gt_cache_mod
from afford.data.agd20k import AffordanceTestSet, AffordanceTrainSet, GTCache, open_split
from afford.data.classes import SEEN_AFFORDANCES
from afford.data.sampling import anchor_plus_random_indices, consecutive_window_indices, sample_generator
from afford.data.transforms import (
    TrainTransform,
    eval_transform,
    load_rgb,
    short_side_size,
)
from afford.errors import AffordError

# (aff, obj) -> number of exocentric images: folders of 1, 2, 3 and 5 images.
EXO_COUNTS = {("cut_with", "knife"): 1, ("hold", "knife"): 2, ("hold", "bottle"): 3, ("open", "bottle"): 5}


def _img(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    """A colour plus a diagonal ramp, so that different crops and flips give different tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    arr = (np.array(color)[None, None] + (3 * xx + yy)[..., None]) % 256
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _gt(path: Path, size: tuple[int, int] = (40, 30), peak: int = 255) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    arr = (peak * np.exp(-((xx - 10) ** 2 + (yy - 8) ** 2) / 30.0)).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(path)
    return arr


def make_tree(root: Path, split: str = "Seen", n_test: int = 2, no_ego: tuple[str, str] | None = None) -> Path:
    """A tiny AGD20K split; each file gets its own colour so tests can tell files apart."""
    s = root / split
    c = 0
    for (aff, obj), n in EXO_COUNTS.items():
        for i in range(n):
            c += 1
            _img(s / "trainset/exocentric" / aff / obj / f"{obj}_{i:03d}.jpg", (c * 7 % 256, 50, 90))
        if (aff, obj) != no_ego:
            for i in range(2):
                c += 1
                _img(s / "trainset/egocentric" / aff / obj / f"{obj}_{i:03d}.jpg", (10, c * 11 % 256, 30))
        for i in range(n_test):
            _img(s / "testset/egocentric" / aff / obj / f"{obj}_{i:03d}.jpg", (200, 100, c % 256))
            _gt(s / "testset/GT" / aff / obj / f"{obj}_{i:03d}.png")
    return root


# --- transforms -------------------------------------------------------------------------------


def test_eval_transform_hands_out_unnormalised_images_in_0_1():
    """Normalisation is each backbone's job (tests/test_backbones.py), not the transform's."""
    rgb = (124, 116, 104)
    x = eval_transform(Image.new("RGB", (50, 30), rgb), size=16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    for ch in range(3):
        assert torch.allclose(x[ch], torch.full((16, 16), rgb[ch] / 255), atol=1e-6)


def test_short_side_size_follows_torchvision_truncation():
    assert short_side_size(60, 40, 32) == (48, 32)
    assert short_side_size(40, 60, 32) == (32, 48)
    assert short_side_size(100, 30, 32) == (106, 32)  # int(32 * 100 / 30) = 106


def _ramp(w: int = 60, h: int = 40) -> Image.Image:
    row = np.linspace(0, 255, w).astype(np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (h, 1))[..., None], 3, axis=2))


def test_train_transform_is_deterministic_and_flips_by_generator():
    t = TrainTransform(resize=32, crop=24)
    kinds = set()
    for seed in range(24):
        a = t(_ramp(), torch.Generator().manual_seed(seed))
        b = t(_ramp(), torch.Generator().manual_seed(seed))
        assert a.shape == (3, 24, 24) and torch.equal(a, b)
        d = a[0, 12].diff()
        assert bool((d > 0).all()) or bool((d < 0).all())  # a ramp, possibly mirrored
        kinds.add(bool((d > 0).all()))
    assert kinds == {True, False}  # both flipped and unflipped crops occur
    no_flip = TrainTransform(resize=32, crop=24, flip=False)
    for seed in range(8):
        assert bool((no_flip(_ramp(), torch.Generator().manual_seed(seed))[0, 5].diff() > 0).all())


def _texture(w: int = 60, h: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(7).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_transforms_against_pil_written_out():
    """methods.md §0.3 step by step on a textured image: the short side resized to ``resize`` with PIL
    bilinear (torchvision's truncation), a crop at (row, column) drawn in that order, then the flip
    draw; the eval transform is PIL bilinear straight to the square. Any other filter or order differs."""
    img = _texture()
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        top = int(torch.randint(0, 32 - 24 + 1, (1,), generator=g).item())
        left = int(torch.randint(0, 48 - 24 + 1, (1,), generator=g).item())
        flip = bool(torch.rand(1, generator=g).item() < 0.5)
        ref = np.asarray(img.resize((48, 32), Image.BILINEAR).crop((left, top, left + 24, top + 24)))
        ref = torch.from_numpy((ref[:, ::-1] if flip else ref).copy()).permute(2, 0, 1).float() / 255
        got = TrainTransform(resize=32, crop=24)(img, torch.Generator().manual_seed(seed))
        assert torch.equal(got, ref), seed
    ref = torch.from_numpy(np.asarray(img.resize((16, 16), Image.BILINEAR)).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(eval_transform(img, 16), ref)


def test_square_train_transform_with_full_crop_equals_eval_transform():
    img = Image.new("RGB", (60, 40), (30, 60, 90))
    img.paste((250, 0, 0), (0, 0, 20, 10))
    t = TrainTransform(resize=32, crop=32, flip=False, square=True)
    assert torch.allclose(t(img, torch.Generator().manual_seed(3)), eval_transform(img, 32))
    with pytest.raises(AffordError, match="crop"):
        TrainTransform(resize=100, crop=112)


def test_load_rgb_converts_and_names_broken_files(tmp_path):
    Image.new("L", (8, 8), 7).save(tmp_path / "g.png")
    assert load_rgb(tmp_path / "g.png").mode == "RGB"
    _img(tmp_path / "ok.jpg", (1, 2, 3), (64, 64))
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "bad.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(AffordError, match="bad.jpg"):
        load_rgb(tmp_path / "bad.jpg")
    with pytest.raises(AffordError, match="missing.jpg"):
        load_rgb(tmp_path / "missing.jpg")


# --- open_split and class lists -----------------------------------------------------------------


def test_open_split_resolves_folders_and_builtin_classes(tmp_path):
    make_tree(tmp_path)
    s = open_split(tmp_path, "seen")
    assert s.root == tmp_path / "Seen" and s.name == "Seen" and s.affordances == SEEN_AFFORDANCES
    assert s.label("cut_with") == 6 and s.class_source == "built-in"
    assert open_split(tmp_path / "Seen", "Seen").root == tmp_path / "Seen"  # root is the split
    assert list(s.exo_groups()) == sorted(EXO_COUNTS)
    with pytest.raises(AffordError, match="Unseen"):
        open_split(tmp_path, "Unseen")
    with pytest.raises(AffordError, match="Unseen"):  # a Seen folder is not silently used as Unseen
        open_split(tmp_path / "Seen", "Unseen")


def test_hico_accepts_both_names(tmp_path):
    make_tree(tmp_path, split="HICO")
    for name in ("HICO-IIF", "HICO", "hico-iif"):
        s = open_split(tmp_path, name)
        assert s.name == "HICO-IIF" and s.root == tmp_path / "HICO"
        assert s.affordances[0] == "cut_with" and len(s.affordances) == 10
        assert s.objects == ("bottle", "knife")  # HICO-IIF objects come from disk


def test_class_file_and_folder_fallback(tmp_path, caplog):
    make_tree(tmp_path, split="Custom")
    with caplog.at_level(logging.INFO):
        s = open_split(tmp_path, "Custom")
    assert s.affordances == ("cut_with", "hold", "open") and s.class_source == "folders"
    assert "sorted affordance folder names" in caplog.text
    (tmp_path / "Custom/afford_classes.json").write_text(
        json.dumps({"affordances": ["open", "hold", "cut_with", "pour"], "objects": ["knife", "bottle", "cup"]}))
    s = open_split(tmp_path, "Custom")
    assert s.label("open") == 0 and s.objects == ("knife", "bottle", "cup") and s.class_source == "file"
    (tmp_path / "Custom/afford_classes.json").write_text('{"affordances": "hold"}')
    with pytest.raises(AffordError, match="afford_classes.json: field 'affordances'"):
        open_split(tmp_path, "Custom")


def test_misspelt_class_folder_is_refused_with_suggestion(tmp_path):
    make_tree(tmp_path)
    exo = tmp_path / "Seen/trainset/exocentric"
    (exo / "cut_with").rename(exo / "cut_wiht")
    with pytest.raises(AffordError, match=r"cut_wiht.*did you mean: cut_with"):
        open_split(tmp_path, "Seen")
    (exo / "cut_wiht").rename(exo / "cut_with")
    (exo / "hold/knife").rename(exo / "hold/kinfe")
    with pytest.raises(AffordError, match=r"kinfe.*did you mean: knife"):
        open_split(tmp_path, "Seen")


# --- test items and GT cache ----------------------------------------------------------------------


def test_test_items_skip_missing_gt_and_non_images(tmp_path, caplog):
    make_tree(tmp_path)
    (tmp_path / "Seen/testset/GT/hold/bottle/bottle_001.png").unlink()
    (tmp_path / "Seen/testset/egocentric/hold/bottle/bottle_001.json").write_text("{}")
    (tmp_path / "Seen/testset/egocentric/open/bottle/extra.JPG").write_bytes(b"")  # image suffix, no GT
    with caplog.at_level(logging.INFO):
        items = open_split(tmp_path, "Seen").test_items()
    assert len(items) == 2 * len(EXO_COUNTS) - 1
    assert "2 of 9 egocentric test images have no GT" in caplog.text
    assert [(i.affordance, i.object, i.name) for i in items] == sorted((i.affordance, i.object, i.name) for i in items)
    it = items[0]
    assert it.key == f"{it.affordance}_{it.object}_{it.name}.png" and it.gt.name == f"{it.name}.png"


def test_an_upper_case_png_gt_is_used_by_eval_and_check(tmp_path):
    from afford.data.check import check_tree

    make_tree(tmp_path)
    n = len(open_split(tmp_path, "Seen").test_items())
    gt = tmp_path / "Seen/testset/GT/hold/bottle/bottle_001.png"
    gt.rename(gt.with_suffix(".PNG"))  # before: silently one test image fewer, and check said it had no GT
    items = open_split(tmp_path, "Seen").test_items()
    assert len(items) == n and any(i.gt.name == "bottle_001.PNG" for i in items)
    report = check_tree(tmp_path, split="Seen")
    assert not [p for p in report.problems if p["kind"] == "missing_gt"]


def test_gt_cache_is_built_once_and_reused(tmp_path, monkeypatch, caplog):
    make_tree(tmp_path)
    _gt(tmp_path / "Seen/testset/GT/open/bottle/bottle_000.png", size=(20, 30))  # size mismatch
    split = open_split(tmp_path, "Seen")
    calls = []
    real = gt_cache_mod.load_gt
    monkeypatch.setattr(gt_cache_mod, "load_gt", lambda p: calls.append(p) or real(p))
    with caplog.at_level(logging.WARNING):
        first = GTCache(split, cache_dir=tmp_path / "cache")
    assert len(calls) == len(first) == 8 and not first.from_disk
    assert "GT is 20x30 but its image bottle_000.jpg is 40x30" in caplog.text
    item = first.items[0]
    assert first[item].dtype == np.uint8 and np.array_equal(first[item], real(item.gt))
    assert np.array_equal(first[item.gt_id], first[item])

    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        second = GTCache(open_split(tmp_path, "Seen"), cache_dir=tmp_path / "cache")
    assert calls == [] and second.from_disk and len(list((tmp_path / "cache").iterdir())) == 1
    # the mismatch is said again from the cache (it was only said by the run that built it)
    assert "1 of 8 GT files differ in size from their image (first: open/bottle/bottle_000)" in caplog.text
    for it in second:
        assert np.array_equal(second[it], first[it])

    _gt(item.gt, peak=100)  # an edited GT must not be served from the old cache
    third = GTCache(open_split(tmp_path, "Seen"), cache_dir=tmp_path / "cache")
    assert not third.from_disk and third[item].max() == 100


def test_gt_cache_rebuilds_a_damaged_file_and_keys_by_the_split_folder(tmp_path, caplog):
    """A truncated cache (a full disk, a killed writer) is rebuilt with a warning, never served; two datasets
    whose splits share a name (Seen) get separate caches."""
    make_tree(tmp_path / "a", n_test=1)
    make_tree(tmp_path / "b", n_test=1)
    _gt(tmp_path / "b/Seen/testset/GT/hold/bottle/bottle_000.png", peak=77)
    cache = tmp_path / "cache"
    first = GTCache(open_split(tmp_path / "a", "Seen"), cache_dir=cache)
    other = GTCache(open_split(tmp_path / "b", "Seen"), cache_dir=cache)
    assert other.path != first.path and not other.from_disk
    assert other["hold/bottle/bottle_000"].max() == 77 != first["hold/bottle/bottle_000"].max()
    first.path.write_bytes(first.path.read_bytes()[:50])
    with caplog.at_level(logging.WARNING):
        again = GTCache(open_split(tmp_path / "a", "Seen"), cache_dir=cache)
    assert "unreadable GT cache" in caplog.text and not again.from_disk
    assert all(np.array_equal(again[it], first[it]) for it in first)
    assert GTCache(open_split(tmp_path / "a", "Seen"), cache_dir=cache).from_disk  # rewritten whole


def test_gt_cache_honours_afford_cache_env(tmp_path, monkeypatch):
    make_tree(tmp_path, n_test=1)
    monkeypatch.setenv("AFFORD_CACHE", str(tmp_path / "envcache"))
    cache = GTCache(open_split(tmp_path, "Seen"))
    assert cache.path.parent == tmp_path / "envcache" and cache.path.is_file()


# --- sampling -----------------------------------------------------------------------------------------


def test_locate_indices_exhaustive():
    for n in range(1, 7):
        for anchor in range(n):
            seen = set()
            for seed in range(30):
                idx = anchor_plus_random_indices(n, anchor, 3, torch.Generator().manual_seed(seed))
                assert len(idx) == 3 and idx[0] == anchor and all(0 <= i < n for i in idx)
                if n > 3:
                    assert len(set(idx)) == 3
                seen.update(idx[1:])
            if n > 3:
                assert seen == set(range(n)) - {anchor}  # every other image can be a partner
            else:  # 3 or fewer: with replacement from the whole folder, as LOCATE's loader (methods.md §1.4)
                assert seen == set(range(n))
    assert anchor_plus_random_indices(1, 0, 3, torch.Generator()) == [0, 0, 0]


def test_wsma_indices_are_consecutive_windows():
    starts = set()
    for seed in range(40):
        idx = consecutive_window_indices(5, 3, torch.Generator().manual_seed(seed))
        assert idx == list(range(idx[0], idx[0] + 3))
        starts.add(idx[0])
    assert starts == {0, 1, 2}
    assert consecutive_window_indices(3, 3, torch.Generator()) == [0, 1, 2]
    assert consecutive_window_indices(2, 3, torch.Generator()) == [0, 1, 1]  # padded with the last image, as the reference
    assert consecutive_window_indices(1, 3, torch.Generator()) == [0, 0, 0]


def test_sample_generator_depends_on_seed_epoch_index_only():
    def draw(*key):
        return torch.rand(4, generator=sample_generator(*key))

    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    assert not torch.equal(draw(0, 1, 2), draw(0, 2, 1))
    assert not torch.equal(draw(0, 1, 2), draw(1, 1, 2))


# --- datasets --------------------------------------------------------------------------------------------


def test_train_set_items_and_locate_sampling(tmp_path, caplog):
    make_tree(tmp_path, no_ego=("cut_with", "knife"))
    split = open_split(tmp_path, "Seen")
    with caplog.at_level(logging.INFO):
        ds = AffordanceTrainSet(split, transform=TrainTransform(resize=32, crop=24), seed=0)
    assert len(ds) == 2 + 3 + 5  # the 1-image cut_with/knife folder has no egocentric partner
    assert "1 exocentric images skipped" in caplog.text
    assert ds.labels == [SEEN_AFFORDANCES.index("hold")] * 5 + [SEEN_AFFORDANCES.index("open")] * 5
    item = ds[0]
    assert item["exo"].shape == (3, 3, 24, 24) and item["exo"].dtype == torch.float32
    assert item["ego"].shape == (3, 24, 24) and item["label"].dtype == torch.int64
    assert item["object"] == "bottle" and int(item["label"]) == SEEN_AFFORDANCES.index("hold")
    groups = split.exo_groups()
    for index in range(len(ds)):
        paths = ds.exo_paths(index)
        gid, pos = ds._samples[index]
        folder = ds._exo[gid]
        assert paths[0] == folder[pos]  # the anchor comes first
        assert set(paths) <= set(groups[(paths[0].parts[-3], paths[0].parts[-2])])
        aff, obj = paths[0].parts[-3], paths[0].parts[-2]  # its egocentric image: the same affordance/object
        assert ds.ego_path(index) in split.ego_groups()[(aff, obj)]
        assert ds.labels[index] == SEEN_AFFORDANCES.index(aff) and ds[index]["object"] == obj
        if len(folder) > 3:  # distinct partners; 3 or fewer draw with replacement (LOCATE)
            assert len(set(paths)) == 3


def test_train_set_is_deterministic_and_epoch_dependent(tmp_path):
    make_tree(tmp_path)
    t = TrainTransform(resize=32, crop=24)
    a = AffordanceTrainSet(open_split(tmp_path, "Seen"), transform=t, seed=5)
    b = AffordanceTrainSet(open_split(tmp_path, "Seen"), transform=t, seed=5)
    forward = [a[i] for i in range(len(a))]
    backward = [b[i] for i in reversed(range(len(b)))][::-1]  # other order, other instance
    for x, y in zip(forward, backward, strict=True):
        assert torch.equal(x["exo"], y["exo"]) and torch.equal(x["ego"], y["ego"])
    a.set_epoch(1)
    changed = [not torch.equal(a[i]["exo"], forward[i]["exo"]) for i in range(len(a))]
    assert all(changed)  # fresh crops/flips/partners
    a.set_epoch(0)
    assert torch.equal(a[7]["exo"], forward[7]["exo"])
    c = AffordanceTrainSet(open_split(tmp_path, "Seen"), transform=t, seed=6)
    assert not torch.equal(c[7]["exo"], forward[7]["exo"])


def test_train_set_wsma_sampling_and_bad_args(tmp_path):
    make_tree(tmp_path)
    split = open_split(tmp_path, "Seen")
    ds = AffordanceTrainSet(split, transform=TrainTransform(resize=32, crop=24), sampling="consecutive_window")
    for index in range(len(ds)):
        gid, _ = ds._samples[index]
        folder = ds._exo[gid]
        pos = [folder.index(p) for p in ds.exo_paths(index)]
        assert pos == ([0, 0, 0] if len(folder) == 1 else [0, 1, 1] if len(folder) == 2
                       else list(range(pos[0], pos[0] + 3)))
    with pytest.raises(AffordError, match="did you mean: anchor_plus_random"):
        AffordanceTrainSet(split, sampling="anchor_plus_randm")


def test_test_set_items(tmp_path):
    make_tree(tmp_path)
    ds = AffordanceTestSet(open_split(tmp_path, "Seen"), size=16)
    assert len(ds) == 8 and len(ds.items) == 8
    item = ds[3]
    assert item["image"].shape == (3, 16, 16) and item["index"] == 3
    assert int(item["label"]) == SEEN_AFFORDANCES.index(ds.items[3].affordance)
    expected = eval_transform(Image.open(ds.items[3].image), 16)
    assert torch.allclose(item["image"], expected)


def test_synthagd_extras_masks_for_train_and_test_images(synth_root):
    """Part/object masks exist for every egocentric image, train and test, and match its size."""
    split = open_split(synth_root, "Seen")
    (aff, obj), files = next(iter(split.ego_groups().items()))
    part = split.extras_mask(aff, obj, files[0].stem, "part")
    obj_mask = split.extras_mask(aff, obj, files[0].stem, "object")
    assert part is not None and obj_mask is not None
    p = np.asarray(Image.open(part).convert("L")) > 127
    o = np.asarray(Image.open(obj_mask).convert("L")) > 127
    assert p.shape == Image.open(files[0]).size[::-1] and p.any() and not (p & ~o).any()  # part inside object
    item = split.test_items()[0]
    assert split.part_mask(item) == split.extras_mask(item.affordance, item.object, item.name, "part")
    assert split.extras_mask(aff, obj, "no_such_image", "part") is None


def test_cached_images_give_identical_samples(synth_root):
    """data.cache_images only skips repeated decoding: every sample is bit-identical."""
    split = open_split(synth_root, "Seen")
    t = TrainTransform(resize=64, crop=56)
    plain = AffordanceTrainSet(split, transform=t, seed=3)
    cached = AffordanceTrainSet(split, transform=t, seed=3, cache_images=True)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in (0, 1, len(plain) - 1, 0):  # index 0 twice: the second read comes from the cache
            a, b = plain[i], cached[i]
            assert torch.equal(a["exo"], b["exo"]) and torch.equal(a["ego"], b["ego"])
    assert cached._decoded  # and the cache was used


def test_class_and_object_lists_are_the_specs_tables():
    """The class index is the CAM channel (the checkpoint format): every list equals protocol.md's tables
    (§1.2 Seen with its Unseen indices, §1.3 objects with their Unseen roles, §2 HICO-IIF), parsed from the
    shipped spec."""
    import re

    from afford.data.classes import HICO_IIF_AFFORDANCES, OBJECTS, SEEN_AFFORDANCES, UNSEEN_AFFORDANCES

    spec = (Path(__file__).resolve().parents[1] / "docs" / "specs" / "protocol.md").read_text()
    seen = re.findall(r"^\| (\d+) \| ([a-z_]+) \| (\d+|–) \| \d", spec, flags=re.M)
    assert [int(i) for i, _, _ in seen] == list(range(36)) and tuple(a for _, a, _ in seen) == SEEN_AFFORDANCES
    unseen = sorted((int(u), a) for _, a, u in seen if u != "–")
    assert [u for u, _ in unseen] == list(range(25)) and tuple(a for _, a in unseen) == UNSEEN_AFFORDANCES
    section = spec.split("### 1.3", 1)[1].split("###", 1)[0]
    cells = re.findall(r"\| (\d+) \| ([a-z_]+) \| (tr|te|–) ", section)
    objects = dict((int(i), o) for i, o, _ in cells)
    assert [objects[i] for i in range(50)] == list(OBJECTS)
    hico = re.search(r"`0 cut_with, .*?`", spec).group(0).strip("`")
    assert tuple(x.split(" ")[1] for x in hico.split(", ")) == HICO_IIF_AFFORDANCES


def test_a_lower_case_split_folder_is_found(tmp_path):
    make_tree(tmp_path, split="seen")
    split = open_split(tmp_path, "Seen")
    assert split.root == tmp_path / "seen" and split.name == "Seen" and split.test_items()
