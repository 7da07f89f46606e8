"""``afford app``: the answers behind each tab (plain functions), then the page in headless Chromium.

The browser test starts the real ``afford app`` server and drives it with Playwright in Debian's
Chromium (``/usr/bin/chromium``; nothing is downloaded). CI installs Chromium (``.ci/run``) and
sets ``CI``, where a missing browser fails the test; elsewhere it is skipped with the command
that installs it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from afford.app.answers import ALL, affordance_answer, compare_answer, hoi_answer, open_image
from afford.app.browser import INSTALL_HINT, app_server, choose, find_chromium, launch, rendered
from afford.app.registry import load_registry
from afford.cli import main
from afford.errors import AffordError
from afford.predictor import Predictor
from afford.visualize import overlay

TINY_HOI = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "eval.batch_size=8",
            "model.image_size=64"]


def _png_claiming(width: int, height: int, path: Path) -> Path:
    """A valid 1 x 1 PNG whose header says ``width x height``: what a huge upload looks like to a
    reader that checks the header before decoding (without spending the memory to make one)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def hoi_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP4HOI run (tiny CLIP, cached ground-truth detections, 2 steps) on a small SynthHOI."""
    from afford.config import load_config
    from afford.engine.trainer import train

    tmp = tmp_path_factory.mktemp("app_hoi")
    synth = tmp / "synthhoi"
    assert main(["data", "synth-hoi", "--out", str(synth), "--n-train", "16", "--n-test", "4", "--tile", "64",
                 "--quiet"]) == 0
    cfg = load_config("clip4hoi_synthhoi_demo", [
        f"data.root={synth}", f"model.detections_train={synth}/detections_gt_train2015.json",
        f"model.detections_test={synth}/detections_gt_test2015.json", *TINY_HOI])
    train(cfg, tmp / "clip4hoi", progress=False)
    return tmp / "clip4hoi"


@pytest.fixture(scope="module")
def refined_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny LOCATE run with an AffinityNet head: a second model to compare."""
    from afford.engine.refinement import train_refiner_for_run

    run = tmp_path_factory.mktemp("app_refined") / "locate_refined"
    shutil.copytree(tiny_run, run)
    train_refiner_for_run(run, epochs=1, batch_size=4, radius=2, progress=False)
    return run


@pytest.fixture(scope="module")
def registry(tiny_run: Path, refined_run: Path, hoi_run: Path, tmp_path_factory: pytest.TempPathFactory):
    broken = tmp_path_factory.mktemp("broken")
    (broken / "run.json").write_text("{not json")
    return load_registry([tiny_run, refined_run, hoi_run, broken])


def test_registry_serves_good_runs_and_keeps_a_readable_reason_for_a_bad_one(registry, tiny_run: Path,
                                                                              refined_run: Path) -> None:
    assert list(registry.affordance) == [tiny_run.name, refined_run.name, f"{refined_run.name} + AffinityNet"]
    assert registry.affordance[f"{refined_run.name} + AffinityNet"].refine == "affinity"
    assert list(registry.hoi) == ["clip4hoi"]
    (path, why), = registry.failed.items()
    assert Path(path).name.startswith("broken") and "run.json" in why and "Traceback" not in why
    # the run's dataset is on disk: its test images are offered as examples, one per affordance first
    assert registry.examples and all(p.is_file() for p in registry.examples)
    assert len({p.parent.parent.name for p in registry.examples}) == len(registry.examples)
    assert registry.hoi_examples and registry.object_affordances


def test_bad_uploads_get_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AffordError, match=r"^notes\.txt: not an image .*PNG, JPEG"):
        open_image(tmp_path / "notes.txt")
    with pytest.raises(AffordError, match=r"big\.png: 5000 x 4000 pixels \(20\.0 MP\) is too large"):
        open_image(_png_claiming(5000, 4000, tmp_path / "big.png"))
    with pytest.raises(AffordError, match=r"huge\.png: too large \(over \d+ MP\)"):  # past PIL's own limit
        open_image(_png_claiming(20000, 20000, tmp_path / "huge.png"))
    with pytest.raises(AffordError, match="no image"):
        open_image(None)
    assert open_image(_png_claiming(1, 1, tmp_path / "ok.png")).size == (1, 1)  # the crafted header is valid


def test_phone_photos_are_shown_upright_as_a_browser_shows_them(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 30), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg").size == (30, 60)


def test_compare_counts_each_class_once_and_limits_the_maps_it_computes(registry, monkeypatch) -> None:
    import afford.app.answers as answers

    name = next(iter(registry.affordance))
    classes = registry.affordance[name].classes
    grid, _ = compare_answer(registry, registry.examples[0], [name], classes[0], [classes[1]] * 5 + [classes[0]])
    one, _ = compare_answer(registry, registry.examples[0], [name], classes[0], [classes[1]])
    assert grid.size == one.size  # duplicates asked for are computed once
    w, h = Image.open(registry.examples[0]).size
    monkeypatch.setattr(answers, "ALL_CLASS_PIXELS", 2 * w * h)
    with pytest.raises(AffordError, match="compare computes 3 maps .* choose fewer"):
        compare_answer(registry, registry.examples[0], [name], classes[0], list(classes[1:3]))


def test_affordance_answer_is_what_the_predictor_and_afford_predict_give(registry, tiny_run: Path,
                                                                         tmp_path: Path) -> None:
    image = registry.examples[0]
    aff = registry.affordance[tiny_run.name].classes[1]
    ans = affordance_answer(registry, image, tiny_run.name, aff, tmp_path / "app")
    pred = Predictor(tiny_run)
    pred.set_image(image)
    want = pred.predict(aff)[aff]
    assert np.array_equal(ans.maps[aff], want)
    assert np.array_equal(np.asarray(ans.picture), np.asarray(overlay(pred.image, want)))
    assert main(["predict", str(image), "--checkpoint", str(tiny_run), "--affordance", aff, "--out",
                 str(tmp_path / "cli"), "--quiet"]) == 0
    assert sorted(p.name for p in ans.files) == sorted(p.name for p in (tmp_path / "cli").iterdir())
    for p in ans.files:
        assert p.read_bytes() == (tmp_path / "cli" / p.name).read_bytes()
    every = affordance_answer(registry, image, tiny_run.name, ALL, tmp_path / "all")
    assert set(every.maps) == set(registry.affordance[tiny_run.name].classes) and len(every.files) == 3 * len(every.maps)
    for a, m in every.maps.items():  # the grid's maps are the Predictor's, class by class (one pass: ~1e-7 apart)
        np.testing.assert_allclose(m, pred.predict(a)[a], atol=1e-5)
    from afford.app.answers import _thumbnail
    from afford.visualize import save_grid

    thumb = _thumbnail(open_image(image))  # the picture: each class's overlay, in class order, six to a line
    want_grid = save_grid([(overlay(thumb, m), a) for a, m in every.maps.items()], None, cols=6)
    assert list(every.maps) == list(registry.affordance[tiny_run.name].classes)
    assert np.array_equal(np.asarray(every.picture), np.asarray(want_grid))
    assert ans.downloads == ans.files
    (zipped,) = every.downloads  # all affordances: one zip of the same files
    with zipfile.ZipFile(zipped) as z:
        assert sorted(z.namelist()) == sorted(p.name for p in every.files)
        assert z.read(every.files[0].name) == every.files[0].read_bytes()
    with pytest.raises(AffordError, match="not a class of"):
        affordance_answer(registry, image, tiny_run.name, "fly")


def test_compare_lines_up_models_and_measures_label_blindness(registry, tiny_run: Path) -> None:
    classes = registry.affordance[tiny_run.name].classes
    grid, table = compare_answer(registry, registry.examples[0], [tiny_run.name, tiny_run.name], classes[0],
                                 classes[1:3])
    # a model chosen twice is one line (it was computed and shown twice) of 3 maps of a 192 px thumbnail
    assert grid.size[0] > 3 * 150 and 150 < grid.size[1] < 2 * 150
    assert table.count(f"| {tiny_run.name} |") == 1
    # each tile is that class's overlay on the thumbnail, and the table the mean correlation of the chosen
    # map with the others' (the Predictor's maps, computed here independently)
    import torch

    from afford.app.answers import _thumbnail
    from afford.metrics.report import map_correlation
    from afford.visualize import save_grid

    names = [classes[0], *classes[1:3]]
    pred = Predictor(tiny_run)
    full = open_image(registry.examples[0])
    pred.set_image(full)
    maps = pred.predict(names)
    thumb = _thumbnail(full)
    want = save_grid([(overlay(thumb, maps[a]), f"{tiny_run.name}: {a}"[:40]) for a in names], None, cols=3)
    assert np.array_equal(np.asarray(grid), np.asarray(want))
    cc = np.mean([map_correlation(torch.from_numpy(maps[names[0]]), torch.from_numpy(maps[a])) for a in names[1:]])
    assert f"| {tiny_run.name} | {cc:.3f} |" in table and not np.isclose(cc, 1.0)
    with pytest.raises(AffordError, match="at least one model"):
        compare_answer(registry, registry.examples[0], [], classes[0])


def test_hoi_answer_draws_the_predictors_triplets(registry) -> None:
    picture, rows = hoi_answer(registry, registry.hoi_examples[0], "clip4hoi", top=3)
    assert 0 < len(rows) <= 3 and [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    with registry.lock:  # the rows are the predictor's triplets, human and object boxes in their places
        hp = registry.hoi["clip4hoi"].predictor()
        hp.set_image(open_image(registry.hoi_examples[0]), name=Path(registry.hoi_examples[0]).name)
        want = hp.predict(top_k=3)
    assert [[r["verb"], r["object"], f"{r['score']:.4f}", [round(x, 1) for x in r["human_box"]],
             [round(x, 1) for x in r["object_box"]]] for r in want] == rows
    assert picture.size == Image.open(registry.hoi_examples[0]).size
    with pytest.raises(AffordError, match="has none for an image of this name; it answers for its dataset") as e:
        hoi_answer(registry, registry.examples[0], "clip4hoi")  # not in the run's detections file
    assert "/" not in str(e.value)  # the page names no server path


def test_cached_hoi_detections_refuse_a_rescaled_copy_of_their_image(registry, tmp_path: Path) -> None:
    """An upscaled copy under the dataset image's name got that image's boxes, drawn in a corner."""
    src = Path(registry.hoi_examples[0])
    w, h = Image.open(src).size
    big = tmp_path / src.name
    Image.open(src).resize((2 * w, 2 * h)).save(big)
    with pytest.raises(AffordError, match=rf"{src.name}: {2 * w} x {2 * h}, but the dataset's image of this name is "
                                          rf"{w} x {h}"):
        hoi_answer(registry, big, "clip4hoi")


# ------------------------------------------------------------------------------- in a browser
def _chromium() -> str:
    found = find_chromium()
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"the browser test needs Chromium and CI must have it: {INSTALL_HINT}")
    pytest.skip(f"no Chromium on this machine: {INSTALL_HINT}")


@pytest.fixture(scope="module")
def server(tiny_run: Path, refined_run: Path, hoi_run: Path, registry, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("app_log") / "server.log"
    tmp = tmp_path_factory.mktemp("app_tmp")
    with app_server([tiny_run, refined_run, hoi_run, next(iter(registry.failed))], log, tmpdir=tmp) as url:
        yield url, log, tmp
    # stopped with SIGTERM, as a service manager does: its answers' folder must not stay behind
    leftover = list(tmp.glob("afford_app_*"))
    assert not leftover, f"afford app left {leftover} after SIGTERM"
    # nor gradio's copies of the uploaded photos and served answers (a SystemExit skipped its cleanup)
    copies = [p for p in tmp.glob("gradio/*/**/*") if p.is_file()]
    assert not copies, f"gradio kept {len(copies)} uploads/answers after SIGTERM, e.g. {copies[0]}"


def test_the_page_in_headless_chromium(server, registry, tiny_run: Path, hoi_run: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from afford.hoi.predictor import HOIPredictor, draw_hoi

    url, log, server_tmp = server
    shots = Path(os.environ.get("AFFORD_APP_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    image = registry.examples[0]
    aff = registry.affordance[tiny_run.name].classes[1]
    timings = {}
    with sync_playwright() as p:
        browser = launch(p, _chromium())
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, wait_until="networkidle")
        # a run that did not load is named in the page, the others are served
        assert "corrupt run file" in page.locator("#load-status").inner_text()

        # Affordance tab: upload, choose an affordance, ground: the heatmap is the predictor's
        page.set_input_files("#aff-upload input[type=file]", str(image))
        choose(page, "aff-affordance", aff)
        t0 = time.perf_counter()
        page.click("#aff-run")
        got = rendered(page, "#aff-result img")
        timings["click_to_heatmap_s"] = time.perf_counter() - t0
        pred = Predictor(tiny_run)
        pred.set_image(image)
        want = np.asarray(overlay(pred.image, pred.predict(aff)[aff]))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(got)).convert("RGB")), want)
        page.wait_for_selector("#aff-files a", timeout=30_000)  # the downloads of afford predict
        links = [a.get_attribute("href") for a in page.locator("#aff-files a").all()]
        npy = [h for h in links if h.endswith(f"{image.stem}_{aff}.npy")]
        assert len(npy) == 1 and any(h.endswith(f"{image.stem}_{aff}_overlay.png") for h in links)
        downloaded = np.load(io.BytesIO(page.request.get(npy[0]).body()))
        assert np.array_equal(downloaded, pred.predict(aff)[aff])
        assert list(server_tmp.glob("afford_app_*/*/*.npy")), "the answers are written in the server's TMPDIR"
        page.screenshot(path=str(shots / "affordance.png"), full_page=True)

        # a text file instead of an image: a message in the page, and the server keeps serving
        (tmp_path / "notes.txt").write_text("not an image")
        page.click("#aff-upload button[aria-label='Clear']")
        page.set_input_files("#aff-upload input[type=file]", str(tmp_path / "notes.txt"))
        page.wait_for_function("() => document.querySelector('#aff-status').innerText.includes('not an image')",
                               timeout=30_000)
        status = page.locator("#aff-status").inner_text()
        assert "notes.txt: not an image" in status and "Traceback" not in status
        page.screenshot(path=str(shots / "error.png"), full_page=True)

        # Compare tab: the same image through two models, the object's other affordances beside
        page.get_by_role("tab", name="Compare").click()
        image = next(p for p in registry.examples if len(registry.object_affordances[p.parent.name]) > 1)
        page.set_input_files("#cmp-upload input[type=file]", str(image))
        obj = image.parent.name
        choose(page, "cmp-affordance", image.parent.parent.name)
        choose(page, "cmp-object", obj)  # fills the object's other affordances
        others = [a for a in registry.object_affordances[obj] if a != image.parent.parent.name]
        page.wait_for_function("(n) => document.querySelectorAll('#cmp-others .token').length === n",
                               arg=len(others), timeout=30_000)
        models = list(registry.affordance)
        page.locator("#cmp-models").get_by_label(models[-1]).check()  # the refined variant is not checked first
        page.click("#cmp-run")
        grid = Image.open(io.BytesIO(rendered(page, "#cmp-result img")))
        assert grid.width > (1 + len(others)) * 150 and grid.height > len(models) * 150  # a map per cell
        table = page.locator("#cmp-table table").inner_text()  # rendered as a table, a line per model
        assert all(m in table for m in models)
        page.screenshot(path=str(shots / "compare.png"), full_page=True)

        # HOI tab: boxes, pair lines and verb scores
        page.get_by_role("tab", name="HOI").click()
        page.set_input_files("#hoi-upload input[type=file]", str(registry.hoi_examples[0]))
        t0 = time.perf_counter()
        page.click("#hoi-run")
        drawn = rendered(page, "#hoi-result img")
        timings["click_to_hoi_s"] = time.perf_counter() - t0
        hp = HOIPredictor(hoi_run, detections=registry.hoi["clip4hoi"].detections)
        hp.set_image(registry.hoi_examples[0])
        rows = hp.predict(top_k=5)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(drawn)).convert("RGB")),
                              np.asarray(draw_hoi(hp.image, rows)))
        shown = page.locator("#hoi-rows").inner_text()
        assert all(r["verb"] in shown and f"{r['score']:.4f}" in shown for r in rows)
        page.screenshot(path=str(shots / "hoi.png"), full_page=True)
        browser.close()
    (shots / "timings.json").write_text(json.dumps(timings, indent=1))
    assert "Traceback" not in log.read_text()


def test_answers_keep_only_the_last_requests_files(registry, tiny_run: Path, monkeypatch) -> None:
    from afford.app import registry as reg_module

    monkeypatch.setattr(reg_module, "KEEP_ANSWERS", 3)
    aff = registry.affordance[tiny_run.name].classes[0]
    dirs = [affordance_answer(registry, registry.examples[0], tiny_run.name, aff).files[0].parent for _ in range(5)]
    kept = sorted(registry.answers_root.iterdir())
    assert len(kept) == 3 and dirs[-1] in kept and dirs[0] not in kept and not dirs[0].exists()


def test_answers_folder_goes_with_the_registry(tmp_path: Path, monkeypatch) -> None:
    import gc

    from afford.app.registry import Registry

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    reg = Registry()
    root = reg.answer_dir().parent
    assert root.parent == tmp_path and root.is_dir()
    del reg
    gc.collect()
    assert not root.exists()


def test_app_refuses_to_start_when_no_run_can_be_served(tmp_path: Path, capsys) -> None:
    assert main(["app", "--run", str(tmp_path / "missing")]) == 2
    assert "no run can be served" in capsys.readouterr().err
    assert main(["app", "--demo-out", str(tmp_path)]) == 2  # no demo runs there
    assert "run 'afford demo' first" in capsys.readouterr().err


def test_a_port_in_use_is_one_line_naming_it(tiny_run: Path, capsys) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["app", "--run", str(tiny_run), "--port", str(port)]) == 2
    err = capsys.readouterr()
    assert f"--port {port}" in err.err and "another --port" in err.err and "Traceback" not in err.err
    assert "serving" not in err.out  # not announced before it failed


def test_a_failing_handler_keeps_the_page_serving_with_a_message(caplog) -> None:
    """A user's bad input (AffordError) is shown as it is; a bug is named as an internal error with the
    traceback in the server log, never shown raw; either way the outputs are emptied."""
    import logging

    from afford.app.ui import _in_page

    @_in_page(2)
    def ok(x):
        return x, x + 1

    @_in_page(2)
    def bad_input(x):
        raise AffordError("image: expected an (H, W, 3) array")

    @_in_page(2)
    def bug(x):
        return 1 // x, 0

    assert ok(1) == (1, 2, "")
    assert bad_input(1) == (None, None, "**Error:** image: expected an (H, W, 3) array")
    with caplog.at_level(logging.ERROR):
        assert bug(0) == (None, None, "**Error:** internal error (ZeroDivisionError); the server log has the details")
    assert "bug failed" in caplog.text and "ZeroDivisionError" in caplog.text


def test_a_stopped_server_exits_130_and_leaves_nothing_even_when_signalled_twice(tiny_run: Path, tmp_path: Path) -> None:
    """Gradio swallowed the interrupt (exit 0, where README says 130), and a second signal during its
    cleanup left the uploads in the temp folder; the server now keeps them in a folder of its own."""
    import signal
    import socket
    import subprocess
    import sys

    from afford.app.browser import free_port

    for signals in ((signal.SIGTERM,), (signal.SIGTERM, signal.SIGTERM)):
        tmp = tmp_path / f"tmp{len(signals)}"
        tmp.mkdir()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"} | {"TMPDIR": str(tmp)}
        proc = subprocess.Popen([sys.executable, "-m", "afford.cli", "app", "--run", str(tiny_run), "--port", str(port),
                                 "--host", "0.0.0.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.3)
        own = list(tmp.glob("afford_app_gradio_*"))
        assert len(own) == 1 and any(own[0].rglob("*")), "gradio's example copies go to the server's own folder"
        for s in signals:
            proc.send_signal(s)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "afford: interrupted" in err, err
        assert "--host 0.0.0.0 serves the page (no login)" in err
        assert not [p for p in tmp.rglob("*") if p.is_file()], list(tmp.rglob("*"))


def test_download_names_fit_and_compare_is_honest_about_constant_maps(registry, tiny_run: Path, tmp_path: Path) -> None:
    """A 196-byte upload name cut by Gradio at 200 bytes gave two downloads one name; a 1x1 image gave
    map correlation 1.000 (read: label-blind) for every run; a model chosen twice was computed twice."""
    from afford.app.answers import MAX_NAME_BYTES, download_stem

    name = next(iter(registry.affordance))
    classes = registry.affordance[name].classes
    photo = tmp_path / ("写真" * 32 + ".jpg")
    Image.open(registry.examples[0]).save(photo)
    ans = affordance_answer(registry, photo, name, classes[0], out_dir=tmp_path / "out")
    names = [f.name for f in ans.files]
    assert len(set(names)) == 3 and all(len(n.encode()) <= MAX_NAME_BYTES for n in names)
    assert all(n.startswith(download_stem(photo.stem, len(classes[0]))) for n in names) and "写真" in names[0]
    assert download_stem("é" * 150, 10).encode().decode() == "é" * 88  # cut at a character, not inside one
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (90, 30, 10)).save(one)
    _, table = compare_answer(registry, one, [name, name], classes[0], [classes[1]])
    assert table.count(f"| {name} |") == 1 and "n/a (a constant map)" in table


def test_the_load_message_names_no_server_path() -> None:
    from afford.app.registry import Registry
    from afford.app.ui import _load_message

    reg = Registry(failed={"/srv/afford/runs/hoi": "/srv/afford/runs/hoi: this run reads cached detections and its "
                                                   "test detections file '/srv/data/dets.json' is not here"})
    msg = _load_message(reg)
    assert "`hoi`: hoi: this run reads cached detections and its test detections file 'dets.json' is not here" in msg
    assert "/srv" not in msg


def test_concurrent_answers_keep_their_files(registry, tiny_run: Path) -> None:
    """Eight threads answering at once: a folder was pruned (by modification time) while its answer was
    still being written, and that caller got FileNotFoundError."""
    from concurrent.futures import ThreadPoolExecutor

    aff = registry.affordance[tiny_run.name].classes[0]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: affordance_answer(registry, registry.examples[0], tiny_run.name, aff),
                                range(8)))
    assert all(len(a.files) == 3 for a in answers)
    from afford.app.registry import KEEP_ANSWERS

    alive = [a for a in answers if all(f.is_file() for f in a.files)]
    gone = [a for a in answers if not any(f.exists() for f in a.files)]
    assert len(alive) == KEEP_ANSWERS and len(gone) == 8 - KEEP_ANSWERS  # each folder kept or removed whole
