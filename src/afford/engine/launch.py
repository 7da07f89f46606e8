"""``afford train --nproc N``: the same command relaunched as N data-parallel processes by torchrun.

torchrun (``torch.distributed.run``) starts the processes, gives each its rank, and ends them all
when one dies; this wrapper then says which checkpoint survives and how to continue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from afford import checkpoint as ckpt
from afford.device import usable_cores
from afford.errors import AffordError


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


def launch_torchrun(nproc: int, argv: Sequence[str], run_dir: str) -> int:
    """Run ``afford <argv>`` under torchrun with ``nproc`` processes on this machine."""
    env = sharing_cores(nproc)
    # torchrun's agent makes a /tmp/torchelastic_* folder per launch when given no --log-dir and never
    # removes it; its processes' output is printed here anyway, so the folder lives as long as the run.
    with tempfile.TemporaryDirectory(prefix="afford-torchrun-") as logs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               f"--log-dir={logs}", "-m", "afford.cli", *without_nproc(argv)]
        code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        done = ckpt.completed_epochs(Path(run_dir))
        last = (f"the last good checkpoint is epoch {done[-1] + 1} ({ckpt.epoch_dir(Path(run_dir), done[-1])})"
                if done else "no epoch had completed")
        raise AffordError(f"a training process failed (torchrun exit code {code}; its error is printed above) and "
                          f"the others were stopped; {last}; continue with the same command and --resume "
                          "(any --nproc: the global batch is the same)")
    return 0
