"""``afford demo``: the embedded default job, runnable anywhere with no downloads.

Generates SynthAGD, trains the methods on a frozen, randomly initialised tiny ViT (no pretrained
weights exist offline; see configs/*_synthagd_demo.yaml for the documented deviations from the
papers), evaluates them beside the four baselines of synthagd.md (uniform, centre, whole object,
egocentric-only CAM) under the standard protocol, and writes ``report.md``, ``metrics.json`` and
overlay PNGs. Then the HOI section: SynthHOI, CLIP4HOI (reconstruction) beside the two HOI
baselines (:mod:`afford.hoi.demo`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import re
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import torch

from afford import strict_json
from afford.config import EvalConfig, load_config
from afford.data.agd20k import open_split
from afford.device import usable_cores
from afford.errors import AffordError, first_line
from afford.factory import METHODS, method_spec
from afford.hoi.demo import HOI_FULL, HOI_QUICK, HOIDemoPlan, run_hoi_demo
from afford.metrics.report import format_breakdown, format_table, wins_over
from afford.synthagd import generate

log = logging.getLogger(__name__)


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
    refine_epochs: int = 1
    refine_radius: int = 5  # gamma in feature cells; must fit the grid (7x7 in the quick plan)
    hoi: HOIDemoPlan | None = None  # the HOI section (SynthHOI, CLIP4HOI against the HOI baselines)


# epochs=0 keeps each preset's own epoch count.
FULL = DemoPlan(size=128, difficulty=0.3, n_exo=16, n_ego=8, n_test=4, epochs=0, max_steps=0,
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
        for p in (out / "data", out / "runs", out / "hoi", out / "feature_cache", out / "overlays"):
            if p.is_symlink() or (p.exists() and (not p.is_dir() or any(p.iterdir()))):
                raise AffordError(f"{p} exists and is not an afford demo output (no {out / MARKER}); "
                                  "choose another --out, or pass --overwrite to replace its data/ and runs/")
        for p in (out / name for name in REPORT_FILES):
            if p.exists() or p.is_symlink():
                raise AffordError(f"{p} exists and is not an afford demo output (no {out / MARKER}); "
                                  "choose another --out, or pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    if not _is_demo_output(out):
        (out / MARKER).write_text(_MARKER_TEXT)


#: what the demo writes at the top of ``--out`` (removed when a rerun starts: a failed rerun must
#: not leave the previous run's report beside the new data)
REPORT_FILES = ("report.md", "metrics.json", "figure.png")


def _remove(path: Path) -> None:
    """Delete a previous demo output (``_claim_output`` has checked that the demo may)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _jobs(plan: DemoPlan) -> list[str]:
    """The demo's independent jobs, in report order: each trains one row's method (with its
    prerequisites and refinement) and scores it; ``hoi`` is the HOI section."""
    return [*(["egocam"] if plan.ego_cam else []), *plan.methods, *(["hoi"] if plan.hoi is not None else [])]


#: Seconds of each job in one worker of two on 2 cores (measured, full plan): to share them out.
_JOB_COST = {"selectivecl": 180.0, "locate": 143.0, "wsma": 132.0, "hoi": 95.0, "looptrans": 92.0, "egocam": 30.0}


def partition_jobs(names: list[str], workers: int, cost: dict[str, float] | None = None) -> list[list[str]]:
    """Share the jobs out so that the busiest worker's estimated load is smallest (exhaustive for a
    few jobs, longest-first greedy beyond); each list keeps report order."""
    cost = cost or _JOB_COST
    est = [cost.get(n, 60.0) for n in names]
    if workers <= 1 or len(names) <= 1:
        return [list(names)]
    best: list[int] | None = None
    if workers ** len(names) <= 50_000:
        best_load = float("inf")
        for code in range(workers ** len(names)):
            assign, load = [], [0.0] * workers
            for e in est:
                code, w = divmod(code, workers)
                assign.append(w)
                load[w] += e
            if max(load) < best_load - 1e-9:
                best, best_load = assign, max(load)
    else:
        load = [0.0] * workers
        best = [0] * len(names)
        for i in sorted(range(len(names)), key=lambda i: -est[i]):
            w = min(range(workers), key=lambda w: load[w])
            best[i], load[w] = w, load[w] + est[i]
    lists = [[n for n, w in zip(names, best, strict=True) if w == k] for k in range(workers)]
    return [group for group in lists if group]


def resolve_jobs(jobs: int | None, n_jobs: int) -> tuple[int, int | None]:
    """(worker processes, torch threads per worker): by default one worker per core (at most one
    per job), the cores shared out; ``jobs=1`` runs in this process with torch's own threads."""
    cores = usable_cores()
    if jobs is not None and jobs < 1:
        raise AffordError(f"--jobs: expected a positive number of worker processes, got {jobs}")
    workers = min(jobs or cores, max(n_jobs, 1))
    return workers, (max(1, cores // workers) if workers > 1 else None)


@dataclass
class JobResult:
    """What one job hands back to the report: its rows (in order), timings and scored maps."""

    rows: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    maps: dict[str, list] = field(default_factory=dict)  # row -> maps index-aligned with the test items
    hoi: tuple[dict, list[str]] | None = None


def run_job(out: Path, quick: bool, seed: int, name: str, progress: bool = True) -> JobResult:
    """Run one demo job into ``out`` (in this process or a worker's; picklable arguments only)."""
    plan = QUICK if quick else FULL
    res = JobResult()
    if name == "hoi":
        assert plan.hoi is not None
        res.hoi = run_hoi_demo(out, plan.hoi, seed, progress, res.timings)
        return res
    _MethodJob(out, plan, seed, progress, res).run(name)
    return res


class _MethodJob:
    """Train one affordance row (its prerequisites first) and score its outputs into a JobResult."""

    def __init__(self, out: Path, plan: DemoPlan, seed: int, progress: bool, res: JobResult) -> None:
        from afford.device import resolve_device
        from afford.engine.tasks import WSAGTask

        self.out, self.plan, self.seed, self.progress, self.res = out, plan, seed, progress, res
        self.data_root = out / "data"
        self.split = open_split(self.data_root, "Seen")
        self.ecfg = EvalConfig()
        self.device = resolve_device("cpu")
        self.task = WSAGTask(self.split)

    def _timed(self, key: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        self.res.timings[key] = time.perf_counter() - t0
        return value

    def train_needed(self, preset: str) -> tuple[str, ...]:
        """Train the run ``preset``'s method needs first (LoopTrans: its cluster module, without
        labels); returns the override that points the method's config at it."""
        from afford.checkpoint import load_run
        from afford.engine.trainer import train

        spec = method_spec(preset) if preset in METHODS else None
        needs = dict(self.plan.demo_needs).get(preset) or (spec.needs if spec else None)
        if needs is None:
            return ()
        needed, key = needs
        cfg = _method_config(needed, self.data_root, self.plan, self.seed)
        run_dir = self.out / "runs" / needed
        _remove(run_dir)
        result = self._timed(f"train {needed}", train, cfg, run_dir, progress=self.progress)  # its own task
        if needed in self.plan.score_needed:  # a grounder itself (the tiny CLIP's affinity map): show it
            title = method_spec(needed).display_name(needed)
            self.score(load_run(run_dir), needed, f"{title}: affinity map alone ({result.selection['rule']})",
                       cfg.data.test_size, result.selection)
        return (f"{key}={run_dir}",)

    def score(self, run, preset: str, row: str, size: int, selection: dict, output: str | None = None) -> None:
        """Score one named output of a trained run (default: the method's) into ``rows[row]``."""
        from afford.engine.evaluator import evaluate_method, method_map_fn
        from afford.visualize import save_eval_overlays

        t0 = time.perf_counter()
        ocfg = dataclasses.replace(self.ecfg, output=output)
        summary = evaluate_method(run.method, self.split, ocfg, self.device, size=size, progress=self.progress,
                                  keep_maps=True)
        save_eval_overlays(self.split, summary["_maps"],
                           self.out / "overlays" / (preset + (f"_{output}" if output else "")))
        self._record(row, summary, method_map_fn(run.method, self.device, output=output), size, selection)
        self.res.timings[f"eval {preset}" + (f" {output}" if output else "")] = time.perf_counter() - t0

    def _record(self, row: str, summary: dict, map_fn, size: int, selection: dict) -> None:
        """Add the label-sensitivity check and the selection to a scored row; keep its maps for the figure."""
        from afford.engine.evaluator import label_sensitivity

        self.res.maps[row] = [m.float().numpy() for m in summary.pop("_maps")]
        summary["label_sensitivity"] = label_sensitivity(map_fn, self.split, self.ecfg, size=size,
                                                         progress=self.progress)
        summary["selection"] = selection
        self.res.rows[row] = summary

    def run(self, preset: str) -> None:
        """Train ``<preset>_synthagd_demo``, score its default output, any ``extra_outputs`` and, for
        the ``refined`` methods, the AffinityNet-refined maps."""
        from afford.checkpoint import load_run
        from afford.engine.trainer import train

        plan = self.plan
        if preset == "egocam":  # a preset of LOCATE's ego-only mode, not a method
            title, row = "ego-only CAM", "baseline: ego-only CAM (tiny ViT, {rule})"
        else:
            title = method_spec(preset).display_name(preset)
            label = dict(plan.default_labels).get(preset)
            row = f"{title}{' ' + label if label else ''} (tiny ViT, {{rule}})"
        cfg = _method_config(preset, self.data_root, plan, self.seed, self.train_needed(preset))
        run_dir = self.out / "runs" / preset
        _remove(run_dir)
        result = self._timed(f"train {preset}", train, cfg, run_dir, progress=self.progress, task=self.task)
        run = load_run(run_dir)
        rule = result.selection["rule"]
        self.score(run, preset, row.format(rule=rule), cfg.data.test_size, result.selection)
        for method, output, label in plan.extra_outputs:
            if method == preset:
                self.score(run, preset, f"{title} {label} (tiny ViT, {rule})", cfg.data.test_size,
                           result.selection, output)
        if preset in plan.refined:
            self.refine(run_dir, title, cfg.data.test_size, result.selection)

    def refine(self, run_dir: Path, title: str, size: int, selection: dict) -> None:
        """The AffinityNet-refined row of a trained run (its affinity head trained on the run's CAMs)."""
        from afford.checkpoint import load_run
        from afford.engine.evaluator import check_output_protocol, evaluate_fn, method_map_fn
        from afford.engine.refinement import refined, refiner_for_run, train_refiner_for_run

        self._timed("train affinity head", train_refiner_for_run, run_dir, epochs=self.plan.refine_epochs,
                    seed=self.seed, progress=self.progress, radius=self.plan.refine_radius)
        run = load_run(run_dir)
        refine = refiner_for_run(run, "affinity")
        which = check_output_protocol(run.method, self.ecfg, refined=True)  # recorded as `afford eval` does
        refined_fn = refined(method_map_fn(run.method, self.device, output=which["output"]), refine)
        t0 = time.perf_counter()
        summary = evaluate_fn(refined_fn, self.split, self.ecfg, size=size, progress=self.progress, keep_maps=True)
        summary.update(which, refine=refine.params)
        self._record(f"{title} + AffinityNet refinement (trained affinity head)", summary, refined_fn, size, selection)
        self.res.timings[f"eval {run_dir.name}+affinity"] = time.perf_counter() - t0


def _start_workers(n_jobs: int, jobs: int | None) -> tuple[ProcessPoolExecutor | None, int]:
    """The worker pool (None: run in this process) and its size; its workers start importing torch and afford at
    once, while this process generates the data."""
    workers, threads = resolve_jobs(jobs, n_jobs)
    if workers == 1:
        return None, 1
    log.info("running %d jobs in %d worker processes, %d torch thread(s) each", n_jobs, workers, threads)
    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools started is unsafe
    level = logging.getLogger("afford").getEffectiveLevel()
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, level))
    for _ in range(workers):
        pool.submit(_ready)
    return pool, workers


def _init_worker(threads: int, level: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(format="afford: %(message)s", level=logging.WARNING)
    # Only the demo's own lines (a job done); the jobs' info lines, interleaved from two workers, are noise.
    logging.getLogger("afford").setLevel(max(level, logging.WARNING))
    log.setLevel(level)
    from tqdm import tqdm

    import afford.engine.trainer  # noqa: F401  the heavy imports (transformers), done while data generates
    import afford.factory  # noqa: F401

    # tqdm's default lock is a multiprocessing one: a worker stopped by Ctrl-C left it behind, and the
    # resource tracker warned of "leaked semaphore objects" after the one-line message; a worker's bars
    # are its own, so a thread lock does
    tqdm.set_lock(threading.RLock())


def _ready() -> None:
    pass


#: Where each worker names the job it is running (a file per process id), so that the parent can say
#: which jobs were under way when a worker was killed: the pool itself only reports that one died.
RUNNING_DIR = ".running"


def running_jobs(out: Path) -> list[str]:
    """The jobs the workers said they were running (see :data:`RUNNING_DIR`)."""
    names = []
    for f in sorted((out / RUNNING_DIR).glob("*")):
        with contextlib.suppress(OSError):
            names.append(f.read_text())
    return sorted(n for n in names if n)


def run_jobs(out: Path, quick: bool, seed: int, names: list[str], t0: float) -> dict[str, JobResult]:
    """One worker's share of the jobs, one after another (a line logged as each ends)."""
    results = {}
    running = out / RUNNING_DIR / str(os.getpid())
    running.parent.mkdir(parents=True, exist_ok=True)
    try:
        for name in names:
            running.write_text(name)
            results[name] = _run_one(out, quick, seed, name, t0)
    finally:
        running.unlink(missing_ok=True)
    return results


def _run_one(out: Path, quick: bool, seed: int, name: str, t0: float) -> JobResult:
    try:
        result = run_job(out, quick, seed, name, progress=False)
    except AffordError as e:
        raise AffordError(f"demo job {name}: {e}") from None
    except Exception as e:  # a bug: its traceback here, the job's name in the parent's one line
        log.exception("demo job %s failed", name)
        raise AffordError(f"demo job {name} failed ({type(e).__name__}: {first_line(e)}; traceback above)") \
            from None
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    log.info("[%3.0f s] done: %s (%s)", time.time() - t0, name, spent)
    return result


def _run_jobs(pool: ProcessPoolExecutor | None, workers: int, out: Path, quick: bool, seed: int, names: list[str],
              progress: bool) -> dict[str, JobResult]:
    """Run the jobs in this process (no pool) or shared out over the pool's workers."""
    if pool is None:
        return {n: run_job(out, quick, seed, n, progress) for n in names}
    results: dict[str, JobResult] = {}
    shares = partition_jobs(names, workers)
    try:
        futures = [pool.submit(run_jobs, out, quick, seed, share, time.time()) for share in shares]
        for fut in as_completed(futures):
            results.update(fut.result())  # a failed job raises here; the caller shuts the pool down
    except BrokenProcessPool as e:
        running = running_jobs(out)
        during = f" while the workers ran {', '.join(running)}" if running else ""
        raise AffordError(f"a demo worker process died (killed, or out of memory){during}; rerun with --jobs 1 to "
                          "train the rows one after another in this process") from e
    finally:
        shutil.rmtree(out / RUNNING_DIR, ignore_errors=True)
    return {n: results[n] for n in names}


def run_demo(out: Path, quick: bool = False, seed: int = 0, progress: bool = True,
             overwrite: bool = False, jobs: int | None = None) -> Path:
    """Run the whole pipeline into ``out``; returns the path of ``report.md``.

    ``out/data`` and ``out/runs/<preset>`` are replaced only when ``out`` is a previous demo output
    (it holds ``.afford-demo``) or with ``overwrite``; otherwise existing files raise AffordError.
    The trainings are independent jobs; ``jobs`` worker processes run them side by side (default:
    one per core; each job's numbers depend only on its seed and its torch thread count).
    """
    _claim_output(out, overwrite)
    shutil.rmtree(out / RUNNING_DIR, ignore_errors=True)  # left by a demo killed with its workers
    plan = QUICK if quick else FULL
    t_start = time.perf_counter()
    names = _jobs(plan)
    pool, workers = _start_workers(len(names), jobs)
    try:
        report = _run_demo(out, plan, quick, seed, progress, names, pool, workers, t_start)
    except BaseException:
        if pool is not None:  # a failed job, Ctrl-C or SIGTERM: the other workers stop now, not after their share
            _stop_workers(pool)
        raise
    if pool is not None:
        pool.shutdown()
    return report


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's processes (``shutdown`` alone waits for the jobs they are running)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _run_demo(out: Path, plan: DemoPlan, quick: bool, seed: int, progress: bool, names: list[str],
              pool: ProcessPoolExecutor | None, workers: int, t_start: float) -> Path:
    from afford.engine.evaluator import evaluate_baseline

    timings: dict[str, float] = {}
    data_root = out / "data"
    for stale in (*REPORT_FILES, "overlays"):
        _remove(out / stale)
    _remove(data_root)
    _remove(out / "feature_cache")  # keyed by content, but a new dataset makes the old entries dead weight
    t0 = time.perf_counter()
    generate(data_root, split="seen", seed=seed, size=plan.size, n_exo=plan.n_exo, n_ego=plan.n_ego,
             n_test=plan.n_test, difficulty=plan.difficulty, progress=progress)
    timings["synthagd"] = time.perf_counter() - t0
    split = open_split(data_root, "Seen")
    rows: dict[str, dict] = {}
    for kind in ("uniform", "center", "object"):
        rows[f"baseline: {kind}"] = evaluate_baseline(kind, split, EvalConfig(), progress=progress)

    t0 = time.perf_counter()
    results = _run_jobs(pool, workers, out, quick, seed, names, progress)
    timings["jobs (wall)"] = time.perf_counter() - t0
    maps: dict[str, list] = {}
    hoi_lines: list[str] = []
    for name in names:  # report order, whatever order the jobs finished in
        res = results[name]
        rows.update(res.rows)
        maps.update(res.maps)
        timings.update(res.timings)
        if res.hoi is not None:
            hoi_metrics, hoi_lines = res.hoi
            (out / "hoi" / "metrics.json").write_text(strict_json.dumps(hoi_metrics, indent=2, default=float))
    figure = _figure(out, split, rows, maps)
    timings["total"] = time.perf_counter() - t_start
    metrics = {name: {k: v for k, v in s.items() if not k.startswith("_")} for name, s in rows.items()}
    (out / "metrics.json").write_text(strict_json.dumps(metrics, indent=2, default=float))
    report = out / "report.md"
    report.write_text(_report_text(rows, plan, seed, timings, hoi_lines, figure))
    return report


def _figure(out: Path, split, rows: dict[str, dict], maps: dict[str, list], n_images: int = 4) -> Path | None:
    """The report's opening picture: a few test images (different affordances), their ground truth
    and every trained row's map."""
    from afford.visualize import comparison_figure

    if not maps:
        return None
    items = split.test_items()
    picks, seen = [], set()
    for i, it in enumerate(items):  # the first image of evenly spaced affordances
        if it.affordance not in seen:
            seen.add(it.affordance)
            picks.append(i)
    step = max(1, len(picks) // n_images)
    picks = picks[::step][:n_images]
    columns = [(_short(name), maps[name]) for name in rows if name in maps]
    return comparison_figure(items, picks, columns, out / "figure.png")


def _short(row: str) -> str:
    """A column title: the row's name without its parenthesised details."""
    for long, short in ((" calibrated (b)", " (b)"), (" raw CAM (a)", " (a) raw"), (" + AffinityNet refinement", " + AffinityNet")):
        row = row.replace(long, short)
    row = re.sub(r" \((?![ab]\))[^)]*\)", "", row)  # every parenthesis but SelectiveCL's (a) / (b)
    return row.removeprefix("baseline: ").split(": ")[0]


def _report_text(rows: dict[str, dict], plan: DemoPlan, seed: int, timings: dict[str, float],
                 hoi_lines: list[str] = (), figure: Path | None = None) -> str:
    picture = [f"![test images, ground truth and each row's map]({figure.name})", "",
               "Each line: a test image with the affordance asked for, its ground truth, and every trained row's "
               "map for that affordance (jet: red = high). Each panel is scaled to its own range, as the metrics "
               "min-max a map, so a nearly flat map shows its small variations in full colour.", ""] if figure else []
    lines = [
        "# afford demo on SynthAGD (Seen)",
        "",
        *picture,
        f"SynthAGD seed {seed}, {plan.size} px, difficulty {plan.difficulty}; methods trained on CPU "
        f"(torch {torch.__version__}) on a frozen randomly initialised tiny ViT (no pretrained weights "
        "offline; see configs/*_synthagd_demo.yaml for the documented deviations from the papers).",
        "Protocol: standard (protocol.md §3; NSS with the OOAL std epsilon, so constant maps score 0 "
        "instead of nan). Model selection: last epoch (no test-set selection).",
        "",
        format_table(rows),
        "",
        f"{_counts_text(rows)}KLD (Kullback-Leibler divergence of the ground truth from the map) lower is "
        "better; SIM (histogram intersection) and NSS (normalised scanpath saliency) higher. A method works on "
        "SynthAGD when it beats the non-oracle baselines (uniform, center, egocentric-only CAM) on KLD and SIM "
        "(synthagd.md). The whole-object map is an oracle (it reads SynthAGD's object masks): beating it is a "
        "research goal.",
        "",
        *_criterion_text(rows),
        *_output_text(rows, plan),
        *_breakdown_text(rows),
        *_label_text(rows),
        *hoi_lines,
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
        "",
    ]
    return "\n".join(lines)


#: the rows a method must beat (synthagd.md, revised): every baseline but the whole-object oracle
NON_ORACLE = ("baseline: uniform", "baseline: center", "baseline: ego-only CAM")


def _counts_text(rows: dict[str, dict]) -> str:
    first = next(iter(rows.values()), {})
    n, pairs = first.get("n_images"), len(first.get("per_pair", {}))
    return f"{n} test images ({pairs} object-affordance pairs), one seed. " if n and pairs else ""


def _criterion_text(rows: dict[str, dict]) -> list[str]:
    """The acceptance rule applied: which rows beat every non-oracle baseline on KLD and SIM."""
    bars = [r for n, r in rows.items() if n.startswith(NON_ORACLE)]
    methods = [n for n in rows if not n.startswith("baseline: ")]
    if not bars or not methods:
        return []
    kld, sim = min(r["KLD"] for r in bars), max(r["SIM"] for r in bars)
    passed = [n for n in methods if rows[n]["KLD"] < kld and rows[n]["SIM"] > sim]
    failed = [n for n in methods if n not in passed]
    return [f"Applied (best non-oracle baseline figures: KLD {kld:.3f}, SIM {sim:.3f}):", "",
            f"- beat them on both: {', '.join(passed) or 'none'}",
            f"- do not: {', '.join(failed) or 'none'}", ""]


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
            "correlate near 1 (methods.md §1.6). The whole-object map is label-blind by construction. Where "
            "the wrong label scores better on both, the maps change with the label (correlation below 1) but "
            "not towards the part asked for.", "",
            format_label_sensitivity(rows, legend=False), ""]


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


