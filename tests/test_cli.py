"""CLI: the user-facing verbs end to end, and one-line errors with non-zero exits for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from afford.cli import main
from afford.errors import AffordError

TINY = ["--set", "model.backbone=tiny_vit", "--set", "model.train_backbone=true", "--set", "data.resize=64",
        "--set", "data.crop=56", "--set", "data.test_size=56", "--set", "train.batch_size=4",
        "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2",
        "--set", "data.feature_cache=false"]  # a trainable backbone has nothing to cache


@pytest.fixture(scope="module")
def run_dir(synth_root, tmp_path_factory) -> Path:
    """Trained through the CLI verb itself, from a packaged preset with overrides."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "locate_synthagd_demo", "--out", str(out), "--set", f"data.root={synth_root}",
                 *TINY, "--quiet"]) == 0
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("afford: error: "), err
    return err[0]


def test_eval_checkpoint_and_baseline_json_schema(run_dir, synth_root, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--data", str(synth_root), "--split", "Seen",
                 "--json", str(out), "--viz", str(tmp_path / "viz")]) == 0
    # the printed line names every choice behind its figures (protocol.md §1.5, §5, §7)
    assert "[protocol=standard, nss=ooal_eps, empty_gt=kept, selection=last-epoch, output=raw]" in capsys.readouterr().out
    m = json.loads(out.read_text())
    for key in ("protocol", "split", "n_images", "KLD", "SIM", "NSS", "per_affordance", "per_object"):
        assert key in m
    assert m["protocol"] == "standard" and m["split"] == "Seen" and m["selection"]["rule"] == "last-epoch"
    assert m["n_images"] == sum(v["n"] for v in m["per_affordance"].values())
    assert list((tmp_path / "viz").glob("*.png"))
    b = tmp_path / "b.json"
    capsys.readouterr()
    assert main(["eval", "--baseline", "object", "--data", str(synth_root), "--split", "Seen", "--json", str(b),
                 "--breakdown", "pair"]) == 0
    bm = json.loads(b.read_text())
    assert bm["n_images"] == m["n_images"]
    printed = capsys.readouterr().out
    for pair, g in bm["per_pair"].items():  # one table line per (affordance, object) pair, with its scores
        assert f"| {pair} | {g['n']} | {g['KLD']:.3f} | {g['SIM']:.3f} |" in printed


def test_predict_writes_npy_png_overlay(run_dir, synth_root, tmp_path):
    img = next((synth_root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    out = tmp_path / "pred"
    assert main(["predict", str(img), "--checkpoint", str(run_dir), "--affordance", "hold", "--out", str(out)]) == 0
    m = np.load(out / f"{img.stem}_hold.npy")
    w, h = Image.open(img).size
    assert m.dtype == np.float32 and m.shape == (h, w)
    assert m.min() >= 0 and m.max() <= 1 and m.max() > 0.99  # min-max normalised like the protocol
    assert (out / f"{img.stem}_hold.png").is_file() and (out / f"{img.stem}_hold_overlay.png").is_file()
    # all affordances when none is given
    out2 = tmp_path / "pred_all"
    assert main(["predict", str(img), "--checkpoint", str(run_dir), "--out", str(out2)]) == 0
    classes = json.loads((run_dir / "run.json").read_text())["classes"]
    assert sorted(p.name for p in out2.glob("*.npy")) == sorted(f"{img.stem}_{c}.npy" for c in classes)
    # several images in one call: each gets its own maps, the Predictor's for that image
    from afford.predictor import Predictor

    other = [p for p in (synth_root / "Seen" / "testset" / "egocentric").rglob("*.jpg") if p.stem != img.stem][0]
    out3 = tmp_path / "pred_two"
    assert main(["predict", str(img), str(other), "--checkpoint", str(run_dir), "--affordance", "hold",
                 "--out", str(out3)]) == 0
    predictor = Predictor(run_dir)
    for path in (img, other):
        predictor.set_image(Image.open(path))
        np.testing.assert_array_equal(np.load(out3 / f"{path.stem}_hold.npy"), predictor.predict("hold")["hold"])
    assert not np.array_equal(np.load(out3 / f"{img.stem}_hold.npy")[:8, :8], np.load(out3 / f"{other.stem}_hold.npy")[:8, :8])


def test_bad_inputs_are_one_line_errors(run_dir, synth_root, tmp_path, capsys):
    img = next((synth_root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    assert main(["predict", str(img), "--checkpoint", str(run_dir), "--affordance", "cut_wth", "--out", str(tmp_path)]) == 2
    assert "unknown affordance 'cut_wth'" in (line := one_line_error(capsys)) and "cut_with" in line

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["predict", str(bad), "--checkpoint", str(run_dir), "--out", str(tmp_path)]) == 2
    assert "broken.jpg" in one_line_error(capsys)

    # a missing second image, or two images with one name, fail before anything is written
    same = tmp_path / "again" / img.name
    same.parent.mkdir()
    same.write_bytes(img.read_bytes())
    for images, message in (([img, tmp_path / "missing.jpg"], "missing.jpg: no such image file"),
                            ([img, same], "their outputs")):
        out = tmp_path / f"out_{len(message)}"
        assert main(["predict", *map(str, images), "--checkpoint", str(run_dir), "--out", str(out)]) == 2
        assert message in one_line_error(capsys) and not out.exists()

    assert main(["train", "locate_synthagd_demo", "--out", str(tmp_path / "x"), "--set", "train.epoch=1"]) == 2
    assert "unknown config key 'train.epoch'" in one_line_error(capsys)

    # a checkpoint of another class count: evaluate a Seen run on a split with other classes
    other = tmp_path / "other"
    for aff in ("hold", "cut_with"):
        d = other / "trainset" / "exocentric" / aff / "knife"
        d.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(d / "a.jpg")
    assert main(["eval", "--checkpoint", str(run_dir), "--data", str(other), "--split", "other"]) == 2
    assert "classes" in one_line_error(capsys)

    # weights of another method: a WSMA run directory holding LOCATE weights
    from afford.config import build_config

    info = json.loads((run_dir / "run.json").read_text())
    wsma_cfg = build_config("wsma", overrides=["model.backbone=tiny_vit", "model.text_encoder=tiny_clip",
                                               "model.attnpool_heads=8", "data.test_size=56", "model.grid=7"])
    fake = tmp_path / "fake_run"
    fake.mkdir()
    (fake / "run.json").write_text(json.dumps({**info, "method": "wsma", "config": wsma_cfg.to_dict()}))
    (fake / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    assert main(["eval", "--checkpoint", str(fake), "--data", str(synth_root), "--split", "Seen"]) == 2
    line = one_line_error(capsys)
    assert "does not match the model" in line and "missing" in line and "unexpected" in line
    # run.json whose two method fields disagree
    (fake / "run.json").write_text(json.dumps({**info, "method": "wsma"}))
    assert main(["eval", "--checkpoint", str(fake), "--data", str(synth_root), "--split", "Seen"]) == 2
    assert "config is for 'locate'" in one_line_error(capsys)


def test_output_paths_that_cannot_be_written_are_refused_before_any_work(run_dir, synth_root, tmp_path, capsys):
    img = next((synth_root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    cases = [
        (["predict", str(img), "--checkpoint", str(run_dir), "--out", str(a_file)], "--out: ", "is a file; expected a folder"),
        (["eval", "--checkpoint", str(run_dir), "--json", str(a_file / "m.json")], "--json: ", "is a file"),
        (["eval", "--checkpoint", str(run_dir), "--json", str(tmp_path)], "--json: ", f"{tmp_path} is a folder; expected a file"),
        (["eval", "--checkpoint", str(run_dir), "--viz", str(a_file)], "--viz: ", "is a file"),
        (["train", "locate_synthagd_demo", "--out", str(a_file / "run")], "--out: ", "is a file"),
    ]
    for argv, flag, message in cases:
        t0 = time.perf_counter()
        assert main(argv) == 2
        line = one_line_error(capsys)
        assert line.startswith(f"afford: error: {flag}") and message in line
        assert time.perf_counter() - t0 < 5  # refused up front, not after the evaluation
    assert a_file.read_text() == "x"


def test_data_check_and_synth_cli(tmp_path, capsys):
    root = tmp_path / "s"
    assert main(["data", "synth", "--out", str(root), "--split", "seen", "--seed", "1", "--size", "48",
                 "--n-exo", "2", "--n-ego", "1", "--n-test", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    # the flags reached the generator: the counts per pair, the image size and the seed's world
    from afford.synthagd import generate

    counts = report["splits"][0]["counts"]
    assert {n for aff in counts["exocentric"].values() for n in aff.values()} == {2}
    assert {n for aff in counts["egocentric"].values() for n in aff.values()} == {1}
    assert {n for aff in counts["test_egocentric"].values() for n in aff.values()} == {1}
    jpg = next((root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    assert Image.open(jpg).size[0] == 48 or Image.open(jpg).size[1] == 48
    generate(tmp_path / "same", split="seen", seed=1, size=48, n_exo=2, n_ego=1, n_test=1)
    assert (tmp_path / "same" / jpg.relative_to(root)).read_bytes() == jpg.read_bytes()
    # break it: corrupt one test image -> non-zero exit, the file is named
    jpg = next((root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    jpg.write_bytes(jpg.read_bytes()[:40])
    assert main(["data", "check", str(root)]) == 1
    assert jpg.name in capsys.readouterr().out


def test_console_script_runs_and_reports_errors_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "afford.cli", "eval", "--data", str(tmp_path), "--baseline", "center"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_import_cli_rejects_truncated_and_other_method_files(tmp_path, capsys):
    import torch

    sd = {"vit_model.cls_token": torch.zeros(1, 1, 8), "aff_ego_proj.3.weight": torch.zeros(8, 8, 3, 3),
          "aff_fc.weight": torch.zeros(36, 8, 1, 1)}
    torch.save(sd, tmp_path / "locate.pth")
    data = (tmp_path / "locate.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert main(["import", "--method", "locate", "--file", str(tmp_path / "cut.pth"), "--out", str(tmp_path / "r1")]) == 2
    assert "cut.pth" in one_line_error(capsys)
    assert main(["import", "--method", "wsma", "--file", str(tmp_path / "locate.pth"), "--out", str(tmp_path / "r2")]) == 2
    assert "--method locate" in one_line_error(capsys)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def _subcommand_parsers(parser, path=()):
    """``(path, parser)`` for the parser and every nested subcommand parser (e.g. ``("data", "check")``)."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommand_parsers(sub, (*path, name))


def test_every_flag_of_every_subcommand_has_help():
    import argparse

    from afford.cli import build_parser

    seen, missing = set(), []
    for path, parser in _subcommand_parsers(build_parser()):
        seen.add(path)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(('afford', *path))} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
    for verb in [("demo",), ("data", "synth"), ("data", "check"), ("train",), ("eval",), ("predict",),
                 ("import",), ("refine", "train"), ("list",)]:
        assert verb in seen  # the walk reached every verb


def test_version_and_global_verbosity_flags(capsys):
    import logging

    from afford import __version__
    from afford.cli import build_parser

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"afford {__version__}"
    p = build_parser()
    assert p.parse_args(["list"]).log_level == logging.INFO
    assert p.parse_args(["-v", "list"]).log_level == logging.DEBUG
    assert p.parse_args(["-q", "list"]).log_level == logging.WARNING
    # the subcommand's own --quiet (progress bars) is a different switch from the global -q (log level)
    a = p.parse_args(["-q", "eval", "--data", "d", "--baseline", "center", "--quiet"])
    assert a.quiet is True and a.log_level == logging.WARNING
    assert p.parse_args(["predict", "x.jpg", "--checkpoint", "r", "--out", "o"]).device == "auto"
    assert p.parse_args(["eval", "--data", "d", "--baseline", "center"]).device == "auto"
    assert p.parse_args(["eval", "--data", "d", "--baseline", "centre"]).baseline == "center"  # the report's spelling


def test_info_messages_reach_stderr_by_default_and_quiet_hides_them(synth_root):
    # a real process (pytest owns the root logger in-process): default INFO shows afford's log.info lines
    cmd = [sys.executable, "-m", "afford.cli"]
    args = ["eval", "--data", str(synth_root), "--baseline", "center", "--quiet"]
    r = subprocess.run([*cmd, *args], capture_output=True, text=True)
    assert r.returncode == 0 and "afford: Seen" in r.stderr, r.stderr
    r = subprocess.run([*cmd, "-q", *args], capture_output=True, text=True)
    assert r.returncode == 0 and "afford: " not in r.stderr, r.stderr


def test_eval_takes_data_and_split_from_the_run_and_rejects_ignored_flags(run_dir, synth_root, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--json", str(a), "--quiet"]) == 0  # no --data / --split
    assert main(["eval", "--checkpoint", str(run_dir), "--data", str(synth_root), "--split", "Seen",
                 "--json", str(b), "--quiet"]) == 0
    ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ma["KLD"] == mb["KLD"] and ma["split"] == "Seen" and ma["output"] == "raw" and ma["output_kind"] == "logits"
    capsys.readouterr()
    for flags in (["--viz", "v"], ["--save-pred", "s"], ["--refine", "affinity-free"], ["--device", "cpu"], ["--bf16"], ["--batch-size", "4"],
                  ["--output", "raw"]):
        assert main(["eval", "--baseline", "center", "--data", str(synth_root), *flags]) == 2
        assert f"{flags[0]} only applies to --checkpoint RUN" in one_line_error(capsys)
    assert main(["eval", "--pred", str(tmp_path), "--data", str(synth_root), "--bf16"]) == 2
    assert "with --pred it would be ignored" in one_line_error(capsys)
    assert main(["eval", "--baseline", "center"]) == 2
    assert "--data ROOT is required" in one_line_error(capsys)


def test_eval_save_pred_writes_the_maps_that_eval_pred_scores_the_same(run_dir, tmp_path, capsys):
    """--save-pred writes the scored maps in the --pred layout: re-scoring them gives the model's figures
    bit for bit, under the default and another protocol; a folder with files is refused before any work."""
    saved, a, b = tmp_path / "maps", tmp_path / "a.json", tmp_path / "b.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--save-pred", str(saved), "--json", str(a), "--quiet"]) == 0
    ma = json.loads(a.read_text())
    files = sorted(saved.glob("*/*/*.npy"))
    assert len(files) == ma["n_images"] and ma["saved_predictions"] == str(saved)
    assert np.load(files[0]).dtype == np.float32 and np.load(files[0]).ndim == 2
    data = str(Path(ma["data_root"]).parent)
    assert main(["eval", "--pred", str(saved), "--data", data, "--json", str(b), "--quiet"]) == 0
    mb = json.loads(b.read_text())
    assert (mb["KLD"], mb["SIM"], mb["NSS"]) == (ma["KLD"], ma["SIM"], ma["NSS"])
    assert mb["n_extra_files"] == 0
    assert main(["eval", "--checkpoint", str(run_dir), "--protocol", "cvag_test", "--json", str(a), "--quiet"]) == 0
    assert main(["eval", "--pred", str(saved), "--data", data, "--protocol", "cvag_test", "--json", str(b),
                 "--quiet"]) == 0
    assert json.loads(a.read_text())["KLD"] == json.loads(b.read_text())["KLD"]
    capsys.readouterr()
    before = sorted(saved.rglob("*"))
    assert main(["eval", "--checkpoint", str(run_dir), "--save-pred", str(saved), "--quiet"]) == 2
    assert "--save-pred: " in one_line_error(capsys) and sorted(saved.rglob("*")) == before


def test_save_pred_refuses_two_images_that_would_share_a_file(tmp_path):
    from types import SimpleNamespace

    from afford.data.predictions import check_save_dir

    items = [SimpleNamespace(gt_id="hold/cup/x", image=Path(f"x{ext}")) for ext in (".jpg", ".png")]
    with pytest.raises(AffordError, match=r"x.jpg and x.png would both be saved as hold/cup/x.npy"):
        check_save_dir(tmp_path / "new", items)
    check_save_dir(tmp_path / "new", items[:1])  # a folder that does not exist yet is fine


def test_eval_output_and_protocol_must_agree(run_dir, tmp_path, capsys):
    """A method declares what each output is; plsp (softmax over logits) refuses score maps."""
    assert main(["eval", "--checkpoint", str(run_dir), "--output", "refined", "--quiet"]) == 2
    assert "has no output 'refined'" in one_line_error(capsys)
    assert main(["eval", "--checkpoint", str(run_dir), "--protocol", "plsp", "--refine", "affinity-free",
                 "--quiet"]) == 2
    assert "refined maps are already in [0, 1]" in one_line_error(capsys)
    out = tmp_path / "p.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--protocol", "plsp", "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["protocol"] == "plsp"


def test_set_takes_several_overrides_after_one_flag_as_readme_writes_it() -> None:
    """README writes [--set k=v ...]; a second value after one --set was an 'unrecognized arguments' error."""
    from afford.cli import build_parser

    p = build_parser()
    a = p.parse_args(["train", "locate_seen", "--out", "r", "--set", "train.epochs=1", "train.lr=0.1", "--set", "data.crop=56"])
    assert a.set == ["train.epochs=1", "train.lr=0.1", "data.crop=56"]
    a = p.parse_args(["sweep", "locate_seen", "--seeds", "0,1", "--out", "r", "--set", "train.epochs=1", "train.lr=0.1"])
    assert a.set == ["train.epochs=1", "train.lr=0.1"]
    a = p.parse_args(["refine", "train", "--checkpoint", "r", "--set", "train.lr=0.05", "model.label_mode=fixed"])
    assert a.set == ["train.lr=0.05", "model.label_mode=fixed"]


def test_eval_split_of_a_run_is_found_beside_the_split_it_trained_on(run_dir, synth_root, tmp_path, capsys) -> None:
    """run.json records the split's own folder as data_root: --split Other looked for data_root/Other."""
    import shutil

    data = tmp_path / "d"
    for name in ("Seen", "Other"):
        shutil.copytree(synth_root / "Seen", data / name)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    info = json.loads((run / "run.json").read_text())
    info["data_root"] = str(data / "Seen")
    (run / "run.json").write_text(json.dumps(info))
    assert main(["eval", "--checkpoint", str(run), "--split", "Other", "--quiet", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["data_root"] == str(data / "Other")


def test_select_flag_and_set_must_agree(tmp_path, capsys) -> None:
    assert main(["train", "locate_synthagd_demo", "--out", str(tmp_path / "r"), "--select", "best-on-test",
                 "--set", "train.select=last"]) == 2  # --select silently won
    assert "--select best-on-test and --set train.select=last disagree" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_data_synth_takes_the_split_as_every_other_command_spells_it() -> None:
    from afford.cli import build_parser

    assert build_parser().parse_args(["data", "synth", "--out", "o", "--split", "Seen"]).split == "seen"  # was refused


def test_the_parser_does_not_import_the_model_stack() -> None:
    """afford --help and every argparse error took 5 s, 2.8 s of it importing transformers for defaults."""
    import subprocess
    import sys

    code = "import sys; from afford.cli import build_parser; build_parser(); print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_log_flags_work_before_and_after_the_verb():
    import logging

    from afford.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["list"]).log_level == logging.INFO
    for flag, level in (("-v", logging.DEBUG), ("-q", logging.WARNING)):
        assert parse([flag, "list"]).log_level == level
        assert parse(["list", flag]).log_level == level
        assert parse(["data", "synth", "--out", "x", flag]).log_level == level  # nested verbs too
    args = parse(["eval", "--baseline", "center", "-q", "--quiet"])  # -q: log level; --quiet: progress bars
    assert args.log_level == logging.WARNING and args.quiet


def test_eval_and_predict_name_a_run_that_makes_no_affordance_maps(run_dir, synth_root, tmp_path, capsys):
    """An HOI run, or a training stage (LoopTrans's cluster module), given to eval / predict: one line saying
    what the run is and which command fits, before any model is built."""
    img = next((synth_root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    info = json.loads((run_dir / "run.json").read_text())
    cases = {"hoi": ({**info, "method": "clip4hoi", "labels": {**info["labels"], "task": "hoi"}},
                     "a clip4hoi run (HOI detection), not an affordance model; use 'afford hoi eval'"),
             "cluster": ({**info, "method": "looptrans_cluster"},
                         "a looptrans_cluster run is a training stage that makes no maps (task 'images')")}
    for name, (record, message) in cases.items():
        run = tmp_path / name
        run.mkdir()
        (run / "run.json").write_text(json.dumps(record))
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(run), "--data", str(synth_root)]) == 2
        assert message in one_line_error(capsys)
        assert main(["predict", str(img), "--checkpoint", str(run), "--out", str(tmp_path / "p")]) == 2
        assert message in one_line_error(capsys)


def test_a_reader_that_leaves_the_pipe_gets_no_traceback():
    """`afford list | head -1`: when the reader closes the pipe, afford stops quietly (exit 141, as a Unix
    tool killed by SIGPIPE), instead of a BrokenPipeError traceback and exit 1."""
    code = ("import sys, afford.cli as c\n"
            "def gone(a):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "c.cmd_list = gone\nsys.exit(c.main(['list']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 141 and "Traceback" not in r.stderr and r.stderr == ""


def test_did_you_mean_ignores_case():
    from afford.errors import did_you_mean

    assert did_you_mean("LOCATE", ["locate", "wsma"]) == " (did you mean: locate?)"
    assert did_you_mean("Locate_Seen", ["locate_seen", "wsma_seen"]).startswith(" (did you mean: locate_seen")
    assert did_you_mean("xyz", ["locate"]) == ""


def test_predict_refuses_to_overwrite_an_input_image_and_a_duplicate(run_dir, synth_root, tmp_path, capsys):
    """cup.png and cup_hold.png in one folder, --out that folder: cup's map was written over the user's
    cup_hold.png, which was then predicted as an image."""
    src = next((synth_root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    cup, cup_hold = tmp_path / "cup.png", tmp_path / "cup_hold.png"
    Image.open(src).save(cup)
    Image.open(src).convert("L").save(cup_hold)
    before = cup_hold.read_bytes()
    for extra in (["--affordance", "hold"], []):  # every class of the run, hold among them
        assert main(["predict", str(cup), str(cup_hold), "--checkpoint", str(run_dir), "--out", str(tmp_path),
                     *extra]) == 2
        assert f"{cup_hold}: an output of this command has this name" in one_line_error(capsys)
    assert cup_hold.read_bytes() == before and not (tmp_path / "cup_hold.npy").exists()
    assert main(["predict", str(cup), str(cup), "--checkpoint", str(run_dir), "--out", str(tmp_path / "o")]) == 2
    assert "cup.png: given twice" in one_line_error(capsys)
    assert main(["predict", str(cup), "--checkpoint", str(run_dir / "run.json"), "--out", str(tmp_path / "o")]) == 2
    assert f"give the run's folder ({run_dir})" in one_line_error(capsys)


def test_an_output_that_cannot_be_written_is_one_line(run_dir, synth_root, tmp_path, capsys, monkeypatch):
    """Checked before the work where permissions tell; a write that still fails (a read-only file system,
    a full disk, root on an immutable folder) is one line naming the file, not a traceback."""
    import os

    import afford.predictor

    img = str(next((synth_root / "Seen" / "testset" / "egocentric").rglob("*.jpg")))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real_access(p, mode))
    assert main(["predict", img, "--checkpoint", str(run_dir), "--out", str(tmp_path / "new")]) == 2
    assert f"--out: cannot write {tmp_path / 'new'}: no write permission in {tmp_path}" in one_line_error(capsys)
    monkeypatch.setattr(os, "access", real_access)

    def refuse(out, stem, image, maps):
        raise PermissionError(1, "Operation not permitted", str(Path(out) / f"{stem}_hold.npy"))

    monkeypatch.setattr(afford.predictor, "save_prediction", refuse)
    assert main(["predict", img, "--checkpoint", str(run_dir), "--out", str(tmp_path / "o"), "--affordance",
                 "hold"]) == 2
    assert one_line_error(capsys).endswith("_hold.npy: Operation not permitted")
