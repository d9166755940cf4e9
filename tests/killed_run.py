"""Helpers for tests that SIGKILL a real ``ns-train`` at a chosen point of the I3DS schedule, then resume it.

The kill point is read from the run's own files, not guessed from a delay: :func:`run_until_killed` polls a
condition (typically :func:`phases_done` on ``sr_state/phase_times.json``, written atomically when a phase ends) and
SIGKILLs the run's whole process group the moment it holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from vsdsr_nerfstudio.pipeline.state import SR_STATE_DIR

PHASE_TIMES = "phase_times.json"


@dataclass
class KilledRun:
    """What :func:`run_until_killed` saw."""

    returncode: Optional[int]
    """The exit status (``-signal.SIGKILL`` when the kill landed)."""
    killed: bool
    """Whether the condition held and the process group was sent SIGKILL (False: it ended or timed out first)."""
    log: str
    """stdout and stderr together."""


def launcher(name: str) -> str:
    """The ``ns-*`` launcher of the Python environment running the tests."""
    return str(Path(sys.executable).parent / name)


def ns_env() -> dict:
    """The environment of the ``ns-*`` runs: wide, unbuffered output (log lines arrive whole and at once)."""
    return dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")


def find_run_dir(output_dir: Path, method: str) -> Optional[Path]:
    """The newest run folder of ``method`` under ``--output-dir output_dir``, or None before it exists."""
    runs = sorted(Path(output_dir).glob(f"*/{method}/*/config.yml"))
    return runs[-1].parent if runs else None


def run_dir_of(output_dir: Path, method: str) -> Path:
    """The newest run folder of ``method`` under ``output_dir``; fails the test when there is none."""
    run = find_run_dir(output_dir, method)
    assert run is not None, f"no {method} run under {output_dir}"
    return run


def phase_times(run_dir: Optional[Path]) -> List[Dict[str, Any]]:
    """The phases that ended ({phase, seconds, nerf_steps, ...}), from ``<run>/sr_state/phase_times.json`` ([]
    before the first one, or without a run folder yet)."""
    path = None if run_dir is None else Path(run_dir) / SR_STATE_DIR / PHASE_TIMES
    if path is None or not path.is_file():
        return []
    return json.loads(path.read_text())


def phases_done(run_dir: Optional[Path]) -> List[str]:
    """Names of the phases that ended (see :func:`phase_times`)."""
    return [entry["phase"] for entry in phase_times(run_dir)]


def flat(log: str) -> str:
    """``log`` with every run of whitespace made one space: rich wraps long lines (paths) at any word."""
    return " ".join(log.split())


def run_until_killed(
    args: Sequence[str], cwd: Path, log_path: Path, kill_when: Callable[[], bool], timeout: float = 600.0
) -> KilledRun:
    """Start ``args`` in ``cwd`` in a new process group (output to ``log_path``), poll ``kill_when()`` every
    20 ms and SIGKILL the whole group as soon as it is true. The group is killed too when the
    process is still running after ``timeout`` seconds (the suite never hangs); then ``killed`` is False."""
    killed = False
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            list(args), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=ns_env(), start_new_session=True
        )
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if kill_when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None and not killed:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return KilledRun(proc.returncode, killed, log_path.read_text())
