"""HICO-DET data: the reader, the COCO-80 object table, zero-shot splits and the data check.

Counts are asserted on the real test annotations (hoi.md §6, §8), so a typo in a shipped id list or
an index convention mix-up fails here; defects are exercised on small hand-built files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from afford.errors import AffordError
from afford.hoi.check import check_hicodet
from afford.hoi.hicodet import (
    COCO80_NAMES,
    HicoDet,
    alpha_to_coco80,
    coco80_to_alpha,
    load_hicodet,
    rare_from_counts,
    read_hicodet,
)
from afford.hoi.splits import (
    NF_UC,
    RF_UC,
    UO,
    UO_OBJECTS,
    UV_VERBS,
    remove_unseen,
    unseen_object_hois,
    unseen_verb_hois,
    zero_shot_unseen,
)
from conftest import HICODET_TEST

REAL = HICODET_TEST()
RARE_NOT_RF_UC = {63, 112, 165, 166, 172, 214, 227, 328, 404, 426, 431, 451, 514, 549, 550, 551, 578, 580}


@pytest.fixture(scope="module")
def real_raw() -> dict[str, Any]:
    return json.loads(REAL.read_text())


@pytest.fixture(scope="module")
def real() -> HicoDet:
    return load_hicodet(REAL)


# ---- a tiny hand-built file --------------------------------------------------------------------

H_A, H_B, O_A, O_B, O_C = [1, 1, 20, 30], [5, 5, 25, 40], [10, 10, 50, 60], [60, 10, 90, 70], [2, 2, 9, 9]


def tiny_raw() -> dict[str, Any]:
    """2 objects, 3 verbs, 4 HOIs; image 0 has a pair with two HOIs, image 2 is empty."""
    def ann(rows: list[tuple[list[int], list[int], int]]) -> dict[str, list[Any]]:
        corr = {0: (0, 0), 1: (0, 1), 2: (1, 1), 3: (1, 2)}  # hoi -> (object, verb)
        return {"boxes_h": [list(map(float, h)) for h, _, _ in rows],
                "boxes_o": [list(map(float, o)) for _, o, _ in rows],
                "hoi": [k for _, _, k in rows], "object": [corr[k][0] for _, _, k in rows],
                "verb": [corr[k][1] for _, _, k in rows]}

    return {
        "annotation": [
            ann([(H_A, O_A, 3), (H_A, O_A, 2), (H_B, O_A, 2)]),  # pair (H_A, O_A) carries unseen 3
            ann([(H_A, O_A, 3)]),  # emptied by the removal
            ann([]),  # empty from the start
            ann([(H_A, O_B, 3), (H_A, O_C, 0), (H_B, O_C, 0)]),  # same human, other object: kept
        ],
        "filenames": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
        "size": [[100, 80]] * 4,
        "empty": [2],
        "objects": ["airplane", "bicycle"],
        "verbs": ["board", "no_interaction", "ride"],
        "correspondence": [[0, 0, 0], [1, 0, 1], [2, 1, 1], [3, 1, 2]],
    }


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw))
    return path


def one_line_error(raw: dict[str, Any], tmp_path: Path) -> str:
    file = write(tmp_path / "instances_test2015.json", raw)
    with pytest.raises(AffordError) as e:
        load_hicodet(file)
    msg = str(e.value)
    assert "\n" not in msg and str(file) in msg
    return msg


# ---- the real test annotations -----------------------------------------------------------------

def test_real_counts(real: HicoDet) -> None:
    assert len(real) == len(real.annotations) == real.sizes.shape[0] == 9658
    assert real.num_pairs == 33405
    assert len(real.empty) == 112 and all(len(real.annotations[i]) == 0 for i in real.empty)
    assert sum(len(a) > 0 for a in real.annotations) == 9658 - 112
    assert len(real.rare) == 138 and len(real.non_rare) == 462
    assert sorted(real.rare + real.non_rare) == list(range(600))
    assert len(real.verbs) == 117 and len(real.objects) == 80 and real.correspondence.shape == (600, 3)
    hois = np.concatenate([a.hoi for a in real.annotations])
    assert np.array_equal(np.unique(hois), np.arange(600))  # every class has a test pair
    assert real.image_dir is None and real.source == REAL


def test_real_names_and_no_interaction(real: HicoDet) -> None:
    names = real.hoi_names
    assert names[0] == "board airplane" and names[599] == "no_interaction zebra"
    assert real.objects == tuple(sorted(real.objects))  # the file's order is alphabetical
    assert real.verbs[57] == "no_interaction"
    no_int = [i for i, n in enumerate(names) if n.startswith("no_interaction ")]
    assert len(no_int) == 80 and set(real.hoi_verb[no_int].tolist()) == {57}
    assert sorted(real.hoi_object[no_int].tolist()) == list(range(80))  # one per object
    assert int((real.hoi_verb == 57).sum()) == 80


def test_real_rows_agree_with_correspondence(real: HicoDet) -> None:
    a = real.annotations[0]
    assert a.boxes_h.shape == (len(a), 4) and a.boxes_h.dtype == np.float64 and a.hoi.dtype == np.int64
    for a in real.annotations:
        assert np.array_equal(real.hoi_object[a.hoi], a.obj) and np.array_equal(real.hoi_verb[a.hoi], a.verb)


# ---- COCO-80 <-> alphabetical object indices ---------------------------------------------------

def test_coco80_table_matches_file_names(real: HicoDet) -> None:
    assert len(COCO80_NAMES) == len(set(COCO80_NAMES)) == 80
    assert set(COCO80_NAMES) == set(real.objects)


def test_coco80_round_trip_and_spot_checks(real: HicoDet) -> None:
    a2c, c2a = alpha_to_coco80(real.objects), coco80_to_alpha(real.objects)
    assert np.array_equal(a2c[c2a], np.arange(80)) and np.array_equal(c2a[a2c], np.arange(80))
    assert all(real.objects[c2a[c]] == COCO80_NAMES[c] for c in range(80))
    assert c2a[0] == real.objects.index("person") == 49
    assert a2c[real.objects.index("airplane")] == 4 and a2c[0] == 4  # alphabetical 0 = airplane
    assert a2c[real.objects.index("toothbrush")] == 79 and a2c[real.objects.index("hair_drier")] == 78
    assert a2c[real.objects.index("tv")] == 62 and a2c[real.objects.index("dining_table")] == 60


def test_coco80_conversion_refuses_unknown_names() -> None:
    objects = list(COCO80_NAMES)
    objects[objects.index("tv")] = "tvmonitor"
    with pytest.raises(AffordError, match="tvmonitor.*did you mean"):
        alpha_to_coco80(objects)
    with pytest.raises(AffordError, match="80 distinct"):
        coco80_to_alpha(list(COCO80_NAMES[:79]))
    # a shuffled list is mapped by name, not by position
    shuffled = list(reversed(COCO80_NAMES))
    assert alpha_to_coco80(shuffled)[0] == 79 and coco80_to_alpha(shuffled)[0] == 79


# ---- zero-shot splits --------------------------------------------------------------------------

def spec_ids(heading: str) -> list[int]:
    """The sorted id list printed (indented) under ``heading`` in the shipped hoi.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "specs" / "hoi.md").read_text()
    section = text.split(heading, 1)[1].split("\n### ", 1)[0]
    return [int(x) for line in section.splitlines() if line.startswith("      ") for x in line.split()]


def test_rf_uc_and_nf_uc_are_the_specs_lists() -> None:
    assert list(RF_UC) == spec_ids("### 8.1 RF-UC") and len(RF_UC) == 120
    assert list(NF_UC) == spec_ids("### 8.2 NF-UC") and len(NF_UC) == 120


def test_rf_uc_and_nf_uc(real: HicoDet) -> None:
    assert len(RF_UC) == len(set(RF_UC)) == 120 and len(NF_UC) == len(set(NF_UC)) == 120
    assert not set(RF_UC) & set(NF_UC)
    assert set(RF_UC) <= set(real.rare) and set(NF_UC) <= set(real.non_rare)
    assert set(real.rare) - set(RF_UC) == RARE_NOT_RF_UC
    assert list(RF_UC) == sorted(RF_UC) and list(NF_UC) == sorted(NF_UC)
    # every verb and object stays seen under RF-UC (hoi.md §8.1)
    seen = np.setdiff1d(np.arange(600), RF_UC)
    assert len(set(real.hoi_verb[seen].tolist())) == 117 and len(set(real.hoi_object[seen].tolist())) == 80


def test_uo_is_every_hoi_of_the_twelve_objects(real: HicoDet) -> None:
    assert len(UO_OBJECTS) == 12 and len(UO) == len(set(UO)) == 100
    assert unseen_object_hois(real) == UO
    assert {real.objects[o] for o in real.hoi_object[list(UO)].tolist()} == set(UO_OBJECTS)


def test_uv_derived_from_correspondence(real: HicoDet) -> None:
    uv = unseen_verb_hois(real)
    assert len(UV_VERBS) == 20 and len(uv) == len(set(uv)) == 84
    assert {real.verbs[v] for v in real.hoi_verb[list(uv)].tolist()} == set(UV_VERBS)
    assert zero_shot_unseen("UV", real) == uv


def test_zero_shot_by_name(real: HicoDet) -> None:
    assert zero_shot_unseen("rf-uc", real) == RF_UC and zero_shot_unseen("NF_UC", real) == NF_UC
    assert zero_shot_unseen("uo", real) == UO
    with pytest.raises(AffordError, match="did you mean: rf-uc") as e:
        zero_shot_unseen("rf-u", real)
    assert "\n" not in str(e.value)


def test_zero_shot_files(real: HicoDet, tmp_path: Path) -> None:
    good = tmp_path / "ids.txt"
    good.write_text("# my split\n8, 22 27\n\n599\n")
    assert zero_shot_unseen(good, real) == (8, 22, 27, 599)
    js = tmp_path / "ids.json"
    js.write_text(json.dumps({"unseen": [5, 3]}))
    assert zero_shot_unseen(str(js), real) == (3, 5)
    cases = [("bad.txt", "8 22\n27 foo\n", "line 2: 'foo' is not an HOI id 0..599"),
             ("range.json", "[1, 600]", "entry 1: 600 is not an HOI id 0..599"),
             ("dup.json", "[1, 2, 1]", "entry 2: HOI 1 is listed twice"),
             ("float.json", "[1, 2.0]", "entry 1: 2.0 is not an HOI id"),
             ("none.txt", "# nothing\n", "no HOI ids")]
    for name, text, expected in cases:
        f = tmp_path / name
        f.write_text(text)
        with pytest.raises(AffordError) as e:
            zero_shot_unseen(f, real)
        assert str(e.value).startswith(f"{f}: {expected}")
        assert "\n" not in str(e.value)


# ---- training-time removal (hoi.md §8.6) -------------------------------------------------------

def test_remove_unseen_drops_whole_pairs_and_emptied_images(tmp_path: Path) -> None:
    ds = load_hicodet(write(tmp_path / "instances_train2015.json", tiny_raw()))
    assert ds.num_pairs == 7 and ds.empty == (2,)
    out, rep = remove_unseen(ds, [3])
    assert (rep.removed_rows, rep.removed_pairs, rep.dropped_images, rep.dropped_empty) == (4, 3, 1, 1)
    assert rep.kept == (0, 3) and out.filenames == ("a.jpg", "d.jpg") and out.sizes.shape == (2, 2)
    a, d = out.annotations
    assert a.hoi.tolist() == [2] and a.boxes_h.tolist() == [list(map(float, H_B))]  # both rows of (H_A, O_A) went
    assert d.hoi.tolist() == [0, 0] and d.boxes_o.tolist() == [list(map(float, O_C))] * 2
    assert out.empty == () and out.num_pairs == 3 and 3 not in np.concatenate([x.hoi for x in out.annotations])
    assert "3 pairs (4 rows)" in rep.message()
    assert ds.num_pairs == 7  # the input is unchanged

    kept_all, rep2 = remove_unseen(ds, [3], drop_empty=False)
    assert len(kept_all) == 4 and kept_all.empty == (1, 2) and rep2.dropped_images == rep2.dropped_empty == 0
    same, rep3 = remove_unseen(ds, [])
    assert same.num_pairs == 7 and len(same) == 3 and rep3.dropped_empty == 1 and rep3.removed_rows == 0
    with pytest.raises(AffordError, match="0..3"):
        remove_unseen(ds, [4])


def test_rare_from_counts(tmp_path: Path) -> None:
    ds = load_hicodet(write(tmp_path / "x.json", tiny_raw()))
    assert ds.rare == ds.non_rare == ()  # the file has no lists
    assert rare_from_counts(ds) == ((0, 1, 2, 3), ())  # everything under 10 pairs
    assert rare_from_counts(ds, threshold=3) == ((0, 1, 2), (3,))  # hoi 3 has 3 rows, hoi 1 none


# ---- reading errors: one line naming file, image and field -------------------------------------

def test_load_root_and_image_dir(tmp_path: Path) -> None:
    write(tmp_path / "instances_test2015.json", tiny_raw())
    ds = load_hicodet(tmp_path)
    assert ds.image_dir is None and ds.source == tmp_path / "instances_test2015.json"
    (tmp_path / "images" / "test2015").mkdir(parents=True)
    assert load_hicodet(tmp_path).image_dir == tmp_path / "images" / "test2015"
    with pytest.raises(AffordError, match=r"no instances_train2015.json .*found: instances_test2015.json"):
        load_hicodet(tmp_path, split="train2015")
    with pytest.raises(AffordError, match="no such file or folder"):
        load_hicodet(tmp_path / "nope")


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    raw = tiny_raw()
    del raw["verbs"]
    assert "keys: missing verbs" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["filenames"].append("e.jpg")
    assert "filenames=5, size=4, annotation=4" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["filenames"][2] = "a.jpg"  # detections are keyed by name: two images could not be told apart
    assert "filenames[2]: 'a.jpg' is listed twice (also at [0])" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    for k in ("filenames", "size", "annotation"):
        raw[k] = []
    raw["empty"] = []
    assert "filenames: no images" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["annotation"][3]["boxes_h"].pop()
    assert "image 3 (d.jpg): annotation lists differ in length (boxes_h=2" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["annotation"][0]["boxes_o"][1] = [1.0, 2.0, 3.0]
    assert "image 0 (a.jpg): boxes_o: expected [x1, y1, x2, y2]" in one_line_error(raw, tmp_path)

    for bad in (["1.0", 2.0, 3.0, 4.0], [None, 2.0, 3.0, 4.0]):  # the string was read as its number
        raw = tiny_raw()
        raw["annotation"][0]["boxes_h"][0] = bad
        assert "image 0 (a.jpg): boxes_h: expected [x1, y1, x2, y2] finite numbers" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["annotation"][3]["hoi"][1] = 4
    assert "image 3 (d.jpg): hoi[1] = 4 is out of range; expected 0..3" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["annotation"][3]["hoi"][0] = True  # was read as class 1
    assert "image 3 (d.jpg): hoi: expected integer indices" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["annotation"][0]["verb"][0] = 7
    assert "image 0 (a.jpg): verb[0] = 7 is out of range; expected 0..2" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["annotation"][0]["object"][0] = 0  # hoi 3 is (bicycle, ride)
    assert "image 0 (a.jpg): row 0: hoi 3 is [object 1, verb 2]" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["correspondence"][2] = [2, 5, 1]
    assert "correspondence[2]" in one_line_error(raw, tmp_path)

    raw = tiny_raw()
    raw["rare"], raw["non_rare"] = [0, 1], [1, 2, 3]
    assert "rare/non_rare" in one_line_error(raw, tmp_path)

    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(AffordError, match="not readable as JSON") as e:
        load_hicodet(tmp_path / "broken.json")
    assert "\n" not in str(e.value)


def test_read_is_lenient_and_collects(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw["annotation"][3]["hoi"][1] = 4
    raw["annotation"][0]["object"][0] = 0
    ds, findings = read_hicodet(write(tmp_path / "x.json", raw))
    assert [f.kind for f in findings] == ["class_mismatch", "unknown_class"]
    assert ds.num_pairs == 5 and len(ds.annotations[3]) == 2  # only the bad rows went
    ds = load_hicodet(write(tmp_path / "y.json", {**tiny_raw(), "rare": [0]}))  # the other list: complement
    assert ds.rare == (0,) and ds.non_rare == (1, 2, 3)


# ---- the data check ----------------------------------------------------------------------------

def test_check_real_file_is_ok(real: HicoDet) -> None:
    report = check_hicodet(REAL)
    assert report.ok, report.format()
    c = report.counts
    assert (c["images"], c["empty"], c["pairs"], c["classes_present"], c["rare"], c["non_rare"]) == \
        (9658, 112, 33405, 600, 138, 462)
    assert report.image_dir is None and not report.problems
    text = report.format()
    assert "OK: usable (0 errors, 0 warnings)" in text and "33405" in text
    json.dumps(report.to_dict())


def test_check_reports_a_corrupted_copy(real_raw: dict[str, Any], tmp_path: Path) -> None:
    raw = dict(real_raw)
    raw["annotation"] = list(real_raw["annotation"])
    nonempty = [i for i, a in enumerate(raw["annotation"]) if a["hoi"]][:3]
    (inv, bad_hoi, outside) = nonempty
    for i in nonempty:
        raw["annotation"][i] = copy.deepcopy(raw["annotation"][i])
    b = raw["annotation"][inv]["boxes_h"][0]
    b[0], b[2] = b[2], b[0]
    raw["annotation"][bad_hoi]["hoi"][0] = 600
    w = raw["size"][outside][0]
    raw["annotation"][outside]["boxes_o"][0][2] = w + 3
    report = check_hicodet(write(tmp_path / "instances_test2015.json", raw))
    assert not report.ok
    by_kind = {p["kind"]: p for p in report.errors}
    assert set(by_kind) == {"box_inverted", "unknown_class", "box_outside"}
    assert raw["filenames"][inv] in by_kind["box_inverted"]["where"]
    assert raw["filenames"][bad_hoi] in by_kind["unknown_class"]["where"]
    assert "hoi[0] = 600" in by_kind["unknown_class"]["message"]
    assert raw["filenames"][outside] in by_kind["box_outside"]["where"]
    assert f"{w}x" in by_kind["box_outside"]["message"]
    assert report.counts["pairs"] == 33404  # the unknown-class row is not counted
    assert "NOT USABLE (3 errors" in report.format()

    # the 1-based limits that catch a 0-based file: x1 = 0 and x2 = w + 1 are outside, x2 = w is the last pixel
    for edit, bad in (((0, 0.0), True), ((2, w + 1.0), True), ((2, float(w)), False)):
        raw2 = dict(real_raw)
        raw2["annotation"] = list(real_raw["annotation"])
        raw2["annotation"][outside] = copy.deepcopy(real_raw["annotation"][outside])
        box = raw2["annotation"][outside]["boxes_o"][0]
        box[edit[0]] = edit[1]
        if edit[0] == 0:
            box[2] = max(box[2], 1.0)
        kinds = {p["kind"] for p in check_hicodet(write(tmp_path / "instances_test2015.json", raw2)).errors}
        assert ("box_outside" in kinds) == bad, (edit, kinds)


def test_check_images(tmp_path: Path) -> None:
    write(tmp_path / "instances_test2015.json", tiny_raw())
    images = tmp_path / "images" / "test2015"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(images / "a.jpg")
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(images / "b.jpg")
    (images / "b.jpg").write_bytes((images / "b.jpg").read_bytes()[:200])  # truncated
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(images / "d.jpg")  # wrong size
    report = check_hicodet(tmp_path)
    kinds = {p["kind"]: p["where"] for p in report.errors}
    assert kinds == {"corrupt_image": "image 1 (b.jpg)", "missing_image": "image 2 (c.jpg)",
                     "size_mismatch": "image 3 (d.jpg)"}
    assert report.image_dir == images and not report.ok
    assert any(p["kind"] == "no_rare_lists" and p["severity"] == "warning" for p in report.problems)


def test_check_unreadable_never_raises(tmp_path: Path) -> None:
    raw = tiny_raw()
    del raw["annotation"]
    report = check_hicodet(write(tmp_path / "x.json", raw))
    assert not report.ok and report.errors[0]["kind"] == "unreadable"
    assert "missing annotation" in report.format()
    assert not check_hicodet(tmp_path / "missing").ok
