"""HICO-DET evaluator (hoi.md §7, §7.1, §12).

There are three kinds of test: hand-built cases whose AP is worked out in the comments, a plain-Python
loop reference written straight from §7/§7.1, and the real test annotations. The reference is
independent of afford's vectorised code: it loops per class, per detection and per GT, with Python
floats, and takes its thresholds from ``torch.linspace`` (pocket's 11P).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from afford.errors import AffordError
from afford.hoi.evaluate import (
    ELEVEN_POINTS,
    _iou_official,
    _iou_pocket,
    eleven_point_ap,
    evaluate_hoi,
)
from afford.hoi.types import ImageDetections, ImageGT
from conftest import HICODET_TEST

REAL = HICODET_TEST()
EPS = 1e-12


# ------------------------------------------------------------------------------------- builders


def img_gt(*pairs: tuple[int, int, list[float], list[float]]) -> ImageGT:
    """pairs: (hoi, object, box_h, box_o), boxes 1-based inclusive."""
    return ImageGT(
        boxes_h=np.array([p[2] for p in pairs], dtype=float).reshape(-1, 4),
        boxes_o=np.array([p[3] for p in pairs], dtype=float).reshape(-1, 4),
        hoi=np.array([p[0] for p in pairs], dtype=np.int64),
        obj=np.array([p[1] for p in pairs], dtype=np.int64),
        verb=np.zeros(len(pairs), dtype=np.int64),
    )


def img_dets(*dets: tuple[int, list[float], list[float], float]) -> ImageDetections:
    """dets: (hoi, box_h, box_o, score), boxes 0-based."""
    return ImageDetections(
        hoi=np.array([d[0] for d in dets], dtype=np.int64),
        boxes_h=np.array([d[1] for d in dets], dtype=float).reshape(-1, 4),
        boxes_o=np.array([d[2] for d in dets], dtype=float).reshape(-1, 4),
        scores=np.array([d[3] for d in dets], dtype=float),
    )


H = [1.0, 1.0, 100.0, 100.0]  # a GT human box (1-based)
H0 = [0.0, 0.0, 99.0, 99.0]  # the same box as a 0-based detection
FAR = [500.0, 500.0, 520.0, 520.0]  # overlaps nothing


def ap1(gt, dets, **kw) -> float:
    """AP of class 0 in a one-class problem."""
    kw.setdefault("num_classes", 1)
    hoi_object = kw.pop("hoi_object", np.zeros(kw["num_classes"], dtype=np.int64))
    return float(evaluate_hoi(gt, dets, hoi_object, **kw).ap[0])


# ------------------------------------------------------------------------------ loop reference


def ref_iou_official(d: list[float], g: list[float]) -> float:
    d = [v + 1 for v in d]
    iw = min(d[2], g[2]) - max(d[0], g[0]) + 1
    ih = min(d[3], g[3]) - max(d[1], g[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    ua = (d[2] - d[0] + 1) * (d[3] - d[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
    return iw * ih / ua


def ref_iou_pocket(d: list[float], g: list[float]) -> float:
    g = [g[0] - 1, g[1] - 1, g[2], g[3]]
    w = max(0.0, min(d[2], g[2]) - max(d[0], g[0]))
    h = max(0.0, min(d[3], g[3]) - max(d[1], g[1]))
    union = (g[2] - g[0]) * (g[3] - g[1]) + (d[2] - d[0]) * (d[3] - d[1]) - w * h
    return w * h / union if union > 0 else 0.0


def ref_ap(flags: list[int], npos: int) -> float:
    if npos == 0:
        return 0.0
    tp = fp = 0
    rec, prec = [], []
    for f in flags:
        tp, fp = tp + f, fp + (1 - f)
        rec.append(tp / npos)
        prec.append(tp / (tp + fp))
    ap = 0.0
    for t in torch.linspace(0, 1, 11, dtype=torch.float64).tolist():
        ps = [p for p, r in zip(prec, rec, strict=True) if r >= t]
        ap += (max(ps) if ps else 0.0) / 11
    return ap


class LoopReference:
    """§7 and §7.1 written as plain loops over Python lists."""

    def __init__(self, gt, dets, hoi_object, mode="default"):
        self.gt = [{k: getattr(g, k).tolist() for k in ("hoi", "obj", "boxes_h", "boxes_o")} for g in gt]
        self.dets = [None if d is None else {k: getattr(d, k).tolist()
                                             for k in ("hoi", "boxes_h", "boxes_o", "scores")} for d in dets]
        self.hoi_object = [int(o) for o in hoi_object]
        self.events = {"gt_tie": 0, "no_fallback": 0}  # how often the subtle rules were exercised
        self.by_class: dict[int, list[tuple[float, int, int]]] = {}
        for i, d in enumerate(self.dets):  # image order, then the order given
            for j, c in enumerate(d["hoi"] if d else []):
                if mode == "known-object" and self.hoi_object[c] not in self.gt[i]["obj"]:
                    continue
                self.by_class.setdefault(c, []).append((d["scores"][j], i, j))

    def gt_of(self, c: int, i: int) -> list[int]:
        return [k for k, h in enumerate(self.gt[i]["hoi"]) if h == c]

    def overlaps(self, c: int, i: int, j: int, iou) -> list[tuple[int, float]]:
        d, g = self.dets[i], self.gt[i]
        return [(k, min(iou(d["boxes_h"][j], g["boxes_h"][k]), iou(d["boxes_o"][j], g["boxes_o"][k])))
                for k in self.gt_of(c, i)]

    def best(self, c: int, i: int, j: int, iou) -> tuple[int | None, float]:
        best, ovmax = None, -math.inf
        for k, ov in self.overlaps(c, i, j, iou):
            if ov > ovmax:
                best, ovmax = k, ov
            elif ov == ovmax and ov >= 0.5:
                self.events["gt_tie"] += 1
        return best, ovmax

    def official_flags(self, c: int) -> list[int]:
        cands = sorted(self.by_class.get(c, []), key=lambda x: -x[0])  # Python's sort is stable
        matched: set[tuple[int, int]] = set()
        flags = []
        for _, i, j in cands:
            k, ov = self.best(c, i, j, ref_iou_official)
            if k is not None and ov >= 0.5 and (i, k) not in matched:
                matched.add((i, k))
                flags.append(1)
            else:
                flags.append(0)
                if k is not None and ov >= 0.5 and any(  # a fall-back would have found a free GT
                        o >= 0.5 and (i, m) not in matched for m, o in self.overlaps(c, i, j, ref_iou_official)):
                    self.events["no_fallback"] += 1
        return flags

    def pocket_flags(self, c: int) -> list[int]:
        label: dict[tuple[int, int], int] = {}
        per_image: dict[int, list[int]] = {}
        for _, i, j in self.by_class.get(c, []):
            per_image.setdefault(i, []).append(j)
        for i, js in per_image.items():  # pocket: per image and class, assign then keep the top score
            assigned: dict[int, list[int]] = {}
            for j in js:
                label[(i, j)] = 0
                k, ov = self.best(c, i, j, ref_iou_pocket)
                if k is not None and ov > 0.5:
                    assigned.setdefault(k, []).append(j)
            for members in assigned.values():
                top = max(members, key=lambda j, i=i: (self.dets[i]["scores"][j], -j))
                label[(i, top)] = 1
        cands = sorted(self.by_class.get(c, []), key=lambda x: -x[0])
        return [label[(i, j)] for _, i, j in cands]

    def ap(self, c: int, rule: str) -> float:
        npos = sum(h == c for g in self.gt for h in g["hoi"])
        flags = self.official_flags(c) if rule == "official" else self.pocket_flags(c)
        return ref_ap(flags, npos)


# ---------------------------------------------------------------------------- hand-built cases


def test_duplicate_detection_is_fp_without_fallback():
    # Two GT pairs share the human. B's object is A's shifted 10 px to the right. Both detections
    # equal A (ov 1 with A, 0.818 with B: inter 90*100, union 11000). det1 takes A. det2's best GT is
    # A, already matched, so det2 is an FP and B is not matched. tp=[1,0], rec=[.5,.5],
    # prec=[1,.5]: the thresholds 0..0.5 give 1, so AP = 6/11. A fall-back to B would give AP 1.
    gt = [img_gt((0, 0, H, [201, 1, 300, 100]), (0, 0, H, [211, 1, 310, 100]))]
    det = (0, H0, [200, 0, 299, 99])
    dets = [img_dets(det[:3] + (0.9,), det[:3] + (0.8,))]
    for rule in ("official", "pocket"):
        assert ap1(gt, dets, rule=rule) == pytest.approx(6 / 11, abs=EPS)
    # B stays free: a third detection that prefers B is a TP (rank 3: rec 1, prec 2/3).
    dets3 = [img_dets(det[:3] + (0.9,), det[:3] + (0.8,), (0, H0, [210, 0, 309, 99], 0.7))]
    assert ap1(gt, dets3) == pytest.approx((6 + 5 * 2 / 3) / 11, abs=EPS)


def test_overlap_exactly_half_is_tp_officially_and_fp_in_pocket():
    # Human: GT [1,1,10,10] (area 100). Detection [0,3,10,12] +1 -> [1,4,11,13] (area 110).
    # Intersection 10*7 = 70, union 140, IoU exactly 0.5. Pocket: GT [0,0,10,10] against
    # [0,3,10,12]: 70/120 = 7/12.
    # Object: GT [1,1,3,4]. Detection [0,0,2,3] +1 equals the GT (IoU 1). Pocket: GT [0,0,3,4]
    # (area 12) against [0,0,2,3] (area 6): exactly 0.5.
    # Official min = 0.5 >= 0.5 gives a TP (AP 1). Pocket min = 0.5, not > 0.5, gives an FP (AP 0).
    gh, go, dh, do = [1, 1, 10, 10], [1, 1, 3, 4], [0, 3, 10, 12], [0, 0, 2, 3]
    one = lambda b: np.array([b], dtype=float)  # noqa: E731
    assert _iou_official(one(gh), one(dh))[0] == 0.5 and _iou_official(one(go), one(do))[0] == 1.0
    assert _iou_pocket(one(gh), one(dh))[0] == 7 / 12 and _iou_pocket(one(go), one(do))[0] == 0.5
    gt, dets = [img_gt((0, 0, gh, go))], [img_dets((0, dh, do, 1.0))]
    assert ap1(gt, dets, rule="official") == pytest.approx(1.0, abs=EPS)
    assert ap1(gt, dets, rule="pocket") == 0.0


def test_plus_one_convention():
    # GT [1,1,3,3] / [5,5,7,7] (1-based, 3x3 pixels). The 0-based detection [0,0,2,2] / [4,4,6,6]
    # +1 equals it, so IoU 1 and a TP. Passing the 1-based box itself shifts it by one pixel:
    # [2,2,4,4] against [1,1,3,3] gives inter 4, union 9+9-4 = 14, IoU 0.29, so an FP.
    gt = [img_gt((0, 0, [1, 1, 3, 3], [5, 5, 7, 7]))]
    assert ap1(gt, [img_dets((0, [0, 0, 2, 2], [4, 4, 6, 6], 1.0))]) == pytest.approx(1.0, abs=EPS)
    assert ap1(gt, [img_dets((0, [1, 1, 3, 3], [5, 5, 7, 7], 1.0))]) == 0.0
    # Inclusive widths: GT [1,1,4,2] (4x2 = 8 px) and detection [0,0,1,1] -> [1,1,2,2] (2x2 = 4 px).
    # IoU 4/8 = 0.5 is a TP. With exclusive widths it would be 1/3.
    gt2 = [img_gt((0, 0, [1, 1, 4, 2], [1, 1, 4, 2]))]
    assert ap1(gt2, [img_dets((0, [0, 0, 1, 1], [0, 0, 1, 1], 1.0))]) == pytest.approx(1.0, abs=EPS)


def test_tied_scores_keep_image_order():
    # One GT in each of two images, and two detections with the same score: an FP in image "a"
    # and a TP in image "b". With a first: FP, TP gives rec [0,.5], prec [0,.5], so 6 thresholds
    # at 0.5 and AP 3/11. With b first: TP, FP gives prec [1,.5] and AP 6/11.
    a = (img_gt((0, 0, H, H)), img_dets((0, FAR, FAR, 0.5)))
    b = (img_gt((0, 0, H, H)), img_dets((0, H0, H0, 0.5)))
    assert ap1([a[0], b[0]], [a[1], b[1]]) == pytest.approx(3 / 11, abs=EPS)
    assert ap1([b[0], a[0]], [b[1], a[1]]) == pytest.approx(6 / 11, abs=EPS)


def test_tied_scores_keep_within_image_order():
    # One GT. Tied detections FP then TP: rec [0,1], prec [0,.5], so AP 0.5. TP then FP: AP 1.
    gt = [img_gt((0, 0, H, H))]
    fp, tp = (0, FAR, FAR, 0.7), (0, H0, H0, 0.7)
    assert ap1(gt, [img_dets(fp, tp)]) == pytest.approx(0.5, abs=EPS)
    assert ap1(gt, [img_dets(tp, fp)]) == pytest.approx(1.0, abs=EPS)
    assert ap1(gt, [img_dets(fp, tp)], rule="pocket") == pytest.approx(0.5, abs=EPS)


def test_class_without_annotation_gets_zero_and_is_counted():
    # Class 0: one TP (AP 1). Class 1: no GT, no detection. Class 2: no GT, one detection.
    # full = (1 + 0 + 0) / 3.
    gt = [img_gt((0, 0, H, H))]
    dets = [img_dets((0, H0, H0, 0.9), (2, H0, H0, 0.8))]
    r = evaluate_hoi(gt, dets, np.array([0, 1, 2]), num_classes=3)
    assert r.ap.tolist() == pytest.approx([1.0, 0.0, 0.0], abs=EPS)
    assert r.n_classes_without_gt == 2 and r.n_gt.tolist() == [1, 0, 0] and r.n_dets.tolist() == [1, 0, 1]
    assert r.map["full"] == pytest.approx(1 / 3, abs=EPS)


def test_known_object_discards_detections_in_images_without_the_object():
    # Classes 0 and 1 share object 0; class 2 has object 1. Image 0 has a class-0 pair, image 1 only
    # a class-2 pair (object 1), image 2 only a class-1 pair (object 0). Class-0 detections:
    # an FP in image 1 (0.9), an FP in image 2 (0.8), a TP in image 0 (0.7).
    # Default: FP, FP, TP gives prec [0,0,1/3], rec [0,0,1], so AP 1/3.
    # KO drops image 1 (no object 0) and keeps image 2 (object 0 through class 1). FP, TP gives AP 1/2.
    gt = [img_gt((0, 0, H, H)), img_gt((2, 1, H, H)), img_gt((1, 0, H, H))]
    dets = [img_dets((0, H0, H0, 0.7)), img_dets((0, FAR, FAR, 0.9)), img_dets((0, FAR, FAR, 0.8))]
    ho = np.array([0, 0, 1])
    d = evaluate_hoi(gt, dets, ho, num_classes=3)
    k = evaluate_hoi(gt, dets, ho, num_classes=3, mode="known-object")
    assert d.ap[0] == pytest.approx(1 / 3, abs=EPS) and k.ap[0] == pytest.approx(0.5, abs=EPS)
    assert d.n_dets[0] == 3 and k.n_dets[0] == 2 and k.n_detections == d.n_detections == 3
    assert "notes" in k.to_dict() and "notes" not in d.to_dict()


def test_thresholds_are_matlab_colon_values():
    # MATLAB 0:0.1:1 = k*0.1 for k <= 5 and 1 - (10-k)*0.1 above. torch.linspace (pocket) agrees.
    # np.linspace does not (0.6000000000000001, 0.7000000000000001).
    assert ELEVEN_POINTS.tolist() == torch.linspace(0, 1, 11, dtype=torch.float64).tolist()
    assert ELEVEN_POINTS[3] == 3 * 0.1 > 3 / 10  # 0.30000000000000004
    assert ELEVEN_POINTS[7] == 7 / 10 < np.linspace(0, 1, 11)[7]
    assert ELEVEN_POINTS[0] == 0.0 and ELEVEN_POINTS[10] == 1.0


def test_eleven_point_on_hand_pr_curve_with_recall_exactly_0_3():
    # npos = 10, ranked TP FP TP TP FP: rec .1 .1 .2 .3 .3, prec 1 .5 2/3 .75 .6.
    # t=0: 1; t=.1: 1; t=.2: .75; t=0.30000000000000004: rec 3/10 falls short, so 0; the rest 0.
    # AP = 2.75/11 = 0.25. With literal tenths, t=.3 would add .75 (3.5/11).
    gt = [img_gt((0, 0, H, H)) for _ in range(10)]
    fp = (0, FAR, FAR)
    dets: list = [None] * 10
    dets[0], dets[9], dets[1], dets[2], dets[3] = (
        img_dets((0, H0, H0, 0.9)), img_dets(fp + (0.8,)), img_dets((0, H0, H0, 0.7)),
        img_dets((0, H0, H0, 0.6)), img_dets(fp + (0.5,)))
    assert ap1(gt, dets) == pytest.approx(0.25, abs=EPS)
    tp = np.array([1, 1, 2, 3, 3])
    assert eleven_point_ap(tp / 10, tp / np.arange(1, 6)) == pytest.approx(0.25, abs=EPS)


def test_eleven_point_recall_exactly_0_7_reaches_0_7():
    # 7 TPs out of 10 GT with precision 1: thresholds 0..0.7 (8 of them) are reached, so AP 8/11.
    # np.linspace's 0.7000000000000001 would give 7/11.
    gt = [img_gt((0, 0, H, H)) for _ in range(10)]
    dets = [img_dets((0, H0, H0, 1.0 - i / 100)) if i < 7 else None for i in range(10)]
    assert ap1(gt, dets) == pytest.approx(8 / 11, abs=EPS)
    assert eleven_point_ap(np.arange(1, 8) / 10, np.ones(7)) == pytest.approx(8 / 11, abs=EPS)


def test_group_means():
    # Class APs [1, 0, 0.5, 1]: class 1 has GT but no detection; class 2 is FP then TP (AP 0.5).
    gt = [img_gt((0, 0, H, H), (1, 0, H, H), (2, 0, H, H), (3, 0, H, H))]
    dets = [img_dets((0, H0, H0, 0.9), (2, FAR, FAR, 0.9), (2, H0, H0, 0.8), (3, H0, H0, 0.5))]
    ho = np.zeros(4, dtype=np.int64)
    r = evaluate_hoi(gt, dets, ho, {"rare": [1, 2], "non_rare": [0, 3]}, num_classes=4)
    assert r.ap.tolist() == pytest.approx([1.0, 0.0, 0.5, 1.0], abs=EPS)
    assert r.map == pytest.approx({"full": 0.625, "rare": 0.25, "non_rare": 1.0}, abs=EPS)
    z = evaluate_hoi(gt, dets, ho, {"unseen": np.array([0, 1]), "seen": [2, 3]}, num_classes=4)
    assert z.map == pytest.approx({"full": 0.625, "unseen": 0.5, "seen": 0.75}, abs=EPS)


def test_to_dict_is_json_ready():
    gt, dets = [img_gt((0, 0, H, H))], [img_dets((0, H0, H0, 0.9))]
    d = evaluate_hoi(gt, dets, np.zeros(2, dtype=np.int64), {"rare": [1]}, num_classes=2).to_dict()
    assert set(d) == {"mode", "rule", "n_images", "n_detections", "mAP", "ap", "n_classes_without_gt",
                      "classes_without_gt", "n_gt"}
    assert json.loads(json.dumps(d)) == d
    assert d["mAP"] == {"full": pytest.approx(0.5, abs=EPS), "rare": 0.0} and d["n_classes_without_gt"] == 1
    assert d["classes_without_gt"] == [1] and d["n_gt"] == [1, 0]  # hoi.md §12: which classes, not only how many


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "ko"}, "unknown evaluation mode"),
        ({"rule": "matlab"}, "unknown matching rule"),
        ({"rule": "pocket", "mode": "known-object"}, "pocket rule has no Known-Object"),
        ({"hoi_object": np.zeros(3, dtype=np.int64)}, r"hoi_object has shape \(3,\)"),
        ({"groups": {"rare": [0, 5]}}, "group 'rare' has class ids outside 0..1"),
        ({"groups": {"rare": []}}, "group 'rare' must be a non-empty"),
        ({"groups": {"full": [0]}}, "reserved"),
    ],
)
def test_bad_options(kwargs, message):
    gt, dets = [img_gt((0, 0, H, H))], [img_dets((0, H0, H0, 0.9))]
    kwargs = {"hoi_object": np.zeros(2, dtype=np.int64), "num_classes": 2} | kwargs
    with pytest.raises(AffordError, match=message):
        evaluate_hoi(gt, dets, **kwargs)


def test_bad_inputs_name_image_and_entry():
    gt = [img_gt((0, 0, H, H)), img_gt((1, 0, H, H))]
    ho = np.zeros(2, dtype=np.int64)
    ok = img_dets((0, H0, H0, 0.9))
    with pytest.raises(AffordError, match="gt has 2 images but dets has 1"):
        evaluate_hoi(gt, [ok], ho, num_classes=2)
    with pytest.raises(AffordError, match=r"detections of image 1, entry 1: HOI class 2 is outside 0..1"):
        evaluate_hoi(gt, [ok, img_dets((0, H0, H0, 0.5), (2, H0, H0, 0.5))], ho, num_classes=2)
    with pytest.raises(AffordError, match=r"detections of image 0, entry 1: score nan is not finite"):
        evaluate_hoi(gt, [img_dets((0, H0, H0, 0.5), (1, H0, H0, math.nan)), None], ho, num_classes=2)
    bad = ImageDetections(np.array([0]), np.zeros((1, 5)), np.zeros((1, 4)), np.ones(1))
    with pytest.raises(AffordError, match=r"detections of image 1: boxes_h has shape \(1, 5\), expected \(1, 4\)"):
        evaluate_hoi(gt, [None, bad], ho, num_classes=2)
    with pytest.raises(AffordError, match=r"ground truth of image 1, entry 0: HOI class 7"):
        evaluate_hoi([gt[0], img_gt((7, 0, H, H))], [None, None], ho, num_classes=2)
    with pytest.raises(AffordError, match="hoi must hold integers"):
        evaluate_hoi(gt, [ImageDetections(np.array([0.0]), np.zeros((1, 4)), np.zeros((1, 4)), np.ones(1)),
                          None], ho, num_classes=2)


# --------------------------------------------------------------------- vectorised == loop reference


def random_boxes(rng: np.random.Generator, n: int, grid: int = 12) -> np.ndarray:
    """Integer 1-based boxes on a coarse grid, so overlaps near 0.5 and exact ties are common."""
    x1, y1 = rng.integers(1, grid, n), rng.integers(1, grid, n)
    return np.stack([x1, y1, x1 + rng.integers(3, 12, n), y1 + rng.integers(3, 12, n)], 1).astype(float)


def jitter(rng: np.random.Generator, boxes: np.ndarray, px: int) -> np.ndarray:
    return boxes - 1 + rng.integers(-px, px + 1, boxes.shape)


def random_case(seed: int, n_images: int = 200, n_classes: int = 20, n_obj: int = 6):
    """GT with shared humans and repeated pairs; detections that are jittered copies, exact duplicates,
    wrong-class copies and random boxes; scores on a 0.1 grid, so ties are many."""
    rng = np.random.default_rng(seed)
    hoi_object = rng.integers(0, n_obj, n_classes)
    gt, dets = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 7))
        hoi = rng.integers(0, n_classes, n)
        bh, bo = random_boxes(rng, n), random_boxes(rng, n)
        if n > 1:
            bh[1:] = np.where(rng.random((n - 1, 1)) < 0.5, bh[:1], bh[1:])  # one human, several objects
            if rng.random() < 0.2:  # the same pair annotated twice: GT argmax ties
                hoi[1], bh[1], bo[1] = hoi[0], bh[0], bo[0]
        gt.append(ImageGT(bh, bo, hoi.astype(np.int64), hoi_object[hoi].astype(np.int64), np.zeros(n, np.int64)))
        k = rng.integers(0, 8, n)
        src = np.repeat(np.arange(n), k)
        d_hoi = hoi[src].copy()
        wrong = rng.random(src.size) < 0.15
        d_hoi[wrong] = rng.integers(0, n_classes, int(wrong.sum()))
        m = int(rng.integers(0, 12))
        d_hoi = np.concatenate([d_hoi, rng.integers(0, n_classes, m)]).astype(np.int64)
        d_h = np.concatenate([jitter(rng, bh[src], 1), random_boxes(rng, m) - 1])
        d_o = np.concatenate([jitter(rng, bo[src], 1), random_boxes(rng, m) - 1])
        scores = rng.integers(0, 10, d_hoi.size) / 10
        dets.append(None if d_hoi.size == 0 and rng.random() < 0.5
                    else ImageDetections(d_hoi, d_h, d_o, scores))
    return gt, dets, hoi_object


@pytest.mark.parametrize(("rule", "mode"), [("official", "default"), ("official", "known-object"),
                                            ("pocket", "default")])
@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_equals_loop_reference(seed, rule, mode):
    gt, dets, ho = random_case(seed)
    assert sum(len(d) for d in dets if d is not None) > 2000
    r = evaluate_hoi(gt, dets, ho, mode=mode, rule=rule, num_classes=20)
    ref = LoopReference(gt, dets, ho, mode)
    expected = [ref.ap(c, rule) for c in range(20)]
    assert r.ap.tolist() == expected  # bit for bit
    assert 0.1 < r.map["full"] < 0.9 and len(set(expected)) > 10
    assert ref.events["gt_tie"] > 0
    if rule == "official":
        assert ref.events["no_fallback"] > 0


def test_chunked_matching_equals_unchunked(monkeypatch):
    import afford.hoi.evaluate as ev

    gt, dets, ho = random_case(3)
    whole = evaluate_hoi(gt, dets, ho, num_classes=20).ap
    monkeypatch.setattr(ev, "_MAX_PAIRS", 7)
    assert evaluate_hoi(gt, dets, ho, num_classes=20).ap.tolist() == whole.tolist()


# -------------------------------------------------------------------------------- real test set


@pytest.fixture(scope="module")
def real():
    data = json.loads(REAL.read_text())  # HICODET_TEST() found it, or collection failed loudly

    def boxes(v):
        return np.asarray(v, dtype=float).reshape(-1, 4)

    gt = [ImageGT(boxes(a["boxes_h"]), boxes(a["boxes_o"]), np.asarray(a["hoi"], dtype=np.int64),
                  np.asarray(a["object"], dtype=np.int64), np.asarray(a["verb"], dtype=np.int64))
          for a in data["annotation"]]
    corr = np.asarray(data["correspondence"], dtype=np.int64)
    assert (corr[:, 0] == np.arange(600)).all()
    return gt, corr[:, 1], {"rare": data["rare"], "non_rare": data["non_rare"]}


def gt_as_detections(gt, shift_x2: float) -> list[ImageDetections]:
    """Each GT pair as a score-1 detection: x1-1, y1-1, and x2 + shift_x2, y2 + shift_x2."""
    shift = np.array([-1.0, -1.0, shift_x2, shift_x2])
    return [ImageDetections(g.hoi.copy(), g.boxes_h + shift, g.boxes_o + shift, np.ones(len(g))) for g in gt]


def test_real_gt_as_detections_is_perfect(real):
    gt, ho, groups = real
    assert len(gt) == 9658 and sum(len(g) for g in gt) == 33405
    pixel = gt_as_detections(gt, -1.0)  # 0-based pixel indices: the official rule's detections
    for mode in ("default", "known-object"):
        r = evaluate_hoi(gt, pixel, ho, groups, mode=mode)
        assert r.map == pytest.approx({"full": 1.0, "rare": 1.0, "non_rare": 1.0}, abs=EPS)
        assert r.n_classes_without_gt == 0 and r.n_dets.sum() == 33405
    # Pocket treats boxes as continuous corners. The same GT in that form (x1-1, y1-1, x2, y2) is perfect.
    corners = gt_as_detections(gt, 0.0)
    assert evaluate_hoi(gt, corners, ho, groups, rule="pocket").map["full"] == pytest.approx(1.0, abs=EPS)
    # Pixel-index detections lose tiny boxes under pocket: a 3x4 box shrinks to IoU (2*3)/12 = 0.5, not > 0.5.
    assert evaluate_hoi(gt, pixel, ho, rule="pocket").map["full"] < 1.0


def perturbed(gt, seed: int = 0) -> list[ImageDetections]:
    """0-to-3 jittered copies per GT pair, exact duplicates, wrong-class copies and random boxes,
    with scores on a 0.01 grid."""
    rng = np.random.default_rng(seed)
    out = []
    for g in gt:
        n = len(g)
        src = np.repeat(np.arange(n), rng.integers(0, 4, n))
        hoi = g.hoi[src].copy()
        wrong = rng.random(src.size) < 0.1
        hoi[wrong] = rng.integers(0, 600, int(wrong.sum()))
        bh = g.boxes_h[src] - 1 + rng.integers(-4, 5, (src.size, 4))
        bo = g.boxes_o[src] - 1 + rng.integers(-4, 5, (src.size, 4))
        dup = rng.random(src.size) < 0.2
        m = int(rng.integers(0, 3))
        xy = rng.uniform(0, 400, (m, 2))
        rand = np.concatenate([xy, xy + rng.uniform(10, 200, (m, 2))], 1)
        hoi = np.concatenate([hoi, hoi[dup], rng.integers(0, 600, m)])
        bh = np.concatenate([bh, bh[dup], rand])
        bo = np.concatenate([bo, bo[dup], rand[::-1]])
        out.append(ImageDetections(hoi.astype(np.int64), bh, bo, rng.integers(0, 100, hoi.size) / 100))
    return out


# Regression values for perturbed(gt, seed=0). The loop reference checks their classes below.
PERTURBED_MAP = {
    ("default", "official"): 0.3705535237900869,
    ("known-object", "official"): 0.583048413833134,
    ("default", "pocket"): 0.3688060909579778,
}


@pytest.mark.parametrize(("mode", "rule"), list(PERTURBED_MAP))
def test_real_perturbed_matches_reference(real, mode, rule):
    gt, ho, groups = real
    dets = perturbed(gt)
    r = evaluate_hoi(gt, dets, ho, groups, mode=mode, rule=rule)
    assert r.map["full"] == pytest.approx(PERTURBED_MAP[(mode, rule)], abs=1e-12)
    classes = np.random.default_rng(1).choice(600, 30, replace=False).tolist()
    ref = LoopReference(gt, dets, ho, mode)
    assert [r.ap[c] for c in classes] == [ref.ap(c, rule) for c in classes]
