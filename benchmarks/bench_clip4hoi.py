"""Training steps/s and inference images/s of CLIP4HOI, with its frozen floors measured in the same run.

The model at its paper shapes (``CLIP4HOIConfig`` defaults: CLIP ViT-B/16 towers, DETR-R50
detector), random weights (no downloads; prompt ids from the char-level CLIP tokenizer: valid ids, but one
token per character, so the prompts are about twice as long as with CLIP's BPE and the text tower,
which runs only up to the longest prompt's EOT, costs up to about twice what it would with OpenAI's
vocabulary: an upper bound). Labels: HICO-DET's 600 HOI classes (117 verbs,
80 objects) read from the test annotation file when it is found (``--hicodet``), else a made-up
label space of the same size; ``--classes N`` keeps the first N classes.

One synthetic batch at the reference input sizes: ``--batch`` images (default 2, UPT's batch per
GPU) of an original 640x480 (HICO-DET's typical size), CLIP's 224x224 resize and the detector's
resize to short side 800 (long side at most 1333: 1066x800), with 3 random ground-truth pairs
per image (1-based inclusive boxes). A random DETR predicts one class for all its queries, no
"person" and scores far below the 0.2 threshold: its filtered proposals hold no human, so the
model forms no pair and skips the decoder, the classifier and the text tower. So, with
``--detector detr_r50``, DETR runs in full and a forward hook then replaces its proposals by 6
plausible ones per image (the 3 GT humans and 3 GT objects, DETR's COCO ids, the embeddings of
DETR's own kept queries): the cost of everything after DETR is that of a trained detector's ~6
instances, and the loss has positives. ``--detector cached`` skips DETR (``instance_tokens=clip_box``)
and gives each image the same 6 instances as cached detections.

Rows: the training step (``forward_train`` + backward + AdamW step), inference (``model.detect``
under no_grad in eval mode; the prompt features are cached there), and the frozen floors: DETR
alone (per image, as the model calls it), the CLIP image tower alone, and the text tower over
all prompts (``model.prompts()``, with autograd on as in training: the prompts train, so their
features are recomputed every training step), and with ``--prompt-backward`` the prompts'
forward+backward for reference (the text tower's share of the step's backward).
The ratio is the training step over the sum of the frozen forward floors.

Usage::

    python benchmarks/bench_clip4hoi.py [--steps 5] [--batch 2] [--classes N] [--detector detr_r50|cached]
        [--hicodet PATH] [--prompt-backward] [--threads N] [--device cpu|cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afford.backbones.tokenizer import ClipBPETokenizer
from afford.bench import timed
from afford.hoi.data import detector_size
from afford.hoi.detector import Instances
from afford.hoi.types import ImageGT
from afford.labels import LabelSpace
from afford.methods.clip4hoi import CLIP4HOI, CLIP4HOIConfig

HICODET_TEST = Path(__file__).resolve().parents[2] / "shared/data/hicodet/instances_test2015.json"
ORIGINAL = (480, 640)  # (h, w): HICO-DET's typical image
PAIRS_PER_IMAGE = 3


def hoi_label_space(path: Path | None, classes: int) -> tuple[LabelSpace, str]:
    """HICO-DET's label space from its annotation file, else a made-up one of the same size."""
    if path is not None and path.is_file():
        from afford.hoi.hicodet import load_hicodet
        from afford.hoi.task import hoi_labels

        labels, source = hoi_labels(load_hicodet(path)), f"HICO-DET ({path})"
    else:
        verbs = tuple(f"verb{i}" for i in range(117))
        objects = ("person", *(f"object{i}" for i in range(1, 80)))
        pairs = tuple((c % len(verbs), c % len(objects)) for c in range(600))  # distinct: lcm(117, 80) > 600
        names = tuple(f"{verbs[v]} {objects[o]}" for v, o in pairs)
        labels, source = LabelSpace("hoi", names, verbs, objects, pairs), "synthetic (no HICO-DET file)"
    if classes and classes < len(labels.names):
        labels = LabelSpace("hoi", labels.names[:classes], labels.verbs, labels.objects, labels.pairs[:classes])
    return labels, source


def _boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """``n`` random 1-based inclusive boxes inside an ``h x w`` image."""
    x1 = rng.integers(1, w // 2, n)
    y1 = rng.integers(1, h // 2, n)
    x2 = np.minimum(x1 + rng.integers(40, w // 2, n), w)
    y2 = np.minimum(y1 + rng.integers(40, h // 2, n), h)
    return np.stack([x1, y1, x2, y2], 1).astype(np.float64)


def synthetic_batch(labels: LabelSpace, model: CLIP4HOI, b: int, cfg: CLIP4HOIConfig) -> dict[str, Any]:
    """A collate_hoi-format batch: CLIP images, detector images or cached instances, random GT."""
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    h, w = ORIGINAL
    dw, dh = detector_size(w, h, cfg.detector_short, cfg.detector_max)
    person = model.cached_human_label
    gts, instances = [], []
    for _ in range(b):
        hoi = rng.integers(0, len(labels.names), PAIRS_PER_IMAGE)
        verb = np.array([labels.pairs[c][0] for c in hoi], dtype=np.int64)
        obj = np.array([labels.pairs[c][1] for c in hoi], dtype=np.int64)
        gt = ImageGT(_boxes(rng, PAIRS_PER_IMAGE, h, w), _boxes(rng, PAIRS_PER_IMAGE, h, w), hoi.astype(np.int64),
                     obj, verb)
        gts.append(gt)
        # cached detections: the GT humans and objects (0-based: x1 - 1, y1 - 1, x2, y2)
        boxes = torch.from_numpy(np.concatenate([gt.boxes_h, gt.boxes_o])).float()
        boxes[:, :2] -= 1
        lab = torch.cat([torch.full((PAIRS_PER_IMAGE,), person), torch.from_numpy(obj)]).long()
        is_human = torch.arange(2 * PAIRS_PER_IMAGE) < PAIRS_PER_IMAGE
        scores = 0.3 + 0.7 * torch.rand(2 * PAIRS_PER_IMAGE, generator=g)
        instances.append(Instances(boxes, scores, lab, is_human))
    batch: dict[str, Any] = {
        "image": torch.rand(b, 3, cfg.image_size, cfg.image_size, generator=g),
        "unseen": (), "size": [ORIGINAL] * b, "gt": gts, "index": list(range(b)),
        "filename": [f"synthetic_{i}.jpg" for i in range(b)],
        "instances": instances,  # the detector hook's source with detr_r50
    }
    if cfg.detector != "cached":
        batch["detr"] = [torch.rand(3, dh, dw, generator=g) for _ in range(b)]
    return batch


def substitute_proposals(model: CLIP4HOI, batch: dict[str, Any]) -> None:
    """Forward hook on ``model.detector``: after DETR's real forward, its proposals for image
    ``k`` (the model calls the detector once per image, in batch order) become the batch's cached
    instances in DETR's label ids, carrying the embeddings of DETR's kept queries (cycled)."""
    det = model.detector
    assert det is not None
    coco = {n.replace("_", " ").lower(): i for i, n in det.id2label.items()}
    objects = [o.replace("_", " ").lower() for o in model.labels.objects]
    to_coco = torch.tensor([coco.get(o, det.human_label) for o in objects], dtype=torch.long)
    count = [0]

    def hook(module: torch.nn.Module, args: Any, out: list[Instances]) -> list[Instances]:
        k = count[0] % len(batch["instances"])
        count[0] += 1
        src, found = batch["instances"][k], out[0]
        dev = found.boxes.device
        labels = torch.where(src.is_human, torch.full_like(src.labels, det.human_label),
                             to_coco[src.labels.clamp(0, len(objects) - 1)])
        idx = torch.arange(len(src), device=dev) % max(len(found), 1)
        emb = found.embeddings[idx] if found.embeddings is not None and len(found) else None
        return [Instances(src.boxes.to(dev), src.scores.to(dev), labels.to(dev), src.is_human.to(dev), emb)]

    det.register_forward_hook(hook)


def to_device(batch: dict[str, Any], dev: torch.device) -> dict[str, Any]:
    out = dict(batch)
    out["image"] = batch["image"].to(dev)
    if "detr" in batch:
        out["detr"] = [x.to(dev) for x in batch["detr"]]
    return out


def bench(a: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    labels, source = hoi_label_space(Path(a.hicodet) if a.hicodet else None, a.classes)
    cached = a.detector == "cached"
    cfg = CLIP4HOIConfig(clip_weights=None, detector_weights=None, detector_revision=None,
                         detector=a.detector, instance_tokens="clip_box" if cached else "detector")
    # No CLIP vocabulary offline: prompt ids from the char-level scheme (valid ids, same timing).
    cfg.tokenizer = ClipBPETokenizer.char_level()  # type: ignore[assignment]  # a callable goes through
    model = CLIP4HOI(cfg, labels).to(dev)
    params = [p for g in model.param_groups() for p in g.params]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    batch = to_device(synthetic_batch(labels, model, a.batch, cfg), dev)
    if not cached:
        substitute_proposals(model, batch)
    b = a.batch
    bf16 = a.bf16
    last: dict[str, float] = {}

    def autocast() -> torch.autocast:
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        model.train()
        with autocast():
            out = model.forward_train(batch, epoch=0)
        opt.zero_grad(set_to_none=True)
        out["loss"].float().backward()
        opt.step()
        last["positives"] = float(out["positives"])

    def infer() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            dets = model.detect(batch)
        last["detections"] = sum(len(d.hoi) for d in dets) / b

    def detr() -> None:
        assert model.detector is not None
        with torch.no_grad(), autocast():
            for x, s in zip(batch["detr"], batch["size"], strict=True):
                model.detector(x[None], [tuple(s)])

    def clip_image() -> None:
        with torch.no_grad(), autocast():
            model.clip(batch["image"])

    def prompts_fwd() -> None:
        model.train()
        with autocast():
            model.prompts()

    def prompts_fwd_bwd() -> None:
        model.train()
        with autocast():
            feats = model.prompts()
        feats.float().sum().backward()
        model.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # warm-up outside the clock (also tokenises the prompts and warms every tower)
    first = time.perf_counter() - t0
    t_step = timed(step, a.steps, warmup=False)
    # The floors' shapes were all run by the warm-up step, so they need no warm-up of their own.
    floors = {}
    if not cached:
        floors["DETR-R50 forward (per image, as the model runs it)"] = timed(detr, a.steps, warmup=False)
    floors["CLIP image tower forward"] = timed(clip_image, a.steps, warmup=False)
    floors[f"text tower over {len(labels)} prompts forward (autograd on)"] = timed(prompts_fwd, a.steps,
                                                                                   warmup=False)
    t_prompt_bwd = timed(prompts_fwd_bwd, a.steps, warmup=False) if a.prompt_backward else float("nan")
    t_inf = timed(infer, a.steps, warmup=True)  # its warm-up fills the eval-mode prompt cache
    return {"labels": source, "classes": len(labels), "batch": b, "first_step": first, "step": t_step,
            "infer": t_inf, "floors": floors, "prompts_fwd_bwd": t_prompt_bwd,
            "positives": last.get("positives", 0.0), "detections": last.get("detections", 0.0),
            "trainable": sum(p.numel() for p in params)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2, help="images per step (UPT: 2 per GPU)")
    ap.add_argument("--classes", type=int, default=0, help="keep the first N HOI classes (0: all 600)")
    ap.add_argument("--detector", default="detr_r50", choices=["detr_r50", "cached"])
    ap.add_argument("--hicodet", default=str(HICODET_TEST) if HICODET_TEST.is_file() else "",
                    help="HICO-DET annotation JSON for the label space ('' : synthetic labels)")
    ap.add_argument("--prompt-backward", action="store_true",
                    help="also time the prompts' forward+backward through the text tower (slow on CPU)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    r = bench(a, dev)
    print(f"device={dev} threads={torch.get_num_threads()} dtype={'bf16' if a.bf16 else 'fp32'} "
          f"torch={torch.__version__}; detector={a.detector}; labels: {r['labels']}, {r['classes']} classes; "
          f"batch {r['batch']} of 640x480 (CLIP 224x224"
          f"{', DETR 1066x800' if a.detector != 'cached' else ''}); median of {a.steps} after one warm-up "
          f"(first step {r['first_step']:.2f} s); {r['trainable'] / 1e6:.2f} M trainable parameters")
    b = r["batch"]
    print()
    print("| row | s | images/s |")
    print("|---|---:|---:|")
    print(f"| training step (forward_train + backward + AdamW) | {r['step']:.3f} | {b / r['step']:.2f} |")
    print(f"| inference (detect, eval, no_grad) | {r['infer']:.3f} | {b / r['infer']:.2f} |")
    for name, t in r["floors"].items():
        print(f"| floor: {name} | {t:.3f} | {b / t:.2f} |")
    if a.prompt_backward:
        print(f"| ref: text tower over all prompts forward+backward | {r['prompts_fwd_bwd']:.3f} | - |")
    total = sum(r["floors"].values())
    print(f"| sum of frozen forward floors | {total:.3f} | {b / total:.2f} |")
    print()
    print(f"training step / sum of frozen floors: {r['step'] / total:.2f}x; "
          f"inference / (floors without the prompts): "
          f"{r['infer'] / (total - list(r['floors'].values())[-1]):.2f}x; "
          f"share of the step in the prompt forward: {100 * list(r['floors'].values())[-1] / r['step']:.0f}%"
          + (f", in the prompt forward+backward: {100 * r['prompts_fwd_bwd'] / r['step']:.0f}%"
             if a.prompt_backward else ""))
    print(f"positive (pair, class) targets per image in the last step: {r['positives']:.3f}; "
          f"scored detections per image at inference: {r['detections']:.0f}")


if __name__ == "__main__":
    main()
