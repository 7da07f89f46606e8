"""Metrics against the spec's sanity vectors (protocol.md §3.6-§3.7) and an independent,
per-image numpy float64 reference written here from the formulas (not from afford's code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from afford.errors import AffordError
from afford.metrics import (
    MetricAccumulator,
    format_table,
    kld,
    nss,
    prepare_gt,
    prepare_prediction,
    score,
    sim,
)
from afford.metrics.report import format_breakdown, wins_over
from afford.metrics.saliency import protocol_info, resize_bilinear

TOL = 1e-4


# ------------------------------------------------------------------ independent numpy reference
def np_resize(x: np.ndarray, H: int, W: int) -> np.ndarray:
    """Half-pixel bilinear (OpenCV INTER_LINEAR on float), written from the §3.2 formula."""
    h, w = x.shape

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(int)
        i0 = np.minimum(i0, n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, fr = axis(H, h)
    c0, c1, fc = axis(W, w)
    out = np.empty((H, W))
    for i in range(H):
        top = x[r0[i], c0] * (1 - fc) + x[r0[i], c1] * fc
        bot = x[r1[i], c0] * (1 - fc) + x[r1[i], c1] * fc
        out[i] = top * (1 - fr[i]) + bot * fr[i]
    return out


def np_metrics(cam: np.ndarray, gt: np.ndarray, exact: bool = True, protocol: str = "standard") -> tuple[float, float, float]:
    """One image, loops and numpy only: the LOCATE pipeline (``standard``), or §3.5's ``cvag_epoch_eval``
    (min-max before the resize) and ``cvag_plus`` (the map resized to the GT's native size, min-max +1e-12,
    one ε in the NSS denominator)."""
    c = cam.astype(np.float64)
    if protocol == "cvag_epoch_eval":
        p = np_resize((c - c.min()) / (c.max() - c.min() + 1e-10), 224, 224)
    elif protocol == "cvag_plus":
        p = np_resize(c, *gt.shape)
        p = (p - p.min()) / (p.max() - p.min() + 1e-12)
    else:
        p = np_resize(c, 224, 224)
        p = (p - p.min()) / (p.max() - p.min() + 1e-10)
    g = gt.astype(np.float64) / 255.0 if protocol == "cvag_plus" else np_resize(gt.astype(np.float64) / 255.0, 224, 224)
    e = 1e-12
    pn, gn = p / (p.sum() + e), g / (g.sum() + e)
    k = float(np.sum(gn * np.log(gn / (pn + e) + e)))
    s = float(np.sum(np.minimum(pn, gn)))
    pp = p / 255.0
    z = (pp - pp.mean()) / (pp.std() + (0.0 if exact else e))
    gg = g / 255.0
    f = (gg - gg.min()) / (gg.max() - gg.min() + e)
    fix = (f > 0.1).astype(np.float64)
    n = float(np.sum(z * fix) / (np.sum(fix) + e if protocol == "cvag_plus" else np.sum(fix + e)))
    return k, s, n


# ------------------------------------------------------------------ §3.7 inputs
def gauss(h: int, w: int, r0: float, c0: float, sigma: float) -> np.ndarray:
    r, c = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-((r - r0) ** 2 + (c - c0) ** 2) / (2 * sigma**2))


@pytest.fixture(scope="module")
def gt() -> np.ndarray:
    return (gauss(480, 640, 200, 300, 40) * 255).astype(np.uint8)  # truncation, as in §3.7


CAM = gauss(14, 14, 6, 7, 2.5)


def vals(s: dict) -> list[float]:
    return [float(s[k][0]) for k in ("KLD", "SIM", "NSS")]


# ------------------------------------------------------------------ resize
@pytest.mark.parametrize(
    "shape,out",
    [
        ((14, 14), (224, 224)),
        ((7, 9), (224, 224)),
        ((480, 640), (224, 224)),
        ((100, 120), (224, 224)),
        ((14, 14), (480, 640)),
        ((5, 3), (4, 11)),
    ],
)
def test_bilinear_matches_half_pixel_formula(shape, out):
    x = np.random.default_rng(0).random(shape)
    got = resize_bilinear(torch.from_numpy(x)[None], out)[0].numpy()
    assert np.abs(got - np_resize(x, *out)).max() < 1e-13


# ------------------------------------------------------------------ §3.7 sanity vectors
@pytest.mark.parametrize("protocol", ["standard", "cvag_test", "cvag_epoch_eval"])
def test_sanity_gaussian(gt, protocol):
    assert vals(score(CAM, gt, protocol, exact=True)) == pytest.approx([1.1289, 0.3708, 2.2678], abs=TOL)
    assert vals(score(CAM, gt, protocol)) == pytest.approx([1.1289, 0.3708, 2.2678], abs=TOL)


def test_sanity_cvag_plus(gt):
    assert vals(score(CAM, gt, "cvag_plus", exact=True)) == pytest.approx([1.1291, 0.3708, 2.2685], abs=TOL)


def test_sanity_uniform_not_minmaxed(gt):
    G = prepare_gt(gt)
    P = torch.ones(1, 224, 224, dtype=torch.float64)
    assert float(kld(P, G)[0]) == pytest.approx(2.4638, abs=TOL)
    assert float(sim(P, G)[0]) == pytest.approx(0.1372, abs=TOL)
    assert math.isnan(float(nss(P, G, std_eps=0.0)[0]))  # reference
    assert float(nss(P, G)[0]) == 0.0  # ooal_eps default
    s = score(np.ones((224, 224)), gt, minmax_pred=False)
    assert vals(s) == pytest.approx([2.4638, 0.1372, 0.0], abs=TOL)


def test_constant_prediction_after_minmax(gt):
    ref = score(np.full((14, 14), 3.0), gt, exact=True)
    k, s, n = vals(ref)
    assert k == pytest.approx(19.2715, abs=TOL) and s == 0.0 and math.isnan(n)
    assert bool(ref["constant_pred"][0])
    safe = score(np.full((14, 14), 3.0), gt)
    assert vals(safe) == pytest.approx([19.2715, 0.0, 0.0], abs=TOL)
    # cvag_test has no min-max epsilon: 0/0 in the reference, guarded to 0 by default.
    assert all(math.isnan(v) for v in vals(score(np.ones((14, 14)), gt, "cvag_test", exact=True)))
    assert vals(score(np.ones((14, 14)), gt, "cvag_test")) == pytest.approx([19.2715, 0.0, 0.0], abs=TOL)


@pytest.mark.parametrize("protocol", ["standard", "cvag_plus", "cvag_test", "cvag_epoch_eval"])
def test_any_constant_map_is_all_zero_after_minmax_whatever_the_sizes(protocol: str) -> None:
    """§3.6: a constant raw prediction min-maxes to P = 0. The resize left about 1e-16 of rounding on some
    constants and sizes (a 0.25 map at 14 x 14 onto a 50 x 70 GT, a 1 x 1 map onto 480 x 640), which
    min-max and the sum-normalisation blew up into a full map: cvag_plus KLD 0.52 instead of 19.87."""
    rng = np.random.default_rng(0)
    for (h, w), (gh, gw), value in (((14, 14), (50, 70), 0.25), ((1, 1), (480, 640), 3.7), ((7, 9), (33, 128), 0.1)):
        gt = (rng.random((gh, gw)) * 255).astype(np.uint8)
        size = (gh, gw) if protocol == "cvag_plus" else 224
        G = prepare_gt(gt[None], size if protocol != "cvag_plus" else None)
        Gn = G / (G.sum() + 1e-12)
        want_kld = float((Gn * torch.log(Gn / 1e-12 + 1e-12)).sum())
        for exact in (False, True):
            r = score(np.full((h, w), value), gt, protocol, exact=exact)
            if protocol == "cvag_test" and exact:  # no epsilon: 0/0 everywhere
                assert all(math.isnan(v) for v in vals(r))
                continue
            k, s, n = vals(r)
            assert k == pytest.approx(want_kld, rel=1e-12) and s == 0.0 and (math.isnan(n) if exact else n == 0.0)


def test_prediction_equals_gt(gt):
    G = prepare_gt(gt)
    assert float(kld(G, G)[0]) == pytest.approx(-9.19e-9, abs=2e-10)
    assert float(sim(G, G)[0]) == pytest.approx(1.0, abs=1e-14)


def test_all_zero_gt_scores_zero():
    s = score(CAM, np.zeros((60, 80), np.uint8), exact=True)
    assert vals(s) == [0.0, 0.0, 0.0] and bool(s["empty_gt"][0])


def test_negative_checks_rounded_gt_and_swapped_centre(gt):
    rounded = np.round(gauss(480, 640, 200, 300, 40) * 255).astype(np.uint8)
    r = vals(score(CAM, rounded, exact=True))
    assert r == pytest.approx([1.1010, 0.3782, 2.2650], abs=TOL)
    assert abs(r[0] - 1.1289) > 0.01  # rounding vs truncation is visible
    swapped = vals(score(gauss(14, 14, 7, 6, 2.5), gt, exact=True))
    assert swapped == pytest.approx([1.2420, 0.3424, 2.0236], abs=TOL)


def test_gt_positive_rescaling_invariance(gt):
    G = prepare_gt(gt)
    P = prepare_prediction(CAM)
    for f in (1 / 255.0, 3.7, 1000.0):
        for fn in (kld, sim, nss):
            assert float(fn(P, G * f)[0]) == pytest.approx(float(fn(P, G)[0]), rel=1e-9)


# ------------------------------------------------------------------ batched path vs reference
def test_batched_matches_per_image_numpy_reference():
    rng = np.random.default_rng(1)
    cams = [rng.normal(size=s) for s in [(14, 14), (7, 9), (224, 224), (14, 14), (7, 9)]]
    gts = [
        (rng.random(s) ** 3 * 255).astype(np.uint8)
        for s in [(480, 640), (100, 120), (100, 120), (100, 120), (480, 640)]
    ]
    for exact in (True, False):
        s = score(cams, gts, exact=exact)
        for i, (c, g) in enumerate(zip(cams, gts, strict=True)):
            ref = np_metrics(c, g, exact=exact)
            got = [float(s[k][i]) for k in ("KLD", "SIM", "NSS")]
            assert got == pytest.approx(list(ref), rel=1e-10, abs=1e-10)  # NSS sums cancelling z-scores


@pytest.mark.parametrize("protocol", ["cvag_epoch_eval", "cvag_plus"])
def test_other_protocols_match_the_numpy_reference_on_random_maps(protocol):
    """Random CAMs tell the orders apart (a Gaussian gives the same figures either way, §3.7); cvag_plus
    scores GTs of several native sizes in one batch, and on GTs of a few pixels its single-ε NSS
    denominator differs from the per-pixel one by more than the tolerance."""
    rng = np.random.default_rng(4)
    shapes = [(480, 640), (3, 4), (100, 120), (5, 6), (3, 4)]
    cams = [rng.normal(size=s) for s in [(14, 14), (7, 9), (14, 14), (5, 5), (14, 14)]]
    gts = [(rng.random(s) ** 3 * 255).astype(np.uint8) for s in shapes]
    for exact in (True, False):
        s = score(cams, gts, protocol, exact=exact)
        for i, (c, g) in enumerate(zip(cams, gts, strict=True)):
            ref = np_metrics(c, g, exact=exact, protocol=protocol)
            got = [float(s[k][i]) for k in ("KLD", "SIM", "NSS")]
            assert got[:2] == pytest.approx(list(ref[:2]), rel=1e-12)
            if protocol == "cvag_plus" and exact and g.size < 100:  # few native pixels, no std ε: the
                # denominator's ε choice shows at ~4e-12 relative
                assert got[2] == pytest.approx(ref[2], rel=1e-13, abs=0)
            else:  # NSS sums cancelling z-scores over many pixels
                assert got[2] == pytest.approx(ref[2], rel=1e-10, abs=1e-10)
    other = "standard" if protocol == "cvag_epoch_eval" else "cvag_epoch_eval"
    assert float(score(cams[:1], gts[:1], protocol)["KLD"][0]) != pytest.approx(
        np_metrics(cams[0], gts[0], protocol=other)[0], rel=1e-6)


def test_tensor_batch_equals_list():
    rng = np.random.default_rng(2)
    cams = torch.from_numpy(rng.normal(size=(3, 14, 14)))
    gts = torch.from_numpy((rng.random((3, 50, 40)) * 255).astype(np.uint8))
    a, b = score(cams, gts), score(list(cams), list(gts))
    for k in ("KLD", "SIM", "NSS"):
        assert torch.equal(a[k], b[k])


# ------------------------------------------------------------------ PLSP (§4)
def test_plsp_against_hand_reference():
    rng = np.random.default_rng(3)
    logit = rng.normal(size=(14, 14))
    gt = (gauss(60, 80, 20, 30, 8) * 255).astype(np.uint8)
    s = vals(score(logit, gt, "plsp"))
    z = np_resize(logit, 224, 224).ravel()
    p = np.exp(z - z.max())
    p /= p.sum()
    g = np_resize(gt / 255.0, 224, 224).ravel()
    g = g / g.sum()
    nz = g > 0
    k = float(np.sum(g[nz] * np.log(g[nz] / (p[nz] + 1e-10))))
    e = 1e-12
    sm = float(np.sum(np.minimum(p / (p.sum() + e), g / (g.sum() + e))))
    pp, gg = p / p.max(), g / g.max()
    zz = (pp - pp.mean()) / pp.std(ddof=1)
    fix = (gg >= 0.1).astype(float)
    n = float(np.sum(zz * fix) / (fix.sum() + e))
    assert s == pytest.approx([k, sm, n], rel=1e-8)
    # all-zero GT becomes uniform: KLD = KL(uniform || P) > 0, NSS = mean z-score = 0
    e_s = vals(score(logit, np.zeros((30, 30), np.uint8), "plsp"))
    assert e_s[0] == pytest.approx(float(np.sum(np.log((1 / p.size) / (p + 1e-10)) / p.size)), rel=1e-8)
    assert e_s[2] == pytest.approx(0.0, abs=1e-9)


def test_unknown_protocol_is_a_user_error():
    with pytest.raises(AffordError, match=r"protocol: .*did you mean: standard"):
        score(CAM, np.zeros((4, 4), np.uint8), "standrd")
    with pytest.raises(AffordError, match=r"nss: .*did you mean: reference"):
        score(CAM, np.zeros((4, 4), np.uint8), nss="referenc")
    ones = np.ones((4, 4))
    assert math.isnan(float(score(ones, ones, nss="reference")["NSS"][0]))
    assert float(score(ones, ones, exact=True, nss="safe")["NSS"][0]) == 0.0
    assert protocol_info("standard", exact=True)["nss"] == "reference"
    assert protocol_info("standard")["nss"] == "ooal_eps"


def test_score_refuses_gts_it_cannot_score_meaningfully():
    gt = np.zeros((4, 4))
    gt[1, 1] = np.nan  # gave KLD and SIM nan but a finite NSS 0.0
    with pytest.raises(ValueError, match="GT 0 holds nan, inf or negative values"):
        score(CAM, gt)
    with pytest.raises(ValueError, match="GT 0 holds nan"):
        score(CAM, -np.ones((4, 4)))
    with pytest.raises(ValueError, match="GT 0 has dtype torch.uint16; expected uint8"):  # was a torch error
        score(CAM, torch.zeros(4, 4, dtype=torch.uint16))
    with pytest.raises(ValueError, match="no maps to score"):  # was a bare RuntimeError from torch.stack
        score([], [])


# ------------------------------------------------------------------ aggregation
def test_accumulator_means_counts_and_table():
    acc = MetricAccumulator(protocol_info("standard", exact=True))
    acc.add(
        {
            "KLD": torch.tensor([1.0, 2.0]),
            "SIM": torch.tensor([0.5, 0.3]),
            "NSS": torch.tensor([1.0, math.nan]),
            "constant_pred": torch.tensor([False, True]),
        },
        ["hold", "cut"],
        ["cup", "knife"],
        ["a.png", "b.png"],
    )
    acc.add(
        {"KLD": torch.tensor([4.0]), "SIM": torch.tensor([0.1]), "NSS": torch.tensor([2.0])},
        ["hold"],
        ["knife"],
        ["c.png"],
    )
    s = acc.summary()
    assert s["protocol"] == "standard" and s["nss"] == "reference" and s["n_images"] == 3
    assert s["KLD"] == pytest.approx(7 / 3) and s["SIM"] == pytest.approx(0.3)
    assert math.isnan(s["NSS"]) and s["NSS_finite"] == pytest.approx(1.5) and s["n_nan_nss"] == 1
    assert s["n_constant_pred"] == 1 and s["constant_pred_images"] == ["cut/knife/b.png"]
    assert s["per_affordance"]["hold"] == {"n": 2, "KLD": 2.5, "SIM": pytest.approx(0.3), "NSS": 1.5}
    assert s["per_object"]["knife"]["n"] == 2 and s["per_object"]["knife"]["KLD"] == 3.0
    assert s["per_pair"]["hold/knife"] == {"n": 1, "KLD": 4.0, "SIM": pytest.approx(0.1), "NSS": 2.0}
    assert sorted(s["per_pair"]) == ["cut/knife", "hold/cup", "hold/knife"]
    assert acc.per_image()[2]["KLD"] == 4.0 and len(acc) == 3
    table = format_table({"mine": s})
    assert "| mine | standard | reference | 3 | 2.333 | 0.300 | nan | 1 |" in table


def test_breakdown_marks_classes_where_a_row_beats_the_reference_on_both_metrics():
    def summary(per):  # per: class -> (KLD, SIM)
        return {"per_affordance": {c: {"n": 2, "KLD": k, "SIM": m, "NSS": 0.0} for c, (k, m) in per.items()}}

    rows = {"object": summary({"hold": (2.0, 0.2), "pour": (2.0, 0.2), "sip": (1.0, 0.5)}),
            "mine": summary({"hold": (1.5, 0.3), "pour": (1.5, 0.1), "sip": (2.0, 0.6)})}
    assert wins_over(rows, "mine", "object") == ["hold"]  # pour: SIM worse; sip: KLD worse
    table = format_breakdown(rows, "object")
    assert "| hold | 2 | 2.000 | 0.200 | 1.500* | 0.300 |" in table
    assert "| pour | 2 | 2.000 | 0.200 | 1.500 | 0.100 |" in table
    with pytest.raises(KeyError, match="reference row"):
        format_breakdown(rows, "nope")


def test_metric_functions_take_numpy_and_refuse_maps_of_two_shapes() -> None:
    """From an audit of the library: kld(P, G[:1]) scored every map against the first GT by broadcasting,
    a (B, 1, w) prediction gave a negative KLD, numpy arrays were an AttributeError, and a nan prediction
    in score() made every metric nan without a word."""
    from afford.metrics.saliency import kld, nss, plsp_kld, plsp_nss, score, sim

    g = torch.Generator().manual_seed(0)
    P, G = torch.rand(2, 8, 8, generator=g), torch.rand(2, 8, 8, generator=g)
    for fn in (kld, sim, nss, plsp_kld, plsp_nss):
        assert torch.equal(fn(P.numpy(), G.numpy()), fn(P, G))
        for p, gt in ((P, G[:1]), (P[:, :1], G), (P[0, 0], G[0, 0])):
            with pytest.raises(ValueError, match=f"{fn.__name__}: prediction and GT must have one shape"):
                fn(p, gt)
    bad = P.clone()
    bad[0, 0, 0] = float("nan")
    gt8 = (G * 255).to(torch.uint8)
    with pytest.raises(ValueError, match="score: prediction 0 holds nan or inf"):
        score(bad, gt8)
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="score: prediction 0 holds nan or inf"):
        score(bad, gt8)
    with pytest.raises(ValueError, match="score: prediction 1 has dtype torch.bool"):
        score([P[0], P[1] > 0.5], gt8)
