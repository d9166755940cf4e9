"""Resume and evaluation paths with clear errors (``--load-dir`` on an empty folder or on the run folder, ns-eval of a
run without checkpoints) and the GPU check of the CUDA presets. The real ns-* commands are run in
tests/test_e2e_render.py; here the helpers, the trainer hook and the eval guard, without training."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig

from vsdsr_nerfstudio.method_configs.vsd_sr import vsd_sr_config
from vsdsr_nerfstudio.pipeline import trainer as sr_trainer
from vsdsr_nerfstudio.pipeline.i3ds import GPURequiredError, check_cuda_device
from vsdsr_nerfstudio.pipeline.trainer import (
    CheckpointDirError,
    SRTrainer,
    SRTrainerConfig,
    latest_checkpoint_step,
    resolve_checkpoint_dir,
)


def _run_folder(root: Path, steps=(10, 20)) -> Path:
    run = root / "outputs" / "scene" / "vsd-sr" / "2026-01-01_000000"
    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "sr_state").mkdir()
    (run / "config.yml").write_text("# config\n")
    for step in steps:
        (run / "nerfstudio_models" / f"step-{step:09d}.ckpt").write_bytes(b"ckpt")
    return run


def test_load_dir_accepts_the_checkpoint_folder_and_the_run_folder(tmp_path):
    run = _run_folder(tmp_path)
    models = run / "nerfstudio_models"
    assert resolve_checkpoint_dir(models) == models
    assert resolve_checkpoint_dir(run) == models  # unambiguous: the run folder holds nerfstudio_models/
    (models / "notes.txt").write_text("not a checkpoint")  # nerfstudio would die parsing this name
    assert latest_checkpoint_step(models) == 20


def test_load_dir_on_an_empty_folder_says_what_to_give(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointDirError) as info:
        resolve_checkpoint_dir(empty)
    message = str(info.value)
    assert "--load-dir" in message and str(empty) in message and "it is empty" in message
    assert "nerfstudio_models" in message
    with pytest.raises(CheckpointDirError, match="not a folder"):
        resolve_checkpoint_dir(tmp_path / "missing")


def test_load_dir_on_a_folder_without_checkpoints_names_its_contents(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.yml").write_text("x")
    (folder / "events").mkdir()
    with pytest.raises(CheckpointDirError) as info:
        resolve_checkpoint_dir(folder)
    assert "config.yml, events/" in str(info.value)
    run = _run_folder(tmp_path / "b", steps=())
    with pytest.raises(CheckpointDirError) as info:
        resolve_checkpoint_dir(run)
    assert "is a run folder" in str(info.value) and "--steps-per-save" in str(info.value)


def test_sr_trainer_resolves_load_dir_before_nerfstudio_lists_it(tmp_path, monkeypatch):
    run = _run_folder(tmp_path)
    seen = []

    def nerfstudio_load(self):
        seen.append((self.config.load_dir, self.config.load_step))

    monkeypatch.setattr(Trainer, "_load_checkpoint", nerfstudio_load)

    def trainer(load_dir):
        instance = object.__new__(SRTrainer)  # no setup: only the checkpoint lookup is exercised
        instance.config = SimpleNamespace(load_dir=load_dir, load_step=None)
        # what a set-up Trainer has; after a load SRTrainer re-points the optimizers (nothing to move here)
        instance.optimizers = SimpleNamespace(optimizers={})
        instance.pipeline = SimpleNamespace(get_param_groups=dict)
        return instance

    trainer(run)._load_checkpoint()
    assert seen == [(run / "nerfstudio_models", 20)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointDirError):
        trainer(empty)._load_checkpoint()
    assert len(seen) == 1  # nerfstudio's loader never ran on the empty folder


def test_presets_use_the_sr_trainer_and_old_trainer_configs_still_are_trainer_configs():
    config = vsd_sr_config()
    assert isinstance(config, SRTrainerConfig) and isinstance(config, TrainerConfig)
    assert config._target is SRTrainer


def test_eval_guard_names_an_empty_checkpoint_folder(tmp_path, monkeypatch):
    """ns-eval/ns-render: eval_utils.eval_load_checkpoint (nerfstudio's) is wrapped once; an empty checkpoint
    folder is a clear error, a folder with checkpoints goes on to nerfstudio's loader with the newest step."""
    calls = []
    module = types.ModuleType("nerfstudio.utils.eval_utils")
    module.eval_load_checkpoint = lambda config, pipeline: calls.append(config.load_step) or ("path", 1)
    monkeypatch.setitem(sys.modules, "nerfstudio.utils.eval_utils", module)
    sr_trainer.guard_eval_checkpoint_listing()
    sr_trainer.guard_eval_checkpoint_listing()  # idempotent
    assert module.eval_load_checkpoint.vsdsr_guard
    run = _run_folder(tmp_path, steps=())
    with pytest.raises(CheckpointDirError) as info:
        module.eval_load_checkpoint(SimpleNamespace(load_dir=run / "nerfstudio_models", load_step=None), None)
    assert "holds no checkpoint" in str(info.value) and "config.yml" in str(info.value)
    assert calls == []
    full = _run_folder(tmp_path / "full")
    module.eval_load_checkpoint(SimpleNamespace(load_dir=full / "nerfstudio_models", load_step=None), None)
    assert calls == [20]


def test_cuda_preset_without_a_gpu_points_at_the_tiny_preset(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GPURequiredError) as info:
        check_cuda_device("cuda:0")
    assert "vsd-sr-tiny" in str(info.value) and "--machine.device-type cpu" in str(info.value)
    check_cuda_device("cpu")  # fine
    config = vsd_sr_config().pipeline
    config.datamanager.dataparser.data = tmp_path / "no-such-scene"  # the check comes before any data is read
    with pytest.raises(GPURequiredError):
        config.setup(device="cuda:0", test_mode="val")
