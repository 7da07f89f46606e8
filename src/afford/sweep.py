"""Several seeds of one config, reported as mean ± std per metric and per model-selection rule.

The literature reports single runs, often the epoch that scored best on the test set. A sweep
trains the same config with ``train.seed`` = each seed (``DIR/seed_<s>``; a finished run is kept,
a partial one resumed), evaluates each, and summarises: **last epoch** (the sound rule) always;
**best epoch on the test set** (labelled so) when the runs evaluated every epoch
(``--select best-on-test``). ``summarise_runs`` does the same for runs that already exist
(``afford eval --runs``). The standard deviation is the sample one (n − 1).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afford import checkpoint as ckpt
from afford import strict_json
from afford.errors import AffordError

LAST = "last epoch"
BEST = "best epoch on the test set (selected on test: optimistic)"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; one line naming the flag otherwise."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise AffordError(f"--seeds: expected comma-separated integers like 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise AffordError(f"--seeds: expected distinct seeds, got {text!r}")
    return seeds


def _finished(run_dir: Path, cfg: Any) -> bool:
    """Whether ``run_dir`` holds this config's finished run; AffordError when it holds another
    config's (e.g. a rerun with another --select or --set), naming the difference."""
    from afford.engine.trainer import check_resume_config, config_differences

    if not (run_dir / ckpt.RUN_FILE).is_file():
        return False
    if diffs := config_differences(run_dir, cfg):
        raise AffordError(f"{run_dir}: holds a run of another config ({'; '.join(diffs[:3])}); use another --out, "
                          "or the same --set / --select as before")
    check_resume_config(run_dir, cfg)  # e.g. fewer train.epochs than it completed
    return (run_dir / ckpt.WEIGHTS).is_file() and ckpt.read_run_info(run_dir).get("epochs_done") == cfg.train.epochs


def _train_command(config: str, overrides: Sequence[str], seed: int, run_dir: Path, nproc: int, resume: bool,
                   progress: bool) -> list[str]:
    cmd = [sys.executable, "-m", "afford.cli", "train", config, "--out", str(run_dir), "--nproc", str(nproc),
           *[x for o in [*overrides, f"train.seed={seed}"] for x in ("--set", o)]]
    return cmd + ["--resume"] * resume + ["--quiet"] * (not progress)


def train_seeds(config: str, overrides: Sequence[str], seeds: Sequence[int], out: Path, nproc: int = 1,
                jobs: int = 1, progress: bool = True) -> dict[int, str]:
    """Train every seed into ``out/seed_<s>`` (a finished one is kept, a partial one resumed);
    ``jobs`` seeds at a time in separate processes sharing the cores. Returns what was done."""
    from afford.config import load_config
    from afford.engine.launch import sharing_cores
    from afford.engine.trainer import train

    done: dict[int, str] = {}

    def record(s: int, what: str, run_dir: Path) -> None:
        done[s] = what
        print(f"seed {s}: {what} -> {run_dir}", flush=True)

    todo = []
    for s in seeds:
        run_dir = out / f"seed_{s}"
        cfg = load_config(config, [*overrides, f"train.seed={s}"])  # a bad override fails before any training
        if _finished(run_dir, cfg):
            record(s, "kept (finished)", run_dir)
        else:
            todo.append((s, run_dir, cfg, (run_dir / ckpt.RUN_FILE).exists()))
    if jobs <= 1 and nproc <= 1:
        for s, run_dir, cfg, resume in todo:
            train(cfg, run_dir, resume=resume, progress=progress)
            record(s, "resumed" if resume else "trained", run_dir)
        return done
    env = sharing_cores(max(jobs, 1) * nproc)
    running: list[tuple[int, Path, bool, subprocess.Popen]] = []
    failed = []
    try:
        while todo or running:
            while todo and len(running) < max(jobs, 1):
                s, run_dir, _, resume = todo.pop(0)
                cmd = _train_command(config, overrides, s, run_dir, nproc, resume, progress and jobs <= 1)
                running.append((s, run_dir, resume, subprocess.Popen(cmd, env=env)))
            s, run_dir, resume, proc = running[0]
            code = proc.wait()
            running.pop(0)
            if code != 0:
                failed.append(f"seed {s} ({run_dir})")
                continue
            record(s, "resumed" if resume else "trained", run_dir)
    finally:  # Ctrl-C or SIGTERM: no training left running on its own (a rerun would train the same folder)
        for *_, proc in running:
            proc.terminate()
        for *_, proc in running:
            proc.wait()
    if failed:
        raise AffordError(f"{', '.join(failed)} failed (the error is printed above); rerun the sweep to resume")
    return done


def check_finished(run_dir: Path) -> None:
    """Refuse a run that has not finished training or lost its weights, before any scoring: a list of
    runs is checked whole, so a bad last run does not cost the evaluation of the good ones first."""
    info = ckpt.read_run_info(run_dir)
    if "epochs_done" not in info:
        raise AffordError(f"{run_dir}: an unfinished run (killed or still training); finish it first "
                          f"(afford train CONFIG --out {run_dir} --resume, or rerun the sweep)")
    ckpt.resolve_weights(run_dir, info)


def evaluate_run(run_dir: Path, progress: bool = False) -> dict[str, dict[str, float]]:
    """``{rule: {metric: value}}`` of one run: its weights' scores (last epoch, or the selected
    epoch when the run selected on test) and, when every epoch was scored, the best epoch's."""
    from afford.checkpoint import load_run
    from afford.engine.tasks import task_for

    check_finished(run_dir)
    run = load_run(run_dir)
    task = task_for(run.config)
    keys = [k for k in task.report_keys if not k.startswith("n_")]
    info = run.info
    history = ckpt.load_epoch_state(run_dir, info["epochs_done"] - 1).get("history", []) \
        if ckpt.completed_epochs(run_dir) else []
    scored = [h for h in history if "test" in h]
    out: dict[str, dict[str, float]] = {}
    if scored and len(scored) == len(history):
        out[LAST] = {k: float(scored[-1]["test"][k]) for k in keys}
        best = None
        for h in scored:
            if task.better(h["test"], best["test"] if best else None):
                best = h
        assert best is not None
        out[BEST] = {k: float(best["test"][k]) for k in keys} | {"epoch": best["epoch"] + 1}
    else:
        device = next(run.method.parameters()).device
        summary = task.evaluate(run.method, run.config, device, progress)
        out[LAST] = {k: float(summary[k]) for k in keys}
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value: no spread can be measured)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None)


def summarise(per_run: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """``{run: {rule: {metric: v}}}`` -> ``{rule: {metric: {mean, std, n, values}}}`` (rules all runs have)."""
    rules = [r for r in (LAST, BEST) if all(r in v for v in per_run.values())]
    out: dict[str, Any] = {}
    for rule in rules:
        metrics = [k for k in next(iter(per_run.values()))[rule] if k != "epoch"]
        out[rule] = {}
        for m in metrics:
            values = [v[rule][m] for v in per_run.values()]
            mu, sd = mean_std(values)
            out[rule][m] = {"mean": mu, "std": sd, "n": len(values), "values": values}
    return out


def format_summary(summary: dict[str, Any], title: str) -> str:
    """Markdown: one line per rule, ``mean ± std`` per metric."""
    rules = list(summary)
    if not rules:
        return f"{title}: no rule common to all runs"
    metrics = list(summary[rules[0]])
    n = summary[rules[0]][metrics[0]]["n"]
    lines = [f"{title} ({n} seeds, mean ± sample std)", "",
             "| model selection | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for rule in rules:
        cells = [f"{summary[rule][m]['mean']:.3f} ± " + ("n/a" if summary[rule][m]["std"] is None
                                                           else f"{summary[rule][m]['std']:.3f}") for m in metrics]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_one_recipe(run_dirs: Sequence[str | Path]) -> None:
    """Runs summarised together are seeds of one configuration: the same method and settings, the seed
    aside (and what does not change results: log cadence, workers, cache folder). A LOCATE and a WSMA
    run were averaged as two seeds."""
    from afford.config import config_from_dict
    from afford.engine.trainer import config_differences

    if len(run_dirs) < 2:
        return
    first = Path(run_dirs[0])
    info = ckpt.read_run_info(first)
    cfg = config_from_dict(info["config"], first / ckpt.RUN_FILE)
    for other in run_dirs[1:]:
        cfg.train.seed = int(ckpt.read_run_info(Path(other))["config"]["train"].get("seed", cfg.train.seed))
        diff = config_differences(Path(other), cfg)
        if diff:
            what = diff[0].replace("run has", "this run has").replace(", now", f", {first} has")
            raise AffordError(f"{other}: not a seed of the same configuration as {first} ({what}); summarise the seeds "
                              "of one configuration together")


def summarise_runs(run_dirs: Sequence[str | Path], progress: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate existing runs and summarise them: ``(per_run, summary)``. Each run counts once
    however it is spelt; runs of different tasks (other metrics) cannot be averaged."""
    seen: dict[Path, str] = {}
    for p in run_dirs:
        if (key := Path(p).resolve()) in seen:
            raise AffordError(f"{p}: the same run as {seen[key]}; list each run once")
        seen[key] = str(p)
    for p in run_dirs:
        check_finished(Path(p))
    check_one_recipe(run_dirs)
    per_run = {str(p): evaluate_run(Path(p), progress) for p in run_dirs}
    metrics = {name: sorted(v[LAST]) for name, v in per_run.items()}
    first = next(iter(metrics.items()), None)
    for name, keys in metrics.items():
        if first is not None and keys != first[1]:
            raise AffordError(f"{name}: reports {', '.join(keys)}, but {first[0]} reports {', '.join(first[1])}: "
                              "summarise runs of one task (and one metric set) together")
    return per_run, summarise(per_run)


def run_sweep(config: str, seeds: Sequence[int], out: str | Path, overrides: Sequence[str] = (), nproc: int = 1,
              jobs: int = 1, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every seed into ``out/seed_<s>``; write ``out/summary.json`` and ``summary.md``."""
    from afford.config import load_config
    from afford.engine.tasks import task_for

    task = task_for(load_config(config, list(overrides)))  # before any training: can its runs be scored?
    if not [k for k in task.report_keys if not k.startswith("n_")]:
        raise AffordError(f"{config}: task {task.name!r} has no test evaluation, so a sweep has nothing to "
                          "summarise; train it with afford train")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = train_seeds(config, overrides, seeds, out, nproc, jobs, progress)
    per_run, summary = summarise_runs([out / f"seed_{s}" for s in seeds], progress)
    result = {"config": config, "overrides": list(overrides), "seeds": list(seeds), "trained": done, "runs": per_run,
              "summary": summary}
    (out / "summary.json").write_text(strict_json.dumps(result, indent=1))
    (out / "summary.md").write_text(format_summary(summary, f"{config}") + "\n")
    return result
