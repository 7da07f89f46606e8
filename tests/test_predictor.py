"""Predictor.set_image: array inputs are validated, never silently cast (a [0, 1] float image is not black)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from afford.checkpoint import LoadedRun
from afford.config import build_config
from afford.errors import AffordError
from afford.factory import create_method
from afford.labels import LabelSpace
from afford.predictor import Predictor

CLASSES = ("hold", "cut_with", "drink_with")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    cfg = build_config("locate", overrides=["model.backbone=tiny_vit", "data.test_size=56"])
    m = create_method("locate", cfg.model, CLASSES)
    return Predictor(LoadedRun(method=m.eval(), labels=LabelSpace.affordances(CLASSES), config=cfg, info={},
                               path=Path("x")))


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)


def test_float_image_in_unit_range_equals_its_uint8_image(predictor):
    u8 = _image()
    predictor.set_image(u8)
    want = predictor.predict()
    for dtype in (np.float32, np.float64):
        predictor.set_image((u8 / 255.0).astype(dtype))
        got = predictor.predict()
        assert set(got) == set(CLASSES)
        for a in CLASSES:
            assert got[a].shape == (40, 48)
            np.testing.assert_array_equal(got[a], want[a])
    # not vacuous: the model's maps depend on the image (the old cast made a [0, 1] image black)
    predictor.set_image(np.zeros_like(u8))
    black = predictor.predict()
    assert any(not np.array_equal(black[a], want[a]) for a in CLASSES)


def test_maps_are_the_cam_resized_to_the_image_then_min_maxed(predictor):
    """What predict returns (and afford predict saves): the method's raw map of the image at the run's test
    size, half-pixel bilinear to the image's own H x W, then min-max with +1e-10 (protocol.md §3.2),
    against a numpy reference of those formulas."""
    from afford.data.transforms import eval_transform
    from test_metrics import np_resize

    u8 = _image()
    predictor.set_image(u8)
    got = predictor.predict("cut_with")["cut_with"]
    x = eval_transform(predictor.image, size=56).unsqueeze(0)
    with torch.no_grad():
        cam = predictor.run.method.predict(x, torch.tensor([CLASSES.index("cut_with")]))[0].double().numpy()
    p = np_resize(cam, 40, 48)
    want = (p - p.min()) / (p.max() - p.min() + 1e-10)
    assert got.dtype == np.float32 and got.shape == (40, 48)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert len(np.unique(got.round(3))) > 50  # a map with structure, not a constant


@pytest.mark.parametrize("bad", [
    _image().astype(np.float32),                      # 0..255 floats: outside [0, 1]
    np.full((8, 8, 3), -0.1, dtype=np.float32),
    np.full((8, 8, 3), np.nan, dtype=np.float64),
])
def test_float_image_outside_unit_range_or_nan_is_an_error(predictor, bad):
    with pytest.raises(AffordError, match=r"image: .*\[0, 1\]"):
        predictor.set_image(bad)


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), dtype=np.int64), np.zeros((8, 8, 3), dtype=bool),
                                 np.zeros((8, 8, 3), dtype=np.uint16)])
def test_other_dtypes_are_an_error(predictor, bad):
    with pytest.raises(AffordError, match=f"image: .*uint8.*{bad.dtype}"):
        predictor.set_image(bad)


def test_wrong_shape_is_an_error(predictor):
    with pytest.raises(AffordError, match="image: expected an \\(H, W, 3\\) array"):
        predictor.set_image(np.zeros((8, 8), dtype=np.uint8))


@pytest.mark.parametrize("method", ["locate", "looptrans"])
def test_all_labels_of_one_image_in_one_pass_equal_one_pass_per_label(method: str) -> None:
    """LOCATE and LoopTrans answer every affordance of one image from one forward (the app's
    "all"); the maps equal asking the image once per label (the default of any method)."""
    from afford.methods.base import Grounder

    torch.manual_seed(0)
    cfg = build_config(method, overrides=["model.backbone=tiny_vit", "data.test_size=56"])
    m = create_method(method, cfg.model, CLASSES).eval()
    image, labels = torch.rand(1, 3, 56, 56), torch.tensor([2, 0, 1, 0])
    with torch.no_grad():
        one_pass = m.predict_labels(image, labels)
        per_label = Grounder.predict_labels(m, image, labels)  # the default: image repeated, predict
    assert one_pass.shape == (4, *per_label.shape[1:])
    torch.testing.assert_close(one_pass, per_label, rtol=1e-5, atol=1e-5)
    pred = Predictor(LoadedRun(method=m, labels=LabelSpace.affordances(CLASSES), config=cfg, info={}, path=Path("x")))
    pred.set_image(_image())
    every = pred.predict()  # the expanded image goes through predict_labels
    for a in CLASSES:
        np.testing.assert_allclose(every[a], pred.predict(a)[a], atol=1e-5)


def test_sixteen_and_thirty_two_bit_greyscale_are_scaled_not_clipped_white(tmp_path: Path) -> None:
    from PIL import Image

    from afford.data.transforms import as_rgb, load_rgb

    grey = np.full((6, 5), 32768, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")  # a 16-bit PNG opens as mode I;16 (or I)
    for im in (load_rgb(tmp_path / "g16.png"), as_rgb(Image.fromarray(grey)),
               as_rgb(Image.fromarray(np.full((6, 5), 0.5, dtype=np.float32)))):
        a = np.asarray(im)
        assert im.mode == "RGB" and a.shape == (6, 5, 3) and abs(a.mean() - 127.5) <= 1  # convert("RGB") gave 255
    rgb = Image.fromarray(_image())
    assert np.array_equal(np.asarray(as_rgb(rgb)), np.asarray(rgb))  # 8-bit images are untouched


def test_hoi_predictor_takes_arrays_by_the_same_rule() -> None:
    from afford.hoi.detector import empty_instances
    from afford.hoi.predictor import HOIPredictor

    hp = HOIPredictor.__new__(HOIPredictor)  # only set_image's conversion is exercised
    captured = {}
    hp.cfg = type("C", (), {"detector": "detr", "image_size": 16, "detector_short": 16, "detector_max": 32})()
    hp.device = torch.device("cpu")
    u8 = _image()
    hp.set_image(u8, instances=empty_instances())
    captured["u8"] = np.asarray(hp.image)
    hp.set_image(u8 / 255.0, instances=empty_instances())
    assert np.array_equal(np.asarray(hp.image), captured["u8"])  # astype(uint8) made it black
    with pytest.raises(AffordError, match=r"image: .*\[0, 1\]"):
        hp.set_image(u8.astype(np.float32), instances=empty_instances())


def _phone_photo(path: Path) -> Path:
    """A 30 x 64 (h x w) JPEG stored sideways, with EXIF orientation 6 (turn 90 degrees clockwise to view)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(30, 64, 3), dtype=np.uint8)).save(path, exif=exif)
    return path


def test_a_path_is_read_upright_as_a_viewer_and_the_app_show_it(predictor, tmp_path: Path) -> None:
    """predict's maps lie on the photo as it is viewed; the datasets' reader keeps the stored pixels."""
    from PIL import Image, ImageOps

    from afford.app.answers import open_image
    from afford.data.transforms import load_rgb

    photo = _phone_photo(tmp_path / "phone.jpg")
    with Image.open(photo) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        stored = np.asarray(im.convert("RGB"))
    assert upright.shape == (64, 30, 3) and stored.shape == (30, 64, 3)
    predictor.set_image(photo)
    got = predictor.predict("hold")["hold"]
    assert got.shape == (64, 30) and np.array_equal(np.asarray(predictor.image), upright)
    predictor.set_image(upright)
    np.testing.assert_array_equal(got, predictor.predict("hold")["hold"])
    assert np.array_equal(np.asarray(open_image(photo)), upright)  # the app: the same image
    assert np.array_equal(np.asarray(load_rgb(photo)), stored)  # datasets: as the references read them


@pytest.mark.parametrize(("detector", "shape"), [("detr", (64, 30, 3)), ("cached", (30, 64, 3))])
def test_hoi_predictor_reads_a_path_upright_unless_cached_boxes_are_in_the_stored_frame(
        tmp_path: Path, detector: str, shape: tuple[int, ...]) -> None:
    from afford.hoi.detector import empty_instances
    from afford.hoi.predictor import HOIPredictor

    hp = HOIPredictor.__new__(HOIPredictor)  # only set_image's reading is exercised
    hp.cfg = type("C", (), {"detector": detector, "image_size": 16, "detector_short": 16, "detector_max": 32})()
    hp.device = torch.device("cpu")
    hp.set_image(_phone_photo(tmp_path / "phone.jpg"), instances=empty_instances())
    assert np.asarray(hp.image).shape == shape and hp._batch["size"] == [shape[:2]]


def test_hoi_predictor_warns_when_no_cached_box_is_a_person(tmp_path: Path, caplog) -> None:
    """Cached labels are the dataset's object indices; a file with DETR's COCO id 1 for people forms no pair."""
    import json
    from types import SimpleNamespace

    from afford.hoi.predictor import HOIPredictor

    (tmp_path / "d.json").write_text(json.dumps({"a.jpg": {"boxes": [[0, 0, 9, 9], [2, 2, 5, 5]], "scores": [0.9, 0.8],
                                                          "labels": [1, 3]}}))
    hp = HOIPredictor.__new__(HOIPredictor)
    hp.cfg = type("C", (), {"detector": "cached", "image_size": 16, "detector_short": 16, "detector_max": 32})()
    hp.device, hp.detections, hp._cached = torch.device("cpu"), tmp_path / "d.json", None
    hp.run = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(root=str(tmp_path))))
    with caplog.at_level("WARNING", logger="afford"):
        hp.model = SimpleNamespace(cached_human_label=1)
        hp.set_image(_image(), name="a.jpg")
        assert not caplog.records
        hp.model = SimpleNamespace(cached_human_label=0)
        hp.set_image(_image(), name="a.jpg")
    assert "image 'a.jpg': no box carries the person label 0" in caplog.text


def test_hoi_predictor_refuses_cached_boxes_out_of_their_image_frame(tmp_path: Path) -> None:
    """Cached boxes are in the dataset image's pixels: a rescaled copy (or a tiny image under the name) got
    them drawn in a corner or past its edge (the app refused it; the library did not)."""
    import json
    from types import SimpleNamespace

    from PIL import Image

    from afford.hoi.predictor import HOIPredictor

    (tmp_path / "d.json").write_text(json.dumps({"a.jpg": {"boxes": [[0, 0, 40, 30], [2, 2, 5, 5]], "scores": [0.9, 0.8],
                                                          "labels": [0, 3]}}))
    hp = HOIPredictor.__new__(HOIPredictor)
    hp.cfg = type("C", (), {"detector": "cached", "image_size": 16, "detector_short": 16, "detector_max": 32})()
    hp.device, hp.detections, hp._cached = torch.device("cpu"), tmp_path / "d.json", None
    hp.model = SimpleNamespace(cached_human_label=0)
    hp.run = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(root=str(tmp_path))))
    hp.set_image(_image(), name="a.jpg")  # 48 x 40, no dataset image here: the boxes fit
    with pytest.raises(AffordError, match=r"d\.json: the cached detections of 'a\.jpg' do not fit a 20 x 20 image"):
        hp.set_image(np.zeros((20, 20, 3), np.uint8), name="a.jpg")
    (tmp_path / "images" / "test2015").mkdir(parents=True)
    Image.fromarray(_image()).save(tmp_path / "images" / "test2015" / "a.jpg")
    hp.set_image(_image(), name="a.jpg")
    with pytest.raises(AffordError, match=r"a\.jpg: 96 x 80, but the dataset's image of this name is 48 x 40"):
        hp.set_image(np.asarray(Image.fromarray(_image()).resize((96, 80))), name="a.jpg")
    with pytest.raises(AffordError, match="top_k is how many triplets"):
        hp.predict(top_k="5")  # type: ignore[arg-type]
    with pytest.raises(AffordError, match="instances must be an afford.hoi.detector.Instances"):
        hp.set_image(_image(), instances=[[0, 0, 5, 5]])  # type: ignore[arg-type]


def test_api_misuse_is_one_line_not_a_torch_error(predictor, tmp_path: Path) -> None:
    with pytest.raises(AffordError, match="predict: no affordance asked for"):
        predictor.set_image(_image())
        predictor.predict([])
    with pytest.raises(AffordError, match=r"set_image: an empty image \(0 x 0 pixels\)"):
        predictor.set_image(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(AffordError, match="set_image: expected a path, a PIL image .* got list"):
        predictor.set_image([tmp_path / "a.png"])
    with pytest.raises(AffordError, match=r": a folder; expected an image file"):
        predictor.set_image(tmp_path)


def test_a_float_image_in_pil_s_0_255_convention_is_not_turned_white() -> None:
    """A 32-bit float TIFF holding 0..255 was read as [0, 1] and clipped: 99.6 % of its pixels at 255."""
    from PIL import Image

    from afford.data.transforms import as_rgb

    ramp = np.linspace(0, 254.98, 40 * 48, dtype=np.float32).reshape(40, 48)
    got = np.asarray(as_rgb(Image.fromarray(ramp, "F")))[..., 0].astype(np.float64)
    np.testing.assert_allclose(got, ramp, atol=0.5)
    unit = np.asarray(as_rgb(Image.fromarray(ramp / 255, "F")))[..., 0].astype(np.float64)  # [0, 1]: as before
    np.testing.assert_allclose(unit, ramp, atol=0.5)
    big = np.asarray(as_rgb(Image.fromarray(ramp * 40, "F")))[..., 0].astype(np.float64)  # own maximum above 255
    np.testing.assert_allclose(big, ramp / ramp.max() * 255, atol=0.5)


def test_library_misuse_is_one_line(predictor, tmp_path: Path) -> None:
    """From an audit of the Python API: each of these was a Python or torch traceback, or silently wrong."""
    import dataclasses

    from afford.checkpoint import load_run

    predictor.set_image(_image())
    for bad in (3, b"hold"):
        with pytest.raises(AffordError, match="predict: "):
            predictor.predict(bad)
    for size in (0, -5, 2.5, True):  # 0 fell back to the default size, -5 failed inside PIL
        with pytest.raises(AffordError, match="Predictor: size is the square side"):
            Predictor(predictor.run, size=size)
    hoi = LabelSpace(task="hoi", names=("hold cup",), verbs=("hold",), objects=("cup",), pairs=((0, 0),))
    with pytest.raises(AffordError, match="detects human-object interactions; use afford.hoi.predictor.HOIPredictor"):
        Predictor(dataclasses.replace(predictor.run, labels=hoi))  # was an AttributeError from torch's Module
    with pytest.raises(AffordError, match="device: unknown device 'gpu'"):
        load_run(tmp_path, device="gpu")
    with pytest.raises(AffordError, match=r"~/no_such_run_here: no run\.json|no_such_run_here"):
        load_run("~/no_such_run_here")
    assert "~" not in str(pytest.raises(AffordError, load_run, "~/no_such_run_here").value)  # ~ expanded
    with pytest.raises(AffordError, match="overrides: a list of 'section.key=value' strings"):
        build_config("locate", overrides="train.epochs=2")  # type: ignore[arg-type]  (was 11 one-letter overrides)


def test_predict_answers_for_one_image_while_another_thread_sets_the_next(predictor) -> None:
    """set_image replaces the image and its tensor together, and predict reads them once: a set_image
    from another thread between the two reads gave the first image's map at the second image's size."""
    small, big = _image(), np.random.default_rng(1).integers(0, 256, size=(70, 30, 3), dtype=np.uint8)
    predictor.set_image(small)
    want = predictor.predict("hold")["hold"]
    cams = predictor._cams

    def set_meanwhile(tensor, names):
        predictor.set_image(big)  # another thread's set_image, while this predict computes
        return cams(tensor, names)

    predictor._cams = set_meanwhile  # type: ignore[method-assign]
    try:
        predictor.set_image(small)
        got = predictor.predict("hold")["hold"]
    finally:
        del predictor._cams
    assert got.shape == small.shape[:2] and np.array_equal(got, want)


def test_loading_a_run_leaves_the_callers_random_draws_alone(tmp_path: Path) -> None:
    """The model is built randomly before its weights are loaded: that draw used the caller's generator."""
    from afford.checkpoint import load_run, save_weights, write_run_info

    cfg = build_config("locate", overrides=["model.backbone=tiny_vit", "data.test_size=56"])
    save_weights(create_method("locate", cfg.model, CLASSES), tmp_path / "model.safetensors")
    write_run_info(tmp_path, cfg, LabelSpace.affordances(CLASSES), {"epochs_done": 1})
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    load_run(tmp_path)
    assert torch.equal(torch.rand(3), want)


def test_thirty_two_bit_images_holding_eight_bit_values_are_not_black() -> None:
    """convert('I') of an 8-bit image keeps 0..255; they were divided by 257 as if 16-bit (a black image)."""
    from PIL import Image

    from afford.data.transforms import as_rgb

    grey = Image.fromarray(_image()[..., 0])
    assert np.array_equal(np.asarray(as_rgb(grey.convert("I"))), np.asarray(as_rgb(grey)))
    sixteen = Image.fromarray(_image()[..., 0].astype(np.int32) * 257)  # mode I holding 16-bit values: as before
    assert sixteen.mode == "I" and np.array_equal(np.asarray(as_rgb(sixteen)), np.asarray(as_rgb(grey)))
