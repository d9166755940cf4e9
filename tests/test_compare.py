"""``vsdsr-compare`` end to end on CPU: a generated LLFF scene, ``vsd-sr-tiny`` cut to one short cycle, every
baseline on. One comparison (module fixture) is run through the console script, then run again in-process with
``ns-train`` forbidden, and its outputs are checked: results.json, the markdown table, the crop grid, resume,
the bicubic oracle against an independent computation, and the same-wall-time step count.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from synthetic_llff import make_llff_scene

from vsdsr_nerfstudio.tools import compare_runs
from vsdsr_nerfstudio.tools.compare import CompareConfig, compare
from vsdsr_nerfstudio.tools.compare_report import LABEL_HEIGHT
from vsdsr_nerfstudio.tools.compare_runs import CompareError, parse_method_spec
from vsdsr_nerfstudio.tools.compare_sr2d import SR2DSettings

SHARED = Path(__file__).resolve().parents[2] / "shared"
LPIPS_WEIGHTS = SHARED / "metrics" / "lpips_alex_features.npz"
HELD_OUT = [0, 4]  # 6 views, llffhold 4
CROPS, CROP_SIZE = 3, 40
METHOD = (
    "vsd-sr-tiny --pipeline.num-cycles 1 --pipeline.pretrain-steps 6 --pipeline.upscale-steps 1 "
    "--pipeline.sync-steps 4 --max-num-iterations 10 --pipeline.stage.batch-size 1"
)
KINDS = ["oracle", "method", "nosr-steps", "nosr-time", "sr2d"]


def _options(scene: Path, output: Path) -> list:
    options = ["--data", str(scene), "--output", str(output), "--downscale-factor", "4", "--sr-scale", "4"]
    options += ["--llffhold", "4", "--crops", str(CROPS), "--crop-size", str(CROP_SIZE), "--sr2d-sampling.steps", "2"]
    return options + (["--lpips-weights", str(LPIPS_WEIGHTS)] if LPIPS_WEIGHTS.is_file() else [])


def _write_sfm_points(scene: Path) -> None:
    from nerfstudio.data.utils.colmap_parsing_utils import Point3D, write_points3D_binary

    xyz = np.random.default_rng(0).normal(size=(20, 3))
    points = {
        i + 1: Point3D(id=i + 1, xyz=xyz[i], rgb=np.full(3, 128), error=0.0, image_ids=np.array([1]),
                       point2D_idxs=np.array([0]))
        for i in range(len(xyz))
    }  # fmt: skip
    (scene / "sparse" / "0").mkdir(parents=True)
    write_points3D_binary(points, scene / "sparse" / "0" / "points3D.bin")


def _records(output: Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in (output / "runs").glob("*/compare_run.json")}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    scene = make_llff_scene(root / "scene", n_views=6, hr_size=(192, 96), factors=(4,), seed=3)
    _write_sfm_points(scene)  # the 2D-SR scene must carry them (Gaussian backbones are seeded from them)
    output = root / "out"
    # One torch thread per process (the ns-train subprocesses inherit it): on a busy 2-core machine more threads
    # make every step several times slower (docs/evaluation.md).
    env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    launcher = str(Path(sys.executable).parent / "vsdsr-compare")
    args = [launcher, *_options(scene, output), "--methods", METHOD]
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1500, cwd=root)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-6000:]
    results = json.loads((output / "results.json").read_text())
    records = _records(output)
    table = (output / "results.md").read_text()
    return {"root": root, "scene": scene, "output": output, "log": log, "results": results, "records": records,
            "table": table}  # fmt: skip


def _finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def test_results_json_has_every_run_with_finite_metrics(comparison):
    results = comparison["results"]
    assert set(results) >= {"protocol", "environment", "runs"}
    assert results["protocol"]["held_out_views"] == HELD_OUT
    assert results["protocol"]["hr_size"] == [96, 192] and results["protocol"]["lr_size"] == [24, 48]
    runs = results["runs"]
    assert [r["kind"] for r in runs] == KINDS
    for run in runs:
        metrics = ["psnr", "ssim", "lr_psnr"] + (["lpips"] if LPIPS_WEIGHTS.is_file() else [])
        assert [v["view"] for v in run["views"]] == HELD_OUT
        if run["kind"] == "oracle" or run["mean"]["niqe"] is not None:  # None: NIQE undefined for a flat render
            metrics.append("niqe")
        for key in metrics:
            assert _finite(run["mean"][key]), (run["name"], key, run["mean"])
            assert all(_finite(v[key]) for v in run["views"])
            assert run["mean"][key] == pytest.approx(np.mean([v[key] for v in run["views"]]))
        if run["kind"] != "oracle":
            assert Path(run["run_dir"], "config.yml").is_file()
            assert run["wall_s"] > 0 and run["nerf_steps"] > 0 and run["command"].startswith("ns-train vsd-sr-tiny")
            assert run["peak_gpu_gib"] is None  # CPU: no training peak to report
    steps = {r["kind"]: r["nerf_steps"] for r in runs}
    assert steps["method"] == steps["nosr-steps"] == steps["sr2d"] == 10


def test_markdown_table_has_one_row_per_run(comparison):
    rows = [line for line in comparison["table"].splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| run | kind | PSNR")
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == [r["name"] for r in comparison["results"]["runs"]]
    assert len(names) == len(KINDS)
    method_row = next(row for row in rows if "| method |" in row)
    assert method_row.rstrip(" |").endswith("n/a")  # peak GPU memory on a CPU


def test_crop_grid_size_is_crops_by_columns(comparison):
    with Image.open(comparison["output"] / "crops.png") as grid:
        columns = 1 + len(KINDS)  # ground truth, oracle, the method, three trained baselines
        assert grid.size == (columns * CROP_SIZE, LABEL_HEIGHT + CROPS * CROP_SIZE)
        cells = np.asarray(grid.convert("RGB"))[LABEL_HEIGHT:]
    gt = np.asarray(Image.open(sorted((comparison["scene"] / "images").iterdir())[0]).convert("RGB"))
    assert cells.std() > 5 and gt.std() > 5  # real image content, not a blank canvas


def test_bicubic_oracle_psnr_matches_an_independent_computation(comparison):
    oracle = comparison["results"]["runs"][0]
    scene = comparison["scene"]
    for view in oracle["views"]:
        hr_file = sorted((scene / "images").iterdir())[view["view"]]
        lr_file = sorted((scene / "images_4").iterdir())[view["view"]]
        hr = np.asarray(Image.open(hr_file).convert("RGB"), dtype=np.float64) / 255.0
        lr = torch.from_numpy(np.asarray(Image.open(lr_file).convert("RGB"), dtype=np.float32) / 255.0)
        up = F.interpolate(lr.permute(2, 0, 1)[None], scale_factor=4, mode="bicubic", align_corners=False)
        up = up.clamp(0, 1)[0].permute(1, 2, 0).double().numpy()
        expected = 10 * np.log10(1.0 / np.mean((up - hr) ** 2))
        assert view["psnr"] == pytest.approx(expected, abs=1e-4)
    # Its LR consistency is high: area-down of bicubic-up of the LR image is close to the LR image.
    assert oracle["mean"]["lr_psnr"] > 30
    assert oracle["mean"]["lr_psnr"] > oracle["mean"]["psnr"] + 3


def test_same_wall_time_steps_follow_the_documented_formula(comparison):
    runs = {r["kind"]: r for r in comparison["results"]["runs"]}
    per_step = runs["nosr-steps"]["train_s"] / runs["nosr-steps"]["nerf_steps"]
    # train_s is rounded to the millisecond in results.json: allow one step either way
    assert abs(runs["nosr-time"]["nerf_steps"] - runs["method"]["train_s"] / per_step) <= 1
    assert runs["method"]["train_s"] <= runs["method"]["wall_s"]


def test_sr2d_scene_holds_prior_outputs_and_real_held_out_views(comparison):
    scene, derived = comparison["scene"], comparison["output"] / "sr2d_scene"
    files = sorted((derived / "images").iterdir())
    assert len(files) == 6
    real = sorted((scene / "images").iterdir())
    for index, path in enumerate(files):
        same = np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(real[index]).convert("RGB")))
        assert same == (index in HELD_OUT), f"view {index}: held-out views are copies, train views prior outputs"
    points = Path("sparse", "0", "points3D.bin")
    assert (derived / points).read_bytes() == (scene / points).read_bytes()  # the same SfM seeding as the others


def test_second_invocation_reuses_runs_and_gives_identical_results(comparison, monkeypatch):
    original = subprocess.run

    def no_training(command, *args, **kwargs):
        assert "nerfstudio.scripts.train" not in command, f"ns-train called on resume: {command}"
        return original(command, *args, **kwargs)

    monkeypatch.setattr(compare_runs.subprocess, "run", no_training)
    cfg = CompareConfig(
        data=comparison["scene"],
        output=comparison["output"],
        methods=(METHOD,),
        downscale_factor=4,
        llffhold=4,
        crops=CROPS,
        crop_size=CROP_SIZE,
        sr2d_sampling=SR2DSettings(steps=2),
        lpips_weights=LPIPS_WEIGHTS if LPIPS_WEIGHTS.is_file() else None,
        rescore=True,  # render and score the reused runs again: the same numbers
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the first invocation (OMP_NUM_THREADS=1): same float reduction order
    try:
        again = compare(cfg)
    finally:
        torch.set_num_threads(threads)
    assert _records(comparison["output"]) == comparison["records"]
    first = comparison["results"]["runs"]
    assert [_without_metrics(r) for r in again["runs"]] == [_without_metrics(r) for r in first]
    for new, old in zip(again["runs"], first, strict=True):
        for new_view, old_view in zip(new["views"], old["views"], strict=True):
            assert new_view.keys() == old_view.keys()
            for key, value in old_view.items():
                same = new_view[key] == value if value is None else new_view[key] == pytest.approx(value, rel=1e-5)
                assert same, (new["name"], key, new_view[key], value)


def _without_metrics(run: dict) -> dict:
    return {key: value for key, value in run.items() if key not in ("mean", "views")}


def test_method_spec_parsing_and_errors():
    spec = parse_method_spec("rsd=vsd-sr-tiny --pipeline.stage.guidance rsd")
    assert (spec.name, spec.method, spec.overrides) == ("rsd", "vsd-sr-tiny", ["--pipeline.stage.guidance", "rsd"])
    assert parse_method_spec("vsd-sr-tiny --a 'x y'").overrides == ["--a", "x y"]
    assert parse_method_spec("vsd-sr-tiny --a 1").name == "vsd-sr-tiny_--a_1"
    for bad in ("", "--max-num-iterations 3", "label="):
        with pytest.raises(CompareError):
            parse_method_spec(bad)


def test_killed_run_is_redone_not_reused(tmp_path, monkeypatch):
    plan = compare_runs.RunPlan(name="x", kind="method", method="m", data=tmp_path, args=["--a"])
    compare_runs._write_record(tmp_path / "x" / compare_runs.RUN_RECORD, {"status": "running", "method": "m",
                                                                          "args": ["--a"]})  # fmt: skip
    (tmp_path / "x" / "m" / "run").mkdir(parents=True)
    (tmp_path / "x" / "m" / "run" / "config.yml").write_text("{}")
    assert compare_runs.finished_run(tmp_path, plan) is None
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        assert not (tmp_path / "x" / "m").exists(), "the unfinished run folder must be removed before retraining"
        (tmp_path / "x" / "m" / "run").mkdir(parents=True)
        (tmp_path / "x" / "m" / "run" / "config.yml").write_text("{}")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(compare_runs.subprocess, "run", fake_run)
    result = compare_runs.execute_run(tmp_path, plan)
    assert len(calls) == 1 and not result.reused
    assert compare_runs.finished_run(tmp_path, plan) is not None  # now done: the next invocation reuses it
