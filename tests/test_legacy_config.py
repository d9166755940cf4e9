"""Runs saved before the package layout change still load: a config.yml written by that release
(tests/fixtures/legacy_vsd_sr_tiny_config.yml, class paths such as ``vsdsr_nerfstudio.i3ds_pipeline`` and the flat
``lora_*`` stage fields) loads into the moved classes, and ``ns-eval`` / ``ns-render`` work with it on a real run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from synthetic_llff import make_llff_scene

import vsdsr_nerfstudio  # noqa: F401  (installs the legacy module aliases, as every ns-* command does)
from vsdsr_nerfstudio.compat.legacy_paths import LEGACY_MODULES, LegacyModule
from vsdsr_nerfstudio.pipeline.i3ds import I3DSPipelineConfig
from vsdsr_nerfstudio.sr.core.lora import CameraLoRAConfig
from vsdsr_nerfstudio.sr.core.stage import SRStage, SRStageConfig
from vsdsr_nerfstudio.sr.priors.config import PriorFactory

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_vsd_sr_tiny_config.yml"


def _legacy_text() -> str:
    return FIXTURE.read_text()


def test_the_fixture_names_the_old_paths():
    text = _legacy_text()
    for old in ("vsdsr_nerfstudio.i3ds_pipeline.", "vsdsr_nerfstudio.model.", "vsdsr_nerfstudio.sr.stage_config."):
        assert old in text
    assert re.search(r"^\s+lora_every: 3$", text, re.M)


def test_legacy_config_loads_into_the_moved_classes_with_lora_fields_migrated():
    config = yaml.load(_legacy_text(), Loader=yaml.Loader)
    pipeline = config.pipeline
    assert type(pipeline) is I3DSPipelineConfig
    assert type(pipeline.stage) is SRStageConfig
    assert not hasattr(pipeline.stage, "lora_every")
    flat = {k: v for k, v in re.findall(r"^    (lora_\w+|camera_\w+): (.+)$", _legacy_text(), re.M)}
    lora = pipeline.stage.lora
    assert isinstance(lora, CameraLoRAConfig)
    assert lora.every == int(flat["lora_every"]) and lora.rank == int(flat["lora_rank"])
    assert lora.lr == float(flat["lora_lr"]) and lora.camera_drop_prob == float(flat["camera_drop_prob"])
    assert lora.persist is (flat["lora_persist"] == "true")
    assert lora.targets == ("to_q", "to_k", "to_v", "to_out.0")
    assert pipeline.stage._target is SRStage  # the old lazy factory `_build_stage` maps to the stage class
    assert pipeline.prior._target is PriorFactory  # the old `LazySDUpscalerPrior` maps to the registry's factory
    prior = pipeline.prior.setup(device="cpu")  # the tiny prior of the old config builds through the registry
    assert prior.max_noise_level > 0


def test_every_legacy_module_forwards_to_an_existing_module():
    import importlib

    for old, new in LEGACY_MODULES.items():
        module = importlib.import_module(old)
        assert isinstance(module, LegacyModule) and module.__legacy_target__ == new
        public = [n for n in vars(importlib.import_module(new)) if not n.startswith("_")]
        assert public and getattr(module, public[0]) is getattr(importlib.import_module(new), public[0])


def test_a_new_stage_config_round_trips_through_yaml():
    config = SRStageConfig(lora=CameraLoRAConfig(every=7, rank=2))
    loaded = yaml.load(yaml.dump(config), Loader=yaml.Loader)
    assert loaded.lora.every == 7 and loaded.lora.rank == 2 and loaded == config


def _run(args, cwd: Path, timeout: int = 900) -> str:
    env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
    args = [str(Path(sys.executable).parent / args[0]), *args[1:]]
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{output[-6000:]}"
    return output


@pytest.mark.slow
def test_ns_eval_and_ns_render_load_a_run_saved_with_the_old_config(tmp_path):
    """A run trained now, whose config.yml is replaced by the old release's file (same settings, old class paths),
    evaluates with ns-eval and renders with ns-render."""
    make_llff_scene(tmp_path / "scene", n_views=5, hr_size=(192, 96), factors=(4,), seed=5)
    _run(
        [
            "ns-train",
            "vsd-sr-tiny",
            "--data",
            "scene",
            "--output-dir",
            "a",
            "--experiment-name",
            "scene",
            "--timestamp",
            "LEGACY_TIMESTAMP",
            "--max-num-iterations",
            "30",
            "llff-data",
            "--downscale-factor",
            "4",
            "--sr-scale",
            "4",
            "--llffhold",
            "5",
        ],
        cwd=tmp_path,
    )
    run = tmp_path / "a" / "scene" / "vsd-sr-tiny" / "LEGACY_TIMESTAMP"
    assert (run / "nerfstudio_models").is_dir()
    shutil.copyfile(FIXTURE, run / "config.yml")
    _run(["ns-eval", "--load-config", str(run / "config.yml"), "--output-path", "eval.json"], cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert {"psnr", "ssim", "niqe"} <= set(metrics)
    _run(
        [
            "ns-render",
            "dataset",
            "--load-config",
            str(run / "config.yml"),
            "--output-path",
            "renders",
            "--split",
            "test",
            "--rendered-output-names",
            "rgb",
        ],
        cwd=tmp_path,
    )
    assert list((tmp_path / "renders").rglob("*.jpg")) or list((tmp_path / "renders").rglob("*.png"))
