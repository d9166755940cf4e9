"""Saving and finding the super-resolution state of a run (HR images, LoRA, cycle, RNG), atomically.

Layout, in the run directory next to ``nerfstudio_models/``::

    sr_state/stage_001.pt     # after upscaling stage 1: HR images (storage dtype), LoRA + camera MLP, RNG, step
    sr_state/stage_002.pt
    sr_state/LATEST           # the file name of the newest complete stage

Every file is written to a temporary name in the same folder, flushed, fsync'ed and renamed: a kill leaves either
the previous file or the new one, never a truncated one. A stage killed before its file is renamed is simply
redone on resume. Files hold only tensors, numbers and strings, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from vsdsr_nerfstudio.data.files import atomic_write

SR_STATE_DIR = "sr_state"
LATEST = "LATEST"


def stage_file_name(cycle: int) -> str:
    """File name of the state saved after upscaling stage ``cycle`` (1-based)."""
    return f"stage_{cycle:03d}.pt"


def save_stage_state(run_dir: Path, cycle: int, state: Dict[str, Any]) -> Path:
    """Atomically write the state after upscaling stage ``cycle`` and point ``LATEST`` at it."""
    folder = Path(run_dir) / SR_STATE_DIR
    path = folder / stage_file_name(cycle)
    atomic_write(path, lambda handle: torch.save(state, handle))
    atomic_write(folder / LATEST, lambda handle: handle.write(path.name.encode()))
    return path


def latest_stage_file(run_dir: Path) -> Optional[Path]:
    """The newest complete stage file of a run, or None. Falls back to scanning when ``LATEST`` is missing."""
    folder = Path(run_dir) / SR_STATE_DIR
    if not folder.is_dir():
        return None
    pointer = folder / LATEST
    if pointer.is_file():
        candidate = folder / pointer.read_text().strip()
        if candidate.is_file():
            return candidate
    stages = sorted(folder.glob("stage_[0-9][0-9][0-9].pt"))
    return stages[-1] if stages else None


def load_stage_state(path: Path) -> Dict[str, Any]:
    """Load a stage file (weights-only: tensors, numbers and strings)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def adopt_stage_file(source: Path, run_dir: Path) -> Path:
    """Copy a resumed stage file into this run's ``sr_state/`` so the next resume finds it here too."""
    folder = Path(run_dir) / SR_STATE_DIR
    target = folder / source.name
    if target.resolve() != source.resolve():
        with source.open("rb") as src:
            atomic_write(target, lambda handle: shutil.copyfileobj(src, handle))
        atomic_write(folder / LATEST, lambda handle: handle.write(target.name.encode()))
    return target
