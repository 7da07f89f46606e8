"""UPT proposal stage (hoi.md §3.1): NMS, the instance filter, the frozen DETR, cached detections."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from afford.errors import AffordError
from afford.hoi.detector import (
    DetrDetector,
    Instances,
    batched_nms,
    detector_record,
    filter_proposals,
    nms,
    read_cached_detections,
)


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference_nms(boxes: list, scores: list, labels: list, thd: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(labels[i] != labels[k] or _iou(boxes[i], boxes[k]) <= thd for k in keep):
            keep.append(i)
    return keep


def _inst(boxes: list, scores: list, labels: list, human: int = 1) -> Instances:
    lab = torch.tensor(labels)
    emb = torch.arange(len(labels), dtype=torch.float32)[:, None].repeat(1, 2)
    return Instances(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), lab, lab == human, emb)


# ----------------------------------------------------------------------------- NMS
def test_nms_suppresses_overlap_and_orders_by_score() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=torch.float32)
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.7]), 0.5).tolist() == [1, 2]


def test_batched_nms_keeps_different_labels() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9])
    assert batched_nms(boxes, scores, torch.tensor([1, 2]), 0.5).tolist() == [1, 0]
    assert batched_nms(boxes, scores, torch.tensor([3, 3]), 0.5).tolist() == [1]


def test_nms_ties_keep_lower_index() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.8, 0.8, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_nms_iou_equal_to_threshold_is_kept() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 5, 10]], dtype=torch.float32)  # IoU exactly 0.5
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]


def test_batched_nms_matches_python_loop() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        xy = torch.rand(60, 2, generator=g) * 50
        wh = torch.rand(60, 2, generator=g) * 30 + 1
        boxes = torch.cat([xy, xy + wh], 1)
        scores = torch.rand(60, generator=g)
        labels = torch.randint(0, 3, (60,), generator=g)
        ref = _reference_nms(boxes.tolist(), scores.tolist(), labels.tolist(), 0.5)
        assert batched_nms(boxes, scores, labels, 0.5).tolist() == ref
        ref_all = _reference_nms(boxes.tolist(), scores.tolist(), [0] * 60, 0.3)
        assert nms(boxes, scores, 0.3).tolist() == ref_all


# ----------------------------------------------------------------------------- filter
def test_filter_threshold_and_per_class_nms() -> None:
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [40, 40, 50, 50],
             [60, 0, 70, 10], [80, 0, 90, 10], [0, 60, 10, 70], [20, 60, 30, 70]]
    scores = [0.9, 0.8, 0.7, 0.1, 0.6, 0.5, 0.4, 0.3]
    labels = [1, 1, 5, 1, 1, 5, 5, 5]
    out = filter_proposals(_inst(boxes, scores, labels), human_label=1, min_instances=1, max_instances=15)
    # box 1 is suppressed by box 0 (same class); box 2 survives (other class); box 3 is below 0.2
    assert out.embeddings is not None and out.embeddings[:, 0].tolist() == [0, 4, 2, 5, 6, 7]
    assert out.is_human.tolist() == [True, True, False, False, False, False]


def test_filter_clamps_each_group_to_max() -> None:
    boxes = [[i * 20, 0, i * 20 + 10, 10] for i in range(8)]
    scores = [0.3, 0.9, 0.5, 0.8, 0.4, 0.7, 0.6, 0.35]
    labels = [1, 1, 1, 1, 2, 2, 2, 2]
    out = filter_proposals(_inst(boxes, scores, labels), human_label=1, min_instances=1, max_instances=2)
    assert out.embeddings is not None and out.embeddings[:, 0].tolist() == [1, 3, 5, 6]


def test_filter_tops_up_to_min_below_threshold() -> None:
    boxes = [[i * 20, 0, i * 20 + 10, 10] for i in range(7)]
    scores = [0.9, 0.1, 0.15, 0.05, 0.8, 0.7, 0.6]
    labels = [1, 1, 1, 1, 3, 3, 3]
    out = filter_proposals(_inst(boxes, scores, labels), human_label=1, min_instances=3, max_instances=15)
    # one human passes 0.2, so the top three humans are kept regardless of the threshold
    assert out.embeddings is not None and out.embeddings[:, 0].tolist() == [0, 2, 1, 4, 5, 6]
    assert out.scores[:3].tolist() == pytest.approx([0.9, 0.15, 0.1])


def test_filter_rejects_bad_interval() -> None:
    with pytest.raises(AffordError):
        filter_proposals(_inst([[0, 0, 1, 1]], [0.5], [1]), min_instances=5, max_instances=2)


# ----------------------------------------------------------------------------- DETR
@pytest.fixture(scope="module")
def detector() -> DetrDetector:
    torch.manual_seed(0)
    # a random DETR's queries collapse onto one box and class, so NMS is off (IoU never > 1.01)
    return DetrDetector(None, min_instances=3, max_instances=5, score_thd=0.0, nms_thd=1.01)


def _images() -> tuple[torch.Tensor, list[tuple[int, int]]]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 64, 96, generator=g), [(480, 640), (200, 100)]


def test_detr_forward_boxes_inside_and_embeddings(detector: DetrDetector) -> None:
    images, sizes = _images()
    out = detector(images, sizes)
    assert len(out) == 2
    for inst, (h, w) in zip(out, sizes, strict=True):
        assert len(inst) >= 3 and inst.embeddings is not None
        assert inst.embeddings.shape == (len(inst), detector.embed_dim) == (len(inst), 32)
        assert (inst.boxes[:, 0] >= 0).all() and (inst.boxes[:, 2] <= w).all()
        assert (inst.boxes[:, 1] >= 0).all() and (inst.boxes[:, 3] <= h).all()
        assert (inst.boxes[:, 2] >= inst.boxes[:, 0]).all() and (inst.boxes[:, 3] >= inst.boxes[:, 1]).all()
        assert int(inst.is_human.sum()) <= 5 and int((~inst.is_human).sum()) <= 5
        assert len(inst.names) == len(inst) and inst.labels.max() < 91
        assert (inst.is_human == (inst.labels == 1)).all()


def test_detr_heads_and_post_processing_stay_float32_under_bf16_autocast(detector: DetrDetector) -> None:
    images, sizes = _images()
    mask = torch.ones(2, 64, 96, dtype=torch.long)
    ref = detector.model(pixel_values=(images - detector.mean) / detector.std, pixel_mask=mask)
    plain = detector(images, sizes)
    for b, inst in enumerate(plain):  # float32: the same as DetrForObjectDetection's own heads
        probs = ref.logits[b].softmax(-1)[:, :-1].max(-1).values
        assert set(inst.scores.tolist()) <= set(probs.tolist())
    seen = []
    hook = detector.model.bbox_predictor.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = detector(images, sizes)
    finally:
        hook.remove()
    assert seen == [(torch.float32, torch.float32)]  # box regression not rounded to bf16
    assert all(i.boxes.dtype == i.scores.dtype == i.embeddings.dtype == torch.float32 for i in low)


def test_detr_is_frozen_even_in_parent_train(detector: DetrDetector) -> None:
    parent = nn.Sequential(detector, nn.Linear(2, 2))
    parent.train()
    assert not detector.training and not detector.model.training
    assert not any(p.requires_grad for p in detector.parameters())
    assert parent[1].training
    images, sizes = _images()
    a, b = detector(images, sizes), detector(images, sizes)  # deterministic: dropout is off
    assert torch.equal(a[0].boxes, b[0].boxes)


def test_detr_local_directory_round_trip(detector: DetrDetector, tmp_path) -> None:
    detector.model.save_pretrained(tmp_path / "detr")
    loaded = DetrDetector(tmp_path / "detr", min_instances=3, max_instances=5, score_thd=0.0, nms_thd=1.01)
    images, sizes = _images()
    for a, b in zip(detector(images, sizes), loaded(images, sizes), strict=True):
        assert torch.equal(a.labels, b.labels)
        assert torch.allclose(a.boxes, b.boxes) and torch.allclose(a.scores, b.scores)
        assert a.embeddings is not None and b.embeddings is not None
        assert torch.allclose(a.embeddings, b.embeddings)
    record = detector_record(loaded)
    assert record["kind"] == "detr" and record["weights"] == str(tmp_path / "detr")
    assert record["thresholds"]["max_instances"] == 5 and record["thresholds"]["nms_thd"] == 1.01
    json.dumps(record)


def test_detr_rejects_bad_input(detector: DetrDetector, tmp_path) -> None:
    with pytest.raises(AffordError):
        detector(torch.rand(2, 3, 32, 32), [(32, 32)])
    with pytest.raises(AffordError):
        DetrDetector(None, score_threshold=0.3)
    f = tmp_path / "w.pt"
    f.write_bytes(b"")
    with pytest.raises(AffordError):
        DetrDetector(f)


# ----------------------------------------------------------------------------- cached
def test_cached_round_trip(tmp_path) -> None:
    data = {"a.jpg": {"boxes": [[0, 1, 10, 11], [2.5, 3, 4, 5]], "scores": [0.9, 0.3], "labels": [1, 7]},
            "b.jpg": {"boxes": [], "scores": [], "labels": []}}
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(data))
    out = read_cached_detections(path, ["a.jpg", "b.jpg"], human_label=1)
    assert out[0].boxes.tolist() == [[0, 1, 10, 11], [2.5, 3, 4, 5]]
    assert out[0].scores.tolist() == pytest.approx([0.9, 0.3])
    assert out[0].labels.tolist() == [1, 7] and out[0].is_human.tolist() == [True, False]
    assert out[0].embeddings is None and len(out[1]) == 0 and out[1].boxes.shape == (0, 4)
    assert detector_record(path) == {"kind": "cached", "path": str(path), "revision": None, "thresholds": None}


@pytest.mark.parametrize("entry, match", [
    ({"boxes": [[0, 0, 1, 1]], "scores": [0.5, 0.4], "labels": [1]}, "equal length"),
    ({"boxes": [[0, 0, 1, float("nan")]], "scores": [0.5], "labels": [1]}, "finite"),
    ({"boxes": [[0, 0, 1, 1]], "scores": [float("inf")], "labels": [1]}, "finite"),
    ({"boxes": [[5, 0, 1, 1]], "scores": [0.5], "labels": [1]}, "inverted"),
    ({"boxes": [[0, 0, 1]], "scores": [0.5], "labels": [1]}, "x1, y1, x2, y2"),
    ({"boxes": [[0, 0, 1, 1]], "scores": [0.5], "labels": [1.5]}, "integer"),
    ({"boxes": [[0, 0, 1, 1]], "scores": [0.5]}, "labels"),
])
def test_cached_errors_are_one_line(tmp_path, entry: dict, match: str) -> None:
    path = tmp_path / "dets.json"
    path.write_text(json.dumps({"a.jpg": entry}))
    with pytest.raises(AffordError, match=match) as exc:
        read_cached_detections(path, ["a.jpg"], human_label=1)
    assert "\n" not in str(exc.value) and "a.jpg" in str(exc.value)


def test_cached_unknown_image_and_bad_file(tmp_path) -> None:
    path = tmp_path / "dets.json"
    path.write_text(json.dumps({"zz.jpg": {"boxes": [], "scores": [], "labels": []}}))
    with pytest.raises(AffordError, match="zz.jpg") as exc:
        read_cached_detections(path, ["a.jpg"], human_label=1)
    assert "\n" not in str(exc.value)
    for text in ("{not json", "[1, 2]"):
        path.write_text(text)
        with pytest.raises(AffordError) as exc:
            read_cached_detections(path, ["a.jpg"], human_label=1)
        assert "\n" not in str(exc.value)
    with pytest.raises(AffordError, match="does not exist"):
        read_cached_detections(tmp_path / "missing.json", ["a.jpg"], human_label=1)


def test_cached_file_must_cover_every_image_and_name_its_people(tmp_path, caplog) -> None:
    """A missing image is an error (a file for another split or a truncated one would score near 0);
    a file in which no box carries the person label (DETR's COCO id 1 instead of the dataset's index)
    warns, since no pair can be formed."""
    empty = {"boxes": [], "scores": [], "labels": []}
    path = tmp_path / "dets.json"
    path.write_text(json.dumps({"a.jpg": {"boxes": [[0, 1, 10, 11]], "scores": [0.9], "labels": [1]}, "c.jpg": empty}))
    with pytest.raises(AffordError, match=r"no cached detections for 1 of the 3 images \(first: b.jpg\); give every"):
        read_cached_detections(path, ["a.jpg", "b.jpg", "c.jpg"], human_label=1)
    with caplog.at_level("WARNING", logger="afford"):
        read_cached_detections(path, ["a.jpg", "c.jpg"], human_label=1)
        assert not caplog.records
        read_cached_detections(path, ["a.jpg", "c.jpg"], human_label=0)
    assert "no box carries the person label 0" in caplog.text and "COCO id 1" in caplog.text


def test_detr_timm_config_is_one_line_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timm-backed DETR (the hub's default revision) fails in one line naming the way out. Whether
    timm is installed or not, the missing-timm path is forced: transformers raises ImportError there."""
    from transformers import DetrForObjectDetection

    def needs_timm(*args, **kwargs):
        raise ImportError("TimmBackbone requires the timm library but it was not found in your environment.\nSee ...")

    monkeypatch.setattr(DetrForObjectDetection, "from_pretrained", needs_timm)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AffordError, match="needs timm .*revision='no_timm'") as exc:
        DetrDetector(tmp_path)
    assert "\n" not in str(exc.value)


def test_detr_default_thresholds_are_the_spec() -> None:
    det = DetrDetector(None)
    assert det.thresholds == {"score_thd": 0.2, "nms_thd": 0.5, "min_instances": 3, "max_instances": 15}
    assert det.human_label == 1
    assert DetrDetector(None, human_label=7).human_label == 7


def test_cxcywh_boxes_become_pixel_xyxy_of_the_original_frame_clamped() -> None:
    """DETR's normalised (cx, cy, w, h) of an (h, w) = (100, 200) image, worked by hand; a box over the
    border is clamped to the image."""
    from afford.hoi.detector import cxcywh_to_xyxy

    got = cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.05, 0.5, 0.2, 0.2], [0.95, 0.9, 0.2, 0.4]]),
                         (100, 200))
    torch.testing.assert_close(got, torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 40.0, 30.0, 60.0],
                                                  [170.0, 70.0, 200.0, 100.0]]))
