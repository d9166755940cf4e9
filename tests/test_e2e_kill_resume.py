"""A real kill in the middle of an upscaling stage, then `--load-dir`: only that stage is redone.

ns-train vsd-sr-tiny on a generated LLFF scene (CPU, tiny random prior). Stage 2 takes seconds (rendering the 4
views at 4x, then K=20 tiny SR steps), so a SIGKILL to the process group one second after the run reports the end
of sync stage 1 (the line printed when stage 2 starts) lands inside stage 2. The resumed run must restore stage 1
from its state file, redo stage 2 only and finish the schedule.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from synthetic_llff import make_llff_scene

import vsdsr_nerfstudio  # noqa: F401

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL and process groups (POSIX)")

PARSER = ["llff-data", "--downscale-factor", "4", "--sr-scale", "4", "--llffhold", "5"]
STAGE_2_STARTED = "'phase': 'sync 1'"  # printed by _end_phase when upscaling stage 2 begins


def _launcher(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _env() -> dict:
    return dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")


def _run_dir(output_dir: Path) -> Path:
    runs = sorted(output_dir.glob("*/vsd-sr-tiny/*/config.yml"))
    assert runs, f"no run under {output_dir}"
    return runs[-1].parent


def test_kill_mid_stage_then_resume_redoes_only_that_stage(tmp_path):
    scene = make_llff_scene(tmp_path / "scene", n_views=5, hr_size=(192, 96), factors=(4,), seed=7)
    args = [
        _launcher("ns-train"),
        "vsd-sr-tiny",
        "--data",
        str(scene),
        "--output-dir",
        str(tmp_path / "c"),
        "--pipeline.upscale-steps",
        "20",
        "--pipeline.steps-per-chunk",
        "5",
        *PARSER,
    ]
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    lines = []
    killed = threading.Event()

    def watchdog() -> None:  # never hang the suite
        if not killed.wait(600):
            os.killpg(proc.pid, signal.SIGKILL)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if STAGE_2_STARTED in line:
                time.sleep(1.0)  # inside stage 2 (rendering, then SR steps), before its state file is written
                os.killpg(proc.pid, signal.SIGKILL)
                killed.set()
                break
        proc.wait(timeout=60)
    finally:
        killed.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log_c = "".join(lines)
    assert STAGE_2_STARTED in log_c, f"the run never reached stage 2:\n{log_c[-4000:]}"
    assert proc.returncode == -signal.SIGKILL
    run_c = _run_dir(tmp_path / "c")
    state_c = run_c / "sr_state"
    assert sorted(p.name for p in state_c.glob("stage_*.pt")) == ["stage_001.pt"], "stage 2 must not have landed"
    assert (state_c / "LATEST").read_text() == "stage_001.pt"

    resume = [
        _launcher("ns-train"),
        "vsd-sr-tiny",
        "--data",
        str(scene),
        "--output-dir",
        str(tmp_path / "d"),
        "--load-dir",
        str(run_c / "nerfstudio_models"),
        "--pipeline.upscale-steps",
        "3",
        *PARSER,
    ]
    result = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=_env())
    log_d = result.stdout + result.stderr
    assert result.returncode == 0, log_d[-6000:]
    assert "Resumed SR state" in log_d and "1 upscaling stage(s) done" in log_d
    assert "Upscaling stage 2 done" in log_d
    assert "Upscaling stage 1 done" not in log_d, "stage 1 was redone after the kill"
    names = sorted(p.name for p in (_run_dir(tmp_path / "d") / "sr_state").glob("stage_*.pt"))
    assert names == ["stage_001.pt", "stage_002.pt"]
