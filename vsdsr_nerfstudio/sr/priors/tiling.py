"""Overlapping square tiles blended with linear ramps: the one tiling of the package (the SD VAE's tiled
encode/decode in ``tiled_vae.py`` and the tiled denoiser calls of ``pixel_prior.ddim_upscale`` use it).

Tiles are squares of ``tile`` grid pixels starting every ``tile - overlap`` pixels, the last one flush with the far
border (:func:`tile_starts`); each output is weighted by the separable ramp of :func:`blend_ramp` (0 on the outer
quarter of an interior overlap, linear over its middle half, 1 elsewhere), the weighted outputs summed and divided
by the summed weights (:func:`tiled_map`). Torch only.
"""

from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from jaxtyping import Float
from torch import Tensor


def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with stride ``tile - overlap``; the last
    tile ends at ``length``. One tile at 0 if ``length <= tile``."""
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"Need 0 <= overlap < tile, got tile={tile}, overlap={overlap}.")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)
    return starts


def blend_ramp(
    size: int, has_prev: bool, has_next: bool, overlap: int, device: torch.device, dtype: torch.dtype
) -> Float[Tensor, " size"]:
    """1-D blending weight of one tile of ``size`` output pixels whose interior overlaps are ``overlap`` pixels.

    On a side with a neighbour: 0 over the outer ``overlap // 4`` pixels, a linear ramp over the next
    ``overlap - 2 * (overlap // 4)``, 1 beyond. Two tiles overlapping by exactly ``overlap`` get complementary
    weights (sum 1)."""
    pos = torch.arange(size, device=device, dtype=torch.float64) + 0.5
    w = torch.ones(size, device=device, dtype=torch.float64)
    if overlap > 0:
        margin = overlap // 4
        ramp = overlap - 2 * margin
        if has_prev:
            w = torch.minimum(w, ((pos - margin) / ramp).clamp(0, 1))
        if has_next:
            w = torch.minimum(w, ((size - pos - margin) / ramp).clamp(0, 1))
    return w.to(dtype)


def tiled_map(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    latent_hw: Tuple[int, int],
    tile: int,
    overlap: int,
    in_scale: int,
    out_scale: int,
) -> Tensor:
    """Apply ``fn`` tile by tile. Tiles are laid out on the latent grid ``latent_hw``; a tile at latent offset
    ``s`` reads ``x[s * in_scale : (s + tile) * in_scale]`` and writes ``[s * out_scale : (s + tile) * out_scale]``
    (per spatial axis)."""
    h, w = latent_hw
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    out = None
    weight = None
    for iy, y0 in enumerate(ys):
        for ix, x0 in enumerate(xs):
            chunk = x[..., y0 * in_scale : (y0 + th) * in_scale, x0 * in_scale : (x0 + tw) * in_scale]
            res = fn(chunk)
            if out is None:
                out = torch.zeros((*res.shape[:-2], h * out_scale, w * out_scale), device=res.device, dtype=res.dtype)
                weight = torch.zeros((h * out_scale, w * out_scale), device=res.device, dtype=res.dtype)
            wy = blend_ramp(th * out_scale, iy > 0, iy < len(ys) - 1, overlap * out_scale, res.device, res.dtype)
            wx = blend_ramp(tw * out_scale, ix > 0, ix < len(xs) - 1, overlap * out_scale, res.device, res.dtype)
            w2 = wy[:, None] * wx[None, :]
            oy, ox = y0 * out_scale, x0 * out_scale
            out[..., oy : oy + th * out_scale, ox : ox + tw * out_scale] += res * w2
            weight[oy : oy + th * out_scale, ox : ox + tw * out_scale] += w2
    assert out is not None and weight is not None
    return out / weight
