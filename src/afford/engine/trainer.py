"""One plain training loop shared by every method and every task.

What differs between kinds of training (the data, the label space, how to score a model, which
metric selects an epoch) is a :class:`~afford.engine.tasks.Task`; the model is any
:class:`~afford.methods.base.Trainable`. The loop never inspects either beyond that contract.

Exact resume: every source of randomness is derived from ``(seed, epoch, step)`` — the epoch's
sample order, each sample's augmentation (the dataset), the global torch RNG and the k-means
initialisation — so re-running an epoch after a kill reproduces it bit for bit. A checkpoint is
written atomically after every epoch; a kill mid-epoch resumes from the last complete one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from afford import checkpoint as ckpt
from afford import strict_json
from afford.config import RunConfig, config_from_dict
from afford.device import resolve_device
from afford.engine.distributed import (
    average_gradients,
    check_batch,
    from_env,
    mean_over_ranks,
    sum_over_ranks,
    use_global_batchnorm,
)
from afford.engine.feature_cache import attach_feature_cache, cache_paused, cache_stats
from afford.engine.tasks import Task, task_for
from afford.errors import AffordError
from afford.factory import create_method
from afford.methods.base import Trainable
from afford.modules.param_groups import describe_groups
from afford.seeding import derive_seed, preserved_global_random_state

log = logging.getLogger("afford")


def seed_everything(seed: int) -> None:
    """Seed every generator, and make cuDNN deterministic as every reference does (methods.md §0.3):
    its autotuner may pick a different convolution algorithm, with other rounding, on every run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


class JsonlLogger:
    """Append-only JSONL log (+ TensorBoard scalars when the package is installed)."""

    def __init__(self, path: Path, tensorboard: bool = True) -> None:
        self.path = path
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(path.parent / "tb"))

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(strict_json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

    def drop_from_epoch(self, epoch: int, keep_start: bool = True) -> None:
        """Forget the rows of ``epoch`` and later (and the start row unless ``keep_start``): a run
        resumed there logs them again, and a killed run's partial epoch would otherwise appear twice."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line being written when the run was killed
                continue
            if row.get("epoch", -1) < epoch and (keep_start or row.get("kind") != "start"):
                keep.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(self.path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class NullLogger:
    """What ranks other than 0 log to: nothing (rank 0 logs the global batch's values)."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _unsaved_buffers(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Buffers the weights file leaves out (non-persistent) but training changes, such as WSMA's
    online NMF bases: the checkpoint's state keeps them, so resume continues from them."""
    out = {}
    for prefix, module in method.named_modules():
        for name in module._non_persistent_buffers_set:
            buf = getattr(module, name, None)
            if torch.is_tensor(buf) and buf.is_floating_point():
                out[f"{prefix}.{name}" if prefix else name] = buf.detach().cpu().clone()
    return out


def fault_point(epoch: int, step: int, rank: int) -> None:
    """Die like a killed process (SIGKILL: no cleanup) after ``epoch:step`` on ``rank`` when
    ``$AFFORD_FAULT_AT`` says so (0-based, e.g. ``1:2:1``); how the tests kill a run mid-epoch
    at a known point. Unset, it costs one dictionary lookup per step."""
    at = os.environ.get("AFFORD_FAULT_AT")
    if at and tuple(int(x) for x in at.split(":")) == (epoch, step, rank):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    selection: dict[str, Any]
    history: list[dict[str, Any]]


def _build_optimizer(method: Trainable, cfg: RunConfig) -> tuple[torch.optim.Optimizer, list[dict]]:
    groups = method.param_groups()
    t = cfg.train
    spec = [{"params": g.params, "lr": t.lr * g.lr_mult, "name": g.name} for g in groups]
    if t.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            spec, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov and t.momentum > 0
        )
    elif t.optimizer == "adamw":
        opt = torch.optim.AdamW(spec, lr=t.lr, weight_decay=t.weight_decay)
    else:
        raise AffordError(f"train.optimizer: expected 'sgd' or 'adamw', got '{t.optimizer}'")
    return opt, describe_groups(groups, t.lr)


def _build_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig,
                     total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``step`` steps once per epoch; ``poly`` (psa's) once per training step over ``total_steps``."""
    t = cfg.train
    if t.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_size, gamma=t.gamma)
    if t.scheduler == "poly":
        power = t.poly_power
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / total_steps) ** power)
    if t.scheduler == "none":
        return None
    raise AffordError(f"train.scheduler: expected 'step', 'poly' or 'none', got '{t.scheduler}'")


def check_resume_config(run_dir: Path, cfg: RunConfig) -> None:
    """AffordError naming the differences when ``cfg`` is not the config ``run_dir`` was trained with.

    ``train.epochs`` may grow, never shrink below the epochs already completed: the loop would
    not run and the run would keep (or fail to find) the wrong epoch's weights.
    """
    done = ckpt.completed_epochs(run_dir)
    if done and cfg.train.epochs <= done[-1]:
        raise AffordError(f"train.epochs: {run_dir} has completed {done[-1] + 1} epochs, so resuming it needs "
                          f"train.epochs >= {done[-1] + 1}, got {cfg.train.epochs} (train a new run for fewer epochs)")
    if diffs := config_differences(run_dir, cfg):
        raise AffordError(f"{run_dir}: --resume with a different config ({'; '.join(diffs[:3])})")


#: Settings a resumed run may change: they decide how it runs, not what it computes (data draws are
#: a function of (seed, epoch, index) whatever the workers), and ``train.epochs`` may grow.
RESUME_NEUTRAL = {("train", "epochs"), ("train", "log_every"), ("train", "keep_checkpoints"),
                  ("data", "num_workers"), ("data", "cache_dir")}


def config_differences(run_dir: Path, cfg: RunConfig) -> list[str]:
    """``section.key: run has X, now Y`` for every setting ``cfg`` changes (:data:`RESUME_NEUTRAL` aside);
    another method is the one difference reported."""
    info = ckpt.read_run_info(run_dir)
    if info.get("method") != cfg.method:
        return [f"method: run has {info.get('method')!r}, now {cfg.method!r}"]
    stored = config_from_dict(info["config"], run_dir / ckpt.RUN_FILE).to_dict()
    now = cfg.to_dict()
    return [
        f"{s}.{k}: run has {stored[s].get(k, '<unset>')!r}, now {now[s][k]!r}"
        for s in ("model", "data", "train", "eval") for k in now[s]
        if not _same_setting(s, k, stored[s].get(k), now[s][k]) and (s, k) not in RESUME_NEUTRAL
    ]


#: settings that name a folder: one folder spelt two ways (``/d/./data/``, ``/d/data``) is one setting
PATH_SETTINGS = {("data", "root")}


def _same_setting(section: str, key: str, a: Any, b: Any) -> bool:
    if (section, key) in PATH_SETTINGS and isinstance(a, str) and isinstance(b, str):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return a == b


def _record_resumed_config(run_dir: Path, cfg: RunConfig) -> dict[str, list]:
    """The :data:`RESUME_NEUTRAL` settings a resume changes (``{"train.epochs": [3, 5]}``), written
    into run.json: it holds the config the run goes on with, and a later ``--resume`` with that
    config is accepted (the other settings are equal: ``config_differences`` refused any change)."""
    info = ckpt.read_run_info(run_dir)
    old, new = info["config"], cfg.to_dict()
    changed = {f"{s}.{k}": [old.get(s, {}).get(k), new[s][k]] for s, k in sorted(RESUME_NEUTRAL)
               if old.get(s, {}).get(k) != new[s][k]}
    if changed:
        info["config"] = new
        ckpt.write_json(run_dir / ckpt.RUN_FILE, info)
    return changed


#: held (flock) by the process training into a run folder
RUN_LOCK = ".training.lock"


def check_run_folder(run_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """May ``cfg`` train into ``run_dir``? Not when it holds a run and ``resume`` is off, nor a run
    of another config; the checks ``--nproc`` makes before starting any process, and each start."""
    if (run_dir / ckpt.RUN_FILE).exists():
        if not resume:
            raise AffordError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
        check_resume_config(run_dir, cfg)


def check_not_training(run_dir: Path) -> None:
    """A one-line error when another process holds ``run_dir``'s training lock (checked, not taken)."""
    lock = run_dir / RUN_LOCK
    if not lock.is_file():
        return
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AffordError(_busy(run_dir)) from None
        fcntl.flock(f, fcntl.LOCK_UN)


def _busy(run_dir: Path) -> str:
    return (f"{run_dir}: another afford process is training into this folder (it holds {run_dir / RUN_LOCK}); "
            "wait for it to finish, or choose another --out")


@contextlib.contextmanager
def exclusive_run(run_dir: Path) -> Iterator[None]:
    """One training per run folder: a second process (two sweeps or two ``--resume`` into one
    folder) gets a one-line error instead of both writing the same checkpoints. Under torchrun
    only rank 0 takes it (every rank trains into the same folder). A folder this call created is
    removed again when the training fails before its first epoch is saved (a refused start, or a
    model that fails at its first step): it holds no run to resume, and its run.json would refuse
    the corrected rerun ("already holds a run", then "--resume with a different config")."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / RUN_LOCK
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AffordError(_busy(run_dir)) from None
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            only_lock = [p.name for p in run_dir.iterdir()] == [RUN_LOCK]
            if created and (only_lock or (failed and not ckpt.completed_epochs(run_dir))):
                shutil.rmtree(run_dir, ignore_errors=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          task: Task | None = None, build_method: Callable[..., Trainable] = create_method) -> TrainResult:
    """Train ``cfg.method`` on its task into ``run_dir``; resume from its last checkpoint.

    ``task`` defaults to the registry's task for the method, built from ``cfg`` (an affordance
    split for the WSAG methods); pass one to reuse an opened split or to train another kind of
    model. ``build_method(name, model_cfg, labels)`` builds the module (after seeding);
    experiments pass a subclass here, e.g. LOCATE with oracle prototypes in ``benchmarks/``.
    One process at a time trains into a folder (:func:`exclusive_run`). The caller's global random
    generators and cuDNN flags are as they were when it returns (training seeds them for itself).
    """
    run_dir = Path(run_dir)
    with exclusive_run(run_dir), preserved_global_random_state():
        return _train(cfg, run_dir, resume, progress, task, build_method)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, progress: bool, task: Task | None,
           build_method: Callable[..., Trainable]) -> TrainResult:
    t = cfg.train
    if t.select not in ("last", "best-on-test"):
        raise AffordError(f"train.select: expected 'last' or 'best-on-test', got '{t.select}'")
    device = resolve_device(t.device, "train.device")
    ctx = from_env(device.type)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    check_batch(t.batch_size, ctx)
    done = ckpt.completed_epochs(run_dir)
    check_run_folder(run_dir, cfg, resume)
    if resume and not done and not (run_dir / ckpt.RUN_FILE).exists():
        resume = False  # nothing to resume: start fresh
    ctx.barrier()  # every rank has looked before rank 0 writes run.json
    task = task or task_for(cfg)
    if t.select == "best-on-test" and task.selection_key is None:
        raise AffordError(f"train.select: task {task.name!r} has no test evaluation to select an epoch by; use 'last'")
    seed_everything(t.seed)
    method = build_method(cfg.method, cfg.model, task.labels).to(device)
    method.check_training()
    if ctx.active:
        use_global_batchnorm(method)  # statistics of the global batch, as in one process
    cache_info = None
    if cfg.data.feature_cache:
        cache_info = attach_feature_cache(method, cfg.data.cache_dir or None)
    dataset = task.train_set(cfg)
    if len(dataset) < t.batch_size:
        where = task.run_info().get("data_root", task.name)
        raise AffordError(f"{where}: {len(dataset)} training samples, fewer than train.batch_size={t.batch_size}")
    # drop_last, unlike the references' DataLoaders (a last partial batch): BatchNorm needs > 1 sample, and
    # every step then has the batch the recipe states (AGD20K Unseen: 832 steps where LOCATE's log shows 833)
    steps_per_epoch = len(dataset) // t.batch_size
    if t.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    optimizer, group_rows = _build_optimizer(method, cfg)
    scheduler = _build_scheduler(optimizer, cfg, t.epochs * steps_per_epoch)
    per_step = t.scheduler == "poly"
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume and done:
        last = done[-1]
        method.check_record(ckpt.read_run_info(run_dir), run_dir / ckpt.RUN_FILE)
        ckpt.load_weights(method, ckpt.epoch_dir(run_dir, last) / ckpt.WEIGHTS)
        state = ckpt.load_epoch_state(run_dir, last)
        optimizer.load_state_dict(state["optimizer"])
        for name, value in state.get("buffers", {}).items():  # e.g. WSMA's NMF bases (not in the weights)
            method.get_buffer(name).copy_(value)
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):  # poly over the (maybe longer) run now
                for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas,
                                               strict=True):
                    group["lr"] = base * factor(scheduler.last_epoch)
        history = state.get("history", [])
        start_epoch = last + 1
    elif ctx.main:
        extra = {"task": task.name, **task.run_info(), **method.provenance(), "processes": ctx.world}
        if cache_info is not None:
            extra["feature_cache"] = cache_info
        ckpt.write_run_info(run_dir, cfg, task.labels, extra)

    logger = JsonlLogger(run_dir / "log.jsonl") if ctx.main else NullLogger()
    if ctx.main and start_epoch >= t.epochs:
        log.info("%s: already trained for its %d epochs; nothing to resume", run_dir, t.epochs)
    elif ctx.main and start_epoch > 0:
        changed = _record_resumed_config(run_dir, cfg)
        logger.drop_from_epoch(start_epoch)
        logger.log({"kind": "resume", "from_epoch": start_epoch, "processes": ctx.world,
                    **({"changed": changed} if changed else {})})
    elif ctx.main and resume:  # killed before its first epoch ended: that attempt's rows are superseded
        logger.drop_from_epoch(0, keep_start=False)
    if start_epoch == 0:
        logger.log({"kind": "start", "method": cfg.method, "task": task.name, "n_classes": len(task.labels),
                    "param_groups": group_rows, "device": str(device), "config": cfg.to_dict(),
                    "processes": ctx.world})

    best = None
    for h in history:
        if "test" in h and task.better(h["test"], best["test"] if best else None):
            best = h
    for epoch in range(start_epoch, t.epochs):
        method.train()
        dataset.set_epoch(epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(derive_seed(t.seed, epoch)))
        batches = [ctx.shard(order[i * t.batch_size:(i + 1) * t.batch_size].tolist()) for i in range(steps_per_epoch)]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.data.num_workers, collate_fn=task.collate)
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not (progress and ctx.main))
        for step, batch in enumerate(bar):
            global_step = epoch * steps_per_epoch + step
            # The global RNG (dropout) draws per process: ranks seeded alike would drop the same units.
            torch.manual_seed(derive_seed(t.seed, epoch, step, *((ctx.rank, 2) if ctx.active else ())))
            method.set_step_seed(derive_seed(t.seed, epoch, step, 1), first_row=ctx.rank * len(batches[step]))
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.bf16):
                losses = method.forward_train(batch, epoch)
            loss = losses["loss"].float()
            vals = mean_over_ranks({k: float(v.detach()) for k, v in losses.items()}, ctx)  # the global batch's
            if not math.isfinite(vals["loss"]):  # every rank sees the same value and stops together
                last_good = ckpt.completed_epochs(run_dir)
                where = ckpt.epoch_dir(run_dir, last_good[-1]) if last_good else "none (first epoch)"
                logger.log({"kind": "error", "epoch": epoch, "step": global_step, "loss": vals["loss"]})
                raise AffordError(
                    f"training stopped: non-finite loss ({vals['loss']}) at epoch {epoch + 1} step {step + 1}; "
                    f"last good checkpoint: {where}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(method.parameters(), ctx)
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(method.parameters(), t.grad_clip)
            optimizer.step()
            fault_point(epoch, step, ctx.rank)
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            rate = (step + 1) * t.batch_size / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{vals['loss']:.3f}", img_s=f"{rate:.1f}")
            if step % max(t.log_every, 1) == 0 or step == steps_per_epoch - 1:
                logger.log({"kind": "train", "epoch": epoch, "step": global_step, **vals,
                            "lr": optimizer.param_groups[0]["lr"], "samples_per_s": rate})
            if scheduler is not None and per_step:
                scheduler.step()
        if scheduler is not None and not per_step:
            scheduler.step()
        record: dict[str, Any] = {"epoch": epoch, "seconds": time.perf_counter() - t0,
                                  **{k: v / max(steps_per_epoch, 1) for k, v in sums.items()}}
        if cache_info is not None:
            record["feature_cache"] = sum_over_ranks(cache_stats(method), ctx)
        if t.select == "best-on-test" and ctx.main:
            with cache_paused(method):  # the figures `afford eval` gives these weights
                summary = task.evaluate(method, cfg, device, progress)
            record["test"] = {k: summary[k] for k in task.report_keys}
            if task.better(record["test"], best["test"] if best else None):
                best = record
        history.append(record)
        state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "buffers": _unsaved_buffers(method),
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "history": history}
        protect = (best["epoch"],) if best is not None else ()
        # logged before the checkpoint lands: a kill in between resumes from the epoch before, which drops
        # this row and logs it again; logged after, a kill in between lost the row for good
        logger.log({"kind": "epoch", "step": (epoch + 1) * steps_per_epoch, **{k: v for k, v in record.items() if k != "test"},
                    **({f"test_{k}": v for k, v in record["test"].items()} if "test" in record else {})})
        if ctx.main:
            ckpt.save_epoch_checkpoint(run_dir, epoch, method, state, keep=t.keep_checkpoints, protect=protect)
        ctx.barrier()  # every rank has finished the epoch once its checkpoint is on disk

    logger.close()
    if ctx.main:
        result = _finalize(run_dir, t.select, t.epochs, history, best)
    ctx.barrier()
    if not ctx.main:
        info = ckpt.read_run_info(run_dir)
        result = TrainResult(run_dir=run_dir, epochs_done=info["epochs_done"], selection=info["selection"],
                             history=history)
    return result


def _finalize(run_dir: Path, rule: str, epochs: int, history: list[dict], best: dict | None) -> TrainResult:
    """Copy the selected epoch's weights to ``RUN/model.safetensors`` and record the rule."""
    if rule == "best-on-test" and best is not None:
        chosen = best["epoch"]
        selection = {"rule": "best-epoch-on-test", "epoch": chosen + 1, "test": best["test"],
                     "note": "selected on the test set, as the literature does (protocol.md §5)"}
    else:
        chosen = epochs - 1
        selection = {"rule": "last-epoch", "epoch": chosen + 1}
    src = ckpt.epoch_dir(run_dir, chosen) / ckpt.WEIGHTS
    tmp = run_dir / (ckpt.WEIGHTS + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(run_dir / ckpt.WEIGHTS)
    ckpt.update_run_info(run_dir, selection=selection, epochs_done=len(history))
    return TrainResult(run_dir=run_dir, epochs_done=len(history), selection=selection, history=history)
