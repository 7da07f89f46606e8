"""``afford train --nproc N``: the same command relaunched as N data-parallel processes by torchrun.

torchrun (``torch.distributed.run``) starts the processes, gives each its rank, and ends them all
when one dies. It runs here through :func:`agent`, which keeps its own log lines and its traceback
to itself; the workers leave their one-line errors in a folder instead of each printing the same
line. This launcher then prints each distinct error once, says which checkpoint survives and how to
continue, and, stopped by Ctrl-C or ``kill``, stops the agent and its workers before it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from afford import checkpoint as ckpt
from afford.device import usable_cores
from afford.errors import AffordError

#: environment variable naming the folder where a worker writes its one-line error (``rank_<r>``)
ERRORS_ENV = "AFFORD_WORKER_ERRORS"
#: how long the agent may take to stop its workers (they unwind like Ctrl-C) before it is killed
STOP_TIMEOUT_S = 60.0


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def sharing_cores(processes: int) -> dict[str, str]:
    """This environment with ``OMP_NUM_THREADS`` sharing the machine's cores among ``processes``
    (unless the user set it; torchrun alone would set 1)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // max(processes, 1))))
    return env


def worker_error_file() -> Path | None:
    """Where this worker leaves its one-line error for the launcher (None: not launched by it)."""
    folder = os.environ.get(ERRORS_ENV)
    return Path(folder) / f"rank_{os.environ.get('RANK', '0')}" if folder and "RANK" in os.environ else None


def launch_torchrun(nproc: int, argv: Sequence[str], run_dir: str) -> int:
    """Run ``afford <argv>`` under torchrun with ``nproc`` processes on this machine."""
    env = sharing_cores(nproc)
    # torchrun's agent makes a /tmp/torchelastic_* folder per launch when given no --log-dir and never
    # removes it; its processes' output is printed here anyway, so the folder lives as long as the run.
    with tempfile.TemporaryDirectory(prefix="afford-torchrun-") as logs:
        errors = Path(logs) / "errors"
        errors.mkdir()
        env[ERRORS_ENV] = str(errors)
        cmd = [sys.executable, "-m", "afford.engine.launch", "--standalone", f"--nproc_per_node={nproc}",
               f"--log-dir={logs}", "-m", "afford.cli", *without_nproc(argv)]
        # its own session: a terminal's Ctrl-C reaches this process only, which stops the agent, which
        # stops its workers (SIGTERM: they unwind and exit 130), so nothing trains on after we return
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            print(f"afford: stopped the {nproc} training processes; {_last_checkpoint(run_dir)}", file=sys.stderr)
            raise
        said = _worker_errors(errors)
    if code == 2 and said:  # a refusal (afford's own error, the same on a rerun): no advice to resume
        raise AffordError("; ".join(said))
    if code != 0:
        what = "; ".join(said) if said else (f"a training process failed (exit code {code}; its error is printed "
                                              "above) and the others were stopped")
        raise AffordError(f"{what}; {_last_checkpoint(run_dir)}")
    return 0


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the agent (it stops its workers and waits for them); SIGKILL to the whole session
    if that takes over :data:`STOP_TIMEOUT_S`, or at a second Ctrl-C."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _last_checkpoint(run_dir: str) -> str:
    done = ckpt.completed_epochs(Path(run_dir))
    if not done:
        return "no epoch had completed"
    return (f"the last good checkpoint is epoch {done[-1] + 1} ({ckpt.epoch_dir(Path(run_dir), done[-1])}); continue "
            "with the same command and --resume (any --nproc: the global batch is the same)")


def _worker_errors(folder: Path) -> list[str]:
    """Each distinct error the workers left, once; ``(rank r)`` when not every rank said it."""
    said: dict[str, list[str]] = {}
    files = sorted(folder.glob("rank_*"), key=lambda p: int(p.name.split("_")[1]))
    for f in files:
        said.setdefault(f.read_text(encoding="utf-8").strip(), []).append(f.name.split("_")[1])
    if len(said) == 1:
        return list(said)
    return [f"{text} (rank {', '.join(ranks)})" for text, ranks in said.items()]


def agent(argv: Sequence[str]) -> int:
    """torchrun's main, quietly: its log lines and its ChildFailedError traceback (some 45 lines
    after a worker's one-line error) stay here; the exit code tells the launcher what happened."""
    import logging

    logging.disable(logging.CRITICAL)  # this process only (the agent): the workers log as usual
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(list(argv))
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code  # -9 (killed by SIGKILL) -> 137, as a shell says it
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(agent(sys.argv[1:]))
