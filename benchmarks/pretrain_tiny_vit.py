"""A tiny ViT pretrained on the *object* labels of other SynthAGD worlds: does a backbone whose
features know objects make WSMA and SelectiveCL beat the non-oracle baselines in the demo?

The offline demo's rows run on a frozen *random* tiny ViT (no pretrained weights can be
downloaded). This script builds the stand-in for ImageNet-style pretraining that the research
notes (docs/research-notes.md, "A backbone that knows objects") measure: the demo's ``tiny_vit``
architecture trained to name the object (16 categories) of every training image, egocentric and
exocentric, of SynthAGD worlds ``--seeds`` (default 1, 2, 3; the demo's world is seed 0, never
seen here). Classification from the CLS token, random square crops of 62-100 % of the side and flips,
AdamW with a one-cycle schedule; 300 images held out for the accuracy line. It writes a
``save_pretrained`` directory that any method takes as ``model.backbone_weights``::

    python benchmarks/pretrain_tiny_vit.py --out /tmp/tiny_vit_objects   # ~8 min on 2 cores
    afford train wsma_synthagd_demo --out RUN --set model.backbone_weights=/tmp/tiny_vit_objects

Not used by the demo (its rows stay on the random ViT until that is decided); reproducible from
``--seed``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from afford.backbones.features import IMAGENET_MEAN, IMAGENET_STD
from afford.backbones.registry import BACKBONES
from afford.demo import FULL
from afford.synthagd import generate

SIZE, INPUT = FULL.size, 112  # the demo's stored size and its backbone's input


def world_images(root: Path, seeds: list[int], n_exo: int, n_ego: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 ``(N, 3, SIZE, SIZE)`` training images of the worlds ``seeds``, their object ids and names."""
    for s in seeds:
        if not (root / f"s{s}" / "Seen").exists():
            generate(root / f"s{s}", split="seen", seed=s, size=SIZE, n_exo=n_exo, n_ego=n_ego, n_test=1,
                     difficulty=FULL.difficulty)
    paths = sorted(p for s in seeds for p in (root / f"s{s}" / "Seen" / "trainset").rglob("*.jpg"))
    objects = sorted({p.parent.name for p in paths})
    index = {o: i for i, o in enumerate(objects)}
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE))) for p in paths])
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            torch.tensor([index[p.parent.name] for p in paths]), objects)


def views(images: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
    """ImageNet-normalised ``INPUT``-px views (what ``tiny_vit`` normalises its [0, 1] input to):
    a random square crop of 80-128 px and a flip when ``rng`` is given, else the whole image."""
    x = images.float() / 255
    if rng is None:
        x = F.interpolate(x, size=INPUT, mode="bilinear", align_corners=False)
    else:
        out = torch.empty(len(x), 3, INPUT, INPUT)
        for j in range(len(x)):
            s = int(rng.integers(80, SIZE + 1))
            i0, j0 = rng.integers(0, SIZE + 1 - s, 2)
            crop = F.interpolate(x[j:j + 1, :, i0:i0 + s, j0:j0 + s], size=INPUT, mode="bilinear", align_corners=False)[0]
            out[j] = crop.flip(-1) if rng.random() < 0.5 else crop
        x = out
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pretrain(out: Path, data: Path, seeds: list[int], epochs: int = 12, batch_size: int = 64, lr: float = 1e-3,
             n_exo: int = 24, n_ego: int = 12, held_out: int = 300, seed: int = 0) -> list[dict]:
    """Train and save; returns one line of figures per epoch."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels, objects = world_images(data, seeds, n_exo, n_ego)
    family, config, _ = BACKBONES["tiny_vit"]
    model = ViTModel(ViTConfig(**config), **family.model_kwargs)
    head = torch.nn.Linear(model.config.hidden_size, len(objects))
    params = [*model.parameters(), *head.parameters()]
    order = torch.randperm(len(images))
    val, train = order[:held_out], order[held_out:]
    steps = epochs * math.ceil(len(train) / batch_size)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    log = []
    print(f"{len(images)} images of {len(objects)} objects from worlds {seeds}; {held_out} held out", flush=True)
    for epoch in range(epochs):
        t0, total, correct = time.perf_counter(), 0.0, 0
        model.train()
        for k in range(0, len(train), batch_size):
            idx = train[k:k + batch_size]
            logits = head(model(pixel_values=views(images[idx], rng)).last_hidden_state[:, 0])
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == labels[idx]).sum())
        train = train[torch.randperm(len(train))]
        model.eval()
        with torch.no_grad():
            pred = head(model(pixel_values=views(images[val], None)).last_hidden_state[:, 0]).argmax(1)
        row = {"epoch": epoch, "loss": total / len(train), "train_acc": correct / len(train),
               "held_out_acc": float((pred == labels[val]).float().mean()), "seconds": time.perf_counter() - t0}
        log.append(row)
        print(f"epoch {epoch}: loss {row['loss']:.3f}, accuracy {row['train_acc']:.3f} train / "
              f"{row['held_out_acc']:.3f} held out ({row['seconds']:.0f} s)", flush=True)
    model.save_pretrained(out)
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="save_pretrained directory to write")
    ap.add_argument("--data", type=Path, default=Path("/tmp/synthagd_worlds"), help="where the worlds are generated")
    ap.add_argument("--seeds", default="1,2,3", help="SynthAGD worlds (not the demo's 0)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    pretrain(a.out, a.data, [int(s) for s in a.seeds.split(",")], epochs=a.epochs, seed=a.seed)
    print(f"-> {a.out} (model.backbone_weights={a.out})")


if __name__ == "__main__":
    main()
