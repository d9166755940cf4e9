"""End to end with the Gaussian model on a CPU (pure-torch rasteriser): ns-train vsd-sr-splat-tiny (2 I3DS cycles,
stopped after the first and resumed with --load-dir), ns-eval (psnr/ssim/lpips/niqe at 4x) and ns-render at 4x.
Same scene and checks as tests/test_e2e_cli.py (the Nerfacto run), through the full-image datamanager."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from killed_run import run_dir_of
from PIL import Image
from synthetic_llff import make_llff_scene
from test_e2e_cli import HR_HW, LPIPS_WEIGHTS, N_TRAIN, _run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("splat_e2e")
    scene = make_llff_scene(root / "scene", n_views=N_TRAIN + 1, hr_size=(192, 96), factors=(4,), seed=5)
    common = ["--pipeline.model.lpips-weights", str(LPIPS_WEIGHTS)] if LPIPS_WEIGHTS.is_file() else []
    parser = ["llff-data", "--downscale-factor", "4", "--sr-scale", "4", "--llffhold", str(N_TRAIN + 1)]
    train = ["ns-train", "vsd-sr-splat-tiny", "--data", str(scene)]
    log_a = _run([*train, "--output-dir", str(root / "a"), "--max-num-iterations", "30", *common, *parser], root)
    run_a = run_dir_of(root / "a", "vsd-sr-splat-tiny")
    resume = ["--load-dir", str(run_a / "nerfstudio_models"), "--max-num-iterations", "10"]
    log_b = _run([*train, "--output-dir", str(root / "b"), *resume, *common, *parser], root)
    return {"root": root, "a": run_a, "b": run_dir_of(root / "b", "vsd-sr-splat-tiny"), "log_a": log_a, "log_b": log_b}


def test_two_cycles_across_a_resume(runs):
    assert "Upscaling stage 1 done" in runs["log_a"] and "Upscaling stage 2" not in runs["log_a"]
    assert f"Switching training to {HR_HW[1]}x{HR_HW[0]} (x4)" in runs["log_a"]
    log = runs["log_b"]
    assert "Resumed SR state" in log and "Upscaling stage 2 done" in log and "Upscaling stage 1 done" not in log
    one = torch.load(runs["b"] / "sr_state" / "stage_001.pt", weights_only=True)
    two = torch.load(runs["b"] / "sr_state" / "stage_002.pt", weights_only=True)
    assert tuple(two["hr_images"].shape) == (N_TRAIN, *HR_HW, 3)
    assert not torch.equal(one["hr_images"], two["hr_images"])
    records = json.loads((runs["b"] / "sr_state" / "phase_times.json").read_text())
    assert [p["phase"] for p in records] == ["sync 1", "upscale 2", "sync 2"]
    # the sync fit: measured at stage 2's start for sync 1 (the final sync is not measured)
    assert 5.0 < records[0]["fit_psnr"] < 60.0 and "fit_psnr" not in records[2]
    assert "Sync before stage 2: renders vs the views it trained on, PSNR" in runs["log_b"]
    ckpt = sorted((runs["b"] / "nerfstudio_models").glob("*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu")
    assert state["pipeline"]["_extra_state"]["cycles_done"] == 2
    assert "_model.filter_3d_variance" in state["pipeline"]  # the 3D filter travels with the Gaussians
    events = b"".join(p.read_bytes() for p in runs["b"].rglob("events.out.tfevents.*"))
    assert b"SR stage/view 000 before | after" in events and b"SR stage/render (s)" in events


def test_ns_eval_reports_four_metrics_at_hr(runs):
    out = runs["root"] / "eval.json"
    _run(["ns-eval", "--load-config", str(runs["b"] / "config.yml"), "--output-path", str(out)], runs["root"])
    results = json.loads(out.read_text())["results"]
    expected = {"psnr", "ssim", "niqe"} | ({"lpips"} if LPIPS_WEIGHTS.is_file() else set())
    assert expected <= set(results), results
    assert all(np.isfinite(results[key]) for key in expected)


def test_ns_render_at_4x(runs):
    frames = runs["root"] / "frames"
    # one render rule (README): every ns-render path renders at sr_scale x the training size unless told otherwise
    args = ["--load-config", str(runs["b"] / "config.yml"), "--pose-source", "train"]
    args += ["--interpolation-steps", "1", "--output-format", "images", "--image-format", "png"]
    _run(["ns-render", "interpolate", *args, "--output-path", str(frames)], runs["root"])
    images = sorted(frames.rglob("*.png"))
    assert images and Image.open(images[0]).size == (HR_HW[1], HR_HW[0])
