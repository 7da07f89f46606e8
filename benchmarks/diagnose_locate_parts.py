"""Where LOCATE's exo->ego part transfer succeeds or fails on SynthAGD (needs its ``extras/`` masks).

``measure`` reads a trained LOCATE run and reports, per affordance, on the egocentric test images:

- ``cam_in_part`` / ``cam_in_obj``: fraction of the min-max egocentric CAM's mass on the
  affordance part / on the object (``part_area``: part area / object area, the chance level);
- ``valid``: how often PartSelect keeps a prototype (3 exocentric images of the same pair);
- ``proto_in_part``: fraction of the selected prototype's egocentric part map inside the part,
  and ``best_k_in_part`` the same for the best of the K candidates (is the right part among
  the clusters at all?), both over the samples that got a prototype.

``oracle`` trains LOCATE with PartSelect replaced by the *true* part: the mean frozen descriptor
over the SynthAGD part masks of the egocentric training images of the same affordance/object.
It bounds what better part selection alone can buy with the given backbone and budget.

``bound`` scores perfect maps at feature resolution: the true part (and object) mask pooled to
the CAM grid, then resized and min-maxed by the protocol like a CAM. It separates what the
14x14 grid costs from what the method costs.

``exo-probe`` trains LOCATE's exocentric branch alone (``aff_proj`` -> ``aff_exo_proj`` ->
``aff_fc``, CE) on cached frozen descriptors of the exocentric training images and reports
training and held-out accuracy (every 5th image held out). PartSelect clusters the region where
the exocentric CAM is confident, so the transfer can be no better than this classifier.

Usage::

    python benchmarks/diagnose_locate_parts.py measure --run RUN --data ROOT
    python benchmarks/diagnose_locate_parts.py oracle --data ROOT --out RUN [--set k=v ...]
    python benchmarks/diagnose_locate_parts.py bound --data ROOT [--grid 14]
    python benchmarks/diagnose_locate_parts.py exo-probe --data ROOT [--epochs 30 --lr 0.01]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from afford.checkpoint import load_run
from afford.config import load_config
from afford.data.agd20k import Split, open_split
from afford.data.transforms import eval_transform, load_rgb
from afford.engine.tasks import WSAGTask
from afford.errors import AffordError
from afford.methods.locate import LOCATE
from afford.modules.prototypes import discover_parts


def mask_path(split: Split, aff: str, obj: str, stem: str, kind: str) -> Path:
    p = split.extras_mask(aff, obj, stem, kind)
    if p is None:
        raise AffordError(f"{split.root}: no SynthAGD {kind} mask for {aff}/{obj}/{stem} "
                          "(this diagnostic needs a SynthAGD tree with its extras/)")
    return p


def pooled_mask(path: Path, h: int, w: int) -> torch.Tensor:
    """Mask fraction per feature cell, ``(h, w)``."""
    m = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0)
    return F.adaptive_avg_pool2d(m[None, None], (h, w))[0, 0]


# ----------------------------------------------------------------------------- measure
@torch.no_grad()
def measure(run_dir: Path, data: Path, split_name: str, size: int, seed: int) -> dict:
    run = load_run(run_dir)
    m = run.method.eval()
    if not isinstance(m, LOCATE):
        raise AffordError(f"{run_dir}: a LOCATE run is needed, got method {run.method.name!r}")
    split = open_split(data, split_name)
    exo_groups = split.exo_groups()
    g = torch.Generator().manual_seed(seed)
    rows: dict[str, list[dict]] = defaultdict(list)
    for it in split.test_items():
        exo_files = exo_groups[(it.affordance, it.object)]
        pick = torch.randperm(len(exo_files), generator=g)[:3]  # LOCATE's 3 exocentric views
        ego = eval_transform(load_rgb(it.image), size)[None]
        exo = torch.stack([eval_transform(load_rgb(exo_files[j]), size) for j in pick.tolist()])
        desc, sal = m._descriptors(torch.cat([ego, exo]))
        proj = m._project(desc)
        y = split.label(it.affordance)
        ego_cam = m.aff_fc(m.aff_ego_proj(proj[:1]))
        exo_cam_y = m.aff_fc(m.aff_exo_proj(proj[1:]))[:, y][None]
        h, w = ego_cam.shape[-2:]
        saliency = m.ego_saliency(sal[:1], desc[:1], ego_cam)
        parts = discover_parts(exo_cam_y, desc[1:][None], desc[:1], saliency.bool(),
                               cam_thd=m.cfg.aff_cam_thd, iou_thd=m.cfg.part_iou_thd, k=m.cfg.cluster_num,
                               generator=torch.Generator().manual_seed(seed))
        part = pooled_mask(mask_path(split, it.affordance, it.object, it.name, "part"), h, w)
        obj = pooled_mask(mask_path(split, it.affordance, it.object, it.name, "object"), h, w)
        cam = ego_cam[0, y]
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-12)
        r = {"cam_in_part": float((cam * part).sum() / cam.sum()), "cam_in_obj": float((cam * obj).sum() / cam.sum()),
             "part_area": float(part.sum() / obj.sum().clamp(min=1e-6)), "valid": float(parts.valid[0])}
        if parts.valid[0]:
            inside = [float((pm * part).sum() / pm.sum().clamp(min=1)) for pm in parts.parts[0].float()]
            r["proto_in_part"], r["best_k_in_part"] = inside[int(parts.best[0])], max(inside)
        rows[it.affordance].append(r)
    rows["ALL"] = [r for v in list(rows.values()) for r in v]
    keys = ("cam_in_part", "cam_in_obj", "part_area", "valid", "proto_in_part", "best_k_in_part")
    return {aff: {"n": len(v), **{k: float(np.mean([r[k] for r in v if k in r])) if any(k in r for r in v) else None
                                  for k in keys}}
            for aff, v in sorted(rows.items())}


def print_table(table: dict) -> None:
    cols = ("n", "cam_in_part", "cam_in_obj", "part_area", "valid", "proto_in_part", "best_k_in_part")
    print("| affordance | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for aff, r in table.items():
        cells = [str(r["n"])] + ["-" if r[c] is None else f"{r[c]:.2f}" for c in cols[1:]]
        print(f"| {aff} | " + " | ".join(cells) + " |")


# ----------------------------------------------------------------------------- oracle
class OraclePrototypeLOCATE(LOCATE):
    """LOCATE whose prototype is the true part's mean descriptor (diagnostic upper bound)."""

    def set_oracle(self, prototypes: dict[tuple[int, str], torch.Tensor]) -> None:
        self._oracle = prototypes

    def part_prototypes(self, batch, exo_cam_y, exo_desc, ego_desc, ego_sal):
        keys = list(zip(batch["label"].tolist(), batch["object"], strict=True))
        protos = torch.stack([self._oracle[k] for k in keys]).to(ego_desc)
        return protos, torch.ones(len(keys), dtype=torch.bool, device=ego_desc.device)


@torch.no_grad()
def oracle_prototypes(method: LOCATE, split: Split, size: int) -> dict[tuple[int, str], torch.Tensor]:
    out = {}
    for (aff, obj), files in split.ego_groups().items():
        descs = []
        for f in files:
            desc, _ = method._descriptors(eval_transform(load_rgb(f), size)[None])
            part = pooled_mask(mask_path(split, aff, obj, f.stem, "part"), *desc.shape[-2:])
            descs.append((desc[0] * part).sum((1, 2)) / part.sum().clamp(min=1e-6))
        out[(split.label(aff), obj)] = F.normalize(torch.stack(descs).mean(0), dim=0)
    return out


def oracle(data: Path, out: Path, overrides: list[str], preset: str) -> dict:
    from afford.engine.evaluator import evaluate_method
    from afford.engine.trainer import train

    cfg = load_config(preset, [f"data.root={data}", *overrides])
    split = open_split(data, cfg.data.split)

    if cfg.method != "locate":
        raise AffordError(f"{preset}: the oracle diagnostic needs a LOCATE preset, got method {cfg.method!r}")

    def build(name, model_cfg, classes):
        m = OraclePrototypeLOCATE(model_cfg, classes)  # what create_method builds, one method overridden
        m.set_oracle(oracle_prototypes(m, split, cfg.data.test_size))
        return m

    train(cfg, out, task=WSAGTask(split), build_method=build)
    run = load_run(out)
    return evaluate_method(run.method, split, cfg.eval, torch.device("cpu"), size=cfg.data.test_size, progress=False)


# ----------------------------------------------------------------------------- bound
def bound(data: Path, split_name: str, grid: int) -> dict[str, dict]:
    from afford.engine.evaluator import evaluate_baseline, evaluate_maps

    split = open_split(data, split_name)
    out = {"object baseline (full resolution, blurred)": evaluate_baseline("object", split, progress=False)}
    for kind in ("object", "part"):
        def fn(it, kind=kind):
            return pooled_mask(mask_path(split, it.affordance, it.object, it.name, kind), grid, grid).numpy()
        out[f"{kind} mask at {grid}x{grid}"] = evaluate_maps(split, fn, progress=False, per_image=False)
    return out


# ----------------------------------------------------------------------------- exo-probe
def exo_probe(data: Path, split_name: str, preset: str, overrides: list[str], epochs: int, lr: float,
              seed: int) -> list[dict]:
    from afford.factory import create_method

    cfg = load_config(preset, [f"data.root={data}", *overrides])
    split = open_split(data, split_name)
    torch.manual_seed(seed)
    m = create_method(cfg.method, cfg.model, split.affordances)
    if not isinstance(m, LOCATE):
        raise AffordError(f"{preset}: the exo probe needs a LOCATE preset, got method {cfg.method!r}")
    files, labels = [], []
    for (aff, _obj), paths in sorted(split.exo_groups().items()):
        files += paths
        labels += [split.label(aff)] * len(paths)
    y = torch.tensor(labels)
    with torch.no_grad():
        x = torch.stack([eval_transform(load_rgb(f), cfg.data.test_size) for f in files])
        desc = torch.cat([m._descriptors(x[i:i + 128])[0] for i in range(0, len(x), 128)])
    held = torch.arange(len(y)) % 5 == 0
    # LOCATE's own groups (x1/x2/x10/x20); the frozen backbone and the unused egocentric stack get
    # no gradient, so SGD leaves them alone.
    groups = [{"params": g.params, "lr": lr * g.lr_mult} for g in m.param_groups()]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    g = torch.Generator().manual_seed(seed)

    def logits(d: torch.Tensor) -> torch.Tensor:
        return m.aff_fc(m.aff_exo_proj(m._project(d))).mean((2, 3))

    def accuracy(mask: torch.Tensor) -> float:
        m.eval()
        with torch.no_grad():
            acc = float((logits(desc[mask]).argmax(1) == y[mask]).float().mean())
        m.train()
        return acc

    rows, train_idx = [], (~held).nonzero()[:, 0]
    for ep in range(epochs):
        perm = train_idx[torch.randperm(len(train_idx), generator=g)]
        for i in range(0, len(perm), cfg.train.batch_size * 3):  # 3 exocentric images per sample
            b = perm[i:i + cfg.train.batch_size * 3]
            d = desc[b].flip(-1) if torch.rand(1, generator=g) < 0.5 else desc[b]
            loss = F.cross_entropy(logits(d), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ep == epochs - 1 or (ep + 1) % max(1, epochs // 6) == 0:
            rows.append({"epoch": ep + 1, "train_acc": accuracy(~held), "held_out_acc": accuracy(held)})
            print(f"epoch {ep + 1}: train {rows[-1]['train_acc']:.3f}, held out {rows[-1]['held_out_acc']:.3f}",
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("measure")
    a.add_argument("--run", type=Path, required=True)
    a.add_argument("--data", type=Path, required=True)
    a.add_argument("--split", default="Seen")
    a.add_argument("--size", type=int, default=None, help="test size (default: the run's data.test_size)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--json", type=Path)
    b = sub.add_parser("oracle")
    b.add_argument("--data", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--preset", default="locate_synthagd_demo")
    b.add_argument("--set", action="append", default=[], metavar="K=V")
    b.add_argument("--threads", type=int, default=0)
    c = sub.add_parser("bound")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--split", default="Seen")
    c.add_argument("--grid", type=int, default=14)
    e = sub.add_parser("exo-probe")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--split", default="Seen")
    e.add_argument("--preset", default="locate_synthagd_demo")
    e.add_argument("--set", action="append", default=[], metavar="K=V")
    e.add_argument("--epochs", type=int, default=30)
    e.add_argument("--lr", type=float, default=0.01)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    if args.cmd == "measure":
        size = args.size or load_run(args.run).config.data.test_size
        table = measure(args.run, args.data, args.split, size, args.seed)
        print_table(table)
        if args.json:
            args.json.write_text(json.dumps(table, indent=2))
    elif args.cmd == "bound":
        for name, r in bound(args.data, args.split, args.grid).items():
            print(f"{name}: KLD {r['KLD']:.3f} SIM {r['SIM']:.3f} NSS {r['NSS']:.3f}")
    elif args.cmd == "exo-probe":
        exo_probe(args.data, args.split, args.preset, args.set, args.epochs, args.lr, args.seed)
    else:
        s = oracle(args.data, args.out, args.set, args.preset)
        print(f"LOCATE with oracle part prototypes: KLD {s['KLD']:.3f} SIM {s['SIM']:.3f} NSS {s['NSS']:.3f}")


if __name__ == "__main__":
    main()
