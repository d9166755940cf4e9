"""The one home of the resampling used across the package and the bench scripts (torch only, import-light):
bicubic x``scale`` upsampling (``F.interpolate``, ``align_corners=False``, clamped to [0, 1]), area downsampling
(the mean of each ``scale`` x ``scale`` block) and the SR evaluation's mod-crop, on ``(..., C, H, W)`` tensors, and
:func:`bicubic_upsample_hwc` for channel-last image stacks."""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def bicubic_upscale(images: Float[Tensor, "B C h w"], scale: int = 4) -> Float[Tensor, "B C H W"]:
    """Bicubic x``scale`` (``F.interpolate(mode="bicubic", align_corners=False)``), float32, clamped to [0, 1]."""
    return F.interpolate(images.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def bicubic_resize(images: Float[Tensor, "B C h w"], size: tuple) -> Float[Tensor, "B C H W"]:
    """Bicubic resize to ``size = (H, W)`` (``align_corners=False``), float32, clamped to [0, 1]."""
    return F.interpolate(images.float(), size=tuple(size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def bicubic_upsample_hwc(images: Float[Tensor, "N h w C"], scale: int) -> Float[Tensor, "N H W C"]:
    """:func:`bicubic_upscale` of a channel-last stack (the SR datamanager's layout), contiguous."""
    return bicubic_upscale(images.permute(0, 3, 1, 2), scale).permute(0, 2, 3, 1).contiguous()


def area_downsample(images: Float[Tensor, "B C H W"], scale: int = 4) -> Float[Tensor, "B C h w"]:
    """x``scale`` area downsampling (the mean of each ``scale`` x ``scale`` block), float32; H, W multiples of
    ``scale`` (a remainder is dropped)."""
    return F.avg_pool2d(images.float(), kernel_size=scale, stride=scale)


def mod_crop(image: Float[Tensor, "*C H W"], multiple: int) -> Float[Tensor, "*C h w"]:
    """Crop the bottom/right so that H and W are multiples of ``multiple`` (the standard SR evaluation crop)."""
    h, w = image.shape[-2], image.shape[-1]
    return image[..., : h - h % multiple, : w - w % multiple]
