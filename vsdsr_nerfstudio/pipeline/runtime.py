"""What the I3DS pipeline holds at run time, outside the ``nn.Module`` tree (so outside ``state_dict`` and
checkpoints), one class per concern:

- :class:`SRSchedule`: where upscaling stages go and which have run (saved in checkpoints as extra state);
- :class:`SRModels`: the lazily loaded prior, the one :class:`~vsdsr_nerfstudio.sr.core.stage.SRStage` of the run
  and the scene prompt they were built with;
- :class:`SRControls`: what the viewer changes while training runs (pause, "Upscale now", the two CFG scales),
  through setters that log; the pipeline hands the CFG scales to the stage between chunks of work;
- :class:`PhaseTimer`: wall time, NeRF steps and peak GPU memory of every phase, written to
  ``<run>/sr_state/phase_times.json``.

Plus the small context managers an upscaling stage runs under (:func:`timed`, :func:`cudnn_benchmark_off`,
:func:`oom_advice`). Nothing here imports nerfstudio's viewer or the diffusion stack.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from jaxtyping import Float
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from vsdsr_nerfstudio.data.files import atomic_write_json
from vsdsr_nerfstudio.pipeline.state import SR_STATE_DIR

OOM_FIELDS = (
    "--pipeline.stage.batch-size, --pipeline.stage.patch-size, --pipeline.prior.vae-tile-size and "
    "--pipeline.model.eval-num-rays-per-chunk"
)


@dataclass
class SRSchedule:
    """Where upscaling stages go and which have run. ``cycles_done`` counts every stage (its state file is
    ``stage_{cycles_done:03d}.pt``); ``scheduled_done`` counts only the scheduled ones, so a stage forced from the
    viewer ("Upscale now") is one more, never one of the configured cycles."""

    stage_steps: List[int] = field(default_factory=list)
    """NeRF steps before which the scheduled stages run."""
    cycles_done: int = 0
    """Upscaling stages run so far (scheduled and forced)."""
    scheduled_done: int = 0
    """Scheduled stages run so far (an index into ``stage_steps``)."""
    last_stage_step: int = -1
    """NeRF step before which the last stage ran (-1: none yet)."""
    final_step: int = 0
    """The step training ends at."""
    stage_file: str = ""
    """The newest stage state file of this run."""
    ready: bool = False
    """Whether the schedule was set up (at the first training step, when the trainer's step is known)."""
    finished: bool = False
    """Whether training has run its last step."""
    scheduled_known: bool = True
    """False when ``scheduled_done`` was derived from ``last_stage_step`` (a run saved without it): derive it again
    once ``stage_steps`` are known."""

    def next_due(self, step: int) -> Optional[int]:
        """The scheduled step of the stage due before ``step``, or None."""
        if self.scheduled_done < len(self.stage_steps) and self.stage_steps[self.scheduled_done] <= step:
            return self.stage_steps[self.scheduled_done]
        return None

    def record_stage(self, step: int, scheduled: bool) -> int:
        """Count a finished stage (before NeRF step ``step``); returns its number."""
        self.cycles_done += 1
        self.scheduled_done += int(scheduled)
        self.last_stage_step = step
        return self.cycles_done

    def restore(self, cycles_done: int, last_stage_step: int, scheduled_done: Optional[int] = None) -> None:
        """Restore the counters of a saved run. Runs saved before forced stages were told apart give no
        ``scheduled_done``: every scheduled step up to the last stage counts as run, as it did then."""
        self.cycles_done, self.last_stage_step = int(cycles_done), int(last_stage_step)
        self.scheduled_known = scheduled_done is not None
        if scheduled_done is None:
            scheduled_done = sum(1 for s in self.stage_steps if s <= self.last_stage_step)
        self.scheduled_done = int(scheduled_done)

    def state(self) -> Dict[str, Any]:
        """The counters saved in checkpoints and stage files."""
        return {
            "cycles_done": self.cycles_done,
            "scheduled_done": self.scheduled_done,
            "last_stage_step": self.last_stage_step,
            "stage_file": self.stage_file,
        }


@dataclass
class SRModels:
    """The diffusion prior, the run's one SR stage (its LoRA and counters persist across stages) and the prompt
    they were built with (the scene name in front of the configured prompt; the configs are not written to)."""

    prior: Any = None
    """The x4 diffusion prior (an :class:`~vsdsr_nerfstudio.sr.priors.base.SRPrior`), loaded at the first stage."""
    stage: Any = None
    """The run's :class:`~vsdsr_nerfstudio.sr.core.stage.SRStage`, built with the prior."""
    prompt: Optional[str] = None
    """The prompt the prior was built with: the scene name in front of the configured prompt."""
    pending_stage_state: Optional[Dict[str, Any]] = None
    """An SR stage state restored from a stage file, loaded into the stage when it is built."""


class SRControls:
    """What the viewer sets while training runs. Each setter logs on the console; the CFG scales reach the SR
    stage through :meth:`apply_guidance` at the start of every chunk of stage work."""

    def __init__(self, sr_enabled: bool, guidance_scale: float, camera_guidance_scale: float) -> None:
        self.sr_enabled = bool(sr_enabled)
        self.guidance_scale = float(guidance_scale)
        self.camera_guidance_scale = float(camera_guidance_scale)
        self.upscale_requested = False

    def set_paused(self, paused: bool) -> None:
        """Pause (hold due stages) or resume the schedule."""
        if self.sr_enabled == (not paused):
            return
        self.sr_enabled = not paused
        CONSOLE.print(f"[bold]SR {'paused' if paused else 'resumed'}[/bold] from the viewer.")

    def request_upscale(self) -> None:
        """Ask for one extra upscaling stage before the next NeRF step."""
        self.upscale_requested = True

    def take_upscale_request(self) -> bool:
        """Whether an extra stage was asked for (and forget the request)."""
        requested, self.upscale_requested = self.upscale_requested, False
        return requested

    def set_guidance(self, text: Optional[float] = None, camera: Optional[float] = None) -> None:
        """New CFG scales (None: unchanged); they take effect at the next chunk of stage work."""
        if text is not None:
            self.guidance_scale = float(text)
        if camera is not None:
            self.camera_guidance_scale = float(camera)

    def apply_guidance(self, stage: Any, where: str = "") -> bool:
        """Hand the current CFG scales to ``stage`` (an :class:`SRStage`); log and return True if they changed."""
        old = (stage.guidance_scale, stage.camera_guidance_scale)
        new = (self.guidance_scale, self.camera_guidance_scale)
        if old == new:
            return False
        stage.set_guidance_scales(*new)
        CONSOLE.print(
            f"[bold]CFG scales set{' ' + where if where else ''}:[/bold] text {old[0]:g} -> {new[0]:g}, "
            f"camera {old[1]:g} -> {new[1]:g}"
        )
        return True


class PhaseTimer:
    """Wall time, NeRF steps and peak GPU memory of each phase (pretrain, upscale c, sync c)."""

    def __init__(self) -> None:
        self.phases: List[Dict[str, Any]] = []
        self.name = "pretrain"
        self.start_time = time.perf_counter()
        self.start_step = 0

    def start(self, name: str, step: int) -> None:
        self.name, self.start_time, self.start_step = name, time.perf_counter(), step
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def end(self, step: int, run_dir: Optional[Path]) -> Dict[str, Any]:
        """Record the phase that ends before NeRF step ``step`` and write all phases so far to
        ``<run_dir>/sr_state/phase_times.json`` (when there is a run folder)."""
        entry: Dict[str, Any] = {
            "phase": self.name,
            "seconds": round(time.perf_counter() - self.start_time, 3),
            "nerf_steps": step - self.start_step,
        }
        if torch.cuda.is_available():
            entry["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        self.phases.append(entry)
        CONSOLE.print(f"I3DS phase {entry}")
        self._write(run_dir)
        return entry

    def annotate_last(self, key: str, value: Any, run_dir: Optional[Path]) -> None:
        """Add ``key: value`` to the last phase that ended (e.g. the sync fit measured at the next stage's start)
        and rewrite ``phase_times.json``."""
        if not self.phases:
            return
        self.phases[-1][key] = value
        self._write(run_dir)

    def _write(self, run_dir: Optional[Path]) -> None:
        if run_dir is not None:
            atomic_write_json(Path(run_dir) / SR_STATE_DIR / "phase_times.json", self.phases)


def fit_psnr(renders: Float[Tensor, "N 3 H W"], view: Callable[[int], Float[Tensor, "H W 3"]]) -> Float[Tensor, " N"]:
    """PSNR (dB) of each render against the training view it was rendered for (``view(i)``, HWC in [0, 1]): how
    closely the NeRF fits the images it was synchronised on. One view at a time (the HR buffer stays in its dtype)."""
    from vsdsr_nerfstudio.metrics.psnr import psnr

    values = [psnr(renders[i].float().cpu(), view(i).permute(2, 0, 1).float().cpu()) for i in range(renders.shape[0])]
    return torch.stack(values)


@contextlib.contextmanager
def timed(timings: Dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def cudnn_benchmark_off() -> Iterator[None]:
    """ns-train turns on cudnn.benchmark; its first-time autotuning of the VAE/UNet convolutions took a transient
    66 GiB on fern (stage 1 only). A stage's shapes are few and fixed: use the default heuristics, then restore."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


@contextlib.contextmanager
def oom_advice(cycle: int) -> Iterator[None]:
    """Turn a CUDA out-of-memory error in upscaling stage ``cycle`` into one that names the options to lower."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        raise RuntimeError(
            f"GPU out of memory in upscaling stage {cycle}. Lower {OOM_FIELDS} (or keep "
            f"--pipeline.offload-prior True), then resume with --load-dir. Original error: {error}"
        ) from error
