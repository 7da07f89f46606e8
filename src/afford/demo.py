"""``afford demo``: the embedded default job, runnable anywhere with no downloads.

Generates SynthAGD, trains the methods on a frozen, randomly initialised tiny ViT (no pretrained
weights exist offline; see configs/*_synthagd_demo.yaml for the documented deviations from the
papers), evaluates them beside the four baselines of synthagd.md (uniform, centre, whole object,
egocentric-only CAM) under the standard protocol, and writes ``report.md``, ``metrics.json`` and
overlay PNGs. Then the HOI section: SynthHOI, CLIP4HOI (reconstruction) beside the two HOI
baselines (:mod:`afford.hoi.demo`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from afford.config import EvalConfig, RunConfig, load_config
from afford.data.agd20k import open_split
from afford.errors import AffordError
from afford.factory import METHODS, method_spec
from afford.hoi.demo import HOI_FULL, HOI_QUICK, HOIDemoPlan, run_hoi_demo
from afford.metrics.report import format_breakdown, format_table, wins_over
from afford.synthagd import generate


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run; ``quick`` is the smoke-test plan."""

    size: int
    difficulty: float
    n_exo: int
    n_ego: int
    n_test: int
    epochs: int
    max_steps: int
    methods: tuple[str, ...]
    ego_cam: bool = True  # the egocentric-only CAM baseline row (synthagd.md)
    refined: tuple[str, ...] = ("locate",)  # methods that also get an AffinityNet-refined row
    # (method, output, row label): other named outputs scored beside the default one
    extra_outputs: tuple[tuple[str, str, str], ...] = (("selectivecl", "raw", "raw CAM (a)"),)
    # Demo-only prerequisites (method -> (run to train first, config key taking it)); the registry's
    # ``needs`` are the methods' own (LoopTrans's cluster module). Offline SelectiveCL gets a tiny
    # CLIP trained on SynthAGD's weak labels instead of OpenAI's, so its object affinity means something.
    demo_needs: tuple[tuple[str, tuple[str, str]], ...] = (("selectivecl", ("synth_clip", "model.clip_weights")),)
    score_needed: tuple[str, ...] = ("synth_clip",)  # prerequisites that are grounders get a row too
    # (method, label of its default-output row) where the method has several outputs
    default_labels: tuple[tuple[str, str], ...] = (("selectivecl", "calibrated (b)"),)
    refine_epochs: int = 2
    refine_radius: int = 5  # gamma in feature cells; must fit the grid (7x7 in the quick plan)
    hoi: HOIDemoPlan | None = None  # the HOI section (SynthHOI, CLIP4HOI against the HOI baselines)


# epochs=0 keeps each preset's own epoch count.
FULL = DemoPlan(size=128, difficulty=0.3, n_exo=32, n_ego=12, n_test=4, epochs=0, max_steps=0,
                methods=("locate", "wsma", "looptrans", "selectivecl"), hoi=HOI_FULL)
QUICK = DemoPlan(size=64, difficulty=0.3, n_exo=4, n_ego=2, n_test=1, epochs=1, max_steps=4,
                 methods=("locate", "looptrans", "selectivecl"),
                 refine_epochs=1, refine_radius=3, hoi=HOI_QUICK)


def _method_config(preset: str, data_root: Path, plan: DemoPlan, seed: int, extra: tuple[str, ...] = ()):
    # The frozen-feature cache (on in the demo presets) lives in the demo's own folder, next to its data.
    overrides = [f"data.root={data_root}", "data.split=Seen", f"train.seed={seed}",
                 f"data.cache_dir={data_root.parent / 'feature_cache'}", *extra]
    if plan.epochs:
        overrides.append(f"train.epochs={plan.epochs}")
    if plan.max_steps:
        overrides.append(f"train.max_steps_per_epoch={plan.max_steps}")
    if plan is QUICK:
        overrides += ["data.resize=64", "data.crop=56", "data.test_size=56"]
    return load_config(f"{preset}_synthagd_demo", overrides)


MARKER = ".afford-demo"  # written into every demo output folder: what the demo may delete later
_MARKER_TEXT = json.dumps({"made_by": "afford demo", "format": 1}) + "\n"


def _is_demo_output(out: Path) -> bool:
    """Whether ``out`` holds the marker that ``afford demo`` writes into its own output folder."""
    try:
        info = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("made_by") == "afford demo"


def _claim_output(out: Path, overwrite: bool) -> None:
    """Refuse (before anything is written) to replace ``out/data``, ``out/runs`` or ``out/hoi`` that afford did
    not create: ``afford demo --out .`` inside a project must not delete ``./data``. Then mark ``out``."""
    if not overwrite and not _is_demo_output(out):
        for p in (out / "data", out / "runs", out / "hoi", out / "feature_cache"):
            if p.is_symlink() or (p.exists() and (not p.is_dir() or any(p.iterdir()))):
                raise AffordError(f"{p} exists and is not an afford demo output (no {out / MARKER}); "
                                  "choose another --out, or pass --overwrite to replace its data/ and runs/")
    out.mkdir(parents=True, exist_ok=True)
    if not _is_demo_output(out):
        (out / MARKER).write_text(_MARKER_TEXT)


def _remove(path: Path) -> None:
    """Delete a previous demo output (``_claim_output`` has checked that the demo may)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def run_demo(out: Path, quick: bool = False, seed: int = 0, progress: bool = True,
             overwrite: bool = False) -> Path:
    """Run the whole pipeline into ``out``; returns the path of ``report.md``.

    ``out/data`` and ``out/runs/<preset>`` are replaced only when ``out`` is a previous demo output
    (it holds ``.afford-demo``) or with ``overwrite``; otherwise existing files raise AffordError.
    """
    _claim_output(out, overwrite)
    from afford.checkpoint import load_run
    from afford.device import resolve_device
    from afford.engine.evaluator import (
        evaluate_baseline,
        evaluate_fn,
        evaluate_method,
        label_sensitivity,
        method_map_fn,
    )
    from afford.engine.refinement import refined, refiner_for_run, train_refiner_for_run
    from afford.engine.tasks import WSAGTask
    from afford.engine.trainer import train
    from afford.visualize import save_eval_overlays

    plan = QUICK if quick else FULL
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    data_root = out / "data"
    _remove(data_root)
    _remove(out / "feature_cache")  # keyed by content, but a new dataset makes the old entries dead weight
    t0 = time.perf_counter()
    generate(data_root, split="seen", seed=seed, size=plan.size, n_exo=plan.n_exo, n_ego=plan.n_ego,
             n_test=plan.n_test, difficulty=plan.difficulty, progress=progress)
    timings["synthagd"] = time.perf_counter() - t0
    split = open_split(data_root, "Seen")
    ecfg = EvalConfig()

    rows: dict[str, dict] = {}
    for kind in ("uniform", "center", "object"):
        rows[f"baseline: {kind}"] = evaluate_baseline(kind, split, ecfg, progress=progress)

    overlays = out / "overlays"
    device = resolve_device("cpu")
    task = WSAGTask(split)

    def train_needed(preset: str) -> tuple[str, ...]:
        """Train the run ``preset``'s method needs first (LoopTrans: its cluster module, without
        labels); returns the override that points the method's config at it."""
        spec = method_spec(preset) if preset in METHODS else None
        needs = dict(plan.demo_needs).get(preset) or (spec.needs if spec else None)
        if needs is None:
            return ()
        needed, key = needs
        cfg = _method_config(needed, data_root, plan, seed)
        run_dir = out / "runs" / needed
        _remove(run_dir)
        t0 = time.perf_counter()
        result = train(cfg, run_dir, progress=progress)  # its own task (registry), e.g. label-free images
        timings[f"train {needed}"] = time.perf_counter() - t0
        if needed in plan.score_needed:  # a grounder itself (the tiny CLIP's affinity map): show it
            title = method_spec(needed).display_name(needed)
            score(load_run(run_dir), needed, f"{title}: affinity map alone ({result.selection['rule']})",
                  cfg.data.test_size, result.selection)
        return (f"{key}={run_dir}",)

    def score(run, preset: str, row: str, size: int, selection: dict, output: str | None = None) -> None:
        """Score one named output of a trained run (default: the method's) into ``rows[row]``."""
        t0 = time.perf_counter()
        ocfg = dataclasses.replace(ecfg, output=output)
        summary = evaluate_method(run.method, split, ocfg, device, size=size, progress=progress, keep_maps=True)
        timings[f"eval {preset}" + (f" {output}" if output else "")] = time.perf_counter() - t0
        save_eval_overlays(split, summary.pop("_maps"), overlays / (preset + (f"_{output}" if output else "")))
        summary["label_sensitivity"] = label_sensitivity(method_map_fn(run.method, device, output=output), split,
                                                         ecfg, size=size, progress=progress)
        summary["selection"] = selection
        rows[row] = summary

    def train_eval(preset: str, row: str) -> tuple[Path, RunConfig, dict]:
        """Train ``<preset>_synthagd_demo`` and score its default output (and any ``extra_outputs``);
        the report row is ``row``."""
        cfg = _method_config(preset, data_root, plan, seed, train_needed(preset))
        run_dir = out / "runs" / preset
        _remove(run_dir)
        t0 = time.perf_counter()
        result = train(cfg, run_dir, progress=progress, task=task)
        timings[f"train {preset}"] = time.perf_counter() - t0
        run = load_run(run_dir)
        rule = result.selection["rule"]
        score(run, preset, row.format(rule=rule), cfg.data.test_size, result.selection)
        for method, output, label in plan.extra_outputs:
            if method == preset:
                title = method_spec(method).display_name(method)
                score(run, preset, f"{title} {label} (tiny ViT, {rule})", cfg.data.test_size, result.selection, output)
        return run_dir, cfg, result.selection

    if plan.ego_cam:
        train_eval("egocam", "baseline: ego-only CAM (tiny ViT, {rule})")
    for method in plan.methods:
        title = method_spec(method).display_name(method)
        label = dict(plan.default_labels).get(method)
        run_dir, cfg, selection = train_eval(method, f"{title}{' ' + label if label else ''} (tiny ViT, {{rule}})")
        if method in plan.refined:
            t0 = time.perf_counter()
            train_refiner_for_run(run_dir, epochs=plan.refine_epochs, seed=seed, progress=progress,
                                  radius=plan.refine_radius)
            timings["train affinity head"] = time.perf_counter() - t0
            run = load_run(run_dir)
            refine = refiner_for_run(run, "affinity")
            refined_fn = refined(method_map_fn(run.method, device), refine)
            t0 = time.perf_counter()
            row = evaluate_fn(refined_fn, split, ecfg, size=cfg.data.test_size, progress=progress)
            row["label_sensitivity"] = label_sensitivity(refined_fn, split, ecfg, size=cfg.data.test_size,
                                                         progress=progress)
            timings[f"eval {method}+affinity"] = time.perf_counter() - t0
            row["refine"] = refine.params
            row["selection"] = selection
            rows[f"{title} + AffinityNet refinement (trained affinity head)"] = row

    hoi_lines: list[str] = []
    if plan.hoi is not None:
        hoi_metrics, hoi_lines = run_hoi_demo(out, plan.hoi, seed, progress, timings)
        (out / "hoi" / "metrics.json").write_text(json.dumps(hoi_metrics, indent=2, default=float))
    timings["total"] = time.perf_counter() - t_start
    metrics = {name: {k: v for k, v in s.items() if not k.startswith("_")} for name, s in rows.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    report = out / "report.md"
    report.write_text(_report_text(rows, plan, seed, timings, hoi_lines))
    return report


def _report_text(rows: dict[str, dict], plan: DemoPlan, seed: int, timings: dict[str, float],
                 hoi_lines: list[str] = ()) -> str:
    lines = [
        "# afford demo on SynthAGD (Seen)",
        "",
        f"SynthAGD seed {seed}, {plan.size} px, difficulty {plan.difficulty}; methods trained on CPU "
        f"(torch {torch.__version__}) on a frozen randomly initialised tiny ViT (no pretrained weights "
        "offline; see configs/*_synthagd_demo.yaml for the documented deviations from the papers).",
        "Protocol: standard (protocol.md §3; NSS with the OOAL std epsilon, so constant maps score 0 "
        "instead of nan). Model selection: last epoch (no test-set selection).",
        "",
        format_table(rows),
        "",
        "KLD lower is better; SIM and NSS higher. A method works on SynthAGD when it beats the",
        "non-oracle baselines (uniform, centre, egocentric-only CAM) on KLD and SIM (synthagd.md). The",
        "whole-object map is an oracle (it reads SynthAGD's object masks): beating it is a research goal.",
        "",
        *_output_text(rows, plan),
        *_breakdown_text(rows),
        *_label_text(rows),
        *hoi_lines,
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
        "",
    ]
    return "\n".join(lines)


def _output_text(rows: dict[str, dict], plan: DemoPlan) -> list[str]:
    """One method, two of its outputs: what the default output adds to the other (SelectiveCL's
    calibration (b) against its raw CAM (a))."""
    lines = []
    for method, _output, label in plan.extra_outputs:
        title = method_spec(method).display_name(method)
        other = next((r for n, r in rows.items() if n.startswith(f"{title} {label} (")), None)
        main_label = dict(plan.default_labels).get(method, "")
        main = next((r for n, r in rows.items() if n.startswith(f"{title} {main_label}".rstrip() + " (")), None)
        if other is None or main is None:
            continue
        lines.append(f"- {title}: {main_label or 'default output'} KLD {main['KLD']:.3f} / SIM {main['SIM']:.3f} / "
                     f"NSS {main['NSS']:.3f} against {label} {other['KLD']:.3f} / {other['SIM']:.3f} / {other['NSS']:.3f}.")
    if not lines:
        return []
    return ["## One method, two outputs", "",
            "SelectiveCL calibrates its CAM with a CLIP object-affinity map (b); its raw CAM is (a). No CLIP "
            "weights exist offline, so the demo's CLIP is afford's tiny CLIP trained first on SynthAGD's "
            "training images and their affordance labels (`synth_clip`, not OpenAI's; its affinity map is "
            "scored alone in its own row). (b) against (a) measures what that weak affinity adds, not the "
            "paper's calibration with OpenAI CLIP.", "", *lines, ""]


def _label_text(rows: dict[str, dict]) -> list[str]:
    """Right-label against wrong-label scores: whether each method's map follows the affordance."""
    from afford.metrics.report import format_label_sensitivity

    ls = [r["label_sensitivity"] for r in rows.values() if r.get("label_sensitivity")]
    if not ls:
        return []
    return ["## Label sensitivity: does the map follow the affordance asked for?", "",
            f"On the {ls[0]['n_images']} test images whose object carries two or more affordances, each map "
            "predicted for the image's own affordance (right label) against the maps predicted for the "
            "object's other affordances (wrong label), scored against the same GT. A method that reads the "
            "label scores worse with a wrong one; a label-blind method scores the same and its maps "
            "correlate near 1 (methods.md §1.6). The whole-object map is label-blind by construction.", "",
            format_label_sensitivity(rows), ""]


def _breakdown_text(rows: dict[str, dict], reference: str = "baseline: object") -> list[str]:
    """Per-affordance comparison of each method with the whole-object map: where the
    exocentric transfer finds the part and where it does not (label insensitivity)."""
    methods = [n for n in rows if not n.startswith("baseline: ")]
    if reference not in rows or not methods:
        return []

    def short(name: str) -> str:
        return name.split(" (")[0].removeprefix("baseline: ")

    sub = {short(n): rows[n] for n in (reference, *methods)}
    n_aff = len(rows[reference].get("per_affordance", {}))
    lines = ["## Per affordance, against the whole-object baseline", "",
             "`*`: the method beats the object map on both KLD and SIM for that affordance.", "",
             format_breakdown(sub, short(reference)), ""]
    for n in methods:
        won = wins_over(rows, n, reference)
        lines.append(f"- {n}: {len(won)} of {n_aff} affordances" + (f" ({', '.join(won)})" if won else ""))
    return [*lines, ""]


