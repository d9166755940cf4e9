"""End to end through the real commands: ns-train vsd-sr-tiny (2 I3DS cycles, killed after the first and resumed),
ns-eval (JSON with psnr/ssim/lpips/niqe at the HR eval resolution) and ns-render (HR images and an mp4 video).

A generated LLFF scene (4 train views at 48x24, 1 held-out view; HR 192x96, the smallest size NIQE's two 96x96
blocks allow), the tiny random prior, CPU. Minutes, not hours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from killed_run import run_dir_of
from PIL import Image
from synthetic_llff import make_llff_scene

import vsdsr_nerfstudio  # noqa: F401  (every ns-* command imports the plugin; so does this test)

SHARED = Path(__file__).resolve().parents[2] / "shared"
LPIPS_WEIGHTS = SHARED / "metrics" / "lpips_alex_features.npz"
LR_HW, HR_HW = (24, 48), (96, 192)
N_TRAIN = 4


def _run(args, cwd: Path, timeout: int = 900) -> str:
    env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
    args = [str(Path(sys.executable).parent / args[0]), *args[1:]]  # the ns-* launchers of this environment
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: 1 of the 2 cycles fits (as if killed after cycle 1). Run B: --load-dir A, finishes cycle 2."""
    root = tmp_path_factory.mktemp("e2e")
    scene = make_llff_scene(root / "scene", n_views=N_TRAIN + 1, hr_size=(192, 96), factors=(4,), seed=5)
    common = ["--pipeline.model.lpips-weights", str(LPIPS_WEIGHTS)] if LPIPS_WEIGHTS.is_file() else []
    parser = ["llff-data", "--downscale-factor", "4", "--sr-scale", "4", "--llffhold", str(N_TRAIN + 1)]
    log_a = _run(
        [
            "ns-train",
            "vsd-sr-tiny",
            "--data",
            str(scene),
            "--output-dir",
            str(root / "a"),
            "--max-num-iterations",
            "30",
            *common,
            *parser,
        ],
        cwd=root,
    )
    run_a = run_dir_of(root / "a", "vsd-sr-tiny")
    log_b = _run(
        [
            "ns-train",
            "vsd-sr-tiny",
            "--data",
            str(scene),
            "--output-dir",
            str(root / "b"),
            "--load-dir",
            str(run_a / "nerfstudio_models"),
            "--max-num-iterations",
            "10",
            *common,
            *parser,
        ],
        cwd=root,
    )
    run_b = run_dir_of(root / "b", "vsd-sr-tiny")
    return {"root": root, "scene": scene, "a": run_a, "b": run_b, "log_a": log_a, "log_b": log_b}


def test_first_run_stops_after_cycle_one(runs):
    log = runs["log_a"]
    assert "Upscaling stage 1 done" in log and "Upscaling stage 2" not in log
    assert "1 of 2 cycles fit" in log
    assert sorted(p.name for p in (runs["a"] / "sr_state").glob("stage_*.pt")) == ["stage_001.pt"]


def test_resume_finishes_cycle_two_without_redoing_cycle_one(runs):
    log = runs["log_b"]
    assert "Resumed SR state" in log
    assert "Upscaling stage 2 done" in log
    assert "Upscaling stage 1 done" not in log, "cycle 1 was redone after resume"
    names = sorted(p.name for p in (runs["b"] / "sr_state").glob("stage_*.pt"))
    assert names == ["stage_001.pt", "stage_002.pt"]


def test_hr_images_changed_and_are_4x(runs):
    one = torch.load(runs["b"] / "sr_state" / "stage_001.pt", weights_only=True)
    two = torch.load(runs["b"] / "sr_state" / "stage_002.pt", weights_only=True)
    assert tuple(two["hr_images"].shape) == (N_TRAIN, *HR_HW, 3)
    assert bool(two["written"].all())
    assert not torch.equal(one["hr_images"], two["hr_images"]), "stage 2 did not rewrite the HR images"
    assert two["cycle"] == 2 and one["cycle"] == 1
    assert two["sr_stage"]["lora"] is not None, "the LoRA state must be saved with the stage"
    # The train cameras switched to 4x: the tiny run logs the switch with the HR size.
    assert f"Switching training to {HR_HW[1]}x{HR_HW[0]} (x4)" in runs["log_a"]


def test_checkpoint_holds_sr_state(runs):
    ckpt = sorted((runs["b"] / "nerfstudio_models").glob("*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu")  # weights_only (torch >= 2.6 default): our allow-list at work
    extra = state["pipeline"]["_extra_state"]
    assert extra["cycles_done"] == 2
    assert Path(extra["stage_file"]).name == "stage_002.pt"
    assert not any(key.startswith(("sr.", "prior", "lpips")) for key in state["pipeline"]), "diffusion/LPIPS leaked"


def test_tensorboard_has_before_after_images_and_stage_timings(runs):
    """Per upscaling stage: before | after images of a few views and the stage's timings, in the run's
    tensorboard events (vsd-sr-tiny logs to tensorboard)."""
    for run in (runs["a"], runs["b"]):
        events = sorted(run.rglob("events.out.tfevents.*"))
        assert events, f"no tensorboard events in {run}"
        data = b"".join(p.read_bytes() for p in events)
        for tag in (
            "SR stage/view 000 before | after",
            "SR stage/view 002 before | after",
            "SR stage/render (s)",
            "SR stage/sr_steps (s)",
            "SR stage/decode (s)",
        ):
            assert tag.encode() in data, f"{tag!r} missing from {run}'s tensorboard events"
        assert b"SR stage/view 003 before | after" not in data  # log_num_views = 3 of the 4 views
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(runs["b"]), size_guidance={"images": 0})
    accumulator.Reload()
    image = accumulator.Images("SR stage/view 000 before | after")[-1]
    assert image.step == 30 and (image.width, image.height) == (2 * HR_HW[1], HR_HW[0])  # render | SR, side by side


def test_ns_eval_reports_four_metrics_at_hr(runs):
    out = runs["root"] / "eval.json"
    _run(["ns-eval", "--load-config", str(runs["b"] / "config.yml"), "--output-path", str(out)], cwd=runs["root"])
    results = json.loads(out.read_text())["results"]
    expected = {"psnr", "ssim", "niqe"} | ({"lpips"} if LPIPS_WEIGHTS.is_file() else set())
    assert expected <= set(results), results
    assert all(np.isfinite(results[key]) for key in expected)


def test_ns_render_images_and_video_at_4x(runs):
    """The train poses render at 4x the training resolution by default (the render resolution rule: HR unless told
    otherwise; before it, this needed `--downscale-factor 0.25`, which now would mean 16x)."""
    config = str(runs["b"] / "config.yml")
    common = [
        "--load-config",
        config,
        "--pose-source",
        "train",
        "--interpolation-steps",
        "1",
        "--frame-rate",
        "4",
    ]
    frames = runs["root"] / "frames"
    _run(
        [
            "ns-render",
            "interpolate",
            *common,
            "--output-format",
            "images",
            "--image-format",
            "png",
            "--output-path",
            str(frames),
        ],
        cwd=runs["root"],
    )
    images = sorted(frames.rglob("*.png"))
    assert images, "ns-render wrote no images"
    assert Image.open(images[0]).size == (HR_HW[1], HR_HW[0])

    video = runs["root"] / "render.mp4"
    _run(["ns-render", "interpolate", *common, "--output-path", str(video)], cwd=runs["root"])
    import imageio.v3 as iio

    frames_array = iio.imread(video, plugin="pyav")
    assert frames_array.ndim == 4 and frames_array.shape[1:3] == HR_HW
