"""The I3DS pipeline: a low-resolution NeRF, then cycles of (upscale every training view, synchronise the NeRF).

Schedule (all in NeRF training steps; an upscaling stage runs *between* two NeRF steps and leaves the NeRF's step
count, optimisers and learning-rate schedules untouched)::

    steps [0, P)                 pretrain on the LR images
    before step P + (c-1)*S      upscaling stage c: render all N views at 4x, K steps of the SR core, write them
    steps [P + (c-1)*S, P + c*S) synchronisation stage c: train the NeRF on the HR images

Only cycles whose synchronisation fits before ``max_num_iterations`` are scheduled, so the last upscaling stage
is always followed by a full sync stage (DiSR-NeRF's last stage is never synchronised).

The diffusion prior loads lazily at the first upscaling stage, lives outside the ``nn.Module`` tree (so outside
``state_dict`` and checkpoints) and can be moved to the CPU during sync stages. After every upscaling stage the HR
images and SR state are written atomically to ``<run>/sr_state/`` (see :mod:`vsdsr_nerfstudio.pipeline.state`);
``--load-dir`` resumes from the newest complete stage.

What the pipeline needs from the NeRF (any nerfstudio model; `vsd-sr` uses Nerfacto, `vsd-sr-ngp` Instant-NGP):
``get_outputs_for_camera_ray_bundle(bundle)["rgb"]`` for the 4x renders, and nothing model-specific beyond three
optional hooks, each looked up with a guard so that a model without it works:

- ``model.config.check_runtime(device)`` (on the model *config*): raise a clear error when the model cannot run on
  ``device``; called before any data is loaded (Instant-NGP: nerfacc needs CUDA). See :func:`check_model_runtime`.
- ``model.config.camera_optimizer`` / ``model.camera_optimizer``: applied once to each 4x render when present and
  not ``"off"`` (Nerfacto has one, off by default; Instant-NGP has none). See :func:`model_camera_optimizer`.
- ``model.field.embedding_appearance`` / ``use_average_appearance_embedding`` (nerfstudio's ``NerfactoField``, used
  by both): the 4x renders use the mean per-image appearance embedding, whatever the model renders eval images
  with. See :func:`average_appearance`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Type, Union

import torch
from jaxtyping import Float
from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from vsdsr_nerfstudio.models.nerfacto import VsdSrModelConfig
from vsdsr_nerfstudio.pipeline.datamanager import SRDataManager, SRDataManagerConfig
from vsdsr_nerfstudio.pipeline.runtime import (
    OOM_FIELDS,
    PhaseTimer,
    SRControls,
    SRModels,
    SRSchedule,
    cudnn_benchmark_off,
    fit_psnr,
    oom_advice,
    timed,
)
from vsdsr_nerfstudio.pipeline.state import (
    adopt_stage_file,
    latest_stage_file,
    load_stage_state,
    save_stage_state,
)
from vsdsr_nerfstudio.pipeline.trainer import guard_eval_checkpoint_listing
from vsdsr_nerfstudio.pipeline.viewer import PANEL_FOLDER, SRViewerPanel, refresh_frustums
from vsdsr_nerfstudio.sr.core.stage import SRStageConfig, pixel_prior_vsd_problem
from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig, check_prior_source

__all__ = ["OOM_FIELDS", "I3DSPipeline", "I3DSPipelineConfig", "upscaling_stage_steps"]


class GPURequiredError(RuntimeError):
    """The run is configured for a CUDA GPU and torch finds none."""


def check_cuda_device(device: Union[str, torch.device]) -> None:
    """Stop with what to do, before any data is loaded, when ``device`` is CUDA and torch sees no CUDA GPU (the
    default presets train on ``cuda``; torch would otherwise fail deep inside with "Found no NVIDIA driver")."""
    if torch.device(device).type != "cuda" or torch.cuda.is_available():
        return
    raise GPURequiredError(
        f"This preset trains on a CUDA GPU (--machine.device-type cuda, device {device}) and torch finds none "
        f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}). For a smoke run without a GPU use "
        "`ns-train vsd-sr-tiny` (the CPU-sized preset, minutes); `--machine.device-type cpu` runs this preset on "
        "the CPU, far too slowly for a real scene."
    )


def check_model_runtime(model_config: Any, device: Union[str, torch.device]) -> None:
    """Hook: call ``model_config.check_runtime(device)`` if the model config defines it (the Instant-NGP config
    raises when nerfacc's CUDA kernels cannot run), so an unusable model fails before any data is loaded."""
    check = getattr(model_config, "check_runtime", None)
    if callable(check):
        check(device)


def model_camera_optimizer(model: Any) -> Optional[Any]:
    """Hook: the model's camera optimiser if it has one and it is on (Nerfacto's, when enabled); None for a model
    without one (nerfstudio 1.1.5's Instant-NGP) or with it off."""
    optimizer_config = getattr(getattr(model, "config", None), "camera_optimizer", None)
    if optimizer_config is None or getattr(optimizer_config, "mode", "off") == "off":
        return None
    return getattr(model, "camera_optimizer", None)


@contextlib.contextmanager
def average_appearance(model: Any) -> Iterator[None]:
    """Hook: while rendering, a field with per-image appearance embeddings (``NerfactoField``: Nerfacto and
    Instant-NGP) uses their mean in eval mode, not zeros (an embedding that was never trained). No-op for a model
    whose field has no such embedding."""
    field_ = getattr(model, "field", None)
    if getattr(field_, "embedding_appearance", None) is None or not hasattr(field_, "use_average_appearance_embedding"):
        yield
        return
    saved = field_.use_average_appearance_embedding
    field_.use_average_appearance_embedding = True
    try:
        yield
    finally:
        field_.use_average_appearance_embedding = saved


def warn_unstable_stage_settings(config: "I3DSPipelineConfig") -> Optional[str]:
    """Warn (once, at setup) when the stage settings are known to wreck the views with this prior; returns the
    message, or None. The run goes on: the settings may be deliberate (an ablation)."""
    problem = None
    if config.sr_enabled and config.prior.pixel_space:
        problem = pixel_prior_vsd_problem(config.stage)
    if problem:
        CONSOLE.print(f"[bold yellow]Warning:[/bold yellow] {problem}")
    return problem


def upscaling_stage_steps(pretrain_steps: int, sync_steps: int, num_cycles: int, final_step: int) -> List[int]:
    """NeRF steps before which upscaling stages run: P + (c-1)*S for the cycles whose sync ends by ``final_step``."""
    if pretrain_steps < 0 or sync_steps < 1 or num_cycles < 0:
        raise ValueError("pretrain_steps must be >= 0, sync_steps >= 1 and num_cycles >= 0")
    steps = []
    for cycle in range(num_cycles):
        start = pretrain_steps + cycle * sync_steps
        if start + sync_steps > final_step:
            break
        steps.append(start)
    return steps


@dataclass
class I3DSPipelineConfig(VanillaPipelineConfig):
    """Iterative 3D Synchronisation: LR pretraining, then cycles of (4x upscaling stage, NeRF sync stage)."""

    _target: Type = field(default_factory=lambda: I3DSPipeline)
    datamanager: DataManagerConfig = field(default_factory=SRDataManagerConfig)
    """Datamanager: LR originals plus the rewritable HR training buffer."""
    model: ModelConfig = field(default_factory=VsdSrModelConfig)
    """The NeRF being super-resolved: Nerfacto (`vsd-sr` and its schedules) or Instant-NGP (`vsd-sr-ngp`, CUDA)."""
    prior: SRPriorConfig = field(default_factory=SRPriorConfig)
    """The x4 diffusion prior (loaded at the first upscaling stage, never saved in checkpoints)."""
    stage: SRStageConfig = field(default_factory=SRStageConfig)
    """One upscaling stage: guidance (vsd/rsd/sds), CFG scales, LoRA, latent patches, timestep schedule."""
    pretrain_steps: int = 2000
    """P: NeRF steps on the LR images before the first upscaling stage."""
    upscale_steps: int = 1000
    """K: SR-core steps per upscaling stage."""
    sync_steps: int = 2000
    """S: NeRF steps on the HR images after each upscaling stage."""
    num_cycles: int = 4
    """C: upscaling + sync cycles. Only cycles whose sync stage fits in max-num-iterations run."""
    offload_prior: bool = True
    """Move the diffusion models to the CPU during sync stages (frees GPU memory for the NeRF)."""
    steps_per_chunk: int = 10
    """SR-core steps between releases of the training lock, so the viewer stays responsive during a stage."""
    log_num_views: int = 3
    """Training views whose before/after images are written to the logger at every stage."""
    scene_prompt: Optional[str] = None
    """Scene name put in front of the prompt ("<scene>, high resolution, 4K, photo"). None: the data folder name."""
    sr_enabled: bool = True
    """Run upscaling stages (False: train the LR NeRF only; the viewer checkbox toggles this while training)."""


class I3DSPipeline(VanillaPipeline):
    """VanillaPipeline plus the I3DS schedule, run from training callbacks.

    Run-time state, one object per concern (see :mod:`vsdsr_nerfstudio.pipeline.runtime`): ``sr_schedule``
    (stages planned and run), ``sr_models`` (prior, SR stage, prompt), ``sr_controls`` (what the viewer sets),
    ``sr_phases`` (phase timing); the viewer panel is the ``Super-resolution`` attribute (:attr:`sr_panel`)."""

    config: I3DSPipelineConfig
    datamanager: SRDataManager

    def __init__(
        self,
        config: I3DSPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[torch.cuda.amp.GradScaler] = None,
    ):
        check_cuda_device(device)
        check_model_runtime(config.model, device)  # before the data: e.g. Instant-NGP without CUDA stops here
        warn_unstable_stage_settings(config)
        if test_mode != "val":  # built by ns-eval / ns-render / ns-viewer (eval_setup)
            guard_eval_checkpoint_listing()
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self._trainer: Any = None
        self._held_stage_step: Optional[int] = None
        self.sr_schedule = SRSchedule()
        self.sr_models = SRModels()
        stage = config.stage
        self.sr_controls = SRControls(config.sr_enabled, stage.guidance_scale, stage.camera_guidance_scale)
        self.sr_phases = PhaseTimer()
        panel = SRViewerPanel(
            paused=not config.sr_enabled,
            guidance_scale=config.stage.guidance_scale,
            camera_guidance_scale=config.stage.camera_guidance_scale,
            on_pause=self._on_pause,
            on_upscale_now=self._on_upscale_now,
            on_guidance=self._on_guidance,
        )
        setattr(self, PANEL_FOLDER, panel)  # the attribute name is the viewer's folder name

    @property
    def sr_panel(self) -> SRViewerPanel:
        """The SR controls and status in the viewer."""
        return getattr(self, PANEL_FOLDER)

    # ------------------------------------------------------------------------------------------- viewer
    def _on_upscale_now(self, _element: Any) -> None:
        if self.sr_schedule.finished:
            self._note("Upscale now: training has finished; start a run with --load-dir to upscale again.")
            return
        self.sr_controls.request_upscale()
        self._note("Upscale now: an extra stage runs before the next step.")

    def _on_pause(self, element: Any) -> None:
        self.sr_controls.set_paused(bool(element.value))
        self._note("SR paused: due stages wait." if element.value else "SR resumed.")

    def _on_guidance(self, _element: Any) -> None:
        panel = self.sr_panel
        self.sr_controls.set_guidance(text=panel.c3_text_cfg.value, camera=panel.c4_camera_cfg.value)
        stage_running = self.sr_models.stage is not None and getattr(self.sr_models.stage, "active", False)
        when = "at the next chunk of this stage" if stage_running else "at the next stage"
        controls = self.sr_controls
        self._note(f"CFG text {controls.guidance_scale:g}, camera {controls.camera_guidance_scale:g} {when}")

    def _note(self, message: str) -> None:
        """An event worth telling the user: on the console and in the panel's "Last event" field."""
        CONSOLE.print(f"[bold]I3DS:[/bold] {message}")
        self.sr_panel.show(event=message)

    def _show(self, phase: Optional[str] = None, progress: str = "") -> None:
        self.sr_panel.show(phase=phase, progress=progress, cycles=self.sr_schedule.cycles_done)

    # ------------------------------------------------------------------------------------------- checkpoints
    def get_extra_state(self) -> Dict[str, Any]:
        """Small SR bookkeeping saved in every nerfstudio checkpoint; the large state is in ``sr_state/``."""
        return self.sr_schedule.state()

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        scheduled = state.get("scheduled_done")
        self.sr_schedule.restore(
            int(state.get("cycles_done", 0)),
            int(state.get("last_stage_step", -1)),
            None if scheduled is None else int(scheduled),
        )
        self.sr_schedule.stage_file = str(state.get("stage_file", ""))

    # ------------------------------------------------------------------------------------------- schedule
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        self._trainer = training_callback_attributes.trainer
        callbacks.append(
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._before_train_iteration)
        )
        callbacks.append(
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after_train_iteration)
        )
        return callbacks

    def _run_dir(self) -> Optional[Path]:
        return None if self._trainer is None else Path(self._trainer.base_dir)

    def _after_train_iteration(self, step: int) -> None:
        if step + 1 == self.sr_schedule.final_step:
            self.sr_phases.end(step + 1, self._run_dir())
            self.sr_schedule.finished = True
            self.sr_panel.training_finished()
            self._show("training finished", f"{self.sr_schedule.cycles_done} stage(s) run")

    def _init_schedule(self, step: int) -> None:
        trainer = self._trainer
        final_step = step + (trainer.config.max_num_iterations if trainer is not None else 0)
        schedule, c = self.sr_schedule, self.config
        schedule.final_step = final_step
        schedule.stage_steps = upscaling_stage_steps(c.pretrain_steps, c.sync_steps, c.num_cycles, final_step)
        if not schedule.scheduled_known:  # a checkpoint without scheduled_done, read before the steps were known
            schedule.restore(schedule.cycles_done, schedule.last_stage_step)
        if c.sr_enabled and len(schedule.stage_steps) < c.num_cycles:
            CONSOLE.print(
                f"[yellow]I3DS: {len(schedule.stage_steps)} of {c.num_cycles} cycles fit in the training steps "
                f"(P={c.pretrain_steps}, S={c.sync_steps}, until step {final_step}); raise --max-num-iterations to "
                f"{c.pretrain_steps + c.num_cycles * c.sync_steps} for all of them.[/yellow]"
            )
        if c.sr_enabled and schedule.stage_steps:
            # an unused prior option, a missing or incomplete local prior folder, or uncached weights with downloads
            # off fail now, not after P steps
            note = check_prior_source(c.prior)
            if note:
                CONSOLE.print(f"[bold yellow]Warning:[/bold yellow] {note}")
        self._restore_sr_state()
        resumed = schedule.last_stage_step >= 0
        self.sr_phases.start(f"sync {schedule.cycles_done}" if resumed else "pretrain", step)
        self._show(f"sync {schedule.cycles_done}" if resumed else "pretraining (LR)")

    def _restore_sr_state(self) -> None:
        """On ``--load-dir``/``--load-checkpoint``: restore the newest complete upscaling stage of that run."""
        trainer = self._trainer
        if trainer is None:
            return
        load_dir = trainer.config.load_dir or (
            trainer.config.load_checkpoint.parent if trainer.config.load_checkpoint else None
        )
        if load_dir is None:
            return
        schedule = self.sr_schedule
        path = latest_stage_file(Path(load_dir).parent)
        if path is None and schedule.stage_file and Path(schedule.stage_file).is_file():
            path = Path(schedule.stage_file)
        if path is None:
            return
        state = load_stage_state(path)
        self.datamanager.load_hr_state({"hr_images": state["hr_images"], "written": state["written"]})
        scheduled = state.get("scheduled_done")
        schedule.restore(int(state["cycle"]), int(state["step"]), None if scheduled is None else int(scheduled))
        self.sr_models.pending_stage_state = state.get("sr_stage") or None
        _set_rng_state(state.get("rng", {}))
        run_dir = self._run_dir()
        schedule.stage_file = str(adopt_stage_file(path, run_dir) if run_dir is not None else path)
        CONSOLE.print(
            f"[bold green]Resumed SR state from {path}:[/bold green] {schedule.cycles_done} upscaling stage(s) done "
            f"(last before step {schedule.last_stage_step}); training continues on the HR images."
        )

    def _before_train_iteration(self, step: int) -> None:
        schedule = self.sr_schedule
        if not schedule.ready:
            schedule.ready = True
            self._init_schedule(step)
        due = schedule.next_due(step)
        if due is not None and not self.sr_controls.sr_enabled:
            if self._held_stage_step != due:  # say it once per held stage
                self._held_stage_step = due
                self._note(f"stage {schedule.scheduled_done + 1} (due at step {due}) held: SR paused")
            due = None
        forced = self.sr_controls.take_upscale_request()
        if forced or due is not None:
            self.run_upscaling_stage(step, scheduled=due is not None)

    # ------------------------------------------------------------------------------------------- the stage
    def _load_prior(self):
        if self.sr_models.prior is None:
            from vsdsr_nerfstudio.sr.core.stage import SRStage

            CONSOLE.print(f"Loading the diffusion prior ({self.config.prior.kind().describe()})...")
            scene = self.config.scene_prompt
            if scene is None:
                scene = Path(self.datamanager.dataparser.config.data).name
            self.sr_models.prompt = self.config.prior.scene_prompt(scene)
            # the run's prompt goes to the prior through a copy: the config keeps what the user set
            prior_config = dataclasses.replace(self.config.prior, prompt=self.sr_models.prompt)
            self.sr_models.prior = prior_config.setup(device=self.device)
            # One SRStage for the whole run: the LoRA and its counters persist across stages; the residual and
            # the timestep ramp are reset by every begin().
            self.sr_models.stage = SRStage(self.config.stage, self.sr_models.prior)
            if self.sr_models.pending_stage_state:
                self.sr_models.stage.load_state_dict(self.sr_models.pending_stage_state)
                self.sr_models.pending_stage_state = None
        else:
            _move_prior(self.sr_models.prior, self.device)
        return self.sr_models.prior

    @torch.no_grad()
    def render_train_views_hr(self) -> Float[Tensor, "N 3 H W"]:
        """Render every training view at the HR resolution in eval mode, with its real camera index (the
        optimised pose, if the model has a camera optimiser and it is on, applied once; the average appearance
        embedding, if the model's field has per-image embeddings)."""
        cameras = self.datamanager.hr_cameras().to(self.device)
        camera_optimizer = model_camera_optimizer(self.model)
        was_training = self.model.training
        self.model.eval()
        renders = []
        try:
            render_camera = getattr(self.model, "render_camera_rgb", None)  # hook: models that render cameras
            for index in range(len(cameras)):
                if callable(render_camera):  # (Gaussians): no rays; no camera optimiser or appearance embedding
                    rgb = render_camera(cameras[index : index + 1])
                else:
                    bundle = cameras.generate_rays(camera_indices=index, keep_shape=True)
                    if camera_optimizer is not None:
                        camera_optimizer.apply_to_raybundle(bundle)
                    with average_appearance(self.model):
                        rgb = self.model.get_outputs_for_camera_ray_bundle(bundle)["rgb"]
                renders.append(rgb.clamp(0, 1).permute(2, 0, 1).cpu())
                self._show(progress=f"rendered {index + 1}/{len(cameras)} views")
                self._yield_lock()
        finally:
            self.model.train(was_training)
        return torch.stack(renders)

    def _yield_lock(self) -> None:
        """Let the viewer render between chunks of work (the trainer holds its lock during callbacks)."""
        trainer = self._trainer
        lock = getattr(trainer, "train_lock", None)
        if lock is None or trainer.viewer_state is None:
            return
        lock.release()
        try:
            time.sleep(0.001)
        finally:
            lock.acquire()

    def run_upscaling_stage(self, step: int, scheduled: bool = True) -> None:
        """One upscaling stage now (before NeRF step ``step``): load the prior, render every training view at HR,
        K SR steps, decode, write the views and save the SR state. ``scheduled``: one of the configured cycles
        (False: an extra stage asked for from the viewer)."""
        cycle = self.sr_schedule.cycles_done + 1
        phase = f"stage {cycle}" + ("" if scheduled else " (extra)")
        self.sr_phases.end(step, self._run_dir())
        self.sr_phases.start(f"upscale {cycle}", step)
        timings: Dict[str, float] = {}
        with cudnn_benchmark_off(), oom_advice(cycle):
            self._show(f"{phase}: loading prior")
            with timed(timings, "load_prior"):
                self._load_prior()
            self._show(f"{phase}: rendering")
            with timed(timings, "render"):
                renders = self.render_train_views_hr()
            self._record_sync_fit(cycle, step, renders)
            with timed(timings, "encode"):
                stage = self.sr_models.stage
                c2w = self.datamanager.hr_cameras().camera_to_worlds
                stage.begin(renders, self.datamanager.lr_images_chw(), c2w, num_steps=self.config.upscale_steps)
            self._show(f"{phase}: SR steps")
            with timed(timings, "sr_steps"):
                self._run_sr_steps(stage, cycle, self.config.upscale_steps)
            self._show(f"{phase}: decoding")
            with timed(timings, "decode"):
                images = stage.finish()
        with timed(timings, "write_and_save"):
            self.datamanager.write_views(images.permute(0, 2, 3, 1))
            begin_sync = getattr(self.model, "begin_sync_stage", None)  # hook: Gaussians restart densification stats
            if callable(begin_sync):
                begin_sync(step)
            self.sr_schedule.record_stage(step, scheduled)
            self._save_stage(cycle, step)
        self._log_stage(cycle, step, renders, images, timings)
        self._hand_views_to_viewer(images)
        if self.config.offload_prior:
            _move_prior(self.sr_models.prior, torch.device("cpu"))
        self.sr_phases.end(step, self._run_dir())
        self.sr_phases.start(f"sync {cycle}", step)
        self._show(f"sync {cycle}")

    def _run_sr_steps(self, stage: Any, cycle: int, steps: int) -> None:
        """K steps of the SR stage in chunks of ``steps_per_chunk``; before each chunk the viewer's CFG scales are
        handed to the stage (a slider moved during the stage takes effect at the next chunk), after each the
        progress is shown and the viewer gets the training lock."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        chunk = max(1, self.config.steps_per_chunk)
        columns = (
            TextColumn(f"[bold]Upscaling stage {cycle}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} {task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=CONSOLE, transient=False) as progress:
            task = progress.add_task("sr", total=steps, info="")
            for k in range(steps):
                if k % chunk == 0:
                    self.sr_controls.apply_guidance(stage, where=f"in stage {cycle} from SR step {k + 1}")
                stats = stage.step()
                if (k + 1) % chunk == 0 or k + 1 == steps:
                    progress.update(task, completed=k + 1, info=f"t={stats.t:.0f} loss={stats.loss:.4g}")
                    self._show(progress=f"SR step {k + 1}/{steps}")
                    self._yield_lock()

    def _hand_views_to_viewer(self, images: Float[Tensor, "N 3 H W"]) -> None:
        """Show the rewritten HR views on the viewer's training-camera frustums (same pose, new picture)."""
        viewer = getattr(self._trainer, "viewer_state", None)
        if viewer is not None:
            refresh_frustums(viewer, self.datamanager.train_dataset.cameras, images)

    def _save_stage(self, cycle: int, step: int) -> None:
        run_dir = self._run_dir()
        if run_dir is None:
            return
        stage = self.sr_models.stage
        state = {
            "cycle": cycle,
            "step": step,
            "scheduled_done": self.sr_schedule.scheduled_done,
            **self.datamanager.hr_state(),
            "sr_stage": stage.state_dict() if stage is not None else {},
            "rng": _get_rng_state(),
        }
        self.sr_schedule.stage_file = str(save_stage_state(run_dir, cycle, state))

    def _record_sync_fit(self, cycle: int, step: int, renders: Float[Tensor, "N 3 H W"]) -> None:
        """How much of the views the last stage wrote the sync fitted: PSNR of this stage's renders against them,
        added as ``fit_psnr`` to the sync phase that just ended (``phase_times.json``), logged and sent to the
        writer. From the second stage on (the first has no rewritten views; the final sync is not measured)."""
        if not self.datamanager.is_hr:
            return
        per_view = fit_psnr(renders, self.datamanager.hr_view)
        mean = float(per_view.mean())
        self.sr_phases.annotate_last("fit_psnr", round(mean, 3), self._run_dir())
        writer.put_scalar(name="SR stage/sync fit PSNR (dB)", scalar=mean, step=step)
        CONSOLE.print(
            f"Sync before stage {cycle}: renders vs the views it trained on, PSNR {mean:.2f} dB "
            f"(views {float(per_view.min()):.2f} to {float(per_view.max()):.2f})"
        )

    def _log_stage(self, cycle: int, step: int, renders: Tensor, images: Tensor, timings: Dict[str, float]) -> None:
        total = sum(timings.values())
        CONSOLE.print(
            f"[bold green]Upscaling stage {cycle} done[/bold green] before step {step} in {total:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
            + ")"
        )
        for name, value in timings.items():
            writer.put_scalar(name=f"SR stage/{name} (s)", scalar=value, step=step)
        n = min(self.config.log_num_views, renders.shape[0])
        for index in range(n):
            pair = torch.cat([renders[index], images[index]], dim=-1).permute(1, 2, 0)
            writer.put_image(name=f"SR stage/view {index:03d} before | after", image=pair, step=step)


def _move_prior(prior: Any, device: torch.device) -> None:
    mover = getattr(prior, "to", None)
    if callable(mover):
        mover(device)


def _get_rng_state() -> Dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict[str, Tensor]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
