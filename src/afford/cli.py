"""``afford`` command line: a thin layer over the Python API.

Every user error is an :class:`AffordError`, printed as one line (exit status 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from afford import strict_json
from afford.device import DEVICE_HELP
from afford.errors import AffordError


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a service manager) unwinds like Ctrl-C, so the worker processes a command
    started are stopped in its ``finally`` instead of running on, orphaned, after it died."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type of counts that may be 0 (e.g. how many triplets to draw)."""
    return _int_at_least(text, 0, "an integer >= 0")


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (processes, jobs, sizes, epochs, batches)."""
    return _int_at_least(text, 1, "a positive integer")


def _write_json(path: str | None, obj: dict) -> None:
    if path:
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(strict_json.dumps(obj, indent=2, default=float))
        except OSError as e:
            raise AffordError(f"--json: cannot write {p} ({e.strerror or e})") from None


#: Output flags (argparse dest) and what they name; checked before any work starts.
OUTPUT_FLAGS = (("out", "folder"), ("viz", "folder"), ("save_pred", "folder"), ("json", "file"), ("save_dets", "file"))


def check_output_paths(args: argparse.Namespace) -> None:
    """A folder that is a file, or a path under a file, fails when it is written, which for
    ``--json`` is after a whole evaluation: refuse such paths before anything runs."""
    for dest, kind in OUTPUT_FLAGS:
        value = getattr(args, dest, None)
        if not isinstance(value, str) or value in ("", "-"):
            continue
        flag, p = f"--{dest.replace('_', '-')}", Path(value).expanduser()
        if kind == "folder" and p.exists() and not p.is_dir():
            raise AffordError(f"{flag}: {p} is a file; expected a folder (or a path where one can be made)")
        if kind == "file" and p.is_dir():
            raise AffordError(f"{flag}: {p} is a folder; expected a file path")
        blocker = next((q for q in p.parents if q.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise AffordError(f"{flag}: {p} cannot be made: {blocker} is a file")
        where = p if kind == "folder" and p.is_dir() else blocker
        if where is not None and not os.access(where, os.W_OK | os.X_OK):
            raise AffordError(f"{flag}: cannot write {p}: no write permission in {where}")


def _print_summary(title: str, s: dict) -> None:
    """One line a table can quote: the figures and every choice behind them (protocol.md §1.5, §5, §7)."""
    labels = [f"protocol={s.get('protocol')}", f"nss={s.get('nss')}", f"empty_gt={s.get('empty_gt')}"
              + (f" ({s['n_excluded']})" if s.get("n_excluded") else "")]
    if s.get("selection"):
        labels.append(f"selection={s['selection'].get('rule', 'unknown')}")
    if s.get("output"):
        labels.append(f"output={s['output']}")
    if isinstance(s.get("refine"), dict):
        labels.append(f"refine={s['refine'].get('refine', 'yes')}")
    print(f"{title}: n={s['n_images']} KLD={s['KLD']:.3f} SIM={s['SIM']:.3f} NSS={s['NSS']:.3f} "
          f"[{', '.join(labels)}]")
    if s.get("n_constant_pred"):
        print(f"  note: {s['n_constant_pred']} constant prediction(s); NSS handled as nss={s.get('nss')}")


def _public(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


# -- data ----------------------------------------------------------------------------------------
def cmd_data_synth(a: argparse.Namespace) -> int:
    from afford.synthagd import generate

    info = generate(Path(a.out), split=a.split, seed=a.seed, size=a.size, n_exo=a.n_exo, n_ego=a.n_ego,
                    n_test=a.n_test, difficulty=a.difficulty, overwrite=a.overwrite, progress=not a.quiet)
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_data_check(a: argparse.Namespace) -> int:
    if a.hoi:
        from afford.hoi.check import check_hicodet

        report = check_hicodet(a.root, split=a.split, progress=not a.quiet)
    else:
        from afford.data.check import check_tree

        report = check_tree(a.root, split=a.split, progress=not a.quiet)
    if a.json:
        if a.json == "-":
            print(json.dumps(report.to_dict(), indent=2))
        else:
            _write_json(a.json, report.to_dict())
            print(report.to_text())
    else:
        print(report.to_text())
    return 0 if report.ok else 1


def cmd_data_synth_hoi(a: argparse.Namespace) -> int:
    from afford.hoi.synth import generate_synthhoi

    info = generate_synthhoi(Path(a.out), seed=a.seed, n_train=a.n_train, n_test=a.n_test, tile=a.tile, grid=a.grid,
                             n_unseen=a.unseen, difficulty=a.difficulty, overwrite=a.overwrite, progress=not a.quiet)
    print(json.dumps(info, indent=2, default=str))
    return 0


# -- hoi ----------------------------------------------------------------------------------------
def _only_apply(flags: list[str]) -> str:
    """``--a, --b only apply`` / ``--a only applies``: the start of a refused-flags message."""
    return f"{', '.join(flags)} only {'apply' if len(flags) > 1 else 'applies'}"


def _hoi_run_info(path: str) -> dict:
    """run.json of an HOI run, or one line saying the folder holds an affordance run instead."""
    from afford.checkpoint import read_run_info

    info = read_run_info(Path(path))
    if info.get("labels", {}).get("task", "affordance") != "hoi":
        raise AffordError(f"{path}: a {info['method']} run (affordance grounding), not an HOI detector; "
                          "HOI commands need a clip4hoi run (score this one with 'afford eval --checkpoint')")
    return info


def _hoi_run(path: str, device: str):
    """A loaded HOI run, or one line saying what the folder holds instead."""
    from afford.checkpoint import load_run
    from afford.device import resolve_device

    _hoi_run_info(path)
    return load_run(path, device=resolve_device(device))


def _hoi_model_dets(a: argparse.Namespace, ds):
    """Detections of ``--checkpoint`` on ``ds`` and the zero-shot setting the run recorded."""
    import dataclasses

    from afford.hoi.task import detect_all, image_set

    run = _hoi_run(a.checkpoint, a.device)
    if run.labels.names != ds.hoi_names:
        raise AffordError(f"{a.checkpoint}: the run's {len(run.labels)} HOI classes differ from the "
                          f"{ds.num_classes} of {ds.source}")
    cfg = run.config
    if a.detections:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, detections_test=a.detections))
    device = next(run.method.parameters()).device
    dets = detect_all(run.method, image_set(ds, cfg, train=False), device, a.batch_size or cfg.eval.batch_size,
                      progress=not a.quiet, bf16=a.bf16, num_workers=cfg.data.num_workers)
    return dets, run


class _TrainingAnnotations:
    """HICO-DET training annotations, read when something needs them: ``--train``, else the
    ``instances_train2015.json`` of the ``--data`` folder (never the test file itself)."""

    def __init__(self, train: str | None, root: str) -> None:
        self.source = train or (root if Path(root).expanduser().is_dir() else None)
        self._ds = None

    def load(self, needed_by: str, test):
        """The training file, checked to define ``test``'s classes (its counts are applied by class id)."""
        from afford.hoi.hicodet import load_hicodet
        from afford.hoi.splits import check_same_classes

        if self.source is None:
            raise AffordError(f"{needed_by} needs the training annotations: pass --train "
                              "(instances_train2015.json or its folder), or --data the folder holding both files")
        if self._ds is None:
            ds = load_hicodet(self.source, split="train2015")
            check_same_classes(ds, test, "hoi eval")
            if shared := set(ds.filenames) & set(test.filenames):
                raise AffordError(f"hoi eval: the training file {ds.source} holds {len(shared)} of the test file's "
                                  f"images (e.g. {min(shared)}); training counts must come from the training split")
            self._ds = ds
        return self._ds


def cmd_hoi_eval(a: argparse.Namespace) -> int:
    from afford.hoi.baselines import baseline_detections, training_counts
    from afford.hoi.check import box_problems
    from afford.hoi.detections import detection_warnings, read_detections, write_detections
    from afford.hoi.evaluate import evaluate_hoi
    from afford.hoi.hicodet import load_hicodet
    from afford.hoi.splits import report_groups, zero_shot_unseen

    if sum(x is not None for x in (a.dets, a.baseline, a.checkpoint)) != 1:
        raise AffordError("hoi eval: give exactly one of --dets FILE, --baseline NAME or --checkpoint RUN")
    if not a.checkpoint:
        ignored = [f for f, v in (("--detections", a.detections), ("--bf16", a.bf16), ("--save-dets", a.save_dets))
                   if v]
        if ignored:
            raise AffordError(f"hoi eval: {_only_apply(ignored)} to --checkpoint RUN")
    run_info: dict = {}
    if a.checkpoint:
        run_info = _hoi_run_info(a.checkpoint)
    root = a.data or run_info.get("data_root")
    if not root:
        raise AffordError("hoi eval: --data ROOT is required")
    ds = load_hicodet(root, split=a.split)
    if bad := box_problems(ds):
        logging.getLogger("afford").warning(
            "%s: %d image(s) have inverted or out-of-image GT boxes, scored as given (first: %s: %s); "
            "'afford data check --hoi %s' lists them", ds.source, len(bad), bad[0]["where"], bad[0]["message"], root)
    training = _TrainingAnnotations(a.train, root)
    zero_shot = a.zero_shot
    if zero_shot is None and run_info.get("split") not in (None, "default"):
        zero_shot = run_info["split"]  # the run's own zero-shot setting
    if a.dets is not None:
        dets = read_detections(a.dets, ds.filenames, ds.num_classes)
    elif a.baseline is not None:
        counts = None
        if a.baseline == "frequency-prior":
            counts = training_counts(training.load("--baseline frequency-prior", ds).annotations, ds.num_classes)
        dets = baseline_detections(ds.annotations, ds.hoi_object, a.baseline, counts)
    else:
        dets, _ = _hoi_model_dets(a, ds)
        if a.save_dets:
            write_detections(a.save_dets, ds.filenames, dets)
    class0 = any(bool((g.hoi == 0).any()) for g in ds.annotations)
    for warning in detection_warnings(dets, ds.filenames, ds.sizes, ds.num_classes, a.dets or "detections", class0):
        logging.getLogger("afford").warning("%s", warning)
    if not ds.rare and not ds.non_rare and not zero_shot:  # no lists: count training pairs (hoi.md §12)
        import dataclasses

        from afford.hoi.hicodet import rare_from_counts

        rare, non_rare = rare_from_counts(training.load(f"{root}: no rare/non_rare lists; the rare split", ds))
        ds = dataclasses.replace(ds, rare=rare, non_rare=non_rare)
    groups, empty = report_groups(ds, zero_shot_unseen(zero_shot, ds) if zero_shot else ())
    result = evaluate_hoi(ds.annotations, dets, ds.hoi_object, groups=groups, mode=a.mode, rule=a.rule,
                          num_classes=ds.num_classes)
    out = result.to_dict()
    if empty:
        out["empty_groups"] = empty
        print(f"note: {ds.source}: no {' / '.join(empty)} class in this split, so no mAP for it (n/a)")
    source = a.dets or (f"baseline: {a.baseline}" if a.baseline else f"checkpoint: {a.checkpoint}")
    out.update({"data": str(ds.source), "detections": source, "zero_shot": zero_shot,
                "known_object_images": "derived from the box annotations (hoi.md §12)"
                if a.mode == "known-object" else None})
    if a.checkpoint:
        out.update(method=run_info["method"], selection=run_info.get("selection"),
                   detector=run_info.get("detector"), unverified=run_info.get("unverified"))
    maps = ", ".join(f"{k} {100 * v:.2f}" for k, v in out["mAP"].items())
    out["n_images_with_detections"] = sum(1 for d in dets if d is not None and len(d))
    print(f"HOI mAP % ({a.rule} rule, {a.mode} mode): {maps} [images {out['n_images']} ({out['n_images_with_detections']} "
          f"with detections), detections {out['n_detections']}, classes without GT {out['n_classes_without_gt']}]")
    if a.mode == "known-object":
        print(f"note: known-object images {out['known_object_images']}")
    for name, ids in groups.items():  # hoi.md §12: AP 0 for a class without a test pair, by the official rule
        if not any(out["n_gt"][c] for c in ids):
            print(f"note: none of the {len(ids)} {name} classes has a test pair in {ds.source.name}: its "
                  f"{100 * out['mAP'][name]:.2f} is the official rule's AP 0 per class, not a measurement")
    _write_json(a.json, out)
    return 0


def check_image_args(images: Sequence[str]) -> None:
    """Every image exists, and no two share a name stem (their outputs, named by stem, would
    overwrite each other): checked before the model loads, not after the first outputs are written."""
    stems: dict[str, str] = {}
    for image in images:
        p = Path(image).expanduser()
        if not p.is_file():
            raise AffordError(f"{image}: no such image file" + (" (a folder)" if p.is_dir() else ""))
        if p.stem in stems:
            if p.resolve() == Path(stems[p.stem]).expanduser().resolve():
                raise AffordError(f"{image}: given twice; give each image once")
            raise AffordError(f"{image}: same name as {stems[p.stem]}; their outputs ({p.stem}_*) would overwrite "
                              "each other, so predict them into different --out folders")
        stems[p.stem] = image


def check_outputs_spare_inputs(images: Sequence[str], outputs: Sequence[Path]) -> None:
    """No output path is one of the input images: ``cup_hold.png`` beside ``cup.png`` would be
    overwritten by cup's map (and then read as an image). Checked before anything is written."""
    inputs = {Path(i).expanduser().resolve(): i for i in images}
    for o in outputs:
        if (hit := inputs.get(Path(o).expanduser().resolve())) is not None:
            raise AffordError(f"{hit}: an output of this command has this name ({o}) and would overwrite it; "
                              "choose another --out folder")


def cmd_hoi_predict(a: argparse.Namespace) -> int:
    from afford.hoi.predictor import HOIPredictor, draw_hoi

    check_image_args(a.images)
    check_outputs_spare_inputs(a.images, [Path(a.out) / f"{Path(i).stem}_hoi.{ext}" for i in a.images
                                          for ext in ("json", "png")])
    run = _hoi_run(a.checkpoint, a.device)
    pred = HOIPredictor(run, device=str(next(run.method.parameters()).device), detections=a.detections)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for image_path in a.images:
        pred.set_image(image_path)
        rows = pred.predict(top_k=a.top)
        stem = Path(image_path).stem
        (out / f"{stem}_hoi.json").write_text(json.dumps({"image": str(image_path), "triplets": rows}, indent=1))
        draw_hoi(pred.image, rows[: a.draw]).save(out / f"{stem}_hoi.png")
        if not a.quiet:
            best = f"best: {rows[0]['name']} {rows[0]['score']:.3f}" if rows else "no pair found"
            print(f"{image_path}: {len(rows)} triplet(s), {best} -> {out}")
    return 0


# -- train / eval / predict --------------------------------------------------------------------
def cmd_train(a: argparse.Namespace) -> int:
    from afford.config import load_config
    from afford.engine.trainer import train

    overrides = list(a.set or [])
    if a.select:
        if clash := [o for o in overrides if o.split("=", 1)[0].strip() == "train.select" and o.split("=", 1)[-1].strip()
                     != a.select]:
            raise AffordError(f"train: --select {a.select} and --set {clash[0]} disagree; give one of them")
        overrides.append(f"train.select={a.select}")
    cfg = load_config(a.config, overrides)  # a bad config fails here, before any process starts
    if getattr(a, "task", None):
        from afford.factory import method_spec

        if (task := method_spec(cfg.method).task) != a.task:
            raise AffordError(f"{a.config}: a {cfg.method} config (task {task!r}); 'afford hoi train' trains HOI "
                              "detectors: train it with 'afford train'")
    from afford.engine.distributed import in_worker

    if a.nproc > 1 and not in_worker():
        from afford.device import resolve_device
        from afford.engine.distributed import DistContext, check_batch
        from afford.engine.launch import launch_torchrun
        from afford.engine.trainer import check_not_training, check_run_folder

        # what every process would refuse alike, refused once before any starts
        check_batch(cfg.train.batch_size, DistContext(world=a.nproc))
        resolve_device(cfg.train.device, "train.device")
        check_not_training(Path(a.out))
        check_run_folder(Path(a.out), cfg, a.resume)
        with sigterm_as_interrupt():
            return launch_torchrun(a.nproc, a.argv, a.out)
    with sigterm_as_interrupt():  # `kill` stops it as Ctrl-C does (a message, a first-epoch folder removed)
        result = train(cfg, a.out, resume=a.resume, progress=not a.quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for the data-parallel run
    print(f"trained {cfg.method}: {result.epochs_done} epochs -> {result.run_dir} "
          f"(weights selected by {result.selection['rule']}, epoch {result.selection['epoch']})")
    return 0


def _refiner(a: argparse.Namespace, run):
    if not getattr(a, "refine", None):
        return None
    from afford.engine.refinement import refiner_for_run

    return refiner_for_run(run, a.refine)


#: eval flags that only mean something for a model (--checkpoint): rejected with --pred/--baseline.
MODEL_ONLY_FLAGS = {"viz": "--viz", "save_pred": "--save-pred", "refine": "--refine", "device": "--device", "bf16": "--bf16",
                    "batch_size": "--batch-size", "label_sensitivity": "--label-sensitivity", "output": "--output"}


#: eval flags that --runs cannot apply (each run is scored by its own recorded settings).
RUN_SCORING_FLAGS = {**MODEL_ONLY_FLAGS, "data": "--data", "split": "--split", "exact": "--exact",
                     "exclude_empty_gt": "--exclude-empty-gt", "breakdown": "--breakdown"}


def _open_eval_split(a: argparse.Namespace, info: dict | None):
    """``--data``/``--split``, defaulting to what the run recorded (``data_root``, ``split``)."""
    from afford.data.agd20k import open_split

    info = info or {}
    data = a.data or info.get("data_root")
    if not data:
        why = " (the run records no data root, e.g. an imported checkpoint)" if info else ""
        raise AffordError(f"eval: --data ROOT is required{why}")
    if not a.data and a.split and info.get("split") and a.split.lower() != str(info["split"]).lower() \
            and Path(data).name.lower() == str(info["split"]).lower():
        data = str(Path(data).parent)  # the run records its split's folder: another split is its sibling
    return open_split(data, a.split or info.get("split") or "Seen")


def cmd_eval(a: argparse.Namespace) -> int:
    from afford.config import EvalConfig

    if a.runs:
        if a.pred or a.baseline or a.checkpoint:
            raise AffordError("eval: --runs scores runs on their own test sets; drop --pred/--baseline/--checkpoint")
        unused = [flag for dest, flag in RUN_SCORING_FLAGS.items() if getattr(a, dest) not in (None, False, "auto")]
        from afford.metrics.saliency import PROTOCOLS

        unused += ["--protocol"] if a.protocol != PROTOCOLS[0] else []
        if unused:
            raise AffordError(f"eval: --runs scores each run as it was trained to be scored (its eval settings); "
                              f"{', '.join(unused)} would be ignored: score one run with --checkpoint RUN for those")
        from afford.sweep import format_summary, summarise_runs

        per_run, summary = summarise_runs(a.runs, progress=not a.quiet)
        print(format_summary(summary, f"{len(a.runs)} runs"))
        _write_json(a.json, {"runs": per_run, "summary": summary})
        return 0
    sources = [x for x in (a.pred, a.baseline, a.checkpoint) if x]
    if len(sources) != 1:
        raise AffordError("eval: give exactly one of --pred DIR, --baseline KIND, --checkpoint RUN (or --runs RUN ...)")
    if not a.checkpoint:
        ignored = [flag for attr, flag in MODEL_ONLY_FLAGS.items() if getattr(a, attr) not in (None, False, "auto")]
        if ignored:
            raise AffordError(f"eval: {_only_apply(ignored)} to --checkpoint RUN (a model); with "
                              f"--{'pred' if a.pred else 'baseline'} {'they' if len(ignored) > 1 else 'it'} "
                              "would be ignored")
    progress = not a.quiet
    ecfg = EvalConfig(protocol=a.protocol, exact=a.exact, exclude_empty_gt=a.exclude_empty_gt,
                      batch_size=a.batch_size or EvalConfig.batch_size, output=a.output)
    if a.pred:
        from afford.engine.evaluator import evaluate_prediction_dir

        split = _open_eval_split(a, None)
        summary = evaluate_prediction_dir(a.pred, split, ecfg, progress=progress)
        title = f"predictions {a.pred}"
    elif a.baseline:
        from afford.engine.evaluator import evaluate_baseline

        split = _open_eval_split(a, None)
        summary = evaluate_baseline(a.baseline, split, ecfg, progress=progress)
        title = f"baseline {a.baseline}"
    else:
        from afford.checkpoint import load_run
        from afford.device import resolve_device
        from afford.engine.evaluator import (
            check_output_protocol,
            evaluate_fn,
            label_sensitivity,
            method_map_fn,
        )
        from afford.engine.refinement import refined
        from afford.factory import affordance_run_info

        split = _open_eval_split(a, affordance_run_info(a.checkpoint))
        save_pred = Path(a.save_pred).expanduser() if a.save_pred else None
        if save_pred is not None:
            from afford.data.predictions import check_save_dir

            check_save_dir(save_pred, split.test_items())
        device = resolve_device(a.device)
        run = load_run(a.checkpoint, device=device, expect_classes=split.affordances)
        refine = _refiner(a, run)
        which = check_output_protocol(run.method, ecfg, refined=refine is not None)
        fn = refined(method_map_fn(run.method, device, bf16=a.bf16, output=which["output"]), refine)
        size = run.config.data.test_size
        summary = evaluate_fn(fn, split, ecfg, size=size, progress=progress, keep_maps=bool(a.viz or save_pred))
        summary.update(which, selection=run.info.get("selection", {"rule": "unknown"}),
                       refine=refine.params if refine is not None else "none")
        title = f"{run.info['method']} {a.checkpoint}"
        if a.label_sensitivity:
            summary["label_sensitivity"] = label_sensitivity(fn, split, ecfg, size=size, progress=progress)
        if a.viz:
            from afford.visualize import save_eval_overlays

            save_eval_overlays(split, summary["_maps"], Path(a.viz))
        if save_pred is not None:
            from afford.data.predictions import save_prediction_dir

            n = save_prediction_dir(save_pred, split.test_items(), summary["_maps"])
            summary["saved_predictions"] = str(save_pred)
            print(f"saved {n} maps to {a.save_pred} (<aff>/<obj>/<name>.npy; afford eval --pred scores them the same)")
    summary["split"] = split.name
    _print_summary(title, summary)
    if a.breakdown:
        from afford.metrics.report import format_breakdown

        print(format_breakdown({title: summary}, title, f"per_{a.breakdown}"))
    if a.label_sensitivity:
        from afford.metrics.report import format_label_sensitivity

        print(format_label_sensitivity({title: summary}))
    _write_json(a.json, _public(summary))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from afford.checkpoint import load_run
    from afford.device import resolve_device
    from afford.factory import affordance_run_info
    from afford.predictor import Predictor, prediction_paths, save_prediction

    device = resolve_device(a.device)
    check_image_args(a.images)
    affordance_run_info(a.checkpoint)
    run = load_run(a.checkpoint, device=device)
    pred = Predictor(run, device=str(device), refine=_refiner(a, run), output=a.output)
    if a.affordance:
        pred.label_index(a.affordance)  # validate before touching any image
    check_outputs_spare_inputs(a.images, [q for image in a.images for aff in ([a.affordance] if a.affordance
                                          else pred.affordances) for q in prediction_paths(a.out, Path(image).stem, aff)])
    for image_path in a.images:
        pred.set_image(image_path)
        n = 0
        for aff, m in pred.iter_maps(a.affordance):  # written and dropped one by one: memory of one map
            save_prediction(a.out, Path(image_path).stem, pred.image, {aff: m})
            n += 1
        if not a.quiet:
            print(f"{image_path}: {n} heatmap(s) -> {a.out}")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from afford.importers import import_official

    run_dir = import_official(a.method, a.file, a.out, tokenizer=a.tokenizer)
    print(f"imported official {a.method} checkpoint {a.file} -> {run_dir}")
    return 0


def cmd_refine_train(a: argparse.Namespace) -> int:
    from afford.engine.refinement import train_refiner_for_run

    with sigterm_as_interrupt():
        out = train_refiner_for_run(a.checkpoint, data_root=a.data, split=a.split, epochs=a.epochs, seed=a.seed,
                                    batch_size=a.batch_size, progress=not a.quiet, steps=a.steps, blend=a.blend,
                                    radius=a.radius, resume=a.resume, overrides=a.set or [], device=a.device)
    print(f"affinity refiner trained -> {out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from afford.demo import run_demo

    with sigterm_as_interrupt():
        report = run_demo(Path(a.out), quick=a.quick, seed=a.seed, progress=not a.quiet, overwrite=a.overwrite,
                          jobs=a.jobs)
    print(f"demo report: {report}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from afford.bench import run_bench
    from afford.device import resolve_device

    a.device = str(resolve_device(a.device))  # one line for an unknown device or a CUDA-less torch
    if a.bf16 and a.device == "cpu":
        logging.getLogger("afford").warning("--bf16 on the CPU: several times slower than fp32 on CPUs without "
                                            "AMX/AVX-512 bf16 (about 6-8x here); bf16 is for GPUs")
    if a.eval is not None:
        import torch

        from afford.bench import bench_eval

        r = bench_eval(a.eval, device=a.device, bf16=a.bf16, threads=a.threads, progress=not a.quiet)
        print(f"scoring {r['n_images']} test images ({r['method']} at its paper shape, random weights, batch "
              f"{r['batch_size']}, {a.device}, {'bf16' if a.bf16 else 'fp32'}, {torch.get_num_threads()} threads):\n"
              f"  GT cache build {r['gt_cache_s']:.1f} s (first run only)\n"
              f"  scoring alone (centre baseline maps) {r['score_s']:.1f} s = {r['score_images_per_s']:.0f} images/s\n"
              f"  afford eval of the model (decode, predict, score) {r['eval_s']:.1f} s = "
              f"{r['eval_images_per_s']:.1f} images/s")
        _write_json(a.json, r)
        return 0
    rows, table = run_bench(tuple(a.methods), steps=a.steps, device=a.device, bf16=a.bf16, threads=a.threads,
                            progress=not a.quiet)
    print(table)
    _write_json(a.json, {"machine": table.splitlines()[0], "rows": rows})
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from afford.sweep import format_summary, parse_seeds, run_sweep

    overrides = list(a.set or []) + ([f"train.select={a.select}"] if a.select else [])
    with sigterm_as_interrupt():
        result = run_sweep(a.config, parse_seeds(a.seeds), a.out, overrides, nproc=a.nproc, jobs=a.jobs,
                           progress=not a.quiet)
    print(format_summary(result["summary"], a.config))
    print(f"-> {Path(a.out) / 'summary.md'}, {Path(a.out) / 'summary.json'}")
    return 0


def cmd_app(a: argparse.Namespace) -> int:
    import shutil
    import tempfile

    # Gradio's uploads and answer copies go to a folder of this server's own, removed however it stops
    # (a second signal during Gradio's own cleanup left the user's photos behind); read at gradio's import
    own_tmp = None
    if not os.environ.get("GRADIO_TEMP_DIR"):
        own_tmp = os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="afford_app_gradio_")
    try:
        return _serve_app(a)
    finally:
        if own_tmp is not None:
            shutil.rmtree(own_tmp, ignore_errors=True)
            os.environ.pop("GRADIO_TEMP_DIR", None)


def _serve_app(a: argparse.Namespace) -> int:
    from afford.app.registry import demo_runs, load_registry
    from afford.app.ui import serve
    from afford.device import resolve_device

    paths = a.run or demo_runs(a.demo_out)
    if not paths:
        raise AffordError(f"{a.demo_out}/runs: no trained runs; run 'afford demo' first or pass --run RUN_DIR ...")
    reg = load_registry(paths, detections=a.detections, device=str(resolve_device(a.device)))
    if not reg.affordance and not reg.hoi:
        raise AffordError("no run can be served: " + "; ".join(reg.failed.values()))
    for why in reg.failed.values():
        print(f"afford: warning: {why} (the app shows this and serves the other runs)", file=sys.stderr)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"afford: warning: --host {a.host} serves the page (no login) and its example images to every "
              "machine that can reach this one", file=sys.stderr)
    # SIGTERM (a service manager) and Ctrl-C stop the server alike. While gradio starts, a signal is only
    # noted (an interrupt inside its launch would leave the server's threads running); once it waits,
    # the interrupt ends the wait and gradio closes the server. Gradio swallows that interrupt: the
    # note keeps the exit status 130. The answers' folder goes with the registry at exit.
    stopped: list[int] = []
    waiting = [False]

    def stop(signum: int, frame: object) -> None:
        stopped.append(signum)
        if waiting[0]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    app = serve(reg, host=a.host, port=a.port)
    print(f"serving {len(reg.affordance)} affordance model(s) and {len(reg.hoi)} HOI model(s) from "
          f"{len(paths) - len(reg.failed)} run(s) on http://{a.host}:{a.port}", flush=True)
    waiting[0] = True
    if stopped:
        app.close()
    else:
        app.block_thread()
    if stopped:
        print("afford: interrupted", file=sys.stderr)
        return 130
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from afford.backbones import list_backbones, list_text_encoders
    from afford.baselines import BASELINES
    from afford.factory import METHODS, list_presets, official_methods
    from afford.metrics.saliency import PROTOCOLS
    from afford.refine.defaults import REFINERS

    if a.set and not a.config:
        raise AffordError("list: --set applies to --config PRESET")
    if a.config:
        from afford.config import describe_config, load_config

        print("\n".join(describe_config(load_config(a.config, a.set or []))))
        return 0
    rows = {
        "methods": ", ".join(f"{m} (task {s.task}, recipe {s.recipe})" for m, s in sorted(METHODS.items())),
        "importable": ", ".join(official_methods()) + "  (afford import --method M --file OFFICIAL.pth)",
        "configs": ", ".join(list_presets()),
        "backbones": ", ".join(list_backbones()),
        "text encoders": ", ".join(list_text_encoders()),
        "protocols": ", ".join(PROTOCOLS),
        "baselines": ", ".join(BASELINES) + "  (egocentric-only CAM: afford train egocam_synthagd_demo)",
        "refiners": ", ".join(REFINERS),
    }
    for k, v in rows.items():
        print(f"{k + ':':<15}{v}")
    return 0


REFINE_HELP = ("random walk on feature affinities: 'affinity' uses the run's head trained by 'afford refine train' "
               "(an error if it has none), 'affinity-free' the training-free affinity")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("afford")
    except PackageNotFoundError:
        import afford

        return getattr(afford, "__version__", "unknown")


OUTPUT_HELP = ("which of the method's outputs to use (default: the method's own, e.g. WSMA's refined map; "
               "'raw' is the unrefined CAM)")


def _add_train_parser(sub, help_text: str, config_help: str, task: str | None = None) -> None:  # noqa: ANN001
    """``afford train`` and ``afford hoi train``: one verb, the same engine (``task``: the one the verb
    trains, when it is the HOI verb)."""
    t = sub.add_parser("train", help=help_text)
    t.add_argument("config", help=config_help)
    t.add_argument("--out", required=True, help="run folder to write (run.json, model.safetensors, checkpoints/)")
    t.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="overrides, e.g. --set train.epochs=3 train.lr=0.01 (the flag may also repeat)")
    t.add_argument("--resume", action="store_true", help="continue from the last complete epoch checkpoint in --out")
    t.add_argument("--select", choices=("last", "best-on-test"), default=None,
                   help="which epoch's weights the run keeps (same as --set train.select=...; default: last)")
    t.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                   help="data-parallel processes on this machine, launched with torchrun (gloo on CPU, nccl on "
                        "GPU; the global batch stays train.batch_size; default: 1). Multi-node: run "
                        "'torchrun ... -m afford.cli train ...' yourself (docs/distributed.md)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(fn=cmd_train, task=task)


def build_parser() -> argparse.ArgumentParser:
    # Choices and defaults come from the modules that define them, never retyped here.
    from afford.baselines import BASELINES
    from afford.config import EvalConfig
    from afford.factory import official_methods
    from afford.metrics.saliency import PROTOCOLS
    from afford.refine.defaults import DEFAULT_BLEND, DEFAULT_EPOCHS, DEFAULT_RADIUS, DEFAULT_STEPS, REFINERS

    p = argparse.ArgumentParser(prog="afford", description="Weakly supervised affordance grounding.")
    p.add_argument("--version", action="version", version=f"afford {_version()}", help="print the version and exit")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                      default=logging.INFO, help="also print debug messages")
    loud.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                      help="print only warnings and errors (progress bars: the subcommand's --quiet)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="SynthAGD and SynthHOI -> train every method -> evaluate beside the baselines -> report")
    d.add_argument("--out", default="demo_out",
                   help="output folder: data/, runs/, hoi/, feature_cache/, overlays/, report.md, figure.png, "
                        "metrics.json and the .afford-demo marker (default: demo_out)")
    d.add_argument("--quick", action="store_true",
                   help="smoke test (< 60 s): every row but WSMA, at tiny sizes and a few steps, and a small HOI section")
    d.add_argument("--seed", type=int, default=0, help="seed of the SynthAGD and SynthHOI data and of training (default: 0)")
    d.add_argument("--overwrite", action="store_true",
                   help="run even when OUT is not a previous demo output (no .afford-demo marker): the demo then "
                        "deletes and rewrites OUT/data, OUT/hoi, OUT/feature_cache, OUT/overlays, report.md, "
                        "figure.png, metrics.json and its OUT/runs/<preset> folders")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.add_argument("--jobs", type=positive_int, default=None,
                   help="worker processes training the demo's independent rows side by side (default: one per "
                        "core, the cores shared out as torch threads; 1: one after another in this process, "
                        "with progress bars)")
    d.set_defaults(fn=cmd_demo)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_cmd", required=True)
    import inspect

    from afford.synthagd import SPLITS, generate

    gen = {k: v.default for k, v in inspect.signature(generate).parameters.items()}  # one source of defaults
    s = data.add_parser("synth", help="generate SynthAGD in the AGD20K layout")
    s.add_argument("--out", required=True, help="data root; the split is written to OUT/<Seen|Unseen>, masks "
                   "and HOI boxes to OUT/extras/<Seen|Unseen>")
    s.add_argument("--split", choices=tuple(SPLITS), type=str.lower, default=gen["split"],
                   help="seen or unseen (unseen: test objects absent from training) (default: %(default)s)")
    s.add_argument("--seed", type=int, default=gen["seed"],
                   help="world and image seed; same arguments give byte-identical files (default: %(default)s)")
    s.add_argument("--size", type=positive_int, default=gen["size"], help="image side in pixels (default: %(default)s)")
    s.add_argument("--n-exo", type=positive_int, default=gen["n_exo"],
                   help="exocentric training images per (affordance, object) pair (default: %(default)s)")
    s.add_argument("--n-ego", type=positive_int, default=gen["n_ego"],
                   help="egocentric training images per pair (default: %(default)s)")
    s.add_argument("--n-test", type=positive_int, default=gen["n_test"],
                   help="egocentric test images (with GT) per test pair (default: %(default)s)")
    s.add_argument("--difficulty", type=float, default=gen["difficulty"],
                   help="0..1 clutter/pose realism, 1 = spec (default: %(default)s)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty split and its extras")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_data_synth)
    from afford.hoi.synth import generate_synthhoi

    hg = {k: v.default for k, v in inspect.signature(generate_synthhoi).parameters.items()}
    sh = data.add_parser("synth-hoi", help="generate SynthHOI (HOI detection) in the HICO-DET layout (docs/synthhoi.md)")
    sh.add_argument("--out", required=True, help="dataset root: instances_{train,test}2015.json, images/, "
                    "zero_shot_uc.json")
    sh.add_argument("--seed", type=int, default=hg["seed"],
                    help="same arguments give byte-identical files (default: %(default)s)")
    sh.add_argument("--n-train", type=positive_int, default=hg["n_train"], help="training images (default: %(default)s)")
    sh.add_argument("--n-test", type=positive_int, default=hg["n_test"], help="test images (default: %(default)s)")
    sh.add_argument("--tile", type=positive_int, default=hg["tile"], help="tile side in pixels (default: %(default)s)")
    sh.add_argument("--grid", type=positive_int, default=hg["grid"], help="tiles per image side (default: %(default)s)")
    sh.add_argument("--unseen", type=non_negative_int, default=hg["n_unseen"],
                    help="interaction classes held out of training (unseen compositions) (default: %(default)s)")
    sh.add_argument("--difficulty", type=float, default=hg["difficulty"],
                    help="0..1 clutter/pose realism of the tiles (default: %(default)s)")
    sh.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    sh.add_argument("--quiet", action="store_true", help="no progress bar")
    sh.set_defaults(fn=cmd_data_synth_hoi)
    c = data.add_parser("check", help="validate an AGD20K-format tree, or a HICO-DET-format one with --hoi")
    c.add_argument("root", help="dataset root (the folder holding Seen/, Unseen/, ...; with --hoi the folder holding "
                   "instances_<split>.json and images/<split>/, or the JSON file itself)")
    c.add_argument("--hoi", action="store_true", help="HICO-DET layout: counts, undecodable images, boxes outside "
                   "the image or inverted, unknown class indices")
    c.add_argument("--split", default=None, help="check only this split (default: every split found; with --hoi: "
                   "test2015)")
    c.add_argument("--json", nargs="?", const="-", default=None, help="write JSON (to stdout without a path)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(fn=cmd_data_check)

    hoi = sub.add_parser("hoi", help="human-object interaction detection tools").add_subparsers(
        dest="hoi_cmd", required=True)
    _add_train_parser(hoi, "train an HOI detector from a YAML config (same as 'afford train')",
                      "YAML path or a packaged config name, e.g. clip4hoi_hicodet, clip4hoi_synthhoi_demo", task="hoi")
    he = hoi.add_parser("eval", help="HICO-DET mAP with the official rule (hoi.md §7, §12)")
    src = he.add_mutually_exclusive_group(required=True)
    src.add_argument("--dets", default=None, help="detection file: JSON {image file name: [[hoi, h_x1, h_y1, h_x2, "
                     "h_y2, o_x1, o_y1, o_x2, o_y2, score], ...]}, 0-based HOI index and pixel coordinates")
    src.add_argument("--baseline", choices=("object-prior", "frequency-prior"), default=None,
                     help="score a reference scorer on the ground-truth pairs instead")
    src.add_argument("--checkpoint", default=None, help="run folder of a trained HOI detector (clip4hoi)")
    he.add_argument("--data", default=None, help="HICO-DET-layout root (or its instances_<split>.json); "
                    "default with --checkpoint: the run's data root")
    he.add_argument("--split", default=None, help="annotation split to score against: instances_<split>.json of a "
                    "--data folder (default: test2015); a --data file is read as given")
    he.add_argument("--train", default=None, help="training annotations (instances_train2015.json or its folder): "
                    "the frequency-prior baseline's counts and, for a test file without them, the rare/non-rare "
                    "split (default: the --data folder's)")
    he.add_argument("--mode", choices=("default", "known-object"), default="default",
                    help="Default: every image for every class; Known Object: only images with the class's object")
    he.add_argument("--rule", choices=("official", "pocket"), default="official",
                    help="official: MATLAB ho-rcnn (IoU >= 0.5, +1 pixel convention); pocket: the UPT/pocket "
                    "variant (> 0.5, no +1) for cross-checks, Default mode only (default: %(default)s)")
    he.add_argument("--zero-shot", default=None, metavar="rf-uc|nf-uc|uo|uv|FILE",
                    help="report Full / Unseen / Seen for this unseen list (a name or a file of HOI ids; "
                    "default with --checkpoint: the run's training setting)")
    he.add_argument("--detections", default=None, help="--checkpoint with a cached detector: the test images' "
                    "cached detections, an entry for every image (format: afford hoi predict --help; default: the "
                    "run's model.detections_test)")
    he.add_argument("--save-dets", default=None, metavar="FILE", help="--checkpoint: also write its detections "
                    "in the --dets format")
    he.add_argument("--batch-size", type=positive_int, default=None, help="images per forward pass (--checkpoint)")
    he.add_argument("--device", default="auto", help=DEVICE_HELP)
    he.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    he.add_argument("--quiet", action="store_true", help="no progress bars")
    he.add_argument("--json", default=None, help="write mode, counts, mAP and the per-class AP to this file")
    he.set_defaults(fn=cmd_hoi_eval)
    hp = hoi.add_parser("predict", help="top (human, verb, object) triplets of images: JSON + a picture")
    hp.add_argument("images", nargs="+", help="image files, read upright (EXIF orientation applied) when DETR "
                    "detects; as stored with cached detections, whose boxes are in the stored frame")
    hp.add_argument("--checkpoint", required=True, help="run folder of a trained HOI detector (clip4hoi)")
    hp.add_argument("--out", required=True, help="folder for <image>_hoi.json and <image>_hoi.png")
    hp.add_argument("--detections", default=None, help="cached detections of the images (runs with a cached "
                    "detector): JSON {file name: {boxes: 0-based pixel [x1, y1, x2, y2], scores, labels: the "
                    "dataset's object indices, people its 'person' index}} (default: the run's model.detections_test)")
    hp.add_argument("--top", type=positive_int, default=10, help="triplets per image in the JSON (default: %(default)s)")
    hp.add_argument("--draw", type=non_negative_int, default=3,
                    help="triplets drawn on the picture (default: %(default)s; 0: none)")
    hp.add_argument("--device", default="auto", help=DEVICE_HELP)
    hp.add_argument("--quiet", action="store_true", help="no progress output")
    hp.set_defaults(fn=cmd_hoi_predict)

    _add_train_parser(sub, "train a method from a YAML config", "YAML path or a packaged config name (afford list)")

    e = sub.add_parser("eval", help="score predictions, a baseline or a checkpoint")
    e.add_argument("--data", default=None,
                   help="dataset root in the AGD20K layout (default with --checkpoint: the run's data root)")
    e.add_argument("--split", default=None,
                   help="split folder under --data, e.g. Seen, Unseen (default: the run's split, else Seen)")
    e.add_argument("--pred", help="folder <aff>/<obj>/<name>.png|.npy of saved maps to score (greyscale 8/16-bit PNG, "
                   "read at full depth, or a 2-D array; colour pictures are refused)")
    e.add_argument("--baseline", choices=BASELINES, type=lambda s: "center" if s == "centre" else s,
                   help="score a training-free baseline map (centre: the same as center)")
    e.add_argument("--checkpoint", help="run folder of a trained or imported model to score")
    e.add_argument("--runs", nargs="+", metavar="RUN", default=None,
                   help="instead: score several runs of one config (e.g. seeds; affordance or HOI) on their own "
                        "test sets and print mean ± std per metric and per model-selection rule")
    e.add_argument("--protocol", default=PROTOCOLS[0], choices=PROTOCOLS,
                   help=f"scoring protocol (protocol.md; default: {PROTOCOLS[0]})")
    e.add_argument("--exact", action="store_true", help="reference NaN behaviour for constant maps")
    e.add_argument("--exclude-empty-gt", action="store_true",
                   help="drop all-zero GT images (kept by default, as in the literature)")
    e.add_argument("--refine", choices=REFINERS, default=None, help=REFINE_HELP)
    e.add_argument("--output", default=None, help=OUTPUT_HELP)
    e.add_argument("--json", help="write the metrics as JSON to this path")
    e.add_argument("--viz", help="write overlays to this folder")
    e.add_argument("--save-pred", metavar="DIR",
                   help="also write every scored map to DIR/<aff>/<obj>/<name>.npy (float32, before the protocol's "
                        "resize), the layout --pred reads: re-score them later, under another protocol or beside "
                        "another codebase's maps, without the model")
    e.add_argument("--breakdown", choices=("affordance", "object", "pair"),
                   help="also print KLD / SIM per affordance, object or (affordance, object) pair")
    e.add_argument("--label-sensitivity", action="store_true",
                   help="also score each image with its object's other affordances (does the map follow the label?)")
    e.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"images per forward pass (default: {EvalConfig.batch_size})")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("predict", help="heatmaps for images")
    pr.add_argument("images", nargs="+", help="image files, read upright (a phone photo's EXIF orientation applied, "
                    "as a viewer and the app show it; the maps are at that resolution)")
    pr.add_argument("--checkpoint", required=True, help="run folder of a trained or imported model")
    pr.add_argument("--affordance", help="one affordance to predict (default: every class of the checkpoint)")
    pr.add_argument("--out", required=True, help="folder for <image>_<affordance>.npy, .png and _overlay.png")
    pr.add_argument("--refine", choices=REFINERS, default=None, help=REFINE_HELP)
    pr.add_argument("--output", default=None, help=OUTPUT_HELP)
    pr.add_argument("--device", default="auto", help=DEVICE_HELP)
    pr.add_argument("--quiet", action="store_true", help="no progress output")
    pr.set_defaults(fn=cmd_predict)

    im = sub.add_parser("import", help="convert an official released checkpoint into a run")
    im.add_argument("--method", required=True, choices=official_methods(), help="method the checkpoint belongs to")
    im.add_argument("--file", required=True, help="the official checkpoint file (.pth)")
    im.add_argument("--out", required=True, help="run folder to write")
    im.add_argument("--tokenizer", default=None,
                    help="CLIP BPE vocabulary (bpe .gz file, directory or hub name); default: $AFFORD_CLIP_BPE, "
                         "then the CLIP model's own tokenizer files, then the hub's openai/clip-vit-base-patch16 "
                         "tokenizer (WSMA, SelectiveCL)")
    im.set_defaults(fn=cmd_import)

    rf = sub.add_parser("refine", help="AffinityNet refinement").add_subparsers(dest="refine_cmd", required=True)
    rt = rf.add_parser("train", help="train an affinity head from a trained run's CAMs")
    rt.add_argument("--checkpoint", required=True, help="run folder whose CAMs train the affinity head")
    rt.add_argument("--data", default=None, help="dataset root (default: the run's)")
    rt.add_argument("--split", default=None, help="training split (default: the run's)")
    rt.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help=f"training epochs (default: {DEFAULT_EPOCHS})")
    rt.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    rt.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"random-walk steps t (default: {DEFAULT_STEPS})")
    rt.add_argument("--blend", type=float, default=DEFAULT_BLEND,
                    help=f"lambda: weight of the unrefined map (default: {DEFAULT_BLEND})")
    rt.add_argument("--radius", type=int, default=DEFAULT_RADIUS,
                    help=f"affinity neighbourhood gamma in feature cells (default: {DEFAULT_RADIUS})")
    rt.add_argument("--batch-size", type=positive_int, default=16, help="images per step (default: %(default)s)")
    rt.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                    help="overrides of the head's training config (preset affinity_refiner), e.g. train.lr=0.05 "
                         "model.label_mode=fixed (the flag may also repeat)")
    rt.add_argument("--resume", action="store_true", help="continue the head's training from its last complete epoch "
                    "(RUN/affinity/checkpoints)")
    rt.add_argument("--device", default=None, help="device to train on (default: the run's train.device); "
                    + DEVICE_HELP)
    rt.add_argument("--quiet", action="store_true", help="no progress bars")
    rt.set_defaults(fn=cmd_refine_train)

    from afford.bench import BENCH_METHODS

    bn = sub.add_parser("bench", help="per method: training step uncached / cached, frozen-forward floor, "
                        "inference images/s (random weights, paper shapes)")
    bn.add_argument("--methods", nargs="+", default=list(BENCH_METHODS), choices=BENCH_METHODS,
                    help="methods to measure (default: all)")
    bn.add_argument("--steps", type=positive_int, default=3, help="timed steps per row, median (default: %(default)s)")
    bn.add_argument("--device", default="cpu", help="cpu | cuda (default: %(default)s)")
    bn.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU users; slow on CPUs without AMX)")
    bn.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (default 0: torch's)")
    bn.add_argument("--eval", type=positive_int, nargs="?", const=1675, default=None, metavar="N",
                    help="instead: time scoring a test set of N images (default N: AGD20K Seen's 1,675) through "
                         "the evaluator, the scoring alone and a whole model evaluation")
    bn.add_argument("--json", default=None, help="also write the rows as JSON")
    bn.add_argument("--quiet", action="store_true", help="no progress lines")
    bn.set_defaults(fn=cmd_bench)

    sw = sub.add_parser("sweep", help="train and evaluate one config with several seeds; mean ± std per metric and "
                        "per model-selection rule")
    sw.add_argument("config", help="YAML path or a packaged config name (affordance or HOI)")
    sw.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values (default: %(default)s)")
    sw.add_argument("--out", required=True, help="folder for seed_<s>/ runs, summary.json and summary.md; rerun to "
                    "resume: finished seeds are kept, a partial one resumes")
    sw.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                    help="overrides for every seed, e.g. --set train.epochs=3 train.lr=0.01 (the flag may also repeat)")
    sw.add_argument("--select", choices=("last", "best-on-test"), default=None,
                    help="best-on-test scores every epoch, so the summary also reports the best epoch on the test "
                         "set, labelled as such (the runs then keep that epoch's weights)")
    sw.add_argument("--nproc", type=positive_int, default=1, metavar="N", help="data-parallel processes per seed (torchrun)")
    sw.add_argument("--jobs", type=positive_int, default=1, metavar="J",
                    help="seeds trained at once, in separate processes sharing the cores (default: one after another)")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.set_defaults(fn=cmd_sweep)

    ap = sub.add_parser("app", help="a web page (Gradio) to ground affordances, compare runs and detect "
                        "interactions on uploaded photos; needs the [app] extra")
    ap.add_argument("--run", nargs="+", default=None, metavar="RUN",
                    help="trained or imported run directories, affordance or HOI (default: the runs of --demo-out)")
    ap.add_argument("--demo-out", default="demo_out", help="where 'afford demo' wrote its runs (default: %(default)s)")
    ap.add_argument("--detections", default=None,
                    help="cached detections (JSON per image file name) for an HOI run with model.detector=cached "
                         "(default: the run's own test detections file)")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s; 0.0.0.0 "
                    "for other machines)")
    ap.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="auto | cpu | cuda (default: %(default)s)")
    ap.set_defaults(fn=cmd_app)

    ls = sub.add_parser("list", help="methods, importers, presets, backbones, text encoders, protocols, baselines, refiners")
    ls.add_argument("--config", metavar="PRESET", default=None,
                    help="instead, every config key of a preset (name or YAML path) with its value, the method's "
                         "default where the preset changes it, and what the key means")
    ls.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --config: an override, as in afford train")
    ls.set_defaults(fn=cmd_list)
    _accept_log_flags_after_verbs(p)
    return p


def _accept_log_flags_after_verbs(parser: argparse.ArgumentParser) -> None:
    """``afford train ... -v`` works as ``afford -v train ...``: every verb also takes ``-v`` / ``-q`` (their
    long forms stay global only, since the verbs' own ``--quiet`` means no progress bars)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                loud = verb.add_mutually_exclusive_group()
                loud.add_argument("-v", dest="log_level", action="store_const", const=logging.DEBUG,
                                  default=argparse.SUPPRESS, help="also print debug messages (as afford -v)")
                loud.add_argument("-q", dest="log_level", action="store_const", const=logging.WARNING,
                                  default=argparse.SUPPRESS, help="print only warnings and errors (as afford -q)")
                _accept_log_flags_after_verbs(verb)


def _configure_logging(level: int) -> None:
    """``afford: message`` lines on stderr; afford's own INFO by default, -v for DEBUG, -q for warnings
    only. Other libraries stay at WARNING. An already configured root logger (an embedding
    application, pytest) is left as it is: only the ``afford`` logger's level is set."""
    logging.basicConfig(format="afford: %(message)s", stream=sys.stderr, level=logging.WARNING)
    if os.environ.get("RANK", "0") != "0" and "WORLD_SIZE" in os.environ:
        level = max(level, logging.ERROR)  # a data-parallel run's other processes: rank 0 says it once
    logging.getLogger("afford").setLevel(level)


def _error(message: str) -> None:
    """``afford: error: message`` on stderr, or, in a worker of ``--nproc``, into the file the launcher
    reads: it prints each distinct error once (every rank refusing one config printed it N times)."""
    from afford.engine.launch import worker_error_file

    if (file := worker_error_file()) is not None:
        file.write_text(message, encoding="utf-8")
    else:
        print(f"afford: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --nproc relaunches under torchrun
    _configure_logging(args.log_level)
    try:
        check_output_paths(args)
        return int(args.fn(args) or 0)
    except AffordError as e:
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        from afford.engine.launch import worker_error_file

        if worker_error_file() is None:  # a worker of --nproc: its launcher says it once
            print("afford: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `afford list | head -1`: the reader left; quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # a folder that cannot be written (read-only, full disk) is the user's to fix: one line
        if e.filename is None:
            raise
        _error(f"{e.filename}: {e.strerror or e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
