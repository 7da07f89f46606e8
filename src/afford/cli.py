"""``afford`` command line: a thin layer over the Python API.

Every user error is an :class:`AffordError`, printed as one line (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from afford.errors import AffordError


def _json_safe(obj):
    """nan/inf -> null so the file is strict JSON (counts of nan images are reported separately)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(path: str | None, obj: dict) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_json_safe(obj), indent=2, default=float))


def _print_summary(title: str, s: dict) -> None:
    print(f"{title}: n={s['n_images']} KLD={s['KLD']:.3f} SIM={s['SIM']:.3f} NSS={s['NSS']:.3f} "
          f"[protocol={s.get('protocol')}, nss={s.get('nss')}]")
    if s.get("n_constant_pred"):
        print(f"  note: {s['n_constant_pred']} constant prediction(s); NSS handled as nss={s.get('nss')}")


def _public(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


# -- data ----------------------------------------------------------------------------------------
def cmd_data_synth(a: argparse.Namespace) -> int:
    from afford.data.synth import generate

    info = generate(Path(a.out), split=a.split, seed=a.seed, size=a.size, n_exo=a.n_exo, n_ego=a.n_ego,
                    n_test=a.n_test, difficulty=a.difficulty, overwrite=a.overwrite, progress=not a.quiet)
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_data_check(a: argparse.Namespace) -> int:
    from afford.data.check import check_tree

    report = check_tree(a.root, split=a.split)
    if a.json:
        if a.json == "-":
            print(json.dumps(report.to_dict(), indent=2))
        else:
            _write_json(a.json, report.to_dict())
            print(report.to_text())
    else:
        print(report.to_text())
    return 0 if report.ok else 1


# -- train / eval / predict --------------------------------------------------------------------
def cmd_train(a: argparse.Namespace) -> int:
    from afford.config import load_config
    from afford.engine.trainer import train

    overrides = list(a.set or [])
    if a.select:
        overrides.append(f"train.select={a.select}")
    cfg = load_config(a.config, overrides)
    result = train(cfg, a.out, resume=a.resume, progress=not a.quiet)
    print(f"trained {cfg.method}: {result.epochs_done} epochs -> {result.run_dir} "
          f"(weights selected by {result.selection['rule']}, epoch {result.selection['epoch']})")
    return 0


def _refiner(a: argparse.Namespace, run):
    if not getattr(a, "refine", None):
        return None
    from afford.refine.runs import refiner_for_run

    return refiner_for_run(run, a.refine)


def cmd_eval(a: argparse.Namespace) -> int:
    from afford.config import EvalConfig
    from afford.data.agd20k import open_split

    sources = [x for x in (a.pred, a.baseline, a.checkpoint) if x]
    if len(sources) != 1:
        raise AffordError("eval: give exactly one of --pred DIR, --baseline KIND, --checkpoint RUN")
    if a.label_sensitivity and not a.checkpoint:
        raise AffordError("eval: --label-sensitivity needs --checkpoint RUN (it asks the model for the "
                          "object's other affordances)")
    split = open_split(a.data, a.split)
    ecfg = EvalConfig(protocol=a.protocol, exact=a.exact, batch_size=a.batch_size)
    if a.pred:
        from afford.evaluate import evaluate_prediction_dir

        summary = evaluate_prediction_dir(a.pred, split, protocol=a.protocol, exact=a.exact,
                                          exclude_empty_gt=a.exclude_empty_gt, progress=True)
        title = f"predictions {a.pred}"
    elif a.baseline:
        from afford.evaluate import evaluate_baseline

        summary = evaluate_baseline(a.baseline, split, protocol=a.protocol, exact=a.exact,
                                    exclude_empty_gt=a.exclude_empty_gt)
        title = f"baseline {a.baseline}"
    else:
        from afford.checkpoint import load_run
        from afford.engine.evaluator import evaluate_fn, method_map_fn
        from afford.engine.trainer import resolve_device

        device = resolve_device(a.device)
        run = load_run(a.checkpoint, device=device, expect_classes=split.affordances)
        fn = method_map_fn(run.method, device, bf16=a.bf16)
        refine = _refiner(a, run)
        if refine is not None:
            base_fn = fn

            def fn(images, labels):  # noqa: F811 - refinement wraps the raw maps
                return refine(base_fn(images, labels), images)
        summary = evaluate_fn(fn, split, ecfg, size=run.config.data.test_size, keep_maps=bool(a.viz),
                              exclude_empty_gt=a.exclude_empty_gt)
        summary["selection"] = run.info.get("selection", {"rule": "unknown"})
        summary["refine"] = refine.params if refine is not None else "none"
        title = f"{run.info['method']} {a.checkpoint}"
        if a.label_sensitivity:
            from afford.engine.label_sensitivity import label_sensitivity

            summary["label_sensitivity"] = label_sensitivity(fn, split, ecfg, size=run.config.data.test_size)
        if a.viz:
            from afford.visualize import save_eval_overlays

            save_eval_overlays(split, summary["_maps"], Path(a.viz))
    summary["split"] = split.name
    _print_summary(title, summary)
    if a.breakdown:
        from afford.metrics.report import format_breakdown

        print(format_breakdown({title: summary}, title, f"per_{a.breakdown}"))
    if a.label_sensitivity:
        from afford.engine.label_sensitivity import format_label_sensitivity

        print(format_label_sensitivity({title: summary}))
    _write_json(a.json, _public(summary))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    import numpy as np

    from afford.checkpoint import load_run
    from afford.engine.trainer import resolve_device
    from afford.predictor import Predictor
    from afford.visualize import overlay

    device = resolve_device(a.device)
    run = load_run(a.checkpoint, device=device)
    pred = Predictor(run, device=str(device), refine=_refiner(a, run))
    if a.affordance:
        pred.label_index(a.affordance)  # validate before touching any image
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for image_path in a.images:
        pred.set_image(image_path)
        maps = pred.predict(a.affordance)
        stem = Path(image_path).stem
        for aff, m in maps.items():
            np.save(out / f"{stem}_{aff}.npy", m.astype(np.float32))
            from PIL import Image

            Image.fromarray((m * 255).round().astype(np.uint8)).save(out / f"{stem}_{aff}.png")
            overlay(pred._image, m).save(out / f"{stem}_{aff}_overlay.png")
        print(f"{image_path}: {len(maps)} heatmap(s) -> {out}")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from afford.importers import import_official

    run_dir = import_official(a.method, a.file, a.out, tokenizer=a.tokenizer)
    print(f"imported official {a.method} checkpoint {a.file} -> {run_dir}")
    return 0


def cmd_refine_train(a: argparse.Namespace) -> int:
    from afford.refine.runs import train_refiner_for_run

    out = train_refiner_for_run(a.checkpoint, data_root=a.data, split=a.split, epochs=a.epochs, seed=a.seed,
                                progress=not a.quiet, steps=a.steps, blend=a.blend, radius=a.radius)
    print(f"affinity refiner trained -> {out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from afford.demo import run_demo

    report = run_demo(Path(a.out), quick=a.quick, seed=a.seed, progress=not a.quiet)
    print(f"demo report: {report}")
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from afford.backbones import list_backbones
    from afford.factory import list_methods

    print("methods:  ", ", ".join(list_methods()))
    print("backbones:", ", ".join(list_backbones()))
    cfg_dir = Path(__file__).parent / "configs"
    print("configs:  ", ", ".join(sorted(p.stem for p in cfg_dir.glob("*.yaml"))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afford", description="Weakly supervised affordance grounding.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="SynthAGD -> train LOCATE/WSMA -> evaluate vs baselines -> report")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--quick", action="store_true", help="smoke-test sizes (< 60 s)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(fn=cmd_demo)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_cmd", required=True)
    s = data.add_parser("synth", help="generate SynthAGD in the AGD20K layout")
    s.add_argument("--out", required=True)
    s.add_argument("--split", choices=("seen", "unseen"), default="seen")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--n-exo", type=int, default=40)
    s.add_argument("--n-ego", type=int, default=10)
    s.add_argument("--n-test", type=int, default=5)
    s.add_argument("--difficulty", type=float, default=1.0, help="0..1 clutter/pose realism (1 = spec)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_data_synth)
    c = data.add_parser("check", help="validate an AGD20K-format tree")
    c.add_argument("root")
    c.add_argument("--split", default=None)
    c.add_argument("--json", nargs="?", const="-", default=None, help="write JSON (to stdout without a path)")
    c.set_defaults(fn=cmd_data_check)

    t = sub.add_parser("train", help="train a method from a YAML config")
    t.add_argument("config", help="YAML path or a packaged config name (afford list)")
    t.add_argument("--out", required=True)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--select", choices=("last", "best-on-test"), default=None)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="score predictions, a baseline or a checkpoint")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="Seen")
    e.add_argument("--pred")
    e.add_argument("--baseline", choices=("uniform", "center", "object"))
    e.add_argument("--checkpoint")
    e.add_argument("--protocol", default="standard",
                   choices=("standard", "cvag_test", "cvag_epoch_eval", "cvag_plus", "plsp"))
    e.add_argument("--exact", action="store_true", help="reference NaN behaviour for constant maps")
    e.add_argument("--exclude-empty-gt", action="store_true",
                   help="drop all-zero GT images (kept by default, as in the literature)")
    e.add_argument("--refine", choices=("affinity",), default=None)
    e.add_argument("--json")
    e.add_argument("--viz", help="write overlays to this folder")
    e.add_argument("--breakdown", choices=("affordance", "object", "pair"),
                   help="also print KLD / SIM per affordance, object or (affordance, object) pair")
    e.add_argument("--label-sensitivity", action="store_true",
                   help="also score each image with its object's other affordances (does the map follow the label?)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--device", default="auto")
    e.add_argument("--bf16", action="store_true")
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("predict", help="heatmaps for images")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--affordance")
    pr.add_argument("--out", required=True)
    pr.add_argument("--refine", choices=("affinity",), default=None)
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(fn=cmd_predict)

    im = sub.add_parser("import", help="convert an official LOCATE/WSMA checkpoint into a run")
    im.add_argument("--method", required=True, choices=("locate", "wsma"))
    im.add_argument("--file", required=True)
    im.add_argument("--out", required=True)
    im.add_argument("--tokenizer", default=None, help="CLIP tokenizer (hub name/dir/bpe file), WSMA only")
    im.set_defaults(fn=cmd_import)

    rf = sub.add_parser("refine", help="AffinityNet refinement").add_subparsers(dest="refine_cmd", required=True)
    rt = rf.add_parser("train", help="train an affinity head from a trained run's CAMs")
    rt.add_argument("--checkpoint", required=True)
    rt.add_argument("--data", default=None, help="dataset root (default: the run's)")
    rt.add_argument("--split", default=None)
    rt.add_argument("--epochs", type=int, default=3)
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--steps", type=int, default=16, help="random-walk steps t")
    rt.add_argument("--blend", type=float, default=0.5, help="lambda: weight of the unrefined map")
    rt.add_argument("--radius", type=int, default=5, help="affinity neighbourhood gamma (feature cells)")
    rt.add_argument("--quiet", action="store_true")
    rt.set_defaults(fn=cmd_refine_train)

    ls = sub.add_parser("list", help="methods, backbones and packaged configs")
    ls.set_defaults(fn=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except AffordError as e:
        print(f"afford: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("afford: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
