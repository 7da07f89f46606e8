"""Tests for afford.data.check (``afford data check``): every defect is named, nothing crashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from afford.data.check import check_tree

PAIRS = [("cut_with", "knife"), ("hold", "knife"), ("hold", "bottle"), ("open", "bottle")]


def _img(path: Path, size: tuple[int, int] = (48, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    Image.fromarray(np.stack([xx * 5, yy * 7, xx + yy], -1).astype(np.uint8)).save(path)


def _gt(path: Path, size: tuple[int, int] = (48, 32), value: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[5:15, 10:30] = value
    Image.fromarray(arr, mode="L").save(path)


def make_tree(root: Path, split: str = "Seen") -> Path:
    """3 affordances x 2 objects: 3 exo, 2 ego train, 2 ego test (+GT) per pair."""
    s = root / split
    for aff, obj in PAIRS:
        for i in range(3):
            _img(s / "trainset/exocentric" / aff / obj / f"{obj}_{i:06d}.jpg")
        for i in range(2):
            _img(s / "trainset/egocentric" / aff / obj / f"{obj}_{i:06d}.jpg")
            _img(s / "testset/egocentric" / aff / obj / f"{obj}_{i:06d}.jpg")
            _gt(s / "testset/GT" / aff / obj / f"{obj}_{i:06d}.png")
    return root


def _by_kind(report) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for p in report.problems:
        out.setdefault(p["kind"], []).append(p)
    return out


def test_clean_tree_is_ok_with_counts(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "Seen/testset/egocentric/hold/knife/notes.json").write_text("{}")  # skipped, counted
    report = check_tree(tmp_path)
    assert report.ok and report.problems == []
    [s] = report.splits
    assert s.name == "Seen" and s.class_source == "built-in" and len(s.affordances) == 36
    assert s.totals() == {"exocentric": 12, "egocentric": 8, "test_egocentric": 8, "GT": 8}
    assert s.counts["exocentric"][("hold", "bottle")] == 3 and s.n_test_with_gt == 8
    assert s.n_non_image_files == 1
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is True and d["splits"][0]["counts"]["GT"]["open"]["bottle"] == 2
    text = report.to_text()
    assert "OK: usable (0 errors, 0 warnings)" in text
    assert any(line.split()[:5] == ["hold", "6", "4", "4", "4"] for line in text.splitlines())


def test_broken_tree_names_every_defect(tmp_path):
    make_tree(tmp_path)
    s = tmp_path / "Seen"
    corrupt = s / "trainset/exocentric/hold/knife/knife_000001.jpg"
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])  # truncated: opens fine, fails on load()
    missing = s / "testset/egocentric/open/bottle/bottle_000001.jpg"
    (s / "testset/GT/open/bottle/bottle_000001.png").unlink()
    zero = s / "testset/GT/hold/bottle/bottle_000000.png"
    _gt(zero, value=0)
    (s / "trainset/egocentric/cut_with").rename(s / "trainset/egocentric/cut_wiht")

    report = check_tree(tmp_path)
    assert not report.ok
    kinds = _by_kind(report)
    assert [p["path"] for p in kinds["corrupt_image"]] == [str(corrupt)]
    assert [p["path"] for p in kinds["missing_gt"]] == [str(missing)]
    assert [p["path"] for p in kinds["all_zero_gt"]] == [str(zero)]
    assert "protocol.md §1.5" in kinds["all_zero_gt"][0]["message"]
    unknown = kinds["unknown_class"]
    assert unknown[0]["path"] == str(s / "trainset/egocentric/cut_wiht")
    assert "did you mean: cut_with" in unknown[0]["message"]
    # cut_with/knife lost its egocentric partners: reported, but the loader copes (warning)
    assert kinds["no_egocentric"][0]["severity"] == "warning"
    text = report.to_text()
    for p in report.problems:
        assert f"{p['kind']}: {p['path']}: {p['message']}" in text
    assert "NOT USABLE" in text


def test_known_zero_gt_and_missing_gt_alone_are_warnings(tmp_path):
    make_tree(tmp_path)
    s = tmp_path / "Seen"
    _img(s / "testset/egocentric/hold/bottle/bottle_000341.jpg")
    _gt(s / "testset/GT/hold/bottle/bottle_000341.png", value=0)
    (s / "testset/GT/hold/knife/knife_000000.png").unlink()
    report = check_tree(tmp_path, split="Seen")
    assert report.ok  # the loaders handle both the way the literature does
    kinds = _by_kind(report)
    assert "one known all-zero GT of real AGD20K" in kinds["all_zero_gt"][0]["message"]
    assert len(kinds["missing_gt"]) == 1 and set(kinds) == {"all_zero_gt", "missing_gt"}


def test_gt_defects_and_empty_folders(tmp_path):
    make_tree(tmp_path)
    s = tmp_path / "Seen"
    bad_gt = s / "testset/GT/hold/knife/knife_000000.png"
    bad_gt.write_bytes(b"\x89PNG not really")
    small = s / "testset/GT/hold/knife/knife_000001.png"
    _gt(small, size=(24, 16))
    orphan = s / "testset/GT/open/bottle/bottle_000009.png"
    _gt(orphan)
    (s / "trainset/exocentric/open/knife").mkdir()
    (s / "trainset/exocentric/open/cup").mkdir(parents=True, exist_ok=True)  # empty object folder
    report = check_tree(tmp_path)
    kinds = _by_kind(report)
    assert [p["path"] for p in kinds["corrupt_gt"]] == [str(bad_gt)]
    assert kinds["gt_size_mismatch"][0]["path"] == str(small)
    assert "24x16" in kinds["gt_size_mismatch"][0]["message"] and "48x32" in kinds["gt_size_mismatch"][0]["message"]
    assert [p["path"] for p in kinds["gt_without_image"]] == [str(orphan)]
    assert {p["path"] for p in kinds["empty_folder"]} == {
        str(s / "trainset/exocentric/open/knife"), str(s / "trainset/exocentric/open/cup")}
    assert not report.ok


def test_missing_pieces_never_crash(tmp_path):
    report = check_tree(tmp_path / "nowhere")
    assert not report.ok and report.problems[0]["kind"] == "no_split"
    make_tree(tmp_path)
    report = check_tree(tmp_path, split="Unseen")
    assert not report.ok and "Unseen" in report.problems[0]["message"]
    s = tmp_path / "Seen"
    for p in sorted((s / "trainset").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (s / "trainset").rmdir()
    (s / "afford_classes.json").write_text("{not json")
    report = check_tree(tmp_path)
    kinds = _by_kind(report)
    assert {p["path"] for p in kinds["missing_folder"]} == {
        str(s / "trainset/exocentric"), str(s / "trainset/egocentric")}
    assert kinds["bad_class_list"][0]["path"] == str(s / "afford_classes.json")
    assert report.splits[0].n_test_with_gt == 8 and not report.ok
    report.to_text()


def test_every_split_is_checked(tmp_path):
    make_tree(tmp_path, "Seen")
    make_tree(tmp_path, "HICO")
    report = check_tree(tmp_path)
    assert [s.name for s in report.splits] == ["HICO-IIF", "Seen"] and report.ok
    assert report.splits[0].objects == ("bottle", "knife")
    only = check_tree(tmp_path / "Seen")  # the root is itself a split
    assert [s.name for s in only.splits] == ["Seen"] and only.ok


def test_colour_or_16_bit_gt_and_unseen_overlap_are_warnings(tmp_path):
    make_tree(tmp_path)
    s = tmp_path / "Seen"
    rgb = s / "testset/GT/hold/knife/knife_000000.png"
    Image.open(rgb).convert("RGB").save(rgb)
    deep = s / "testset/GT/hold/knife/knife_000001.png"
    Image.fromarray(np.asarray(Image.open(deep), dtype=np.uint16) * 257).save(deep)
    kinds = _by_kind(check_tree(tmp_path))
    assert {p["path"] for p in kinds["gt_not_grayscale"]} == {str(rgb), str(deep)}
    assert "all_zero_gt" not in kinds  # the 16-bit GT is read scaled, not as zeros or clipped
    # Unseen: an object in the test set and in training is named (the disjoint sets define Unseen)
    make_tree(tmp_path / "u", split="Unseen")
    kinds = _by_kind(check_tree(tmp_path / "u"))
    assert {p["message"].split("'")[1] for p in kinds["unseen_object_in_training"]} == {"knife", "bottle"}


def test_a_tree_that_cannot_train_or_cannot_be_scored_is_not_usable(tmp_path):
    """No exocentric image with an egocentric partner: nothing to train on. No test image with its GT: nothing
    to score. Either makes the tree unusable (exit 1), named by kind and folder."""
    import shutil

    make_tree(tmp_path / "a")
    s = tmp_path / "a/Seen"
    shutil.rmtree(s / "testset/GT")
    (s / "testset/GT").mkdir()
    report = check_tree(tmp_path / "a")
    kinds = _by_kind(report)
    assert not report.ok and [p["path"] for p in kinds["no_test_items"]] == [str(s / "testset")]
    assert "no_train_samples" not in kinds
    make_tree(tmp_path / "b")
    s = tmp_path / "b/Seen"
    for aff, obj in PAIRS:  # exocentric and egocentric training images of different pairs
        shutil.rmtree(s / "trainset/egocentric" / aff / obj)
        _img(s / "trainset/egocentric" / aff / "cup" / "cup_000000.jpg")
    report = check_tree(tmp_path / "b")
    kinds = _by_kind(report)
    assert not report.ok and [p["path"] for p in kinds["no_train_samples"]] == [str(s / "trainset")]
    assert "no_test_items" not in kinds


def test_test_images_sharing_a_stem_are_a_warning(tmp_path):
    """cup.jpg and cup.png in one folder: the loader scores both with one GT (as the reference does) and
    a --pred folder can hold one map for both; data check said OK without a word."""
    make_tree(tmp_path)
    folder = tmp_path / "Seen/testset/egocentric/hold/knife"
    twin = folder / "knife_000000.png"
    _img(twin, size=(48, 32))
    report = check_tree(tmp_path)
    kinds = _by_kind(report)
    assert report.ok and set(kinds) == {"shared_stem"}
    [p] = kinds["shared_stem"]
    assert p["severity"] == "warning" and p["path"] in {str(twin), str(folder / "knife_000000.jpg")}
    assert "same file stem as knife_000000." in p["message"]


def test_quiet_draws_no_progress_bars(tmp_path, capsys, monkeypatch):
    import afford.data.check as data_check
    from afford.cli import main

    make_tree(tmp_path)
    monkeypatch.setattr(data_check, "PROGRESS_MIN_ITEMS", 0)  # bars for a tree this small too
    assert main(["data", "check", str(tmp_path)]) == 0
    assert "decoding Seen" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "decoding" not in out.err and "OK: usable" in out.out
