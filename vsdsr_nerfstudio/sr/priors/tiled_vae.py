"""Tiled encode/decode for a diffusers ``AutoencoderKL``, with linear blending of overlapping tiles.

The x4 upscaler's VAE has one self-attention layer in the mid-block of both encoder and decoder, which runs at the
*latent* resolution: on a 504x378 latent (a 2016x1512 view) that is a 190k x 190k attention map, and full-res
activations of 128+ channels at 2016x1512 on top (diffusers#1434). Tiling bounds both by the tile size.

Layout: tiles are squares of ``tile`` latent pixels (``tile * f`` image pixels, ``f`` = the VAE's downscale, 4),
starting every ``tile - overlap`` latent pixels, the last one flush with the far border. Each tile's output is
weighted by a separable ramp that is 0 on the outer quarter of an interior overlap, rises linearly over its middle
half and is 1 elsewhere; the weighted outputs are summed and divided by the summed weights. Two consequences:

- a network whose receptive-field radius is at most ``overlap / 4`` (in output pixels) is reproduced *exactly*:
  every pixel with non-zero weight is far enough from an interior tile border to see exactly what it would see in
  the full image (tested with a norm- and attention-free VAE);
- the real VAE is not local (mid-block attention and GroupNorm see the whole tile), so tiles disagree slightly and
  the ramp hides the seam; larger tiles are closer to the untiled result.

A tensor whose latent fits in one tile, or any tensor when ``tile <= 0``, goes through the VAE untouched
(bit-identical to a direct call). Untiled is exact; with PyTorch's SDPA (memory-efficient attention) it no longer
OOMs at 2016x1512 but needs about 16 GB (decode) / 11 GB (encode) in float32, see ``docs/prior.md``.

Encoding blends the posterior's mean and log-variance; sampling is left to the caller, so a drawn latent is one
global sample rather than a blend of independent per-tile samples.
"""

from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from jaxtyping import Float
from torch import Tensor


def vae_downscale(vae) -> int:
    """Image pixels per latent pixel along each side: ``2 ** (levels - 1)`` (4 for the x4 upscaler's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


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


def _tiled(
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


def tiled_encode(
    vae, images: Float[Tensor, "B 3 H W"], tile: int, overlap: int
) -> Tuple[Float[Tensor, "B C h w"], Float[Tensor, "B C h w"]]:
    """Images in the VAE's range ([-1, 1]) -> posterior ``(mean, logvar)`` on the latent grid, unscaled (not yet
    multiplied by ``scaling_factor``). ``tile``/``overlap`` are in latent pixels (``tile <= 0``: no tiling); H and W
    must be multiples of the VAE's downscale."""
    f = vae_downscale(vae)
    if images.shape[-2] % f or images.shape[-1] % f:
        raise ValueError(f"Image size {tuple(images.shape[-2:])} is not a multiple of the VAE downscale {f}.")
    h, w = images.shape[-2] // f, images.shape[-1] // f
    if tile <= 0 or (h <= tile and w <= tile):
        dist = vae.encode(images).latent_dist
        return dist.mean, dist.logvar

    def fn(chunk: Tensor) -> Tensor:
        dist = vae.encode(chunk).latent_dist
        return torch.cat([dist.mean, dist.logvar], dim=1)

    moments = _tiled(fn, images, (h, w), tile, overlap, in_scale=f, out_scale=1)
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar


def tiled_decode(vae, latents: Float[Tensor, "B C h w"], tile: int, overlap: int) -> Float[Tensor, "B 3 H W"]:
    """Unscaled latents (already divided by ``scaling_factor``) -> images in the VAE's range (about [-1, 1]),
    ``f`` times larger. ``tile``/``overlap`` are in latent pixels (``tile <= 0``: no tiling)."""
    f = vae_downscale(vae)
    h, w = latents.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return vae.decode(latents).sample
    return _tiled(lambda z: vae.decode(z).sample, latents, (h, w), tile, overlap, in_scale=1, out_scale=f)
