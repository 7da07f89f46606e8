"""``afford data synth-hoi``, ``afford data check --hoi`` and ``afford hoi eval`` end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from afford.cli import main
from afford.hoi.detections import write_detections
from afford.hoi.hicodet import load_hicodet
from afford.hoi.types import ImageDetections
from conftest import HICODET_TEST

REAL = HICODET_TEST()


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hoi") / "synthhoi"
    assert main(["data", "synth-hoi", "--out", str(out), "--n-train", "40", "--n-test", "16", "--tile", "64",
                 "--quiet"]) == 0
    return out


def test_check_accepts_synthhoi_and_flags_a_broken_box(synth: Path, tmp_path, capsys, caplog) -> None:
    assert main(["data", "check", "--hoi", str(synth)]) == 0
    assert "OK: usable" in capsys.readouterr().out
    d = json.loads((synth / "instances_test2015.json").read_text())
    i = next(k for k, a in enumerate(d["annotation"]) if a["hoi"])
    x1, y1, x2, y2 = d["annotation"][i]["boxes_h"][0]
    d["annotation"][i]["boxes_h"][0] = [x2, y1, x1 - 1, y2]  # inverted
    (tmp_path / "instances_test2015.json").write_text(json.dumps(d))
    assert main(["data", "check", "--hoi", str(tmp_path / "instances_test2015.json")]) == 1
    assert d["filenames"][i] in capsys.readouterr().out
    # hoi eval scores the file as given, but says so (it was silent)
    with caplog.at_level(logging.WARNING, logger="afford"):
        assert main(["hoi", "eval", "--baseline", "object-prior", "--data", str(tmp_path / "instances_test2015.json"),
                     "--train", str(synth)]) == 0
    assert "1 image(s) have inverted or out-of-image GT boxes" in caplog.text and d["filenames"][i] in caplog.text


def test_eval_scores_ground_truth_as_detections_perfectly_and_writes_json(synth: Path, tmp_path, capsys) -> None:
    ds = load_hicodet(synth)
    dets = [ImageDetections(g.hoi, g.boxes_h - 1, g.boxes_o - 1, 0.5 + 0 * g.hoi.astype(float)) for g in ds.annotations]
    write_detections(tmp_path / "gt.json", ds.filenames, dets)
    for mode in ("default", "known-object"):
        assert main(["hoi", "eval", "--dets", str(tmp_path / "gt.json"), "--data", str(synth), "--mode", mode,
                     "--json", str(tmp_path / "r.json")]) == 0
        r = json.loads((tmp_path / "r.json").read_text())
        assert r["mode"] == mode and r["rule"] == "official" and r["n_images"] == len(ds.filenames)
        assert set(r["mAP"]) == {"full", "rare", "non_rare"} and len(r["ap"]) == ds.num_classes
        # every class with a test pair is found perfectly; the others score 0 and are counted
        assert sorted({round(a, 9) for a in r["ap"]}) in ([0.0, 1.0], [1.0])
        assert sum(a < 0.5 for a in r["ap"]) == r["n_classes_without_gt"]
        printed = capsys.readouterr().out
        assert ("known-object images derived from the box annotations" in printed) == (mode == "known-object")
    assert main(["hoi", "eval", "--dets", str(tmp_path / "gt.json"), "--data", str(synth),
                 "--zero-shot", str(synth / "zero_shot_uc.json"), "--json", str(tmp_path / "z.json")]) == 0
    z = json.loads((tmp_path / "z.json").read_text())
    assert set(z["mAP"]) == {"full", "unseen", "seen"}
    assert "full" in capsys.readouterr().out
    # the groups are the split file's: with a baseline's imperfect APs, unseen / seen are the means over its ids
    uc = json.loads((synth / "zero_shot_uc.json").read_text())
    for zs in ([], ["--zero-shot", str(synth / "zero_shot_uc.json")]):
        assert main(["hoi", "eval", "--baseline", "object-prior", "--data", str(synth), *zs,
                     "--json", str(tmp_path / ("zb.json" if zs else "b.json"))]) == 0
    b, zb = (json.loads((tmp_path / f).read_text()) for f in ("b.json", "zb.json"))
    assert zb["ap"] == b["ap"] and len(set(round(a, 6) for a in b["ap"])) > 3
    seen = [c for c in range(len(b["ap"])) if c not in set(uc)]
    assert zb["mAP"]["unseen"] == pytest.approx(np.mean([b["ap"][c] for c in uc]))
    assert zb["mAP"]["seen"] == pytest.approx(np.mean([b["ap"][c] for c in seen]))
    assert zb["mAP"]["full"] == pytest.approx(b["mAP"]["full"])


def test_baselines_need_what_they_use_and_score(synth: Path, tmp_path, capsys) -> None:
    assert main(["hoi", "eval", "--baseline", "object-prior", "--data", str(synth), "--json", str(tmp_path / "o.json")]) == 0
    o = json.loads((tmp_path / "o.json").read_text())
    assert 0.0 < o["mAP"]["full"] < 1.0 and o["detections"] == "baseline: object-prior"
    test_file = str(synth / "instances_test2015.json")
    assert main(["hoi", "eval", "--baseline", "frequency-prior", "--data", test_file]) == 2
    assert "--train" in capsys.readouterr().err  # a lone test file has no training counts
    assert main(["hoi", "eval", "--baseline", "frequency-prior", "--data", test_file, "--train", str(synth),
                 "--json", str(tmp_path / "f1.json")]) == 0
    assert main(["hoi", "eval", "--baseline", "frequency-prior", "--data", str(synth),
                 "--json", str(tmp_path / "f2.json")]) == 0  # the folder's training file
    f1, f2 = (json.loads((tmp_path / f).read_text()) for f in ("f1.json", "f2.json"))
    assert 0.0 < f1["mAP"]["full"] == f2["mAP"]["full"]


def test_a_test_file_without_rare_lists_gets_them_from_the_training_counts(synth: Path, tmp_path, capsys) -> None:
    d = json.loads((synth / "instances_test2015.json").read_text())
    bare = tmp_path / "bare" / "instances_test2015.json"
    bare.parent.mkdir()
    bare.write_text(json.dumps({k: v for k, v in d.items() if k not in ("rare", "non_rare")}))
    args = ["hoi", "eval", "--baseline", "object-prior"]
    assert main([*args, "--data", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "no rare/non_rare lists" in err and "--train" in err
    assert main([*args, "--data", str(bare), "--train", str(synth), "--json", str(tmp_path / "b.json")]) == 0
    assert main([*args, "--data", str(synth), "--json", str(tmp_path / "s.json")]) == 0
    b, ref = (json.loads((tmp_path / f).read_text()) for f in ("b.json", "s.json"))
    assert b["mAP"] == ref["mAP"] and set(b["mAP"]) == {"full", "rare", "non_rare"}


def test_a_file_of_the_other_split_is_refused(synth: Path, tmp_path) -> None:
    from afford.errors import AffordError
    from afford.hoi.task import HOITask

    with pytest.raises(AffordError, match="this is the test2015 file, but the train2015 annotations are needed"):
        load_hicodet(synth / "instances_test2015.json", split="train2015")
    with pytest.raises(AffordError, match="data.root: .* is not a folder"):
        HOITask(synth / "instances_test2015.json")
    # any other name is read as given, whatever split is asked (a subset, trainval, ...)
    small = tmp_path / "instances_test2015_small.json"
    small.write_text((synth / "instances_test2015.json").read_text())
    assert len(load_hicodet(small, split="test2015")) == len(load_hicodet(synth))
    assert main(["hoi", "eval", "--baseline", "object-prior", "--data", str(small)]) == 0
    # a file whose rare list is empty but whose non_rare list is full has its lists: no --train needed
    d = json.loads(small.read_text())
    d["rare"], d["non_rare"] = [], list(range(len(d["correspondence"])))
    small.write_text(json.dumps(d))
    assert main(["hoi", "eval", "--baseline", "object-prior", "--data", str(small)]) == 0


@pytest.mark.parametrize(("rows", "message"), [
    ({"nope.jpg": []}, "'nope.jpg' is not in the dataset's file list"),
    ({"SYNTHHOI_test2015_00000000.jpg": [[999, 0, 0, 1, 1, 0, 0, 1, 1, 0.5]]}, "HOI index 999"),
])
def test_bad_detection_files_fail_in_one_line(synth: Path, tmp_path, capsys, rows, message: str) -> None:
    (tmp_path / "d.json").write_text(json.dumps(rows))
    assert main(["hoi", "eval", "--dets", str(tmp_path / "d.json"), "--data", str(synth)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_real_test_file_with_rf_uc_split(capsys) -> None:
    assert main(["hoi", "eval", "--baseline", "object-prior", "--data", str(REAL), "--zero-shot", "rf-uc"]) == 0
    out = capsys.readouterr().out
    assert "unseen" in out and "images 9658" in out


def test_a_tiny_split_without_non_rare_classes_reports_that_group_as_na(tmp_path, capsys) -> None:
    out = tmp_path / "tiny"
    assert main(["data", "synth-hoi", "--out", str(out), "--n-train", "8", "--n-test", "4", "--tile", "48",
                 "--quiet"]) == 0
    assert not json.loads((out / "instances_test2015.json").read_text())["non_rare"]  # every class is rare
    assert main(["hoi", "eval", "--baseline", "object-prior", "--data", str(out), "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["empty_groups"] == ["non_rare"] and set(r["mAP"]) == {"full", "rare"}
    assert "no non_rare class in this split" in capsys.readouterr().out


def test_a_negative_draw_count_is_refused_at_parse_time(capsys) -> None:
    # --draw -2 silently drew rows[:-2]
    with pytest.raises(SystemExit) as e:
        main(["hoi", "predict", "x.jpg", "--checkpoint", "r", "--out", "o", "--draw", "-2"])
    assert e.value.code == 2 and "expected an integer >= 0" in capsys.readouterr().err


def test_evaluation_after_training_reports_an_empty_group_as_na(tmp_path) -> None:
    """HOITask's end-of-epoch evaluation on a tiny split where every class is rare failed after the
    training with 'group non_rare must be a non-empty list' (afford hoi eval already said n/a)."""
    from afford.hoi.baselines import baseline_detections
    from afford.hoi.evaluate import evaluate_hoi
    from afford.hoi.task import HOITask, report_groups

    out = tmp_path / "tiny"
    assert main(["data", "synth-hoi", "--out", str(out), "--n-train", "8", "--n-test", "4", "--tile", "48",
                 "--quiet"]) == 0
    task = HOITask(out)
    groups, empty = report_groups(task.test_data, task.unseen)
    assert empty == ["non_rare"] and set(groups) == {"rare"} and groups["rare"]
    test = task.test_data
    dets = baseline_detections(test.annotations, test.hoi_object, "object-prior")
    result = evaluate_hoi(test.annotations, dets, test.hoi_object, groups=groups, num_classes=test.num_classes)
    assert set(result.map) == {"full", "rare"}


def test_a_training_file_with_other_classes_is_refused(synth: Path, tmp_path, capsys) -> None:
    """Its counts were applied to the test classes by id: rare/non-rare silently wrong."""
    d = json.loads((synth / "instances_train2015.json").read_text())
    d["verbs"][0], d["verbs"][1] = d["verbs"][1], d["verbs"][0]  # the same ids, other classes
    other = tmp_path / "other" / "instances_train2015.json"
    other.parent.mkdir()
    other.write_text(json.dumps(d))
    t = json.loads((synth / "instances_test2015.json").read_text())
    bare = tmp_path / "bare" / "instances_test2015.json"
    bare.parent.mkdir()
    bare.write_text(json.dumps({k: v for k, v in t.items() if k not in ("rare", "non_rare")}))
    for args in (["--baseline", "object-prior", "--data", str(bare)], ["--baseline", "frequency-prior", "--data", str(synth)]):
        assert main(["hoi", "eval", *args, "--train", str(other)]) == 2
        assert "define different HOI classes" in capsys.readouterr().err


def test_a_training_file_holding_the_test_images_is_refused(synth: Path, tmp_path, capsys) -> None:
    """The test file under another name given as --train: its counts would make the rare split (and the
    frequency prior) from the test pairs themselves."""
    t = json.loads((synth / "instances_test2015.json").read_text())
    bare = tmp_path / "bare" / "instances_test2015.json"
    bare.parent.mkdir()
    bare.write_text(json.dumps({k: v for k, v in t.items() if k not in ("rare", "non_rare")}))
    (tmp_path / "mytrain.json").write_text(json.dumps(t))
    for args in (["--baseline", "object-prior", "--data", str(bare)], ["--baseline", "frequency-prior", "--data", str(synth)]):
        assert main(["hoi", "eval", *args, "--train", str(tmp_path / "mytrain.json")]) == 2
        err = capsys.readouterr().err
        assert f"holds {len(t['filenames'])} of the test file's images (e.g. {min(t['filenames'])})" in err


def test_the_summary_counts_the_images_with_detections_and_odd_files_warn(synth: Path, tmp_path, capsys,
                                                                          caplog) -> None:
    ds = load_hicodet(synth)
    dets = [ImageDetections(g.hoi, g.boxes_h - 1, g.boxes_o - 1, 0.5 + 0 * g.hoi.astype(float)) for g in ds.annotations]
    dets[:3] = [None] * 3  # images without detections are left out of the file
    with_pairs = sum(1 for d in dets if d is not None and len(d))
    assert len(ds.filenames) / 2 < with_pairs < len(ds.filenames)  # not so few that a warning is due
    write_detections(tmp_path / "gt.json", ds.filenames, dets)
    with caplog.at_level(logging.WARNING, logger="afford"):
        assert main(["hoi", "eval", "--dets", str(tmp_path / "gt.json"), "--data", str(synth), "--json",
                     str(tmp_path / "r.json")]) == 0
        assert not caplog.records
        assert f"[images {len(ds.filenames)} ({with_pairs} with detections)" in capsys.readouterr().out
        assert json.loads((tmp_path / "r.json").read_text())["n_images_with_detections"] == with_pairs
        scaled = [ImageDetections(d.hoi, d.boxes_h / [w, h, w, h], d.boxes_o / [w, h, w, h], d.scores)
                  for d, (w, h) in zip(dets[3:], ds.sizes[3:].astype(float), strict=True)]
        write_detections(tmp_path / "norm.json", ds.filenames[3:], scaled)
        assert main(["hoi", "eval", "--dets", str(tmp_path / "norm.json"), "--data", str(synth)]) == 0
    assert "norm.json: every box coordinate is within [-1, 1]: normalised boxes?" in caplog.text
    (tmp_path / "empty.json").write_text("{}")
    assert main(["hoi", "eval", "--dets", str(tmp_path / "empty.json"), "--data", str(synth)]) == 2
    assert "empty.json: no detections for any of the" in capsys.readouterr().err


def test_an_image_listed_twice_in_a_detection_file_is_refused(synth: Path, tmp_path, capsys) -> None:
    name = load_hicodet(synth).filenames[0]
    row = "[0, 0, 0, 1, 1, 0, 0, 1, 1, 0.5]"
    (tmp_path / "d.json").write_text(f'{{"{name}": [{row}], "{name}": [{row}]}}')  # two shards' outputs joined
    assert main(["hoi", "eval", "--dets", str(tmp_path / "d.json"), "--data", str(synth)]) == 2
    assert f"'{name}' is listed twice" in capsys.readouterr().err  # JSON kept only the last list


def test_named_zero_shot_splits_need_the_official_class_order(tmp_path) -> None:
    from afford.errors import AffordError
    from afford.hoi.splits import RF_UC, zero_shot_unseen

    real = load_hicodet(REAL)
    assert zero_shot_unseen("rf-uc", real) == RF_UC
    d = json.loads(REAL.read_text())
    d["correspondence"] = [[i, *c[1:]] for i, c in enumerate(d["correspondence"][1:] + d["correspondence"][:1])]
    shifted = tmp_path / "instances_test2015.json"
    shifted.write_text(json.dumps({**d, "annotation": [{**a, "hoi": [(h - 1) % 600 for h in a["hoi"]]}
                                                       for a in d["annotation"]]}))
    with pytest.raises(AffordError, match="not in HICO-DET's official order"):
        zero_shot_unseen("rf-uc", load_hicodet(shifted))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("empty", ["a", 1], "empty: expected a list of image indices"),  # was a TypeError traceback from sorted()
])
def test_malformed_fields_are_findings_not_tracebacks(synth: Path, tmp_path, capsys, field, value, message) -> None:
    d = json.loads((synth / "instances_test2015.json").read_text())
    d[field] = value
    (tmp_path / "instances_test2015.json").write_text(json.dumps(d))
    main(["data", "check", "--hoi", str(tmp_path / "instances_test2015.json")])
    assert message in capsys.readouterr().out


def test_an_absurd_image_size_is_refused(synth: Path, tmp_path) -> None:
    from afford.errors import AffordError

    d = json.loads((synth / "instances_test2015.json").read_text())
    d["size"][0] = [1e300, 3]  # was cast to int64 garbage with a RuntimeWarning
    (tmp_path / "instances_test2015.json").write_text(json.dumps(d))
    with pytest.raises(AffordError, match=r"size\[0\].*at most 65535 px"):
        load_hicodet(tmp_path / "instances_test2015.json")


def test_a_group_without_any_test_pair_is_said_to_be_the_rules_zero(synth: Path, tmp_path, capsys) -> None:
    """The quick demo printed 'non_rare 0.00' for a group none of whose classes has a test pair."""
    d = json.loads((synth / "instances_test2015.json").read_text())
    present = {h for a in d["annotation"] for h in a["hoi"]}
    absent = [c for c in range(len(d["correspondence"])) if c not in present]
    assert absent
    d["rare"], d["non_rare"] = absent, sorted(present)
    (tmp_path / "instances_test2015.json").write_text(json.dumps(d))
    assert main(["hoi", "eval", "--baseline", "object-prior", "--data", str(tmp_path / "instances_test2015.json")]) == 0
    out = capsys.readouterr().out
    assert f"none of the {len(absent)} rare classes has a test pair" in out and "non_rare classes" not in out


def test_draw_hoi_outlines_the_human_blue_and_the_object_red_and_joins_them() -> None:
    from PIL import Image

    from afford.hoi.predictor import draw_hoi

    img = Image.new("RGB", (120, 90), (128, 128, 128))
    row = {"human_box": [10.0, 10.0, 40.0, 80.0], "object_box": [80.0, 60.0, 110.0, 85.0], "verb": "hold",
           "object": "cup", "score": 0.9}
    out = draw_hoi(img, [row])
    px = out.load()
    assert px[10, 60] == (40, 110, 255) and px[40, 70] == (40, 110, 255)  # the human box's left and right edges
    assert px[80, 78] == (235, 50, 50) and px[100, 85] == (235, 50, 50)  # the object box's left and bottom edges
    assert px[33, 48] == (255, 220, 0)  # the line from the human's centre (25, 45) to the object's (95, 72.5)
    assert px[5, 85] == (128, 128, 128) and img.load()[10, 60] == (128, 128, 128)  # elsewhere, and the input, untouched
    assert draw_hoi(img, []).tobytes() == img.tobytes()


def test_hoi_task_rare_lists_from_training_counts_and_mismatched_classes(synth: Path, tmp_path) -> None:
    """A test file without rare/non_rare lists gets them from the training counts (HICO-DET's < 10 rule): the
    generator's own lists; a training file whose classes differ from the test file's is refused by name."""
    import os

    from afford.errors import AffordError
    from afford.hoi.task import HOITask

    root = tmp_path / "copy"
    root.mkdir()
    os.symlink(synth / "images", root / "images")
    train = json.loads((synth / "instances_train2015.json").read_text())
    test = json.loads((synth / "instances_test2015.json").read_text())
    (root / "instances_train2015.json").write_text(json.dumps(train))
    (root / "instances_test2015.json").write_text(json.dumps({k: v for k, v in test.items()
                                                              if k not in ("rare", "non_rare")}))
    task = HOITask(root)
    assert (list(task.test_data.rare), list(task.test_data.non_rare)) == (test["rare"], test["non_rare"])
    assert task.unseen in ((), []) and task.removal is None
    train["verbs"] = [v + "_x" for v in train["verbs"]]
    (root / "instances_train2015.json").write_text(json.dumps(train))
    with pytest.raises(AffordError, match="different HOI classes"):
        HOITask(root)


def test_scoring_a_detection_file_does_not_import_the_model_stack(synth: Path, tmp_path) -> None:
    """hoi eval --dets / --baseline need no model: importing transformers took 4 of its 6 s on HICO-DET."""
    import subprocess
    import sys

    ds = load_hicodet(synth)
    write_detections(tmp_path / "gt.json", ds.filenames,
                     [ImageDetections(g.hoi, g.boxes_h - 1, g.boxes_o - 1, 0.5 + 0 * g.hoi.astype(float))
                      for g in ds.annotations])
    code = ("import sys; from afford.cli import main; "
            f"assert main(['hoi', 'eval', '--dets', {str(tmp_path / 'gt.json')!r}, '--data', {str(synth)!r}]) == 0; "
            f"assert main(['hoi', 'eval', '--baseline', 'frequency-prior', '--data', {str(synth)!r}]) == 0; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_hoi_predict_refuses_to_overwrite_an_input_image(tmp_path, capsys) -> None:
    from PIL import Image

    for name in ("x.png", "x_hoi.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    assert main(["hoi", "predict", str(tmp_path / "x.png"), str(tmp_path / "x_hoi.png"), "--checkpoint",
                 str(tmp_path / "no_run"), "--out", str(tmp_path)]) == 2  # refused before the run is read
    assert f"{tmp_path / 'x_hoi.png'}: an output of this command has this name" in capsys.readouterr().err
