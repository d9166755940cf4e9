"""Offline image-quality metrics: NIQE (a torch port of BasicSR 1.4.2) and LPIPS-alex from local weights.

Import-light: the names below load their submodule on first access (PEP 562), so ``import
vsdsr_nerfstudio.metrics`` imports nothing heavy, and torchmetrics / torchvision load only when LPIPS is built.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List

_EXPORTS: Dict[str, str] = {
    "calculate_niqe": "niqe",
    "calculate_niqe_batch": "niqe",
    "load_niqe_params": "niqe",
    "build_lpips": "lpips",
    "build_lpips_from_npz": "lpips",
    "validate_lpips_npz": "lpips",
    "LpipsWeightsError": "lpips",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load the submodule that defines ``name`` on first access."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    """Module attributes, including the lazily loaded exports."""
    return sorted(set(globals()) | set(_EXPORTS))
