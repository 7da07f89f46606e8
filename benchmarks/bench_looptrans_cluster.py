"""Is afford's label-free cluster module useful to LoopTrans? Pseudo-masks vs k-means on SynthAGD.

LoopTrans supervises its pixel decoder with a pseudo-mask: the non-background cluster of a
frozen cluster module's segmentation that best matches where the shared CAM fires
(methods.md §3.2). This script measures, on the egocentric *test* images of a SynthAGD tree
(which has object and part masks in ``extras/``), the IoU of that pseudo-mask with the object
and with the affordance part, for three segmentations of the same frozen descriptors:

- ``cluster``: the trained cluster module of the LoopTrans run (afford's recipe), or of the
  cluster run given with ``--cluster`` (to compare recipes on one CAM);
- ``kmeans``: per-image k-means with the same number of clusters (the natural label-free
  alternative; Lloyd's algorithm, 10 restarts' best inertia is not used: one seeded run, as
  LOCATE's part discovery does);
- ``random-cluster``: a randomly initialised cluster module of the same shape (the floor).

The CAM and the background test are the run's own, so only the segmentation differs. It also
times cluster training per 1,000 images from the cluster run's log.

Usage::

    python benchmarks/bench_looptrans_cluster.py --run RUNS/looptrans --data ROOT [--split Seen]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from afford.checkpoint import load_run, read_json
from afford.data.agd20k import open_split
from afford.data.transforms import eval_transform, load_gray, load_rgb
from afford.errors import AffordError
from afford.modules.cluster import ClusterModule
from afford.modules.kmeans import batched_kmeans


def grid_mask(path: Path, what: str, h: int, w: int) -> torch.Tensor:
    """A binary mask pooled to the feature grid: a cell is in the mask when > half of it is."""
    m = torch.from_numpy(load_gray(path, what) > 127).float()[None, None]
    return (F.adaptive_avg_pool2d(m, (h, w))[0, 0] > 0.5).float()


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of binary ``(B, h, w)`` maps (0 when both are empty)."""
    inter = (a * b).flatten(1).sum(1)
    union = ((a + b) > 0).float().flatten(1).sum(1)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def kmeans_clusters(desc: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Per-image Lloyd k-means on ``(B, D, h, w)`` descriptors -> ``(B, h*w)`` cluster ids."""
    x = desc.flatten(2).transpose(1, 2).float()
    valid = torch.ones(x.shape[:2], dtype=torch.bool)
    _, assign = batched_kmeans(x, valid, k=k, iters=300, generator=torch.Generator().manual_seed(seed))
    return assign


def measure(run_dir: Path, data: Path, split_name: str | None, batch: int = 32, cluster: Path | None = None) -> dict:
    run = load_run(run_dir)
    model = run.method
    if cluster is not None:  # another cluster run's module, same CAM and background test
        model._load_cluster(str(cluster))
    if run.config.method != "looptrans":
        raise AffordError(f"{run_dir}: a {run.config.method} run; this benchmark needs a LoopTrans run")
    split = open_split(data, split_name or run.config.data.split)
    items = split.test_items()
    size = run.config.data.test_size
    k = model.cluster.num_tokens
    torch.manual_seed(0)
    random_cluster = ClusterModule(model.backbone.embed_dim, k, len(model.cluster.cross_attn_layers),
                                   model.cluster.cross_attn_layers[0].num_heads,
                                   stale_queries=model.cluster.stale_queries).eval()
    scores: dict[str, dict[str, list[float]]] = {}
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        images = torch.stack([eval_transform(load_rgb(it.image), size) for it in chunk])
        labels = torch.tensor([split.label(it.affordance) for it in chunk])
        with torch.no_grad():
            desc = model.features(images)[0]
        h, w = desc.shape[-2:]
        obj = torch.stack([grid_mask(split.object_mask(it), "object mask", h, w) for it in chunk])
        part = torch.stack([grid_mask(split.part_mask(it), "part mask", h, w) for it in chunk])
        segs = {"cluster": None, "kmeans": kmeans_clusters(desc, k, seed=start),
                "random-cluster": random_cluster.assign(desc)}
        for name, clusters in segs.items():
            mask = model.pseudo_masks(images, labels, clusters=clusters)
            s = scores.setdefault(name, {"object_iou": [], "part_iou": [], "area": []})
            s["object_iou"] += iou(mask, obj).tolist()
            s["part_iou"] += iou(mask, part).tolist()
            s["area"] += mask.flatten(1).mean(1).tolist()
    return {name: {k2: float(np.mean(v)) for k2, v in s.items()} | {"n": len(s["area"])}
            for name, s in scores.items()}


def cluster_training_time(run_dir: Path) -> dict | None:
    """Seconds per 1,000 images of the cluster run LoopTrans recorded (an afford run only)."""
    source = read_json(run_dir / "run.json", "run record").get("cluster", {})
    if source.get("kind") != "afford-run":
        return None
    cluster_run = Path(source["path"])
    epochs = [json.loads(line) for line in (cluster_run / "log.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in line]
    cfg = read_json(cluster_run / "run.json", "run record")["config"]["train"]
    images = sum(e["step"] - (epochs[i - 1]["step"] if i else 0) for i, e in enumerate(epochs)) * cfg["batch_size"]
    seconds = sum(e["seconds"] for e in epochs)
    return {"images": images, "seconds": seconds, "seconds_per_1000_images": 1000 * seconds / max(images, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained LoopTrans run directory")
    ap.add_argument("--data", type=Path, required=True, help="a SynthAGD root (with extras/ masks)")
    ap.add_argument("--split", default=None, help="split folder (default: the run's)")
    ap.add_argument("--cluster", type=Path, default=None,
                    help="score this cluster run's module instead of the one inside the LoopTrans run")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    res = {"pseudo_masks": measure(args.run, args.data, args.split, cluster=args.cluster), "cluster_training": cluster_training_time(args.run)}
    print(f"{'segmentation':<16}{'object IoU':>12}{'part IoU':>10}{'area':>8}{'n':>6}")
    for name, s in res["pseudo_masks"].items():
        print(f"{name:<16}{s['object_iou']:>12.3f}{s['part_iou']:>10.3f}{s['area']:>8.3f}{s['n']:>6d}")
    if res["cluster_training"]:
        t = res["cluster_training"]
        print(f"cluster training: {t['seconds']:.1f} s for {t['images']} images = {t['seconds_per_1000_images']:.2f} s / 1,000 images")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
