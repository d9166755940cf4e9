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
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerCheckbox, ViewerNumber, ViewerSlider, ViewerText
from torch import Tensor

from vsdsr_nerfstudio.models.nerfacto import VsdSrModelConfig
from vsdsr_nerfstudio.pipeline.datamanager import SRDataManager, SRDataManagerConfig
from vsdsr_nerfstudio.pipeline.state import (
    adopt_stage_file,
    latest_stage_file,
    load_stage_state,
    save_json_atomic,
    save_stage_state,
)
from vsdsr_nerfstudio.sr.core.stage import SRStageConfig, pixel_prior_vsd_problem
from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig, check_prior_source

OOM_FIELDS = (
    "--pipeline.stage.batch-size, --pipeline.stage.patch-size, --pipeline.prior.vae-tile-size and "
    "--pipeline.model.eval-num-rays-per-chunk"
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


@dataclass
class _SRRuntime:
    """What the pipeline holds for SR outside the nn.Module tree (so outside state_dict and checkpoints)."""

    prior: Any = None
    stage: Any = None
    trainer: Any = None
    stage_steps: List[int] = field(default_factory=list)
    cycles_done: int = 0
    last_stage_step: int = -1
    stage_file: str = ""
    resumed: bool = False
    pending_stage_state: Optional[Dict[str, Any]] = None
    schedule_ready: bool = False
    force_stage: bool = False
    status: str = "pretraining (LR)"
    timings: Dict[str, float] = field(default_factory=dict)
    phase_name: str = "pretrain"
    phase_start: float = 0.0
    phase_start_step: int = 0
    phases: List[Dict[str, Any]] = field(default_factory=list)
    final_step: int = 0


class I3DSPipeline(VanillaPipeline):
    """VanillaPipeline plus the I3DS schedule, run from training callbacks."""

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
        check_model_runtime(config.model, device)  # before the data: e.g. Instant-NGP without CUDA stops here
        warn_unstable_stage_settings(config)
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.sr = _SRRuntime()
        self._build_viewer_elements()

    # ------------------------------------------------------------------------------------------- viewer
    def _build_viewer_elements(self) -> None:
        self.viewer_sr_status = ViewerText("SR status", self.sr.status, disabled=True)
        self.viewer_sr_cycle = ViewerNumber("SR cycles done", 0, disabled=True)
        self.viewer_upscale_now = ViewerButton("Upscale now", cb_hook=self._on_upscale_now)
        self.viewer_sr_paused = ViewerCheckbox("Pause SR", not self.config.sr_enabled, cb_hook=self._on_pause)
        self.viewer_guidance = ViewerSlider(
            "Text CFG scale", self.config.stage.guidance_scale, 1.0, 30.0, 0.5, cb_hook=self._on_guidance
        )
        self.viewer_camera_guidance = ViewerSlider(
            "Camera CFG scale", self.config.stage.camera_guidance_scale, 0.0, 10.0, 0.5, cb_hook=self._on_guidance
        )

    def _on_upscale_now(self, _element: ViewerButton) -> None:
        self.sr.force_stage = True

    def _on_pause(self, element: ViewerCheckbox) -> None:
        self.config.sr_enabled = not element.value

    def _on_guidance(self, _element: ViewerSlider) -> None:
        self.config.stage.guidance_scale = float(self.viewer_guidance.value)
        self.config.stage.camera_guidance_scale = float(self.viewer_camera_guidance.value)

    def _set_status(self, status: str) -> None:
        self.sr.status = status
        for element, value in ((self.viewer_sr_status, status), (self.viewer_sr_cycle, self.sr.cycles_done)):
            if element.gui_handle is not None:
                element.value = value

    # ------------------------------------------------------------------------------------------- checkpoints
    def get_extra_state(self) -> Dict[str, Any]:
        """Small SR bookkeeping saved in every nerfstudio checkpoint; the large state is in ``sr_state/``."""
        return {
            "cycles_done": self.sr.cycles_done,
            "last_stage_step": self.sr.last_stage_step,
            "stage_file": self.sr.stage_file,
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.sr.cycles_done = int(state.get("cycles_done", 0))
        self.sr.last_stage_step = int(state.get("last_stage_step", -1))
        self.sr.stage_file = str(state.get("stage_file", ""))

    # ------------------------------------------------------------------------------------------- schedule
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        self.sr.trainer = training_callback_attributes.trainer
        callbacks.append(
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._before_train_iteration)
        )
        callbacks.append(
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after_train_iteration)
        )
        return callbacks

    # ------------------------------------------------------------------------------------------- phase timing
    def _start_phase(self, name: str, step: int) -> None:
        self.sr.phase_name, self.sr.phase_start, self.sr.phase_start_step = name, time.perf_counter(), step
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def _end_phase(self, step: int) -> None:
        """Record the phase that ends before NeRF step ``step`` (wall time, NeRF steps, peak GPU memory) and
        write all phases so far to ``<run>/sr_state/phase_times.json``."""
        seconds = time.perf_counter() - self.sr.phase_start
        entry: Dict[str, Any] = {
            "phase": self.sr.phase_name,
            "seconds": round(seconds, 3),
            "nerf_steps": step - self.sr.phase_start_step,
        }
        if torch.cuda.is_available():
            entry["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        self.sr.phases.append(entry)
        CONSOLE.print(f"I3DS phase {entry}")
        run_dir = self._run_dir()
        if run_dir is not None:
            save_json_atomic(run_dir / "sr_state" / "phase_times.json", self.sr.phases)

    def _after_train_iteration(self, step: int) -> None:
        if step + 1 == self.sr.final_step:
            self._end_phase(step + 1)

    def _run_dir(self) -> Optional[Path]:
        trainer = self.sr.trainer
        return None if trainer is None else Path(trainer.base_dir)

    def _init_schedule(self, step: int) -> None:
        trainer = self.sr.trainer
        final_step = step + (trainer.config.max_num_iterations if trainer is not None else 0)
        self.sr.final_step = final_step
        c = self.config
        self.sr.stage_steps = upscaling_stage_steps(c.pretrain_steps, c.sync_steps, c.num_cycles, final_step)
        if c.sr_enabled and len(self.sr.stage_steps) < c.num_cycles:
            CONSOLE.print(
                f"[yellow]I3DS: {len(self.sr.stage_steps)} of {c.num_cycles} cycles fit in the training steps "
                f"(P={c.pretrain_steps}, S={c.sync_steps}, until step {final_step}); raise --max-num-iterations to "
                f"{c.pretrain_steps + c.num_cycles * c.sync_steps} for all of them.[/yellow]"
            )
        if c.sr_enabled and self.sr.stage_steps:
            # an unused prior option, a missing or incomplete local prior folder, or uncached weights with downloads
            # off fail now, not after P steps
            note = check_prior_source(c.prior)
            if note:
                CONSOLE.print(f"[bold yellow]Warning:[/bold yellow] {note}")
        self._restore_sr_state()
        self._start_phase("pretrain" if self.sr.last_stage_step < 0 else f"sync {self.sr.cycles_done}", step)

    def _restore_sr_state(self) -> None:
        """On ``--load-dir``/``--load-checkpoint``: restore the newest complete upscaling stage of that run."""
        trainer = self.sr.trainer
        if trainer is None:
            return
        load_dir = trainer.config.load_dir or (
            trainer.config.load_checkpoint.parent if trainer.config.load_checkpoint else None
        )
        if load_dir is None:
            return
        path = latest_stage_file(Path(load_dir).parent)
        if path is None and self.sr.stage_file and Path(self.sr.stage_file).is_file():
            path = Path(self.sr.stage_file)
        if path is None:
            return
        state = load_stage_state(path)
        self.datamanager.load_hr_state({"hr_images": state["hr_images"], "written": state["written"]})
        self.sr.cycles_done = int(state["cycle"])
        self.sr.last_stage_step = int(state["step"])
        self.sr.pending_stage_state = state.get("sr_stage") or None
        _set_rng_state(state.get("rng", {}))
        run_dir = self._run_dir()
        self.sr.stage_file = str(adopt_stage_file(path, run_dir) if run_dir is not None else path)
        self.sr.resumed = True
        CONSOLE.print(
            f"[bold green]Resumed SR state from {path}:[/bold green] {self.sr.cycles_done} upscaling stage(s) done "
            f"(last before step {self.sr.last_stage_step}); training continues on the HR images."
        )
        self._set_status(f"sync after stage {self.sr.cycles_done}")

    def _before_train_iteration(self, step: int) -> None:
        if not self.sr.schedule_ready:
            self.sr.schedule_ready = True
            self._init_schedule(step)
        due = any(s <= step and s > self.sr.last_stage_step for s in self.sr.stage_steps)
        if self.sr.force_stage or (due and self.config.sr_enabled):
            self.sr.force_stage = False
            self.run_upscaling_stage(step)

    # ------------------------------------------------------------------------------------------- the stage
    def _load_prior(self):
        if self.sr.prior is None:
            from vsdsr_nerfstudio.sr.core.stage import SRStage

            CONSOLE.print(f"Loading the diffusion prior ({self.config.prior.kind().describe()})...")
            prompt = self.config.scene_prompt
            if prompt is None:
                prompt = Path(self.datamanager.dataparser.config.data).name
            self.config.prior.prompt = self.config.prior.scene_prompt(prompt)
            self.sr.prior = self.config.prior.setup(device=self.device)
            # One SRStage for the whole run: the LoRA and its counters persist across stages; the residual and
            # the timestep ramp are reset by every begin().
            self.sr.stage = SRStage(self.config.stage, self.sr.prior)
            if self.sr.pending_stage_state:
                self.sr.stage.load_state_dict(self.sr.pending_stage_state)
                self.sr.pending_stage_state = None
        else:
            _move_prior(self.sr.prior, self.device)
        return self.sr.prior

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
                    renders.append(rgb.clamp(0, 1).permute(2, 0, 1).cpu())
                    self._yield_lock()
                    continue
                bundle = cameras.generate_rays(camera_indices=index, keep_shape=True)
                if camera_optimizer is not None:
                    camera_optimizer.apply_to_raybundle(bundle)
                with average_appearance(self.model):
                    rgb = self.model.get_outputs_for_camera_ray_bundle(bundle)["rgb"]
                renders.append(rgb.clamp(0, 1).permute(2, 0, 1).cpu())
                self._yield_lock()
        finally:
            self.model.train(was_training)
        return torch.stack(renders)

    def _yield_lock(self) -> None:
        """Let the viewer render between chunks of work (the trainer holds its lock during callbacks)."""
        trainer = self.sr.trainer
        lock = getattr(trainer, "train_lock", None)
        if lock is None or trainer.viewer_state is None:
            return
        lock.release()
        try:
            time.sleep(0.001)
        finally:
            lock.acquire()

    def run_upscaling_stage(self, step: int) -> None:
        """One upscaling stage now (before NeRF step ``step``): render, K SR steps, decode, write every view."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cycle = self.sr.cycles_done + 1
        self._end_phase(step)
        self._start_phase(f"upscale {cycle}", step)
        timings: Dict[str, float] = {}
        # ns-train turns on cudnn.benchmark; its first-time autotuning of the VAE/UNet convolutions took a
        # transient 66 GiB on fern (stage 1 only). The stage's shapes are few and fixed: use the default heuristics.
        cudnn_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        try:
            t0 = time.perf_counter()
            self._set_status(f"stage {cycle}: loading prior")
            self._load_prior()
            timings["load_prior"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            self._set_status(f"stage {cycle}: rendering {self.datamanager.num_train_views} views at HR")
            renders = self.render_train_views_hr()
            timings["render"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            lr_images = self.datamanager.lr_images_chw()
            c2w = self.datamanager.hr_cameras().camera_to_worlds
            stage = self.sr.stage
            stage.begin(renders, lr_images, c2w, num_steps=self.config.upscale_steps)
            timings["encode"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            steps = self.config.upscale_steps
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
                    stats = stage.step()
                    if (k + 1) % max(1, self.config.steps_per_chunk) == 0 or k + 1 == steps:
                        info = f"t={stats.t:.0f} loss={stats.loss:.4g}"
                        progress.update(task, completed=k + 1, info=info)
                        self._set_status(f"stage {cycle}: SR step {k + 1}/{steps}")
                        self._yield_lock()
            timings["sr_steps"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            images = stage.finish()
            timings["decode"] = time.perf_counter() - t0
        except torch.cuda.OutOfMemoryError as error:
            raise RuntimeError(
                f"GPU out of memory in upscaling stage {cycle}. Lower {OOM_FIELDS} (or keep "
                f"--pipeline.offload-prior True), then resume with --load-dir. Original error: {error}"
            ) from error
        finally:
            torch.backends.cudnn.benchmark = cudnn_benchmark

        t0 = time.perf_counter()
        self.datamanager.write_views(images.permute(0, 2, 3, 1))
        begin_sync = getattr(self.model, "begin_sync_stage", None)  # hook: Gaussians restart densification stats
        if callable(begin_sync):
            begin_sync(step)
        self.sr.cycles_done = cycle
        self.sr.last_stage_step = step
        self._save_stage(cycle, step)
        timings["write_and_save"] = time.perf_counter() - t0
        self._log_stage(cycle, step, renders, images, timings)
        self._refresh_viewer_frustums(images)
        if self.config.offload_prior:
            _move_prior(self.sr.prior, torch.device("cpu"))
        self._end_phase(step)
        self._start_phase(f"sync {cycle}", step)
        self._set_status(f"sync after stage {cycle}")

    def _refresh_viewer_frustums(self, images: Float[Tensor, "N 3 H W"]) -> None:
        """Show the rewritten HR views on the viewer's training-camera frustums (same pose, new picture)."""
        viewer = getattr(self.sr.trainer, "viewer_state", None)
        handles = getattr(viewer, "camera_handles", None)
        if not handles:
            return
        cameras = self.datamanager.train_dataset.cameras
        try:
            for index, old in list(handles.items()):
                h, w = images.shape[-2:]  # 100 px high, as nerfstudio draws them
                size = (100, max(1, round(100 * w / h)))
                picture = torch.nn.functional.interpolate(images[index : index + 1], size=size, mode="area")
                picture = (picture[0].permute(1, 2, 0).clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
                camera = cameras[index]
                new = viewer.viser_server.scene.add_camera_frustum(
                    name=f"/cameras/camera_{index:05d}",
                    fov=float(2 * torch.arctan(camera.cx / camera.fx[0]).item()),
                    aspect=float((camera.cx[0] / camera.cy[0]).item()),
                    scale=viewer.config.camera_frustum_scale,
                    image=picture,
                    wxyz=old.wxyz,
                    position=old.position,
                )
                new.on_click(_frustum_click_callback(viewer, index))
                handles[index] = new
        except Exception as error:  # the viewer is a convenience: never let it stop training
            CONSOLE.print(f"[yellow]Could not refresh the viewer's camera images: {error}[/yellow]")

    def _save_stage(self, cycle: int, step: int) -> None:
        run_dir = self._run_dir()
        if run_dir is None:
            return
        state = {
            "cycle": cycle,
            "step": step,
            **self.datamanager.hr_state(),
            "sr_stage": self.sr.stage.state_dict() if self.sr.stage is not None else {},
            "rng": _get_rng_state(),
        }
        self.sr.stage_file = str(save_stage_state(run_dir, cycle, state))

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
        self.sr.timings = timings


def _frustum_click_callback(viewer: Any, index: int):
    """Clicking a frustum moves the client camera to it (what nerfstudio's viewer does for its frustums)."""

    def callback(event: Any) -> None:
        with event.client.atomic():
            event.client.camera.position = event.target.position
            event.client.camera.wxyz = event.target.wxyz
            viewer.current_camera_idx = index

    return callback


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
