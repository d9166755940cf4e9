"""PSNR, the one implementation (torch only): per image, images in ``[0, data_range]``, an optional border removed
on every side, computed in float64."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """``10 log10(data_range^2 / mse)``; ``mse`` floored at 1e-20 (identical images give a large finite value)."""
    return 10.0 * math.log10(data_range**2 / max(float(mse), 1e-20))


def psnr(
    a: Float[Tensor, "*B C H W"], b: Float[Tensor, "*B C H W"], border: int = 0, data_range: float = 1.0
) -> Float[Tensor, " *B"]:
    """PSNR (dB) per image over the last three axes (one value for a single ``(C, H, W)`` or ``(H, W)`` image);
    ``border`` pixels removed on every side of the last two axes."""
    if border > 0:
        a = a[..., border:-border, border:-border]
        b = b[..., border:-border, border:-border]
    dims = tuple(range(max(a.dim() - 3, 0), a.dim()))
    mse = (a.double() - b.double()).pow(2).mean(dim=dims)
    return (10.0 * torch.log10(data_range**2 / mse.clamp(min=1e-20))).float()
