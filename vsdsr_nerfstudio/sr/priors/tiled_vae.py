"""Tiled encode/decode for a diffusers ``AutoencoderKL``, with linear blending of overlapping tiles.

The x4 upscaler's VAE has one self-attention layer in the mid-block of both encoder and decoder, which runs at the
*latent* resolution: on a 504x378 latent (a 2016x1512 view) that is a 190k x 190k attention map, and full-res
activations of 128+ channels at 2016x1512 on top (diffusers#1434). Tiling bounds both by the tile size.

Layout (``sr/priors/tiling.py``, shared with the pixel prior's tiled sampling): tiles are squares of ``tile``
latent pixels (``tile * f`` image pixels, ``f`` = the VAE's downscale, 4),
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

from typing import Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from vsdsr_nerfstudio.sr.priors.tiling import blend_ramp, tile_starts, tiled_map  # noqa: F401 - re-exported


def vae_downscale(vae) -> int:
    """Image pixels per latent pixel along each side: ``2 ** (levels - 1)`` (4 for the x4 upscaler's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


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

    moments = tiled_map(fn, images, (h, w), tile, overlap, in_scale=f, out_scale=1)
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar


def tiled_decode(vae, latents: Float[Tensor, "B C h w"], tile: int, overlap: int) -> Float[Tensor, "B 3 H W"]:
    """Unscaled latents (already divided by ``scaling_factor``) -> images in the VAE's range (about [-1, 1]),
    ``f`` times larger. ``tile``/``overlap`` are in latent pixels (``tile <= 0``: no tiling)."""
    f = vae_downscale(vae)
    h, w = latents.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return vae.decode(latents).sample
    return tiled_map(lambda z: vae.decode(z).sample, latents, (h, w), tile, overlap, in_scale=1, out_scale=f)
