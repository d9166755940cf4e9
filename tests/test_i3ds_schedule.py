"""The I3DS schedule: where upscaling stages go, and that the last one is always synchronised."""

import pytest

from vsdsr_nerfstudio.pipeline.i3ds import upscaling_stage_steps


def test_default_schedule():
    assert upscaling_stage_steps(2000, 2000, 4, final_step=10_000) == [2000, 4000, 6000, 8000]


def test_cycles_without_a_full_sync_are_dropped():
    # DiSR's 100k schedule: its 4th stage (at 95k in their count) would never be synchronised.
    assert upscaling_stage_steps(20_000, 20_000, 4, final_step=90_000) == [20_000, 40_000, 60_000]
    steps = upscaling_stage_steps(20, 10, 5, final_step=45)
    assert steps == [20, 30]
    assert all(s + 10 <= 45 for s in steps)


def test_no_cycles_and_bad_values():
    assert upscaling_stage_steps(2000, 2000, 0, final_step=10_000) == []
    assert upscaling_stage_steps(2000, 2000, 3, final_step=3999) == []
    with pytest.raises(ValueError):
        upscaling_stage_steps(-1, 10, 1, final_step=100)
    with pytest.raises(ValueError):
        upscaling_stage_steps(10, 0, 1, final_step=100)


def test_viewer_frustums_show_the_rewritten_views():
    """After a stage, each training-camera frustum is redrawn (same pose) with the new HR picture."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    from nerfstudio.cameras.cameras import Cameras

    from vsdsr_nerfstudio.pipeline.i3ds import I3DSPipeline

    calls = []

    class FakeHandle:
        def __init__(self, **kwargs):
            self.kwargs, self.wxyz, self.position, self.clicks = kwargs, np.array([1.0, 0, 0, 0]), np.zeros(3), []

        def on_click(self, callback):
            self.clicks.append(callback)

    class FakeScene:
        def add_camera_frustum(self, **kwargs):
            calls.append(kwargs)
            return FakeHandle(**kwargs)

    cameras = Cameras(
        camera_to_worlds=torch.eye(4)[:3].repeat(2, 1, 1), fx=20.0, fy=20.0, cx=16.0, cy=12.0, width=32, height=24
    )
    handles = {0: FakeHandle(), 1: FakeHandle()}
    viewer = SimpleNamespace(
        camera_handles=handles,
        viser_server=SimpleNamespace(scene=FakeScene()),
        config=SimpleNamespace(camera_frustum_scale=0.1),
    )
    fake = SimpleNamespace(
        _trainer=SimpleNamespace(viewer_state=viewer),
        datamanager=SimpleNamespace(train_dataset=SimpleNamespace(cameras=cameras)),
    )
    images = torch.zeros(2, 3, 96, 128)
    images[1] = 1.0
    I3DSPipeline._hand_views_to_viewer(fake, images)
    assert [c["name"] for c in calls] == ["/cameras/camera_00000", "/cameras/camera_00001"]
    assert calls[1]["image"].shape == (100, 133, 3) and calls[1]["image"].min() == 255
    assert calls[0]["image"].max() == 0
    assert handles[1].kwargs["name"] == "/cameras/camera_00001" and handles[1].clicks


def test_missing_local_prior_folder_fails_before_training(tmp_path):
    from vsdsr_nerfstudio.sr.priors.config import PriorLoadError, SRPriorConfig, check_prior_source

    with pytest.raises(PriorLoadError, match="model-path"):
        check_prior_source(SRPriorConfig(model_path=str(tmp_path / "no-such-folder")))
    # an existing, complete folder: fine (an incomplete one is refused at start too: tests/test_prior_registry.py)
    from vsdsr_nerfstudio.sr.priors.sd_upscaler import save_tiny_prior

    assert check_prior_source(SRPriorConfig(model_path=str(save_tiny_prior(tmp_path / "tiny")))) is None
    # issue #11: an option the chosen prior does not use is an error at start (it used to be ignored silently)
    with pytest.raises(ValueError, match="model-path"):
        check_prior_source(SRPriorConfig(prior="tiny", model_path=str(tmp_path / "no-such-folder")))


def test_uncached_hub_prior_fails_early_when_offline_and_warns_when_online(tmp_path, monkeypatch):
    """A hub id not in the local Hugging Face cache: with downloads off, loading at the first stage could only fail,
    so it fails at the start; with downloads on, a warning says the download comes after the LR pretraining."""
    from vsdsr_nerfstudio.sr.priors.config import PriorLoadError, SRPriorConfig, check_prior_source

    cache = tmp_path / "hub"
    config = SRPriorConfig()  # stabilityai/stable-diffusion-x4-upscaler
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PriorLoadError) as info:
        check_prior_source(config, cache_dir=cache)
    assert "not in the local Hugging Face cache" in str(info.value) and "vsd-sr-embedded" in str(info.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(PriorLoadError):
        check_prior_source(SRPriorConfig(local_files_only=True), cache_dir=cache)
    warning = check_prior_source(config, cache_dir=cache)
    assert warning is not None and "downloaded" in warning and "vsd-sr-embedded" in warning

    # the cache layout huggingface_hub writes: the id's folder, refs/main -> snapshot with model_index.json
    repo = cache / ("models--" + config.model_path.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    assert check_prior_source(config, cache_dir=cache) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_prior_source(config, cache_dir=cache) is None  # cached: fine offline


def test_viewer_gets_the_train_lock_between_chunks_of_a_stage():
    """During a stage the trainer's callback holds ``train_lock`` (the viewer renders under it); the pipeline
    releases it between chunks of work, so a waiting viewer render gets in, and takes it back afterwards."""
    import threading
    import time
    from types import SimpleNamespace

    from vsdsr_nerfstudio.pipeline.i3ds import I3DSPipeline

    def run_stage(viewer_state):
        lock = threading.Lock()
        trainer = SimpleNamespace(train_lock=lock, viewer_state=viewer_state)
        fake = SimpleNamespace(_trainer=trainer)
        renders, stop = [], threading.Event()

        def viewer_thread():
            while not stop.is_set():
                if lock.acquire(timeout=0.05):
                    if not stop.is_set():  # a render during the stage, not after it
                        renders.append(time.perf_counter())
                    lock.release()
                    time.sleep(0.002)

        lock.acquire()  # the trainer holds it while it runs callbacks
        thread = threading.Thread(target=viewer_thread, daemon=True)
        thread.start()
        for _ in range(50):  # 50 chunks of stage work
            time.sleep(0.002)
            I3DSPipeline._yield_lock(fake)
            assert lock.locked()  # back in the trainer's hands after every chunk
        stop.set()
        lock.release()
        thread.join(timeout=5)
        return len(renders)

    assert run_stage(viewer_state=object()) > 0, "the viewer never got the lock during the stage"
    assert run_stage(viewer_state=None) == 0  # no viewer (ns-train --vis tensorboard): nothing to yield to


def test_gpu_out_of_memory_in_a_stage_names_the_fields_to_lower():
    """A CUDA OOM inside an upscaling stage becomes an error that says which fields to lower and how to resume;
    cudnn.benchmark (turned off for the stage) is restored."""
    from types import SimpleNamespace

    import torch

    from vsdsr_nerfstudio.pipeline.i3ds import OOM_FIELDS, I3DSPipeline

    class OOMStage:
        def begin(self, *args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    from vsdsr_nerfstudio.pipeline.runtime import PhaseTimer, SRModels, SRSchedule

    cameras = SimpleNamespace(camera_to_worlds=torch.eye(4)[:3].repeat(2, 1, 1))
    fake = SimpleNamespace(
        sr_schedule=SRSchedule(cycles_done=1),
        sr_models=SRModels(stage=OOMStage()),
        sr_phases=PhaseTimer(),
        config=SimpleNamespace(upscale_steps=5, steps_per_chunk=1),
        datamanager=SimpleNamespace(
            num_train_views=2, lr_images_chw=lambda: torch.zeros(2, 3, 4, 4), hr_cameras=lambda: cameras
        ),
        _run_dir=lambda: None,
        _show=lambda *args, **kwargs: None,
        _load_prior=lambda: None,
        render_train_views_hr=lambda: torch.zeros(2, 3, 16, 16),
        _record_sync_fit=lambda *args: None,
    )
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with pytest.raises(RuntimeError) as info:
            I3DSPipeline.run_upscaling_stage(fake, 4000)
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
    message = str(info.value)
    assert "GPU out of memory in upscaling stage 2" in message
    assert OOM_FIELDS in message
    assert "--pipeline.stage.batch-size" in message and "--pipeline.stage.patch-size" in message
    assert "--load-dir" in message and "Tried to allocate 20.00 GiB" in message
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)


def _controls_fake(stage_steps, final_step=1000):
    """An object with the pipeline's run-time state and a stand-in stage runner, for driving the viewer controls."""
    from types import SimpleNamespace

    from vsdsr_nerfstudio.pipeline.i3ds import I3DSPipeline
    from vsdsr_nerfstudio.pipeline.runtime import SRControls, SRModels, SRSchedule
    from vsdsr_nerfstudio.sr.core.stage import SRStageConfig

    config = SimpleNamespace(sr_enabled=True, stage=SRStageConfig())
    notes, stages = [], []
    panel = SimpleNamespace(
        c3_text_cfg=SimpleNamespace(value=config.stage.guidance_scale),
        c4_camera_cfg=SimpleNamespace(value=config.stage.camera_guidance_scale),
        show=lambda **kwargs: notes.append(kwargs),
        training_finished=lambda: notes.append({"finished": True}),
    )
    fake = SimpleNamespace(
        config=config,
        sr_schedule=SRSchedule(stage_steps=list(stage_steps), ready=True, final_step=final_step),
        sr_controls=SRControls(config.sr_enabled, config.stage.guidance_scale, config.stage.camera_guidance_scale),
        sr_models=SRModels(),
        sr_panel=panel,
        _held_stage_step=None,
        stages=stages,
        notes=notes,
    )
    fake._note = lambda message: I3DSPipeline._note(fake, message)

    def run_upscaling_stage(step, scheduled=True):
        stages.append(step)
        fake.sr_schedule.record_stage(step, scheduled)

    fake.run_upscaling_stage = run_upscaling_stage
    return fake


def test_viewer_controls_upscale_now_pause_and_guidance_sliders():
    """The viewer's button forces a stage at the next step (even off-schedule or paused), the checkbox pauses due
    stages, and the sliders set the CFG scales the SR stage reads (through the run-time controls, not the config)."""
    from types import SimpleNamespace

    from vsdsr_nerfstudio.pipeline.i3ds import I3DSPipeline

    fake = _controls_fake([100])
    config, stages = fake.config, fake.stages
    step_fn = I3DSPipeline._before_train_iteration

    step_fn(fake, 50)
    assert stages == []  # nothing due
    I3DSPipeline._on_pause(fake, SimpleNamespace(value=True))
    assert fake.sr_controls.sr_enabled is False and config.sr_enabled is True  # the config keeps what was set
    step_fn(fake, 100)
    assert stages == []  # due, but paused
    I3DSPipeline._on_pause(fake, SimpleNamespace(value=False))
    step_fn(fake, 101)
    assert stages == [101]  # unpaused: the overdue stage runs
    step_fn(fake, 102)
    assert stages == [101]  # once
    I3DSPipeline._on_upscale_now(fake, None)
    step_fn(fake, 150)
    assert stages == [101, 150] and fake.sr_controls.upscale_requested is False  # forced off-schedule, once
    I3DSPipeline._on_pause(fake, SimpleNamespace(value=True))
    I3DSPipeline._on_upscale_now(fake, None)
    step_fn(fake, 160)
    assert stages == [101, 150, 160]  # the button works while paused

    fake.sr_panel.c3_text_cfg.value, fake.sr_panel.c4_camera_cfg.value = 4.5, 7.0
    I3DSPipeline._on_guidance(fake, None)
    assert config.stage.guidance_scale == 10.0, "the slider must not write the config"
    stage = _tiny_stage()
    fake.sr_controls.apply_guidance(stage)
    assert stage.guidance_scale == 4.5 and stage.camera_guidance_scale == 7.0  # what the stage reads at every step


def _tiny_stage():
    from vsdsr_nerfstudio.sr.core.stage import SRStageConfig
    from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig

    config = SRStageConfig(guidance="vsd", batch_size=1, patch_size=8)
    return config.setup(prior=SRPriorConfig(prior="tiny").setup(device="cpu"))


def test_the_sr_stage_reads_the_pipeline_stage_config_object():
    """The stage is built from ``pipeline.config.stage`` itself (not a copy); the CFG scales it uses start at the
    config's and change only through its setter (the viewer's sliders), leaving the config as set."""
    from vsdsr_nerfstudio.sr.core.stage import SRStageConfig
    from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig

    stage_config = SRStageConfig(guidance="sds", batch_size=1, patch_size=8)
    stage = stage_config.setup(prior=SRPriorConfig(prior="tiny").setup(device="cpu"))
    assert stage.config is stage_config
    assert (stage.guidance_scale, stage.camera_guidance_scale) == (10.0, 1.0)
    stage.set_guidance_scales(3.0, 2.0)
    assert (stage.guidance_scale, stage.camera_guidance_scale) == (3.0, 2.0)
    assert stage_config.guidance_scale == 10.0 and stage_config.camera_guidance_scale == 1.0


def test_forced_stages_are_counted_apart_and_old_checkpoints_still_resume():
    from vsdsr_nerfstudio.pipeline.runtime import SRSchedule

    schedule = SRSchedule(stage_steps=[20, 30])
    assert schedule.next_due(19) is None and schedule.next_due(20) == 20
    schedule.record_stage(20, scheduled=True)
    schedule.record_stage(25, scheduled=False)  # "Upscale now"
    assert (schedule.cycles_done, schedule.scheduled_done) == (2, 1)
    assert schedule.next_due(29) is None and schedule.next_due(30) == 30  # the second configured cycle still runs
    # a checkpoint of this release: the counters come back as saved
    saved = schedule.state()
    back = SRSchedule(stage_steps=[20, 30])
    back.restore(saved["cycles_done"], saved["last_stage_step"], saved["scheduled_done"])
    assert back.scheduled_known and back.next_due(30) == 30
    # an older checkpoint (no scheduled_done), read before the steps are known: derived again once they are
    old = SRSchedule()
    old.restore(1, 20)
    assert not old.scheduled_known and old.scheduled_done == 0
    old.stage_steps = [20, 30]
    old.restore(old.cycles_done, old.last_stage_step)
    assert old.scheduled_done == 1 and old.next_due(31) == 30 and old.next_due(29) is None


def test_sync_fit_psnr_per_view_and_recorded_on_the_sync_phase(tmp_path):
    """The sync fit (PSNR of a stage's renders against the views the previous stage wrote) is exact per view and is
    added to the sync phase that just ended in phase_times.json."""
    import json

    import torch

    from vsdsr_nerfstudio.pipeline.runtime import PhaseTimer, fit_psnr
    from vsdsr_nerfstudio.pipeline.state import SR_STATE_DIR

    renders = torch.zeros(3, 3, 4, 5)
    targets = [torch.full((4, 5, 3), 0.1), torch.full((4, 5, 3), 0.01), torch.zeros(4, 5, 3)]
    targets[2][0, 0, 0] = 1.0  # one wrong channel of one pixel: MSE 1/60
    values = fit_psnr(renders, lambda i: targets[i])
    expected = torch.tensor([20.0, 40.0, 10 * torch.log10(torch.tensor(60.0)).item()])
    assert torch.allclose(values, expected, atol=1e-4)

    timer = PhaseTimer()
    timer.annotate_last("fit_psnr", 1.0, tmp_path)  # nothing ended yet: nothing to annotate, nothing written
    assert timer.phases == [] and not (tmp_path / SR_STATE_DIR).exists()
    timer.end(10, tmp_path)
    timer.start("upscale 1", 10)
    timer.end(10, tmp_path)
    timer.start("sync 1", 10)
    timer.end(20, tmp_path)
    timer.start("upscale 2", 20)
    timer.annotate_last("fit_psnr", round(float(values.mean()), 3), tmp_path)
    saved = json.loads((tmp_path / SR_STATE_DIR / "phase_times.json").read_text())
    assert [p["phase"] for p in saved] == ["pretrain", "upscale 1", "sync 1"]
    assert saved[2]["fit_psnr"] == pytest.approx(float(values.mean()), abs=1e-3)
    assert "fit_psnr" not in saved[0] and "fit_psnr" not in saved[1]
