"""LPIPS that is built at its first use and never enters a model's module tree or checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor


class LazyLPIPS:
    """Callable like torchmetrics' LPIPS (``lpips(a, b)`` with images in [0, 1]); built on the first call.

    Deliberately not an ``nn.Module``: assigned to a model attribute it is not registered as a submodule, so
    its AlexNet weights are neither saved in checkpoints nor expected when loading one. If it cannot be built
    (no weights file and no network), every call returns NaN and :attr:`available` is False.
    """

    def __init__(self, weights: Optional[Path] = None) -> None:
        self.weights = weights
        self._metric = None
        self._tried = False

    @property
    def available(self) -> bool:
        """Whether LPIPS values are real (False once building it has failed)."""
        return not self._tried or self._metric is not None

    def __call__(self, a: Float[Tensor, "B 3 H W"], b: Float[Tensor, "B 3 H W"]) -> Tensor:
        if not self._tried:
            from vsdsr_nerfstudio.metrics.lpips import build_lpips

            self._tried = True
            self._metric = build_lpips(self.weights)
        if self._metric is None:
            return torch.tensor(float("nan"))
        self._metric = self._metric.to(a.device)
        with torch.no_grad():
            value = self._metric(a.clamp(0, 1), b.clamp(0, 1))
        self._metric.reset()  # torchmetrics accumulates every score otherwise
        return value
