"""The pipeline's viewer panel and run-time controls: the "Super-resolution" folder, readable status, pause notices,
"Upscale now" (an extra stage; the configured cycles still run; after training it says why it does nothing) and
CFG sliders that take effect at the next chunk of a running stage. Driven without a browser: a real pipeline on a
tiny generated scene with the tiny prior, and fake viewer handles."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer_elements import ViewerElement
from synthetic_llff import make_llff_scene

from vsdsr_nerfstudio.method_configs.vsd_sr_tiny import vsd_sr_tiny_config
from vsdsr_nerfstudio.pipeline.i3ds import I3DSPipeline
from vsdsr_nerfstudio.pipeline.runtime import SRControls
from vsdsr_nerfstudio.pipeline.viewer import PANEL_FOLDER


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_llff_scene(tmp_path_factory.mktemp("viewer_scene"), n_views=4, hr_size=(64, 48), factors=(4,), seed=7)


def _pipeline(scene, tmp_path, max_steps: int) -> I3DSPipeline:
    torch.manual_seed(0)
    config = vsd_sr_tiny_config().pipeline
    config.datamanager.dataparser.data = scene
    config.datamanager.dataparser.downscale_factor = 4
    config.datamanager.dataparser.llffhold = 4
    config.pretrain_steps, config.sync_steps, config.num_cycles, config.upscale_steps = 2, 3, 2, 2
    config.model.lpips_weights = None
    pipeline = config.setup(device="cpu", test_mode="val")
    trainer_config = SimpleNamespace(max_num_iterations=max_steps, load_dir=None, load_checkpoint=None)
    pipeline._trainer = SimpleNamespace(config=trainer_config, base_dir=tmp_path, viewer_state=None, train_lock=None)
    _fake_handles(pipeline)
    return pipeline


def _fake_handles(pipeline: I3DSPipeline) -> None:
    """What installing the panel in a viewer gives each element: a handle whose value and state can be set."""
    for _, element in parse_object(pipeline, ViewerElement, "Custom Elements"):
        element.gui_handle = SimpleNamespace(value=getattr(element, "default_value", None), disabled=False)


def _train(pipeline: I3DSPipeline, steps, actions=None):
    actions = actions or {}
    for step in steps:
        if step in actions:
            actions[step]()
        pipeline._before_train_iteration(step)
        pipeline._after_train_iteration(step)


def test_controls_sit_in_a_super_resolution_folder(scene, tmp_path):
    pipeline = _pipeline(scene, tmp_path, max_steps=8)
    paths = [path for path, _ in parse_object(pipeline, ViewerElement, "Custom Elements")]
    assert paths, "the pipeline shows no viewer elements"
    folders = {path.split("/")[:-1][-1] for path in paths}
    assert folders == {PANEL_FOLDER}, paths  # nerfstudio makes one folder per module on the path
    names = {element.name for _, element in parse_object(pipeline, ViewerElement, "Custom Elements")}
    assert {"Pause SR", "Upscale now", "Text CFG scale", "Camera CFG scale", "Phase", "Progress"} <= names


def test_upscale_now_is_an_extra_stage_and_the_configured_cycles_still_run(scene, tmp_path):
    """P=2, S=3, C=2 in 8 steps: stages before steps 2 and 5. "Upscale now" pressed at step 3 adds one stage;
    both scheduled stages still run (3 in all), the status says which one was the extra."""
    pipeline = _pipeline(scene, tmp_path, max_steps=8)
    with CONSOLE.capture() as capture:
        _train(pipeline, range(8), {3: lambda: pipeline._on_upscale_now(None)})
    log = capture.get()
    assert "Upscaling stage 1 done before step 2" in log
    assert "Upscaling stage 2 done before step 3" in log
    assert "Upscaling stage 3 done before step 5" in log
    assert pipeline.sr_schedule.cycles_done == 3 and pipeline.sr_schedule.scheduled_done == 2
    assert sorted(p.name for p in (tmp_path / "sr_state").glob("stage_*.pt")) == [
        "stage_001.pt",
        "stage_002.pt",
        "stage_003.pt",
    ]
    assert pipeline.sr_panel.s3_cycles.value == 3


def test_upscale_now_after_training_is_disabled_and_says_why(scene, tmp_path):
    pipeline = _pipeline(scene, tmp_path, max_steps=8)
    _train(pipeline, range(8))
    assert pipeline.sr_schedule.finished
    assert pipeline.sr_panel.c2_upscale_now.gui_handle.disabled is True
    with CONSOLE.capture() as capture:
        pipeline._on_upscale_now(None)
    assert "training has finished" in capture.get()
    assert "training has finished" in pipeline.sr_panel.s4_event.value
    assert pipeline.sr_controls.upscale_requested is False


def test_pause_holds_a_due_stage_and_says_so_once(scene, tmp_path):
    pipeline = _pipeline(scene, tmp_path, max_steps=8)
    with CONSOLE.capture() as capture:
        _train(pipeline, range(4), {0: lambda: pipeline._on_pause(SimpleNamespace(value=True))})
    log = capture.get()
    assert log.count("stage 1 (due at step 2) held: SR paused") == 1, log
    assert "held: SR paused" in pipeline.sr_panel.s4_event.value
    assert pipeline.sr_schedule.cycles_done == 0
    with CONSOLE.capture() as capture:
        _train(pipeline, [4], {4: lambda: pipeline._on_pause(SimpleNamespace(value=False))})
    assert "Upscaling stage 1 done before step 4" in capture.get()  # the held stage runs once unpaused


def test_status_fields_are_short_and_show_phase_and_progress(scene, tmp_path):
    pipeline = _pipeline(scene, tmp_path, max_steps=8)
    shown = []
    original = pipeline.sr_panel.show

    def record(**kwargs):
        shown.append(kwargs)
        original(**kwargs)

    pipeline.sr_panel.show = record
    _train(pipeline, range(3))
    phases = [s["phase"] for s in shown if s.get("phase")]
    progress = [s["progress"] for s in shown if s.get("progress")]
    assert phases[:4] == ["pretraining (LR)", "stage 1: loading prior", "stage 1: rendering", "stage 1: SR steps"]
    assert "rendered 3/3 views" in progress and "SR step 2/2" in progress
    assert pipeline.sr_panel.s1_phase.value == "sync 1"
    assert max(len(text) for text in phases + progress) <= 26  # fits the panel's text field


class _RecordingStage:
    """A stand-in SR stage that records the CFG scales each step runs with."""

    def __init__(self, on_step=None):
        self.guidance_scale, self.camera_guidance_scale = 10.0, 1.0
        self.used, self.on_step, self.active = [], on_step or {}, True

    def set_guidance_scales(self, text, camera):
        self.guidance_scale, self.camera_guidance_scale = text, camera

    def step(self):
        k = len(self.used)
        if k in self.on_step:
            self.on_step[k]()
        self.used.append((self.guidance_scale, self.camera_guidance_scale))
        return SimpleNamespace(t=500.0, loss=0.1)


def test_cfg_slider_moved_during_a_stage_applies_at_the_next_chunk_and_is_logged():
    stage = _RecordingStage()
    panel = SimpleNamespace(
        c3_text_cfg=SimpleNamespace(value=10.0), c4_camera_cfg=SimpleNamespace(value=1.0), show=lambda **kw: None
    )
    fake = SimpleNamespace(
        config=SimpleNamespace(steps_per_chunk=2),
        sr_controls=SRControls(True, 10.0, 1.0),
        sr_models=SimpleNamespace(stage=stage),
        sr_panel=panel,
        _show=lambda *a, **kw: None,
        _yield_lock=lambda: None,
    )
    fake._note = lambda message: I3DSPipeline._note(fake, message)

    def move_slider():  # what the viewer thread does while the stage runs
        panel.c3_text_cfg.value, panel.c4_camera_cfg.value = 4.5, 2.0
        I3DSPipeline._on_guidance(fake, None)

    stage.on_step = {2: move_slider}  # during the second chunk (steps 3-4)
    with CONSOLE.capture() as capture:
        I3DSPipeline._run_sr_steps(fake, stage, cycle=1, steps=6)
    assert stage.used == [(10.0, 1.0)] * 4 + [(4.5, 2.0)] * 2  # from the third chunk on
    log = capture.get()
    assert "at the next chunk of this stage" in log
    assert "CFG scales set in stage 1 from SR step 5: text 10 -> 4.5, camera 1 -> 2" in log
