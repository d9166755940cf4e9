"""Small tensor helpers shared by the prior implementations (torch only, import-light)."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor, nn


class AddToOutput:
    """Forward hook that adds ``self.extra`` (when set) to a module's output: how a camera embedding is added to
    the noise-level class embedding. Holds no reference to the prior, so deep-copying the UNet copies only this
    small object."""

    def __init__(self) -> None:
        self.extra: Optional[Tensor] = None

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        if self.extra is None:
            return output
        return output + self.extra.to(output.dtype)


def randn_on(shape: Tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """Standard normal float32 noise on ``device``, drawn with ``generator`` on the generator's own device."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=torch.float32)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)


def as_batch(values: Union[int, Tensor], batch: int, device: torch.device) -> Tensor:
    """An int, a 0-d tensor or a ``(B,)`` tensor -> a ``(B,)`` int64 tensor on ``device``."""
    values = torch.as_tensor(values, device=device).long().reshape(-1)
    if values.numel() == 1 and batch != 1:
        values = values.expand(batch)
    if values.numel() != batch:
        raise ValueError(f"Expected {batch} values, got {values.numel()}.")
    return values
