"""Folder / function / baseline evaluation on a hand-made AGD20K tree, and the baseline maps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from afford.baselines import CENTER_SIGMA_FRAC, baseline_map, center, gaussian_blur, object_map
from afford.config import EvalConfig
from afford.data.agd20k import open_split
from afford.engine.evaluator import evaluate_baseline, evaluate_maps, evaluate_prediction_dir
from afford.errors import AffordError
from afford.metrics import score

# (affordance, object, name, (H, W), GT peak (r, c) or None for an all-zero GT)
ITEMS = [
    ("cut", "knife", "k1", (30, 40), (10, 12)),
    ("hold", "cup", "c1", (40, 50), (20, 25)),
    ("hold", "cup", "c2", (24, 24), (5, 18)),
    ("hold", "knife", "k2", (36, 28), None),
]


def gauss(h: int, w: int, r0: float, c0: float, sigma: float) -> np.ndarray:
    r, c = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-((r - r0) ** 2 + (c - c0) ** 2) / (2 * sigma**2))


def gt_array(shape: tuple[int, int], peak: tuple[int, int] | None) -> np.ndarray:
    if peak is None:
        return np.zeros(shape, np.uint8)
    return (gauss(*shape, *peak, 4.0) * 255).astype(np.uint8)


def mask_array(shape: tuple[int, int], peak: tuple[int, int] | None) -> np.ndarray:
    r0, c0 = peak or (shape[0] // 2, shape[1] // 2)
    m = np.zeros(shape, np.uint8)
    m[max(0, r0 - 6) : r0 + 6, max(0, c0 - 8) : c0 + 8] = 255
    return m


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AFFORD_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data" / "Mini"
    (root / "afford_classes.json").parent.mkdir(parents=True)
    (root / "afford_classes.json").write_text(
        json.dumps({"affordances": ["cut", "hold"], "objects": ["cup", "knife"]})
    )
    rng = np.random.default_rng(0)
    exo = root / "trainset" / "exocentric" / "hold" / "cup"
    exo.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(exo / "e1.jpg")
    for aff, obj, name, (h, w), peak in ITEMS:
        ego = root / "testset" / "egocentric" / aff / obj
        gt = root / "testset" / "GT" / aff / obj
        masks = tmp_path / "data" / "extras" / "Mini" / "masks" / aff / obj
        for d in (ego, gt, masks):
            d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(ego / f"{name}.jpg")
        Image.fromarray(gt_array((h, w), peak)).save(gt / f"{name}.png")
        Image.fromarray(mask_array((h, w), peak)).save(masks / f"{name}_object.png")
    # an egocentric image without GT is not a test item
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(
        root / "testset/egocentric/hold/cup/nogt.jpg"
    )
    return root


def pred_for(
    aff: str, obj: str, name: str, shape: tuple[int, int], peak: tuple[int, int] | None
) -> np.ndarray:
    """A deterministic 'model output' at CAM resolution, off-centre from the GT."""
    r0, c0 = peak or (3, 3)
    return gauss(7, 9, r0 * 7 / shape[0] + 0.5, c0 * 9 / shape[1] - 0.5, 1.5)


PREDS = {f"{a}/{o}/{n}": pred_for(a, o, n, s, p) for a, o, n, s, p in ITEMS}


def expected_rows(exact: bool = False) -> dict[str, list[float]]:
    out = {}
    for a, o, n, s, p in ITEMS:
        r = score(PREDS[f"{a}/{o}/{n}"], gt_array(s, p), exact=exact)
        out[f"{a}/{o}/{n}"] = [float(r[k][0]) for k in ("KLD", "SIM", "NSS")]
    return out


def test_evaluate_maps_per_image_and_mean(tree: Path):
    split = open_split(tree.parent, "Mini")
    s = evaluate_maps(
        split, lambda it: PREDS[f"{it.affordance}/{it.object}/{it.name}"], EvalConfig(batch_size=3), progress=False
    )
    exp = expected_rows()
    assert (
        s["n_images"] == 4 and s["split"] == "Mini" and s["protocol"] == "standard" and s["nss"] == "ooal_eps"
    )
    for row in s["per_image"]:
        got = [row["KLD"], row["SIM"], row["NSS"]]
        assert got == pytest.approx(exp[f"{row['affordance']}/{row['object']}/{row['name']}"], rel=1e-12)
    for i, m in enumerate(("KLD", "SIM", "NSS")):
        assert s[m] == pytest.approx(sum(v[i] for v in exp.values()) / 4, rel=1e-12)
    # the all-zero GT is kept (literature choice) and scores exactly 0 / 0 / 0
    k2 = next(r for r in s["per_image"] if r["name"] == "k2")
    assert (k2["KLD"], k2["SIM"], k2["NSS"]) == (0.0, 0.0, 0.0) and s["n_empty_gt"] == 1
    assert s["per_affordance"]["hold"]["n"] == 3 and s["per_object"]["knife"]["n"] == 2
    assert s["empty_gt"] == "kept"
    ex = evaluate_maps(
        split,
        lambda it: PREDS[f"{it.affordance}/{it.object}/{it.name}"],
        EvalConfig(exclude_empty_gt=True),
        progress=False,
    )
    assert ex["n_images"] == 3 and ex["n_excluded"] == 1 and ex["empty_gt"] == "excluded"
    assert ex["KLD"] == pytest.approx(
        sum(v[0] for k, v in exp.items() if not k.endswith("k2")) / 3, rel=1e-12
    )


def test_constant_prediction_reference_vs_safe(tree: Path):
    split = open_split(tree.parent, "Mini")
    ref = evaluate_maps(split, lambda it: np.ones((5, 5)), EvalConfig(exact=True), progress=False)
    safe = evaluate_maps(split, lambda it: np.ones((5, 5)), progress=False)
    assert math.isnan(ref["NSS"]) and ref["n_nan_nss"] == 4 and ref["nss"] == "reference"
    assert safe["NSS"] == 0.0 and safe["n_nan_nss"] == 0 and safe["n_constant_pred"] == 4


def test_map_fn_must_return_finite_2d(tree: Path):
    split = open_split(tree.parent, "Mini")
    with pytest.raises(AffordError, match=r"k1\.jpg: expected a 2-D"):
        evaluate_maps(split, lambda it: np.ones((2, 3, 3)), progress=False)
    with pytest.raises(AffordError, match="nan or inf"):
        evaluate_maps(split, lambda it: np.full((3, 3), np.nan), progress=False)


def write_preds(pred: Path, fmt: str) -> None:
    for key, m in PREDS.items():
        (pred / key).parent.mkdir(parents=True, exist_ok=True)
        if fmt == "npy":
            np.save(pred / f"{key}.npy", m)
        else:  # an RGB png must be read as 8-bit grayscale
            Image.fromarray((m / m.max() * 255).astype(np.uint8)).convert("RGB").save(pred / f"{key}.png")


def test_prediction_dir_npy_equals_maps_and_reports_extras(tree: Path, tmp_path: Path):
    pred = tmp_path / "pred"
    write_preds(pred, "npy")
    (pred / "notes.txt").write_text("x")
    (pred / "hold" / "cup" / "nogt.npy").parent.mkdir(parents=True, exist_ok=True)
    np.save(pred / "hold" / "cup" / "nogt.npy", np.ones((2, 2)))
    split = open_split(tree.parent, "Mini")
    s = evaluate_prediction_dir(pred, split, EvalConfig(exact=True), progress=False)
    exp = expected_rows(exact=True)
    assert s["KLD"] == pytest.approx(sum(v[0] for v in exp.values()) / 4, rel=1e-12)
    assert s["extra_files"] == ["hold/cup/nogt.npy", "notes.txt"] and s["n_extra_files"] == 2


def test_prediction_dir_png_is_grayscale(tree: Path, tmp_path: Path):
    pred = tmp_path / "pred"
    write_preds(pred, "png")
    split = open_split(tree.parent, "Mini")
    s = evaluate_prediction_dir(pred, split, progress=False)
    quant = [
        score((m / m.max() * 255).astype(np.uint8), gt_array(sh, p))["SIM"][0].item()
        for (a, o, n, sh, p), m in zip(ITEMS, PREDS.values(), strict=True)
    ]
    assert s["SIM"] == pytest.approx(sum(quant) / 4, rel=1e-12)


def test_prediction_dir_errors(tree: Path, tmp_path: Path):
    split = open_split(tree.parent, "Mini")
    pred = tmp_path / "pred"
    with pytest.raises(AffordError, match="prediction folder not found"):
        evaluate_prediction_dir(pred, split, progress=False)
    write_preds(pred, "npy")
    (pred / "hold/cup/c2.npy").unlink()
    with pytest.raises(AffordError, match=r"hold/cup/c2\.png: missing prediction .*1 of 4"):
        evaluate_prediction_dir(pred, split, progress=False)
    (pred / "hold/cup/c2.png").write_bytes(b"not a png")
    with pytest.raises(AffordError, match=r"c2\.png: not a readable prediction"):
        evaluate_prediction_dir(pred, split, progress=False)
    np.save(pred / "hold/cup/c2.npy", np.ones((3, 3)))
    with pytest.raises(AffordError, match="ambiguous prediction"):
        evaluate_prediction_dir(pred, split, progress=False)
    (pred / "hold/cup/c2.png").unlink()
    np.save(pred / "hold/cup/c2.npy", np.full((3, 3), np.inf))
    with pytest.raises(AffordError, match=r"c2\.npy: heatmap contains nan"):
        evaluate_prediction_dir(pred, split, progress=False)


# ----------------------------------------------------------------------------- baselines
def test_center_and_object_maps_by_hand():
    c = center(5, 8)
    assert c[2, 3] == pytest.approx(math.exp(-0.5 * (0.5 / (CENTER_SIGMA_FRAC * 8)) ** 2))
    assert c[0, 0] == pytest.approx(math.exp(-0.5 * ((2 / 1.25) ** 2 + (3.5 / 2) ** 2)))
    assert np.allclose(c, c[::-1, ::-1])
    impulse = np.zeros((21, 21))
    impulse[10, 10] = 1.0
    b = gaussian_blur(impulse, 2.0)
    k = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    k /= k.sum()
    assert np.allclose(b[4:17, 4:17], np.outer(k, k), atol=1e-15) and b.sum() == pytest.approx(1.0)
    m = np.zeros((100, 100), np.uint8)
    m[30:70, 20:60] = 255
    om = object_map(m)
    assert om.max() == pytest.approx(1.0) and om[50, 40] == pytest.approx(1.0) and om[5, 90] < 1e-12
    assert 0.4 < om[50, 20] < 0.6  # half-height at the mask edge
    with pytest.raises(AffordError, match="baseline: .*did you mean: center"):
        baseline_map("centre", 4, 4)


def test_evaluate_baselines(tree: Path):
    split = open_split(tree.parent, "Mini")
    u = evaluate_baseline("uniform", split, progress=False)
    exp_u = [score(np.ones(s), gt_array(s, p), minmax_pred=False)["KLD"][0].item() for *_, s, p in ITEMS]
    assert u["KLD"] == pytest.approx(sum(exp_u) / 4, rel=1e-12) and u["prediction_minmax"] is False
    assert u["baseline"] == "uniform" and u["n_constant_pred"] == 4
    c = evaluate_baseline("center", split, progress=False)
    exp_c = [score(center(*s), gt_array(s, p))["SIM"][0].item() for *_, s, p in ITEMS]
    assert c["SIM"] == pytest.approx(sum(exp_c) / 4, rel=1e-12)
    o = evaluate_baseline("object", split, progress=False)
    exp_o = [score(object_map(mask_array(s, p)), gt_array(s, p))["KLD"][0].item() for *_, s, p in ITEMS]
    assert o["KLD"] == pytest.approx(sum(exp_o) / 4, rel=1e-12)
    assert o["KLD"] < c["KLD"] < u["KLD"]  # masks sit on the GT peaks here


def test_object_baseline_without_masks_is_clear(tree: Path):
    import shutil

    (tree.parent / "extras/Mini/masks/hold/cup/c1_object.png").unlink()
    split = open_split(tree.parent, "Mini")
    with pytest.raises(AffordError, match=r"c1\.jpg: no object mask .*1 of 4 missing"):
        evaluate_baseline("object", split, progress=False)
    shutil.rmtree(tree.parent / "extras")
    with pytest.raises(AffordError, match="baseline 'object' needs object masks"):
        evaluate_baseline("object", split, progress=False)
