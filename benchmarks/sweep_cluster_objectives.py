"""Research sweep: which label-free objective trains a cluster module whose pseudo-masks beat k-means?

Trains fresh cluster modules (the demo's shape: 4 tokens, 2 layers, 4 heads) on the frozen keys
of a SynthAGD split's training images (no augmentation; descriptors computed once) with several
objectives, then scores each module's pseudo-masks on the egocentric test images exactly as
``bench_looptrans_cluster.py`` does (the CAM and background test of the given LoopTrans run):

- ``acseg``: ACSeg's soft modularity (afford's recipe, ``losses.looptrans.modularity_loss``);
- ``dmon``: the DMoN relaxation (Tsitsulin et al., JMLR 2023): softmax assignments at temperature
  ``temp``, ``-(1/2m) tr(Sᵀ B S)``, optional collapse regulariser ``reg``;
- ``skm``: amortised spherical k-means, ``-Σ_c softmax(cos/temp)_c · cos_c`` (k-means' own
  objective, so the module can at best approach per-image k-means);
- options: ``sigma`` (affinity × Gaussian spatial kernel in grid cells, plus ``base``),
  ``power`` (sharpen the affinity), ``center`` (subtract the image mean before the cosine),
  ``layers`` and ``stale``.

Usage::

    python benchmarks/sweep_cluster_objectives.py --run RUNS/looptrans --data ROOT \\
        [--configs '[{"kind": "acseg"}, {"kind": "dmon", "temp": 0.03}]']
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_looptrans_cluster import grid_mask, iou, kmeans_clusters

from afford.checkpoint import load_run
from afford.data.agd20k import TrainImageSet, open_split
from afford.data.transforms import eval_transform, load_rgb
from afford.losses.looptrans import modularity_loss
from afford.modules.cluster import ClusterModule

DEFAULT = [{"kind": "acseg"}, {"kind": "dmon", "temp": 0.03}, {"kind": "skm", "temp": 0.03},
           {"kind": "acseg", "sigma": 2}, {"kind": "acseg", "power": 3}, {"kind": "acseg", "layers": 8},
           {"kind": "acseg", "layers": 4, "stale": False}]


def affinity(x: torch.Tensor, center: bool, sigma: float, base: float, power: float) -> torch.Tensor:
    if center:
        x = x - x.mean(1, keepdim=True)
    x = F.normalize(x, dim=-1)
    a = (x @ x.transpose(1, 2)).clamp(min=0)
    if sigma:
        g = int(round(x.shape[1] ** 0.5))
        yy, xx = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        p = torch.stack([yy.flatten(), xx.flatten()], 1).float()
        a = a * (base + torch.exp(-torch.cdist(p, p) ** 2 / (2 * sigma ** 2)))
    return a ** power if power else a


def objective(kind: str, pix: torch.Tensor, scores: torch.Tensor, temp: float, reg: float, **aff) -> torch.Tensor:
    if kind == "skm":
        cos = scores - 1
        return -(torch.softmax(cos / temp, -1) * cos).sum(-1).mean()
    a = affinity(pix.float(), **aff)
    if kind == "acseg" and not any(aff.values()):
        return modularity_loss(pix, scores)
    k, two_m = a.sum(-1), a.sum((1, 2)).clamp(min=1e-12)
    b = a - k.unsqueeze(2) * k.unsqueeze(1) / two_m[:, None, None]
    if kind == "acseg":
        s = (scores - 1).clamp(min=0)
        delta = (s.unsqueeze(2) * s.unsqueeze(1)).amax(-1)
        return (-(b * delta).sum((1, 2)) / two_m).mean()
    s = torch.softmax((scores - 1) / temp, -1)
    mod = torch.einsum("bik,bij,bjk->b", s, b, s) / two_m
    col = (math.sqrt(s.shape[2]) / s.shape[1]) * s.sum(1).norm(dim=-1) - 1
    return (-mod + reg * col).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained LoopTrans run (its CAM picks the cluster)")
    ap.add_argument("--data", type=Path, required=True, help="a SynthAGD root")
    ap.add_argument("--split", default="Seen")
    ap.add_argument("--steps", type=int, default=450, help="training steps of batch 16 (450 = 5 demo epochs)")
    ap.add_argument("--configs", default=json.dumps(DEFAULT), help="JSON list of objective settings")
    a = ap.parse_args()
    run = load_run(a.run)
    model = run.method.eval()
    split = open_split(a.data, a.split)
    files = TrainImageSet(split).files
    with torch.no_grad():
        train = torch.cat([model.features(torch.stack([eval_transform(load_rgb(p), run.config.data.crop)
                                                        for p in files[i:i + 64]]))[0]
                           for i in range(0, len(files), 64)]).flatten(2).transpose(1, 2)
        items = split.test_items()
        imgs = torch.stack([eval_transform(load_rgb(it.image), run.config.data.test_size) for it in items])
        labels = torch.tensor([split.label(it.affordance) for it in items])
        desc = model.features(imgs)[0]
    h, w = desc.shape[-2:]
    obj = torch.stack([grid_mask(split.object_mask(it), "object mask", h, w) for it in items])
    part = torch.stack([grid_mask(split.part_mask(it), "part mask", h, w) for it in items])
    k = model.cluster.num_tokens

    def score(clusters: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            m = model.pseudo_masks(imgs, labels, clusters=clusters)
        return iou(m, obj).mean().item(), iou(m, part).mean().item()

    print(f"{len(files)} training images, {len(items)} test images, K={k}")
    print(f"{'objective':<60}{'object IoU':>11}{'part IoU':>10}")
    ko, kp = score(kmeans_clusters(desc, k))
    print(f"{'per-image k-means (reference)':<60}{ko:>11.3f}{kp:>10.3f}")
    for c in json.loads(a.configs):
        opts = {"temp": 0.1, "reg": 0.0, "center": False, "sigma": 0, "base": 0.0, "power": 0,
                "layers": 2, "stale": True, **c}
        torch.manual_seed(0)
        cm = ClusterModule(train.shape[-1], k, opts["layers"], 4, stale_queries=opts["stale"])
        opt = torch.optim.AdamW(cm.parameters(), lr=1e-3, weight_decay=1e-4)
        g = torch.Generator().manual_seed(0)
        for _ in range(a.steps):
            pix = train[torch.randint(len(train), (16,), generator=g)]
            loss = objective(opts["kind"], pix, cm(pix), opts["temp"], opts["reg"], center=opts["center"],
                             sigma=opts["sigma"], base=opts["base"], power=opts["power"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            o, p = score(cm.eval().assign(desc))
        print(f"{json.dumps(c):<60}{o:>11.3f}{p:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
