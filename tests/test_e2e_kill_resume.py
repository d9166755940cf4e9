"""Real kills in the middle of an upscaling stage, then `--load-dir`: only that stage is redone.

ns-train on a generated LLFF scene (CPU, tiny random prior), once with Nerfacto (`vsd-sr-tiny`) and once with 3D
Gaussians (`vsd-sr-splat-tiny`, pure-torch rasteriser). Upscaling stage 2 starts when the run writes the end of
sync stage 1 to ``sr_state/phase_times.json``; its state file lands seconds later (rendering the 4 views at 4x,
then K=20 tiny SR steps). The run's process group is SIGKILLed as soon as the phase file lists "sync 1", so the
kill lands inside stage 2. The resumed run must restore stage 1 from its state file and the model from the newest
checkpoint (step 20, saved in sync stage 1), redo stage 2 only and finish the schedule.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch
from killed_run import find_run_dir, flat, launcher, phase_times, phases_done, run_dir_of, run_until_killed
from synthetic_llff import make_llff_scene
from test_e2e_cli import _run

import vsdsr_nerfstudio  # noqa: F401

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL and process groups (POSIX)")

PARSER = ["llff-data", "--downscale-factor", "4", "--sr-scale", "4", "--llffhold", "5"]
STAGE_2_STARTED = "'phase': 'sync 1'"  # printed by PhaseTimer.end when upscaling stage 2 begins


def _kill_inside_stage_2(tmp_path: Path, method: str, scene: Path) -> Path:
    """Train ``method`` with a long stage 2 (K=20) and SIGKILL it inside that stage; returns the killed run's
    folder after checking that stage 2 had started and had not landed."""
    args = [launcher("ns-train"), method, "--data", str(scene), "--output-dir", str(tmp_path / "c")]
    args += ["--pipeline.upscale-steps", "20", "--pipeline.steps-per-chunk", "5", *PARSER]
    killed = run_until_killed(
        args,
        tmp_path,
        tmp_path / "c.log",
        kill_when=lambda: "sync 1" in phases_done(find_run_dir(tmp_path / "c", method)),
    )
    assert killed.killed, f"the run never reached stage 2:\n{killed.log[-4000:]}"
    assert killed.returncode == -signal.SIGKILL
    assert STAGE_2_STARTED in killed.log and "Upscaling stage 2 done" not in killed.log
    run_c = run_dir_of(tmp_path / "c", method)
    state_c = run_c / "sr_state"
    assert sorted(p.name for p in state_c.glob("stage_*.pt")) == ["stage_001.pt"], "stage 2 must not have landed"
    assert (state_c / "LATEST").read_text() == "stage_001.pt"
    assert phases_done(run_c) == ["pretrain", "upscale 1", "sync 1"]
    return run_c


def test_kill_mid_stage_then_resume_redoes_only_that_stage(tmp_path):
    scene = make_llff_scene(tmp_path / "scene", n_views=5, hr_size=(192, 96), factors=(4,), seed=7)
    run_c = _kill_inside_stage_2(tmp_path, "vsd-sr-tiny", scene)

    resume = ["ns-train", "vsd-sr-tiny", "--data", str(scene), "--output-dir", str(tmp_path / "d")]
    resume += ["--load-dir", str(run_c / "nerfstudio_models"), "--pipeline.upscale-steps", "3", *PARSER]
    log_d = flat(_run(resume, tmp_path))
    assert "Resumed SR state" in log_d and "1 upscaling stage(s) done" in log_d
    assert "Upscaling stage 2 done" in log_d
    assert "Upscaling stage 1 done" not in log_d, "stage 1 was redone after the kill"
    names = sorted(p.name for p in (run_dir_of(tmp_path / "d", "vsd-sr-tiny") / "sr_state").glob("stage_*.pt"))
    assert names == ["stage_001.pt", "stage_002.pt"]


def test_gaussians_kill_mid_stage_then_resume_redoes_only_that_stage(tmp_path):
    """The same kill with `vsd-sr-splat-tiny`, whose resume differs from Nerfacto's: splatfacto's load_state_dict
    replaces the Gaussian parameters by the checkpoint's (another count), and the optimisers must follow them.
    The resumed run starts from the step-20 checkpoint's Gaussians and Adam state, redoes exactly stage 2 (before
    step 30), runs sync stage 2 to step 40 and saves its final checkpoint."""
    method = "vsd-sr-splat-tiny"
    scene = make_llff_scene(tmp_path / "scene", n_views=5, hr_size=(192, 96), factors=(4,), seed=7)
    run_c = _kill_inside_stage_2(tmp_path, method, scene)
    checkpoints_c = sorted((run_c / "nerfstudio_models").glob("*.ckpt"))
    assert [p.name for p in checkpoints_c] == ["step-000000020.ckpt"]
    saved = torch.load(checkpoints_c[0], map_location="cpu")
    saved_count = saved["pipeline"]["_model.gauss_params.means"].shape[0]
    assert saved["pipeline"]["_extra_state"]["cycles_done"] == 1
    assert saved_count != 200, "the checkpoint holds the 200 initial Gaussians: loading them would prove nothing"

    # 19 more steps, 21..39: the killed run's schedule (stages before steps 20 and 30, training until step 40)
    resume = ["ns-train", method, "--data", str(scene), "--output-dir", str(tmp_path / "d")]
    resume += ["--load-dir", str(run_c / "nerfstudio_models"), "--max-num-iterations", "19"]
    resume += ["--pipeline.upscale-steps", "3", *PARSER]
    log_d = flat(_run(resume, tmp_path))
    run_d = run_dir_of(tmp_path / "d", method)

    loaded = [int(n) for n in re.findall(r"Gaussians loaded from the checkpoint: (\d+)", log_d)]
    assert loaded == [saved_count], f"loaded {loaded} Gaussians, the step-20 checkpoint holds {saved_count}"
    assert "Resumed SR state" in log_d and "1 upscaling stage(s) done (last before step 20)" in log_d
    assert "Upscaling stage 1 done" not in log_d, "stage 1 was redone after the kill"
    assert "Upscaling stage 2 done before step 30" in log_d
    assert "Gaussians at sync start (step 30)" in log_d and "Gaussians at sync start (step 20)" not in log_d

    state_d = run_d / "sr_state"
    assert (state_d / "stage_001.pt").read_bytes() == (run_c / "sr_state" / "stage_001.pt").read_bytes()
    assert sorted(p.name for p in state_d.glob("stage_*.pt")) == ["stage_001.pt", "stage_002.pt"]
    assert (state_d / "LATEST").read_text() == "stage_002.pt"
    one = torch.load(state_d / "stage_001.pt", weights_only=True)
    two = torch.load(state_d / "stage_002.pt", weights_only=True)
    assert (two["cycle"], two["step"], two["scheduled_done"]) == (2, 30, 2)
    assert not torch.equal(one["hr_images"], two["hr_images"])
    # resumed in sync 1 at step 21 (9 steps left of it), stage 2 redone, sync 2 whole; nothing of cycle 1 redone
    phases = [(entry["phase"], entry["nerf_steps"]) for entry in phase_times(run_d)]
    assert phases == [("sync 1", 9), ("upscale 2", 0), ("sync 2", 10)]

    checkpoints_d = sorted((run_d / "nerfstudio_models").glob("*.ckpt"))
    assert [p.name for p in checkpoints_d] == ["step-000000039.ckpt"]
    final = torch.load(checkpoints_d[0], map_location="cpu")
    assert final["pipeline"]["_extra_state"]["cycles_done"] == 2
    assert final["pipeline"]["_extra_state"]["scheduled_done"] == 2
    count = final["pipeline"]["_model.gauss_params.means"].shape[0]
    assert final["pipeline"]["_model.filter_3d_variance"].shape[0] == count
    # the loaded Adam state (21 steps) went on with the loaded Gaussians for all 19 resumed steps: optimisers left on
    # the parameters splatfacto's load replaced would restart it at the first densification
    for name, optimizer in final["optimizers"].items():
        adam = optimizer["state"][0]
        assert adam["exp_avg"].shape[0] == count and int(adam["step"]) == 40, name
