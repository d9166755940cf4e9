"""Mip-Splatting's 3D smoothing filter and the HR densification limits, as small functions over plain tensors.

3D smoothing filter (Yu et al., Mip-Splatting, CVPR 2024, eq. 7-9): a 3D Gaussian cannot carry detail finer than
the finest sampling of it by any training camera. Its maximal sampling rate is ``nu = max_k f_k / z_k`` (focal in
pixels over the depth in camera k, over the cameras that see it), in samples per world unit. The filter convolves
the Gaussian with an isotropic low-pass Gaussian of variance ``s / nu^2`` (s = 0.2 in the paper) and scales the
opacity so that the integrated density is kept:

    Sigma' = Sigma + (s / nu^2) I,        alpha' = alpha * sqrt(det Sigma / det Sigma').

With axis scales s_i (std devs) in the Gaussian's own frame, det Sigma = prod s_i^2, and adding an isotropic
variance does not change the axes, so the filtered scales are sqrt(s_i^2 + s/nu^2).

The 2D mip filter is gsplat's ``rasterize_mode="antialiased"`` (a 0.3 px^2 screen-space box approximation with the
same opacity compensation in 2D); nothing here.
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def max_sampling_rate(
    means: Float[Tensor, "N 3"],
    viewmats: Float[Tensor, "C 4 4"],
    focals: Float[Tensor, " C"],
    widths: Float[Tensor, " C"],
    heights: Float[Tensor, " C"],
    near: float = 0.2,
    margin: float = 0.15,
) -> Tuple[Float[Tensor, " N"], Bool[Tensor, " N"]]:
    """Per-Gaussian maximal sampling rate ``max_k f_k / z_k`` over the cameras whose (margin-enlarged) image the
    centre projects into with depth > ``near`` (Mip-Splatting's rule). ``viewmats`` are world-to-camera in OpenCV
    convention (x right, y down, z forward), as gsplat takes them; principal points are assumed centred.

    Returns (rate, seen): Gaussians seen by no camera get the smallest rate of the seen ones (the widest filter);
    if none is seen, every rate is ``focals.min() / near``."""
    cam = torch.einsum("cij,nj->cni", viewmats[:, :3, :3], means) + viewmats[:, None, :3, 3]  # [C, N, 3]
    z = cam[..., 2]
    safe_z = z.clamp_min(1e-6)
    x = cam[..., 0] / safe_z * focals[:, None]
    y = cam[..., 1] / safe_z * focals[:, None]
    half_w = (widths[:, None] / 2) * (1 + margin)
    half_h = (heights[:, None] / 2) * (1 + margin)
    inside = (z > near) & (x.abs() <= half_w) & (y.abs() <= half_h)  # [C, N]
    rate = torch.where(inside, focals[:, None] / safe_z, torch.zeros_like(z)).amax(dim=0)
    seen = inside.any(dim=0)
    if seen.any():
        fallback = rate[seen].min()
    else:
        fallback = focals.min() / near
    rate = torch.where(seen, rate, fallback)
    return rate, seen


def filter_variance(rate: Float[Tensor, " N"], strength: float = 0.2) -> Float[Tensor, " N"]:
    """Variance ``s / nu^2`` (world units squared) of the 3D low-pass filter for sampling rate ``nu``."""
    return strength / rate.clamp_min(1e-12) ** 2


def apply_3d_filter(
    scales: Float[Tensor, "N 3"], opacities: Float[Tensor, " N"], variance: Float[Tensor, " N"]
) -> Tuple[Float[Tensor, "N 3"], Float[Tensor, " N"]]:
    """Filtered (activated) scales ``sqrt(s_i^2 + v)`` and compensated opacities
    ``alpha * prod_i sqrt(s_i^2 / (s_i^2 + v))`` = ``alpha * sqrt(det Sigma / det(Sigma + v I))``."""
    squared = scales.square()
    filtered_squared = squared + variance[:, None]
    compensation = torch.sqrt((squared / filtered_squared).prod(dim=-1))
    return filtered_squared.sqrt(), opacities * compensation


def capped_growth(num_now: int, num_candidates: int, cap: int) -> int:
    """How many of ``num_candidates`` Gaussians densification may add (each adds one) under a total ``cap``
    (``cap <= 0``: no cap)."""
    if cap <= 0:
        return num_candidates
    return max(0, min(num_candidates, cap - num_now))
