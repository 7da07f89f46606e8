"""CLIP4HOI through the engine: train / resume / eval / predict on SynthHOI, both detector paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from afford import checkpoint as ckpt
from afford.cli import main
from afford.config import load_config
from afford.engine.trainer import train
from afford.errors import AffordError
from afford.hoi.data import DETR_TRAIN_SCALES, HOIImageSet, collate_hoi, color_jitter, flip_gt, flip_instances
from afford.hoi.detector import Instances, ground_truth_entry, tiny_detr_config
from afford.hoi.hicodet import load_hicodet
from afford.hoi.task import HOITask, hoi_labels, image_set
from afford.hoi.types import ImageGT
from afford.methods.clip4hoi import CLIP4HOI, INTERACTOR_LAYOUT, box_pool
from conftest import HICODET_TEST

TINY = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "eval.batch_size=8",
        "model.image_size=64"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("c4h") / "synthhoi"
    assert main(["data", "synth-hoi", "--out", str(out), "--n-train", "24", "--n-test", "8", "--tile", "64",
                 "--quiet"]) == 0
    return out


def cfg_for(synth: Path, *extra: str):
    return load_config("clip4hoi_synthhoi_demo", [
        f"data.root={synth}", f"model.detections_train={synth}/detections_gt_train2015.json",
        f"model.detections_test={synth}/detections_gt_test2015.json", *TINY, *extra])


# ------------------------------------------------------------------------------------- pieces
def test_box_pool_averages_the_tokens_whose_centres_lie_in_the_box() -> None:
    tokens = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)  # 4x4 grid over a 40x40 image
    boxes = torch.tensor([[0.0, 0.0, 20.0, 10.0],  # centres (5, 5) and (15, 5): cells (0,0), (0,1)
                          [31.0, 31.0, 33.0, 33.0]])  # holds no centre: the cell under its centre (3,3)
    out = box_pool(tokens, boxes, (40, 40))
    assert torch.allclose(out[0], tokens[:, 0, :2].mean(1))
    assert torch.allclose(out[1], tokens[:, 3, 3])


def test_flips_mirror_both_box_conventions_and_are_involutions() -> None:
    gt = ImageGT(np.array([[1.0, 2.0, 10.0, 20.0]]), np.array([[5.0, 5.0, 100.0, 9.0]]), np.array([0]),
                 np.array([0]), np.array([0]))
    f = flip_gt(gt, 100)
    assert f.boxes_h.tolist() == [[91.0, 2.0, 100.0, 20.0]] and f.boxes_o.tolist() == [[1.0, 5.0, 96.0, 9.0]]
    assert flip_gt(f, 100).boxes_h.tolist() == gt.boxes_h.tolist()
    inst = Instances(torch.tensor([[0.0, 1.0, 10.0, 5.0]]), torch.ones(1), torch.zeros(1, dtype=torch.long),
                     torch.ones(1, dtype=torch.bool))
    assert flip_instances(inst, 100).boxes.tolist() == [[90.0, 1.0, 100.0, 5.0]]


def test_ground_truth_entry_lists_each_instance_once_in_detector_coordinates() -> None:
    gt = ImageGT(np.array([[11.0, 11.0, 20.0, 20.0]] * 2), np.array([[1.0, 1.0, 5.0, 5.0]] * 2),
                 np.array([3, 4]), np.array([7, 7]), np.array([0, 1]))
    e = ground_truth_entry(gt, human_label=-1)
    assert e["boxes"] == [[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 5.0, 5.0]] and e["labels"] == [-1, 7]
    assert e["scores"] == [1.0, 1.0]


def test_box_pool_on_a_non_square_image_averages_the_patches_whose_centres_lie_in_the_box() -> None:
    """A 2 x 4 token grid over an (H, W) = (20, 80) image: patch centres at x = 10, 30, 50, 70 and y = 5, 15.
    [0, 0, 40, 10] holds the centres (row 0, columns 0-1); a box holding none takes the patch under its
    centre. With (H, W) swapped the same box would hold no centre."""
    tokens = torch.arange(2 * 8, dtype=torch.float32).reshape(2, 2, 4)  # (E=2, h=2, w=4)
    got = box_pool(tokens, torch.tensor([[0.0, 0.0, 40.0, 10.0], [52.0, 12.0, 58.0, 18.0]]), (20, 80))
    want0 = tokens[:, 0, 0:2].mean(-1)
    want1 = tokens[:, 1, 2]  # centre (55, 15): row 1, column 2
    torch.testing.assert_close(got, torch.stack([want0, want1]))
    assert not torch.allclose(box_pool(tokens, torch.tensor([[0.0, 0.0, 40.0, 10.0]]), (80, 20))[0], want0)


def test_detr_r50_labels_map_to_every_hicodet_object_by_name() -> None:
    from afford.methods.clip4hoi import CLIP4HOIConfig

    labels = hoi_labels(load_hicodet(HICODET_TEST()))
    cfg = CLIP4HOIConfig(clip="tiny_clip", clip_weights=None, detector="detr_r50", detector_weights=None,
                         embed_dim=256, spatial_dim=32, pair_dim=32, heads=2, branches=2, decoder_dim=32,
                         decoder_heads=2, decoder_layers=1)
    model = CLIP4HOI(cfg, labels)
    table = model.label_to_object
    mapped = table[table >= 0]
    assert len(mapped) == 80 and sorted(mapped.tolist()) == list(range(80))
    assert labels.objects[int(table[1])] == "person"  # DETR id 1 is COCO's person
    assert model.cached_human_label == labels.objects.index("person")


# ------------------------------------------------------------------------------------- engine
def test_train_resume_eval_predict_with_cached_detections(synth: Path, tmp_path: Path, capsys) -> None:
    cfg = cfg_for(synth, "train.epochs=2")
    straight = train(cfg, tmp_path / "a", progress=False)
    half = cfg_for(synth, "train.epochs=1")
    train(half, tmp_path / "b", progress=False)
    train(cfg, tmp_path / "b", resume=True, progress=False)  # "killed" after epoch 1, resumed
    wa = load_file(tmp_path / "a" / ckpt.WEIGHTS)
    wb = load_file(tmp_path / "b" / ckpt.WEIGHTS)
    assert straight.epochs_done == 2 and wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["task"] == "hoi" and info["detector"]["kind"] == "cached" and "decoder_layers" in info["unverified"]
    assert info["labels"]["task"] == "hoi" and len(info["labels"]["pairs"]) == 49

    assert main(["hoi", "eval", "--checkpoint", str(tmp_path / "a"), "--quiet", "--json", str(tmp_path / "e.json"),
                 "--save-dets", str(tmp_path / "d.json")]) == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert 0.0 <= e["mAP"]["full"] <= 1.0 and e["n_detections"] > 0 and e["method"] == "clip4hoi"
    # the saved detections score the same through --dets
    assert main(["hoi", "eval", "--dets", str(tmp_path / "d.json"), "--data", str(synth), "--json",
                 str(tmp_path / "e2.json")]) == 0
    assert json.loads((tmp_path / "e2.json").read_text())["mAP"] == e["mAP"]

    img = synth / "images" / "test2015" / "SYNTHHOI_test2015_00000001.jpg"
    assert main(["hoi", "predict", str(img), "--checkpoint", str(tmp_path / "a"), "--out", str(tmp_path / "p"),
                 "--detections", str(synth / "detections_gt_test2015.json"), "--top", "5", "--quiet"]) == 0
    rows = json.loads((tmp_path / "p" / "SYNTHHOI_test2015_00000001_hoi.json").read_text())["triplets"]
    assert 0 < len(rows) <= 5 and rows == sorted(rows, key=lambda r: -r["score"])
    assert (tmp_path / "p" / "SYNTHHOI_test2015_00000001_hoi.png").is_file()
    dets = [d for d in json.loads((tmp_path / "d.json").read_text())["SYNTHHOI_test2015_00000001.jpg"]]
    assert max(d[-1] for d in dets) == pytest.approx(rows[0]["score"], rel=1e-5)  # one inference path


def test_zero_shot_training_records_the_split_and_keeps_unseen_out_of_the_loss(synth: Path, tmp_path: Path,
                                                                              monkeypatch) -> None:
    uc = synth / "zero_shot_uc.json"
    cfg = cfg_for(synth, f"data.split={uc}")
    task = HOITask.from_config(cfg)
    unseen = set(json.loads(uc.read_text()))
    assert set(task.unseen) == unseen
    assert not any(set(g.hoi.tolist()) & unseen for g in task.train_data.annotations)
    torch.manual_seed(0)
    model = CLIP4HOI(cfg.model, task.labels)
    batch = task.collate([task.train_set(cfg)[i] for i in range(4)])  # the trainer's own collate
    assert sorted(batch["unseen"]) == sorted(unseen)
    import afford.methods.clip4hoi as clip4hoi_module

    seen_by_loss = []
    real_loss = clip4hoi_module.interaction_loss

    def spy(logits, priors, y, *args):  # the loss on a leaf copy of the logits, to see its gradient
        leaf = logits.detach().requires_grad_()
        real_loss(leaf, priors, y, *args).backward()
        seen_by_loss.append(leaf.grad)
        return real_loss(logits, priors, y, *args)

    monkeypatch.setattr(clip4hoi_module, "interaction_loss", spy)
    full = model.forward_train(batch, 0)["loss"]
    monkeypatch.undo()
    grad = seen_by_loss[0]  # the split's unseen columns get no gradient at all, the seen ones do
    assert grad[:, sorted(unseen)].abs().max() == 0 and grad.abs().sum() > 0
    none = model.forward_train({**batch, "unseen": tuple(range(len(task.labels)))}, 0)["loss"]
    assert float(full.detach()) > 0 and float(none.detach()) == 0.0  # every class unseen: nothing left to learn from
    train(cfg, tmp_path / "zs", progress=False)
    info = json.loads((tmp_path / "zs" / "run.json").read_text())
    assert sorted(info["unseen"]) == sorted(unseen) and "removed" in info["zero_shot_removal"]


def test_detr_from_a_local_hub_layout_directory_runs_end_to_end(synth: Path, tmp_path: Path, monkeypatch) -> None:
    from transformers import DetrForObjectDetection

    from afford.hoi.detector import DetrDetector

    torch.manual_seed(0)
    config = tiny_detr_config()  # a detector that knows people (id 1) and a SynthHOI object (id 2) by name
    objects = load_hicodet(synth, "train2015").objects
    config.id2label = {i: f"LABEL_{i}" for i in range(config.num_labels)} | {1: "person", 2: objects[0]}
    config.label2id = {}
    DetrForObjectDetection(config).save_pretrained(tmp_path / "detr")
    # A random DETR gives every query the same class; alternate people and objects so pairs exist.
    proposals = DetrDetector._proposals

    def alternating(self, boxes, scores, labels, emb, size):  # noqa: ANN001, ANN202
        return proposals(self, boxes, scores, 1 + torch.arange(len(labels)) % 2, emb, size)

    monkeypatch.setattr(DetrDetector, "_proposals", alternating)
    cfg = cfg_for(synth, "model.detector=tiny_detr", f"model.detector_weights={tmp_path / 'detr'}",
                  "model.instance_tokens=detector", "model.embed_dim=32", "model.detector_short=96",
                  "model.detector_max=128", "model.score_thd=0.1", "model.nms_thd=0.6", "model.min_instances=2",
                  "model.max_instances=12")
    train(cfg, tmp_path / "r", progress=False)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["detector"]["kind"] == "detr" and info["detector"]["weights"] == str(tmp_path / "detr")
    # the config's proposal filter reaches the detector (not its defaults), in training and in the loaded run
    want = {"score_thd": 0.1, "nms_thd": 0.6, "min_instances": 2, "max_instances": 12}
    assert ckpt.load_run(tmp_path / "r").method.detector.thresholds == want
    assert main(["hoi", "eval", "--checkpoint", str(tmp_path / "r"), "--quiet", "--json", str(tmp_path / "e.json"),
                 "--save-dets", str(tmp_path / "d.json")]) == 0
    e = json.loads((tmp_path / "e.json").read_text())
    n_classes = sum(1 for _, o, _ in load_hicodet(synth, "train2015").correspondence.tolist() if o == 0)
    assert e["n_detections"] > 0 and e["n_detections"] % n_classes == 0  # every pair scored on its object's classes
    # hoi predict through the DETR path: the same detections as the evaluation's for that image
    from afford.hoi.predictor import HOIPredictor

    name = "SYNTHHOI_test2015_00000001.jpg"
    hp = HOIPredictor(tmp_path / "r")
    hp.set_image(synth / "images" / "test2015" / name)
    rows = hp.predict(top_k=3)
    dets = sorted(json.loads((tmp_path / "d.json").read_text())[name], key=lambda d: -d[-1])
    assert [r["score"] for r in rows] == pytest.approx([d[-1] for d in dets[:3]], rel=1e-5)
    assert rows[0]["human_box"] == pytest.approx(dets[0][1:5], abs=1e-3)


def test_cached_detections_need_instance_tokens_from_clip() -> None:
    from afford.methods.clip4hoi import CLIP4HOIConfig

    labels = hoi_labels(load_hicodet(HICODET_TEST()))
    with pytest.raises(AffordError, match="instance_tokens=clip_box"):
        CLIP4HOI(CLIP4HOIConfig(clip="tiny_clip", clip_weights=None, detector="cached"), labels)


def test_hoi_commands_refuse_affordance_runs_and_undecodable_images_in_one_line(synth: Path, tmp_path: Path,
                                                                                 capsys) -> None:
    run = tmp_path / "locate_run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"method": "locate", "classes": ["hold"], "config": {},
                                              "labels": {"task": "affordance", "names": ["hold"]}}))
    assert main(["hoi", "eval", "--checkpoint", str(run), "--data", str(synth)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an HOI detector" in err and len(err.splitlines()) == 1
    assert main(["hoi", "predict", str(synth / "zero_shot_uc.json"), "--checkpoint", str(run), "--out",
                 str(tmp_path / "p")]) == 2
    assert "not an HOI detector" in capsys.readouterr().err

    cfg = cfg_for(synth)
    train(cfg, tmp_path / "r", progress=False)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["hoi", "predict", str(bad), "--checkpoint", str(tmp_path / "r"), "--out", str(tmp_path / "p"),
                 "--detections", str(synth / "detections_gt_test2015.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.jpg: not a readable image" in err and len(err.splitlines()) == 1
    train_img = synth / "images" / "train2015" / "SYNTHHOI_train2015_00000000.jpg"
    # without --detections the run's own test detections are read (as hoi eval and the app do)
    for extra in ([], ["--detections", str(synth / "detections_gt_test2015.json")]):
        assert main(["hoi", "predict", str(train_img), "--checkpoint", str(tmp_path / "r"), "--out",
                     str(tmp_path / "p"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "no cached detections for image 'SYNTHHOI_train2015_00000000.jpg'" in err and len(err.splitlines()) == 1
    test_img = synth / "images" / "test2015" / "SYNTHHOI_test2015_00000000.jpg"
    assert main(["hoi", "predict", str(test_img), "--checkpoint", str(tmp_path / "r"), "--out", str(tmp_path / "p"),
                 "--quiet"]) == 0
    assert (tmp_path / "p" / "SYNTHHOI_test2015_00000000_hoi.json").is_file()
    # hoi train of an affordance preset is refused (it trained an affordance model quietly)
    assert main(["hoi", "train", "locate_synthagd_demo", "--out", str(tmp_path / "x")]) == 2
    assert "'afford hoi train' trains HOI detectors" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_training_images_flip_boxes_with_the_image(synth: Path) -> None:
    """A flipped training image flips its GT (human and object boxes) and its cached detections alike."""
    from afford.hoi.task import cached_instances

    cfg = cfg_for(synth)
    task = HOITask.from_config(cfg)
    cached = cached_instances(str(synth / "detections_gt_train2015.json"), task.train_data, "detections_train")
    plain = HOIImageSet(task.train_data, 64, flip=False, cached=cached)
    flipped = HOIImageSet(task.train_data, 64, flip=True, seed=3, cached=cached)
    flipped.set_epoch(0)
    hits = 0
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        if torch.equal(a["image"], b["image"]):
            assert torch.equal(a["instances"].boxes, b["instances"].boxes)
            continue
        hits += 1
        assert torch.allclose(a["image"].flip(-1), b["image"], atol=0.05)  # bicubic resize of a mirror
        w = a["size"][1]
        assert np.allclose(flip_gt(a["gt"], w).boxes_h, b["gt"].boxes_h)
        assert np.allclose(flip_gt(a["gt"], w).boxes_o, b["gt"].boxes_o)
        assert torch.allclose(flip_instances(a["instances"], w).boxes, b["instances"].boxes)
        assert not torch.allclose(a["instances"].boxes, b["instances"].boxes)
    assert 0 < hits < len(plain)


def test_training_images_get_colour_jitter_and_a_detector_scale_per_draw(synth: Path) -> None:
    task = HOITask.from_config(cfg_for(synth))
    plain = HOIImageSet(task.train_data, 64, detector_resize=(800, 1333))
    aug = HOIImageSet(task.train_data, 64, seed=3, detector_resize=(800, 1333), jitter=0.4,
                      detector_scales=DETR_TRAIN_SCALES)
    shorts = set()
    for epoch in (0, 1):
        aug.set_epoch(epoch)
        for i in range(6):
            a, b = plain[i], aug[i]
            assert not torch.equal(a["image"], b["image"])  # jittered colours ...
            assert np.array_equal(a["gt"].boxes_h, b["gt"].boxes_h) and a["size"] == b["size"]  # ... same boxes
            assert min(a["detr"].shape[-2:]) == 800 and max(a["detr"].shape[-2:]) <= 1333
            short = min(b["detr"].shape[-2:])
            assert short in DETR_TRAIN_SCALES
            shorts.add(short)
            assert torch.equal(aug[i]["image"], b["image"])  # a function of (seed, epoch, index)
    assert len(shorts) > 1
    cfg = cfg_for(synth, "model.detector=tiny_detr", "model.instance_tokens=detector")
    test = image_set(task.test_data, cfg, train=False)
    train_set = image_set(task.train_data, cfg, train=True)
    assert (test.jitter, test.detector_scales) == (0.0, ())
    assert (train_set.jitter, train_set.detector_scales) == (0.4, DETR_TRAIN_SCALES)
    img = Image.new("RGB", (8, 8), (200, 30, 90))
    assert np.array_equal(np.asarray(color_jitter(img, 0.0, np.random.default_rng(0))), np.asarray(img))
    with pytest.raises(AffordError, match="model.color_jitter"):
        CLIP4HOI(cfg_for(synth, "model.color_jitter=2").model, task.labels)


def test_affordance_commands_refuse_an_hoi_run_in_one_line(synth: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "hoi_run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"method": "clip4hoi", "classes": ["ride bicycle"], "config": {},
                                              "labels": {"task": "hoi", "names": ["ride bicycle"]}}))
    for argv in (["eval", "--checkpoint", str(run), "--data", str(synth)],
                 ["predict", str(synth / "zero_shot_uc.json"), "--checkpoint", str(run), "--out", str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "HOI detection" in err and "afford hoi" in err and len(err.splitlines()) == 1


def test_prompt_features_are_cached_at_inference_until_the_prompts_change(synth: Path) -> None:
    cfg = cfg_for(synth)
    model = CLIP4HOI(cfg.model, HOITask.from_config(cfg).labels).eval()
    calls = []
    model.prompts.register_forward_hook(lambda *_: calls.append(1))
    a = model.text_features()
    model.eval()
    b = model.text_features()
    assert len(calls) == 1 and a is b  # eval() again does not recompute
    with torch.no_grad():
        model.prompts.prefix.add_(1.0)  # an optimizer step
    c = model.text_features()
    assert len(calls) == 2 and not torch.allclose(a, c)


def test_prompt_cache_is_keyed_by_the_autocast_it_was_computed_under(synth: Path) -> None:
    cfg = cfg_for(synth)
    model = CLIP4HOI(cfg.model, HOITask.from_config(cfg).labels).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.text_features()
    full = model.text_features()
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32  # recomputed, not served the bf16 entry


def test_interaction_logits_are_float32_under_bf16_autocast(synth: Path) -> None:
    model, batch = _seeded_model_and_test_batch(synth)
    with torch.no_grad():
        plain = model._forward(batch, 2.8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model._forward(batch, 2.8)
    for (_, _, a, _), (_, _, b, _) in zip(plain, low, strict=True):
        assert b.dtype == torch.float32 and len(b) > 0
        # bf16 cosine logits would agree with float32 only to ~3 significant digits and tie often; float32
        # ones tie as rarely as the plain pass (1 tie more or less in 734 values for 1 of 20 seeds)
        assert b.flatten().unique().numel() >= a.flatten().unique().numel() - 2


def test_detector_scores_enter_as_upt_priors_exponent_1_in_training_and_2_8_in_detect(synth: Path, monkeypatch) -> None:
    """Each pair's interaction score is sigmoid(logit) * (s_h * s_o)^2.8 at test time; the training loss
    sees the priors at exponent 1 (hoi.md §3.3). Detections with scores other than 1 tell them apart."""
    import dataclasses

    import afford.methods.clip4hoi as clip4hoi_module

    model, batch = _seeded_model_and_test_batch(synth)
    g = torch.Generator().manual_seed(5)
    batch["instances"] = [dataclasses.replace(i, scores=0.3 + 0.6 * torch.rand(len(i), generator=g))
                          for i in batch["instances"]]
    dets = model.detect(batch)
    with torch.no_grad():
        out = model._forward(batch, 1.0)
    n_checked = 0
    for d, (inst, pairs, logit, _) in zip(dets, out, strict=True):
        assert len(d.scores) > 0
        s = inst.scores.double()
        for row, (h, o) in enumerate(pairs.tolist()):
            rows = np.flatnonzero((np.abs(d.boxes_h - inst.boxes[h].double().numpy()).sum(1) < 1e-6)
                                  & (np.abs(d.boxes_o - inst.boxes[o].double().numpy()).sum(1) < 1e-6))
            for r in rows:
                want = torch.sigmoid(logit[row, d.hoi[r]].double()) * (s[h] * s[o]) ** 2.8
                assert float(d.scores[r]) == pytest.approx(float(want), rel=1e-5)
                n_checked += 1
    assert n_checked > 0
    seen: list[torch.Tensor] = []
    real = clip4hoi_module.interaction_loss
    monkeypatch.setattr(clip4hoi_module, "interaction_loss", lambda lg, pr, *a: seen.append(pr) or real(lg, pr, *a))
    model.train().forward_train(batch, 0)
    want = torch.cat([(inst.scores[pairs[:, 0]] * inst.scores[pairs[:, 1]]) for inst, pairs, _, _ in out])
    top = seen[0].amax(1)
    scored = top > 0  # pairs whose object takes some verb of the table
    assert int(scored.sum()) >= 5
    torch.testing.assert_close(top[scored], want.float()[scored])  # exponent 1: the plain product


def test_hoi_predictor_on_a_non_square_image_keeps_its_orientation_and_its_pairs(synth: Path, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """A 40 x 100 (h x w) photo: the batch records (h, w); the decoder's union boxes are the pair boxes over
    [w, h, w, h]; each returned triplet's human box is a person's and its object box the object's."""
    import afford.methods.clip4hoi as clip4hoi_module
    from afford.hoi.predictor import HOIPredictor

    train(cfg_for(synth, "train.max_steps_per_epoch=1"), tmp_path / "run", progress=False)
    hp = HOIPredictor(tmp_path / "run")
    labels = hp.run.labels
    obj = 0 if labels.objects[0] != "person" else 1
    boxes = torch.tensor([[5.0, 2.0, 30.0, 38.0], [60.0, 10.0, 95.0, 30.0]])  # a person left, an object right
    inst = Instances(boxes, torch.tensor([0.9, 0.8]), torch.tensor([len(labels.objects), obj]),
                     torch.tensor([True, False]))
    hp.set_image(np.full((40, 100, 3), 128, dtype=np.uint8), instances=inst)
    assert hp._batch["size"] == [(40, 100)]
    seen = []
    real = clip4hoi_module.union_mask
    monkeypatch.setattr(clip4hoi_module, "union_mask", lambda bh, bo, *a: seen.append((bh, bo)) or real(bh, bo, *a))
    rows = hp.predict(top_k=50)
    scale = torch.tensor([100.0, 40.0, 100.0, 40.0])
    torch.testing.assert_close(seen[0][0][0, 0], boxes[0] / scale)
    torch.testing.assert_close(seen[0][1][0, 0], boxes[1] / scale)
    assert rows and all(r["human_box"] == boxes[0].tolist() and r["object_box"] == boxes[1].tolist() for r in rows)
    assert all(labels.objects[labels.pairs[r["hoi"]][1]] == r["object"] == labels.objects[obj] for r in rows)


def test_global_score_adds_the_image_embeddings_cosine_and_the_union_mask_changes_the_decoder(synth: Path) -> None:
    """hoi.md §3: each pair's logits gain scale * cos(CLIP image embedding, text) of its image (the same for
    every pair of that image); masking the decoder's cross-attention to the pair's union box changes them."""
    import torch.nn.functional as F

    model, batch = _seeded_model_and_test_batch(synth)
    with torch.no_grad():
        model.cfg.global_score = True
        on = model._forward(batch, 2.8)
        model.cfg.global_score = False
        off = model._forward(batch, 2.8)
        glob = model.clip(batch["image"]).cls_token.float()
        scale = model.logit_scale.float().exp().clamp(max=100)
        expected = scale * F.normalize(glob, dim=-1) @ model.text_features().float().T
        model.cfg.union_mask = False
        unmasked = model._forward(batch, 2.8)
    for k, ((_, _, a, _), (_, _, b, _), (_, _, u, _)) in enumerate(zip(on, off, unmasked, strict=True)):
        assert len(a) > 0
        torch.testing.assert_close(a - b, expected[k].expand_as(a), rtol=1e-4, atol=1e-4)
        assert float((u - b).abs().max()) > 1e-4


def test_the_configs_proposal_filter_applies_to_cached_detections(synth: Path) -> None:
    """hoi.md §3.1 on cached (raw) detections with the config's own thresholds: NMS per label, then the
    score threshold, then at most max_instances per group (at least min_instances)."""
    cfg = cfg_for(synth, "model.score_thd=0.5", "model.nms_thd=0.5", "model.min_instances=1",
                  "model.max_instances=2")
    task = HOITask.from_config(cfg)
    torch.manual_seed(0)
    model = CLIP4HOI(cfg.model, task.labels).eval()
    h = [[0, 0, 10, 10], [0, 0, 10, 9], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]  # 2nd: a duplicate
    o = [[0, 20, 10, 30], [20, 20, 30, 30]]
    inst = Instances(torch.tensor(h + o, dtype=torch.float32), torch.tensor([0.9, 0.8, 0.6, 0.55, 0.3, 0.4, 0.2]),
                     torch.tensor([-1] * 5 + [0, 0]), torch.tensor([True] * 5 + [False] * 2))
    batch = {"instances": [inst], "size": [(64, 80)], "image": torch.zeros(1, 3, 64, 64)}
    found = model._instances(batch, torch.zeros(1, model.clip.token_dim, 4, 4))[0]
    people = found.scores[found.is_human].tolist()
    things = found.scores[~found.is_human].tolist()
    assert people == pytest.approx([0.9, 0.6]) and things == pytest.approx([0.4])  # below 0.5: the top 1 kept


def _seeded_model_and_test_batch(synth: Path) -> tuple[CLIP4HOI, dict]:
    """The demo preset's model in eval mode, initialised from seed 0 (not from whatever global RNG state
    earlier tests of this worker left), and a batch of the first two test images with cached detections."""
    cfg = cfg_for(synth)
    task = HOITask.from_config(cfg)
    torch.manual_seed(0)
    model = CLIP4HOI(cfg.model, task.labels).eval()
    images = HOIImageSet(task.test_data, 64, cached=task_cached(task, synth))
    return model, collate_hoi([images[0], images[1]])


def task_cached(task: HOITask, synth: Path) -> list[Instances]:
    from afford.hoi.task import cached_instances

    return cached_instances(str(synth / "detections_gt_test2015.json"), task.test_data, "detections_test")


def test_a_run_of_an_earlier_interactor_layout_is_refused_by_name(synth: Path, tmp_path: Path, capsys) -> None:
    train(cfg_for(synth, "train.max_steps_per_epoch=1"), tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["interactor"] == INTERACTOR_LAYOUT
    ckpt.load_run(tmp_path / "run")  # this version's own run loads
    del info["interactor"]  # as every run written before the UPT layout
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    assert main(["hoi", "eval", "--checkpoint", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "run.json" in err and "earlier afford" in err and "train it again" in err and len(err.splitlines()) == 1
    with pytest.raises(AffordError, match="earlier afford"):  # nor resumed
        train(cfg_for(synth, "train.max_steps_per_epoch=1", "train.epochs=2"), tmp_path / "run", resume=True,
              progress=False)


@pytest.mark.parametrize(("wh", "expected"), [
    ((640, 480), (1066, 800)),  # the long side truncated, as DETR's resize (a rounding gave 1067)
    ((480, 640), (800, 1066)),
    ((200, 1069), (249, 1330)),  # capped: the short side rounded first, then the long side truncated
    ((800, 600), (1066, 800)),
    ((800, 800), (800, 800)),
    ((1000, 800), (1000, 800)),  # the short side is already 800
])
def test_detector_size_is_detrs_rule(wh, expected) -> None:
    from afford.hoi.data import detector_size

    assert detector_size(*wh, 800, 1333) == expected
