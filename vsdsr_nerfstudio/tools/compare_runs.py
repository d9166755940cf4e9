"""The training half of ``vsdsr-compare``: which runs a comparison needs, their ``ns-train`` commands, running them
as subprocesses, and reusing the ones already finished.

Each run lives in ``OUTPUT/runs/NAME/`` (``ns-train --output-dir OUTPUT/runs --experiment-name NAME --timestamp
run``, so nerfstudio's run folder is ``OUTPUT/runs/NAME/<method>/run/``), with the tool's record next to it:

- ``OUTPUT/runs/NAME/compare_run.json``: ``{"status": "running" | "done", "command": [...], "wall_s": ...}``,
  written before the subprocess starts and rewritten when it exits successfully;
- ``OUTPUT/runs/NAME/train.log``: the subprocess' stdout and stderr.

**Resume**: a run whose record says ``done`` with the same command is reused (not retrained). A run whose record says
``running`` (the comparison was killed during it) or whose command changed is **redone from scratch** (its folder
is removed first): its wall time must be one uninterrupted measurement, which a resumed run cannot give.

Import-light (no diffusers; nerfstudio's config loading only when a finished run's config is read).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence

from nerfstudio.utils.rich_utils import CONSOLE

from vsdsr_nerfstudio.data.files import atomic_write_json

RunKind = Literal["method", "nosr-steps", "nosr-time", "sr2d"]
"""What a run is: a method under test, or one of the trained baselines."""
RUN_RECORD = "compare_run.json"
"""The tool's record of a run, inside ``OUTPUT/runs/NAME/``."""
TIMESTAMP = "run"
"""The fixed ``--timestamp`` of every run, so that the tool finds it again."""


class CompareError(ValueError):
    """Bad input to ``vsdsr-compare``, or a run that failed; the message says which and what to do."""


@dataclass
class MethodSpec:
    """One method to compare: an ``ns-train`` method name with trainer option overrides."""

    name: str
    """Row label and run folder name."""
    method: str
    """The ``ns-train`` method (preset), e.g. ``vsd-sr-tiny``."""
    overrides: List[str] = field(default_factory=list)
    """Trainer options placed after the method name (before the ``llff-data`` subcommand)."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_-.")[:80] or "run"


def parse_method_spec(spec: str) -> MethodSpec:
    """``"[LABEL=]METHOD [--option value ...]"`` -> :class:`MethodSpec`; the label defaults to a slug of the spec."""
    tokens = shlex.split(spec)
    if not tokens:
        raise CompareError("An empty --methods entry: each entry is 'METHOD [--option value ...]'.")
    label = None
    if "=" in tokens[0] and not tokens[0].startswith("-"):
        label, tokens[0] = tokens[0].split("=", 1)
        if not tokens[0]:
            raise CompareError(f"--methods entry {spec!r}: expected 'LABEL=METHOD ...', the method is missing.")
    method, overrides = tokens[0], tokens[1:]
    if method.startswith("-"):
        raise CompareError(f"--methods entry {spec!r} starts with an option: put the method name (preset) first.")
    return MethodSpec(name=_slug(label or " ".join(tokens)), method=method, overrides=overrides)


def read_methods_file(path: Path) -> List[str]:
    """Method specs from a text file: one per line, ``#`` comments and blank lines ignored."""
    if not path.is_file():
        raise CompareError(f"--methods-file {path} does not exist; expected a text file with one method per line.")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


@dataclass
class RunPlan:
    """One ``ns-train`` run of the comparison."""

    name: str
    """Row label and folder name under ``OUTPUT/runs/``."""
    kind: RunKind
    """What the run is (method under test or a baseline)."""
    method: str
    """The ``ns-train`` method."""
    data: Path
    """The scene folder it trains on."""
    args: List[str]
    """Everything after the method name, including the ``llff-data`` subcommand and its options."""

    def command(self) -> List[str]:
        """The full command line (this interpreter, ``-m nerfstudio.scripts.train``)."""
        return [sys.executable, "-m", "nerfstudio.scripts.train", self.method, *self.args]


def train_args(
    output_runs: Path,
    name: str,
    data: Path,
    overrides: Sequence[str],
    enforced: Sequence[str],
    parser: Sequence[str],
) -> List[str]:
    """ns-train arguments after the method name. The tool's placement and protocol options come after the user's
    overrides so they win (tyro keeps the last value of a repeated option)."""
    placement = ["--data", str(data), "--output-dir", str(output_runs), "--experiment-name", name]
    placement += ["--timestamp", TIMESTAMP, "--viewer.quit-on-train-completion", "True"]
    return [*overrides, *placement, *enforced, "llff-data", *parser]


def parser_args(downscale_factor: int, sr_scale: int, llffhold: int) -> List[str]:
    """The ``llff-data`` options of the protocol."""
    return ["--downscale-factor", str(downscale_factor), "--sr-scale", str(sr_scale), "--llffhold", str(llffhold)]


@dataclass
class RunResult:
    """A finished run: where it is and what it cost."""

    plan: RunPlan
    """The run."""
    run_dir: Path
    """nerfstudio's run folder (with ``config.yml``)."""
    wall_s: float
    """Wall time of the ``ns-train`` subprocess, measured by the tool (includes start-up and data loading)."""
    reused: bool
    """Whether this invocation reused it instead of training it."""

    @property
    def phases(self) -> List[Dict[str, Any]]:
        """The entries of ``sr_state/phase_times.json`` (I3DS pipelines), or an empty list."""
        path = self.run_dir / "sr_state" / "phase_times.json"
        if not path.is_file():
            return []
        return list(json.loads(path.read_text()))

    @property
    def train_s(self) -> float:
        """Training time: the sum of the I3DS phase times when recorded, else the subprocess wall time."""
        phases = self.phases
        return float(sum(p["seconds"] for p in phases)) if phases else self.wall_s

    @property
    def nerf_steps(self) -> Optional[int]:
        """NeRF steps trained (from the phase times), or None when not recorded."""
        phases = self.phases
        return int(sum(p["nerf_steps"] for p in phases)) if phases else None

    @property
    def peak_gpu_gib(self) -> Optional[float]:
        """Peak GPU memory of training (max over the I3DS phases), None when not recorded (CPU, other pipelines)."""
        peaks = [p["peak_gpu_gib"] for p in self.phases if "peak_gpu_gib" in p]
        return max(peaks) if peaks else None


def _record_path(output_runs: Path, name: str) -> Path:
    return output_runs / name / RUN_RECORD


def _find_run_dir(output_runs: Path, name: str) -> Optional[Path]:
    configs = sorted((output_runs / name).glob(f"*/{TIMESTAMP}/config.yml"))
    return configs[-1].parent if configs else None


def _write_record(path: Path, record: Dict[str, Any]) -> None:
    atomic_write_json(path, record)


def finished_run(output_runs: Path, plan: RunPlan) -> Optional[RunResult]:
    """The run of ``plan`` if a previous invocation finished it with the same arguments, else None."""
    path = _record_path(output_runs, plan.name)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    run_dir = _find_run_dir(output_runs, plan.name)
    if record.get("status") != "done" or run_dir is None:
        return None
    if record.get("method") != plan.method or record.get("args") != plan.args:
        return None
    return RunResult(plan=plan, run_dir=run_dir, wall_s=float(record["wall_s"]), reused=True)


def execute_run(output_runs: Path, plan: RunPlan, env: Optional[Dict[str, str]] = None, where: str = "") -> RunResult:
    """Reuse the finished run of ``plan`` or train it now (from scratch; see the module docstring).

    Args:
        output_runs: the comparison's ``runs/`` folder.
        plan: the run.
        env: environment of the ``ns-train`` subprocess (default: this process', e.g. with one GPU visible).
        where: where it trains, for the log line (e.g. ``GPU 1``).
    """
    done = finished_run(output_runs, plan)
    if done is not None:
        CONSOLE.log(f"Reusing finished run {plan.name} ({done.run_dir}): not retrained.")
        return done
    folder = output_runs / plan.name
    if folder.exists():
        CONSOLE.log(f"[yellow]Run {plan.name} is unfinished or its options changed: redoing it from scratch.")
        shutil.rmtree(folder)
    record = {"status": "running", "method": plan.method, "args": plan.args, "command": plan.command()}
    _write_record(_record_path(output_runs, plan.name), record)
    log_path = folder / "train.log"
    on = f" on {where}" if where else ""
    CONSOLE.log(f"Training {plan.name}{on}: {shlex.join(plan.command()[1:])}  (log: {log_path})")
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1", COLUMNS="160")
    start = time.perf_counter()
    with log_path.open("w") as log:
        result = subprocess.run(plan.command(), stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    wall_s = time.perf_counter() - start
    run_dir = _find_run_dir(output_runs, plan.name)
    if result.returncode != 0 or run_dir is None:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise CompareError(
            f"ns-train for run {plan.name} failed (exit code {result.returncode}); full log {log_path}. Last lines:\n"
            f"{tail}\nFix the method's options (--methods) and run vsdsr-compare again: finished runs are reused."
        )
    record.update(status="done", wall_s=round(wall_s, 3), run_dir=str(run_dir))
    _write_record(_record_path(output_runs, plan.name), record)
    return RunResult(plan=plan, run_dir=run_dir, wall_s=wall_s, reused=False)


def planned_config(plan: RunPlan) -> Any:
    """The ``TrainerConfig`` that ``ns-train`` builds from ``plan``'s command line, parsed the way ``ns-train`` parses
    it (nothing is trained). Lets the baselines be planned before the reference run has finished, and catches bad
    ``--methods`` options before any training starts."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    try:
        return tyro.cli(AnnotatedBaseConfigUnion, args=[plan.method, *plan.args])
    except SystemExit as err:  # tyro printed what is wrong with the arguments
        raise CompareError(
            f"ns-train does not accept the options of run {plan.name} (method {plan.method!r}): see the message "
            "above. Check the method name (ns-train --help) and its options (ns-train METHOD --help)."
        ) from err


def load_run_config(run_dir: Path) -> Any:
    """The ``TrainerConfig`` saved by ``ns-train`` in ``run_dir/config.yml``."""
    import yaml

    return yaml.load((run_dir / "config.yml").read_text(), Loader=yaml.Loader)


def same_time_steps(same_steps: RunResult, sr_run: RunResult) -> int:
    """NeRF steps of the no-SR baseline "at equal wall time": the SR run's training time divided by the measured
    time per step of the no-SR run trained for the same steps. Training time is the sum of the I3DS phase times
    when both runs recorded them (it excludes process start-up, data loading and the scoring), else the subprocess
    wall times. Deterministic given the two finished runs: nothing is killed at a deadline."""
    steps = same_steps.nerf_steps or int(load_run_config(same_steps.run_dir).max_num_iterations)
    both_phased = bool(same_steps.phases) and bool(sr_run.phases)
    base_s, budget_s = (same_steps.train_s, sr_run.train_s) if both_phased else (same_steps.wall_s, sr_run.wall_s)
    per_step = base_s / max(steps, 1)
    return max(1, int(round(budget_s / max(per_step, 1e-9))))
