"""One render resolution rule, through the real commands: for a vsd-sr run every ns-render path renders at sr_scale x
the training resolution (the HR size) unless told otherwise, and --downscale-factor is relative to that. Also the
resume/evaluation paths with bad folders, and a config.yml of an older release (nerfstudio's TrainerConfig).

One tiny run (vsd-sr-tiny on CPU, 1 upscaling stage) is trained once for the module. Scene: 6 views, llffhold 3
(train views 1, 2, 4, 5 at 48x24; held-out views 0, 3 at 192x96, the HR size).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
from PIL import Image
from synthetic_llff import make_llff_scene

import vsdsr_nerfstudio  # noqa: F401  (every ns-* command imports the plugin; so does this test)

SHARED = Path(__file__).resolve().parents[2] / "shared"
LPIPS_WEIGHTS = SHARED / "metrics" / "lpips_alex_features.npz"
LR_WH, HR_WH = (48, 24), (192, 96)


def _run(args, cwd: Path, ok: bool = True, timeout: int = 900) -> str:
    env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
    args = [str(Path(sys.executable).parent / args[0]), *map(str, args[1:])]  # the ns-* launchers of this venv
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    output = result.stdout + result.stderr
    if ok:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-6000:]}"
    else:
        assert result.returncode != 0, f"{' '.join(args)} should have failed:\n{output[-3000:]}"
    return output


def _digest(folder: Path) -> List[Tuple[str, int, int]]:
    return [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))]


def _sizes(folder: Path) -> List[Tuple[int, int]]:
    images = sorted(folder.rglob("*.png"))
    assert images, f"no images under {folder}"
    return [Image.open(p).size for p in images]


PARSER = ["llff-data", "--downscale-factor", "4", "--sr-scale", "4", "--llffhold", "3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    scene = make_llff_scene(root / "scene", n_views=6, hr_size=HR_WH, factors=(4,), seed=11)
    common = ["--pipeline.model.lpips-weights", str(LPIPS_WEIGHTS)] if LPIPS_WEIGHTS.is_file() else []
    args = ["ns-train", "vsd-sr-tiny", "--data", scene, "--output-dir", root / "out", "--max-num-iterations", "30"]
    _run([*args, *common, *PARSER], cwd=root)
    configs = sorted((root / "out").glob("*/vsd-sr-tiny/*/config.yml"))
    assert configs, "the tiny run wrote no config.yml"
    return {"root": root, "scene": scene, "config": configs[-1], "run": configs[-1].parent, "common": common}


def _render(run, kind: str, name: str, *extra) -> Path:
    out = run["root"] / name
    args = ["ns-render", kind, "--load-config", run["config"], "--output-path", out, *extra]
    _run(args, cwd=run["root"])
    return out


INTERPOLATE = ["--interpolation-steps", "1", "--frame-rate", "4", "--output-format", "images", "--image-format", "png"]


def test_interpolate_eval_and_train_poses_render_at_hr(run):
    assert set(_sizes(_render(run, "interpolate", "eval_poses", *INTERPOLATE))) == {HR_WH}
    train = _render(run, "interpolate", "train_poses", "--pose-source", "train", *INTERPOLATE)
    assert set(_sizes(train)) == {HR_WH}  # was 1x (48x24) before the rule


def test_downscale_factor_is_relative_to_the_hr_size(run):
    out = _render(run, "interpolate", "train_x4", "--pose-source", "train", "--downscale-factor", "4", *INTERPOLATE)
    assert set(_sizes(out)) == {LR_WH}  # HR / 4 = the training size


def test_spiral_renders_at_hr(run):
    args = ["--seconds", "0.5", "--frame-rate", "2", "--output-format", "images", "--image-format", "png"]
    assert set(_sizes(_render(run, "spiral", "spiral", *args))) == {HR_WH}


def test_camera_path_renders_at_the_size_it_names(run):
    """A camera path (the viewer's Render tab) names its own size; --downscale-factor divides it."""
    c2w = np.eye(4)
    c2w[2, 3] = 0.0
    path = {
        "camera_type": "perspective",
        "render_height": HR_WH[1],
        "render_width": HR_WH[0],
        "seconds": 1.0,
        "camera_path": [{"camera_to_world": c2w.flatten().tolist(), "fov": 50.0, "aspect": 2.0}],
    }
    path_file = run["root"] / "camera_path.json"
    path_file.write_text(json.dumps(path))
    args = ["--camera-path-filename", path_file, "--output-format", "images", "--image-format", "png"]
    assert set(_sizes(_render(run, "camera-path", "path_full", *args))) == {HR_WH}
    half = _render(run, "camera-path", "path_half", *args, "--downscale-factor", "2")
    assert set(_sizes(half)) == {(HR_WH[0] // 2, HR_WH[1] // 2)}


def test_dataset_renders_every_training_and_held_out_view_at_hr(run):
    names = ["--rendered-output-names", "rgb", "gt-rgb", "--image-format", "png"]
    out = _render(run, "dataset", "stills", "--split", "train+test", *names)
    assert len(sorted((out / "train" / "rgb").rglob("*.png"))) == 4
    assert len(sorted((out / "test" / "rgb").rglob("*.png"))) == 2
    assert set(_sizes(out / "train" / "rgb")) == {HR_WH}  # was 1x, and could not be raised
    assert set(_sizes(out / "test" / "rgb")) == {HR_WH}
    assert set(_sizes(out / "test" / "gt-rgb")) == {HR_WH}  # the real HR photos
    assert set(_sizes(out / "train" / "gt-rgb")) == {LR_WH}  # the LR photos the run trained on


@pytest.mark.parametrize("factor", ["0.25", "1"])
def test_dataset_downscale_factor_says_how_to_get_the_size(run, factor):
    before = _digest(run["scene"])
    args = ["ns-render", "dataset", "--load-config", run["config"], "--output-path", run["root"] / "bad"]
    output = _run([*args, "--downscale-factor", factor], cwd=run["root"], ok=False)
    assert "LLFFDataError" not in output
    assert f"ns-render dataset --downscale-factor {float(factor):g}" in output
    assert "leave --downscale-factor out for HR stills" in output
    assert _digest(run["scene"]) == before


def test_load_dir_empty_folder_and_run_folder(run):
    root, before = run["root"], _digest(run["scene"])
    empty = root / "empty_checkpoints"
    empty.mkdir()
    args = ["ns-train", "vsd-sr-tiny", "--data", run["scene"], "--output-dir", root / "resume", *run["common"]]
    output = _run([*args, "--load-dir", empty, *PARSER], cwd=root, ok=False)
    assert "IndexError" not in output and "CheckpointDirError" in output and "it is empty" in output
    # the run folder instead of its nerfstudio_models/: accepted
    output = _run([*args, "--load-dir", run["run"], "--max-num-iterations", "2", *PARSER], cwd=root)
    output = " ".join(output.split())  # nerfstudio's console wraps at 120 columns
    assert "is a run folder: loading from its nerfstudio_models/" in output
    assert "Resumed SR state" in output
    assert _digest(run["scene"]) == before


def test_ns_eval_of_a_run_without_checkpoints_and_of_an_old_release_config(run):
    """A copy of the run whose config.yml is what the release before the presets' own trainer config wrote
    (nerfstudio's TrainerConfig): ns-eval loads it. With its checkpoints removed, ns-eval says so."""
    import dataclasses

    import yaml
    from nerfstudio.engine.trainer import TrainerConfig

    root = run["root"]
    config = yaml.load(run["config"].read_text(), Loader=yaml.Loader)
    assert type(config).__name__ == "SRTrainerConfig"
    old = TrainerConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainerConfig) if f.init})
    old._target = TrainerConfig()._target  # nerfstudio's Trainer
    old.output_dir = root / "old_out"
    copy = old.get_base_dir()
    shutil.copytree(run["run"], copy)
    (copy / "config.yml").write_text(yaml.dump(old), "utf8")
    assert "SRTrainer" not in (copy / "config.yml").read_text()
    metrics = root / "old_eval.json"
    _run(["ns-eval", "--load-config", copy / "config.yml", "--output-path", metrics], cwd=root)
    assert "psnr" in json.loads(metrics.read_text())["results"]

    for ckpt in (copy / "nerfstudio_models").glob("*.ckpt"):
        ckpt.unlink()
    args = ["ns-eval", "--load-config", copy / "config.yml", "--output-path", root / "x.json"]
    output = _run(args, cwd=root, ok=False)
    assert "IndexError" not in output and "holds no checkpoint" in output and "it is empty" in output
