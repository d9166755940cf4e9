"""Finding a run's checkpoints: ``ns-train --load-dir`` and ``ns-eval``/``ns-render`` with clear errors.

nerfstudio 1.1.5 takes the newest checkpoint by parsing the step out of *every* file name in the folder
(``Trainer._load_checkpoint`` and ``eval_utils.eval_load_checkpoint``): an empty folder dies with ``IndexError``, the
run folder (``config.yml``, ``nerfstudio_models/``, ...) with ``invalid literal for int()``. Here:

- :func:`resolve_checkpoint_dir` accepts the checkpoint folder or the run folder that holds ``nerfstudio_models/``,
  and :func:`latest_checkpoint_step` reads only ``step-NNNNNNNNN.ckpt`` names; both raise
  :class:`CheckpointDirError` saying what was found and what to give instead;
- :class:`SRTrainerConfig` (the presets' trainer config) builds :class:`SRTrainer`, which resolves ``--load-dir``
  that way before nerfstudio loads it (``config.yml`` files of older runs name nerfstudio's ``TrainerConfig``
  and still load: the evaluation guard below does not depend on the trainer class);
- :func:`guard_eval_checkpoint_listing` wraps nerfstudio's ``eval_load_checkpoint`` (once, in the running process)
  so that ``ns-eval``/``ns-render``/``ns-viewer`` of a run without checkpoints say so; the pipeline installs it
  when it is built for evaluation.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Type

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.ckpt$")
"""nerfstudio's checkpoint file names: ``step-{step:09d}.ckpt``."""
MODELS_DIR = "nerfstudio_models"
"""The checkpoint folder inside a run folder (nerfstudio's ``relative_model_dir``)."""


class CheckpointDirError(ValueError):
    """A checkpoint folder that holds no checkpoint, or a folder that is neither a checkpoint nor a run folder."""


def checkpoint_steps(folder: Path) -> list:
    """Steps of the ``step-*.ckpt`` files in ``folder``, sorted (other files are ignored)."""
    steps = []
    for path in Path(folder).iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and path.is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def _contents(folder: Path, limit: int = 6) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(folder).iterdir())
    if not names:
        return "it is empty"
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return f"it holds {shown}"


def resolve_checkpoint_dir(path: Path, option: str = "--load-dir") -> Path:
    """The checkpoint folder meant by ``path``: ``path`` itself when it holds ``step-*.ckpt`` files, its
    ``nerfstudio_models/`` when ``path`` is a run folder. Raises :class:`CheckpointDirError` otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointDirError(
            f"{option} {path} is not a folder. Give the run's checkpoint folder, e.g. "
            f"outputs/<scene>/vsd-sr/<timestamp>/{MODELS_DIR}, or the run folder that holds it."
        )
    if checkpoint_steps(path):
        return path
    models = path / MODELS_DIR
    if models.is_dir():
        if not checkpoint_steps(models):
            raise CheckpointDirError(
                f"{option} {path} is a run folder, but its {MODELS_DIR}/ holds no checkpoint (step-*.ckpt): "
                f"{_contents(models)}. The run stopped before its first save (--steps-per-save); train it longer "
                f"or use a run that saved one."
            )
        CONSOLE.print(f"{option} {path} is a run folder: loading from its {MODELS_DIR}/.")
        return models
    raise CheckpointDirError(
        f"{option} {path} holds no checkpoint (step-NNNNNNNNN.ckpt): {_contents(path)}. Give the run's "
        f"checkpoint folder, e.g. outputs/<scene>/vsd-sr/<timestamp>/{MODELS_DIR}, or the run folder that holds it."
    )


def latest_checkpoint_step(folder: Path, option: str = "--load-dir") -> int:
    """The newest checkpoint's step in ``folder``; :class:`CheckpointDirError` when there is none."""
    steps = checkpoint_steps(folder)
    if not steps:
        raise CheckpointDirError(
            f"{option} {folder} holds no checkpoint (step-*.ckpt): {_contents(folder)}. The run stopped before "
            f"its first save (--steps-per-save) or its checkpoints were removed; use a run that saved one."
        )
    return steps[-1]


class SRTrainer(Trainer):
    """nerfstudio's Trainer; ``--load-dir`` may name the run folder, and a folder without checkpoints is a clear
    error instead of an ``IndexError``."""

    def _load_checkpoint(self) -> None:
        if self.config.load_dir is not None:
            self.config.load_dir = resolve_checkpoint_dir(Path(self.config.load_dir), "--load-dir")
            if self.config.load_step is None:
                self.config.load_step = latest_checkpoint_step(self.config.load_dir, "--load-dir")
        super()._load_checkpoint()
        if self.config.load_dir is not None or self.config.load_checkpoint is not None:
            repoint_optimizers(self.optimizers, self.pipeline.get_param_groups())


def repoint_optimizers(optimizers: Any, param_groups: Dict[str, List[Any]]) -> int:
    """Make every optimizer update the model's *current* parameters after a checkpoint load, moving their loaded
    state (Adam moments) along. Splatfacto's ``load_state_dict`` replaces its Parameter objects (it resizes them to
    the checkpoint's Gaussian count) after nerfstudio built the optimizers on the old ones: without this, a resumed
    run would train parameters the model no longer uses and densify from stale copies. Returns how many parameters
    were re-pointed (0 for models that load in place, as Nerfacto)."""
    moved = 0
    for name, optimizer in optimizers.optimizers.items():
        current = param_groups.get(name)
        if current is None or len(optimizer.param_groups) != 1:
            continue
        group = optimizer.param_groups[0]
        if len(group["params"]) != len(current) or all(a is b for a, b in zip(group["params"], current, strict=True)):
            continue
        for old, new in zip(group["params"], current, strict=True):
            if old is not new and old in optimizer.state:
                optimizer.state[new] = optimizer.state.pop(old)
            moved += old is not new
        group["params"] = list(current)
    return moved


@dataclass
class SRTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig with :class:`SRTrainer` (``--load-dir`` accepts the run folder)."""

    _target: Type = field(default_factory=lambda: SRTrainer)


def guard_eval_checkpoint_listing() -> None:
    """Wrap nerfstudio's ``eval_utils.eval_load_checkpoint`` (used by ns-eval, ns-render and ns-viewer) so that a
    checkpoint folder without ``step-*.ckpt`` files is named in a clear error. Installed once; a no-op when
    ``eval_utils`` is not loaded (the pipeline is then not being evaluated through it)."""
    module: Any = sys.modules.get("nerfstudio.utils.eval_utils")
    original = getattr(module, "eval_load_checkpoint", None)
    if original is None or getattr(original, "vsdsr_guard", False):
        return

    def eval_load_checkpoint(config: TrainerConfig, pipeline: Any, *args: Any, **kwargs: Any) -> Any:
        load_dir: Optional[Path] = config.load_dir
        if config.load_step is None and load_dir is not None and Path(load_dir).is_dir():
            config.load_step = latest_checkpoint_step(
                Path(load_dir), option=f"The run's checkpoint folder (from {Path(load_dir).parent}/config.yml)"
            )
        return original(config, pipeline, *args, **kwargs)

    eval_load_checkpoint.vsdsr_guard = True  # type: ignore[attr-defined]
    module.eval_load_checkpoint = eval_load_checkpoint
