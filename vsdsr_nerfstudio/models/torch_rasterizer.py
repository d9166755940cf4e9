"""A pure-torch stand-in for ``gsplat.rasterization`` (the call splatfacto makes), used when CUDA is absent.

Slow (dense over Gaussians x pixels, in pixel chunks) and meant for tiny scenes on a CPU (tests, smoke runs); it
follows gsplat 1.4.0's CUDA path step by step, so that the model code is shared:

- projection with gsplat's own pure-torch reference (``gsplat.cuda._torch_impl``: EWA projection with the Jacobian
  clamped to 1.3x the field of view, ``eps2d`` added to the 2D covariance, the antialiased mode's opacity
  compensation, 3-sigma radii, Gaussians behind ``near_plane`` or off-screen dropped);
- SH colours of degree ``sh_degree`` from the view direction, ``+ 0.5`` and clamped at 0, as gsplat;
- per pixel (pixel centres at +0.5), alpha = min(0.999, o * exp(-0.5 d^T Sigma^-1 d)), only from Gaussians whose
  3-sigma rectangle covers the pixel's 16x16 tile (gsplat's tile intersection), alphas under 1/255 skipped, front to
  back by depth, stopping before the transmittance falls to 1e-4.

Returns (render [C, H, W, D], alpha [C, H, W, 1], info) with the info keys gsplat's ``DefaultStrategy`` reads
(``means2d`` with gradients, ``radii``, ``width``, ``height``, ``n_cameras``, ``gaussian_ids``). ``absgrad``: the
gradient of ``means2d`` is also stored, as its absolute value, in ``means2d.absgrad`` (gsplat accumulates
per-pixel absolute values, so this is a lower bound of gsplat's).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Literal, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

TILE_SIZE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4


def rasterization_torch(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, " N"],
    colors: Tensor,
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    render_mode: Literal["RGB", "RGB+ED"] = "RGB",
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    absgrad: bool = False,
    pixel_chunk: int = 4096,
    **_unused: Any,
) -> Tuple[Tensor, Tensor, Dict[str, Any]]:
    """Same inputs and outputs as ``gsplat.rendering.rasterization`` for the arguments splatfacto passes
    (``packed=False``; ``sparse_grad``, ``radius_clip`` and ``tile_size`` are accepted and ignored). ``colors`` is
    [N, K, 3] SH coefficients when ``sh_degree`` is given, else [N, D] activated colours."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

    if render_mode not in ("RGB", "RGB+ED"):
        raise ValueError(f"the torch rasteriser renders 'RGB' or 'RGB+ED', not {render_mode!r}")
    num_cams = viewmats.shape[0]
    covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    radii, means2d, depths, conics, compensations = _fully_fused_projection(
        means,
        covars,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        calc_compensations=rasterize_mode == "antialiased",
    )
    opacities_c = opacities.expand(num_cams, -1)
    if compensations is not None:
        opacities_c = opacities_c * compensations
    if sh_degree is None:
        features = colors.expand(num_cams, *colors.shape)
    else:
        campos = torch.inverse(viewmats)[:, :3, 3]
        dirs = means[None] - campos[:, None]
        shs = colors.expand(num_cams, *colors.shape)
        features = torch.clamp_min(_spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)
    if render_mode == "RGB+ED":
        features = torch.cat([features, depths[..., None]], dim=-1)

    renders, alphas = [], []
    for cam in range(num_cams):
        render, alpha = _composite(
            means2d[cam],
            conics[cam],
            opacities_c[cam],
            features[cam],
            depths[cam],
            radii[cam],
            width,
            height,
            pixel_chunk,
        )
        renders.append(render)
        alphas.append(alpha)
    render_colors = torch.stack(renders)
    render_alphas = torch.stack(alphas)
    if render_mode == "RGB+ED":
        expected = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], expected], dim=-1)
    if means2d.requires_grad and absgrad:
        means2d.register_hook(lambda grad: setattr(means2d, "absgrad", grad.abs()) or grad)
    info: Dict[str, Any] = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opacities_c,
        "width": width,
        "height": height,
        "n_cameras": num_cams,
        "tile_size": TILE_SIZE,
    }
    return render_colors, render_alphas, info


def tile_rects(means2d: Float[Tensor, "N 2"], radii: Tensor, width: int, height: int) -> Tuple[Tensor, Tensor]:
    """gsplat's tile intersection: per Gaussian, the [min, max) tile rectangle of its 3-sigma square, clamped."""
    tiles_w, tiles_h = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    tile_means = means2d.detach() / TILE_SIZE
    tile_radii = radii.float()[:, None] / TILE_SIZE
    mins = torch.floor(tile_means - tile_radii).long()
    maxs = torch.ceil(tile_means + tile_radii).long()
    limit = torch.tensor([tiles_w, tiles_h], device=means2d.device)
    return torch.minimum(mins.clamp_min(0), limit), torch.minimum(maxs.clamp_min(0), limit)


def _composite(
    means2d: Float[Tensor, "N 2"],
    conics: Float[Tensor, "N 3"],
    opacities: Float[Tensor, " N"],
    features: Float[Tensor, "N D"],
    depths: Float[Tensor, " N"],
    radii: Tensor,
    width: int,
    height: int,
    pixel_chunk: int,
) -> Tuple[Float[Tensor, "H W D"], Float[Tensor, "H W 1"]]:
    """Front-to-back alpha compositing of one camera's projected Gaussians over every pixel."""
    device = means2d.device
    visible = torch.nonzero(radii > 0).squeeze(-1)
    visible = visible[torch.argsort(depths.detach()[visible], stable=True)]
    num_channels = features.shape[-1]
    if visible.numel() == 0:
        return means2d.new_zeros(height, width, num_channels), means2d.new_zeros(height, width, 1)
    mu, conic, opacity, feature = means2d[visible], conics[visible], opacities[visible], features[visible]
    tile_min, tile_max = tile_rects(means2d[visible], radii[visible], width, height)
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # [P, 2] integer (x, y)
    out_color, out_alpha = [], []
    for start in range(0, pixels.shape[0], pixel_chunk):
        pix = pixels[start : start + pixel_chunk]
        tile = pix // TILE_SIZE  # [P, 2]
        covered = ((tile[:, None] >= tile_min[None]) & (tile[:, None] < tile_max[None])).all(-1)  # [P, M]
        delta = pix[:, None].to(mu.dtype) + 0.5 - mu[None]  # [P, M, 2]
        sigma = 0.5 * (conic[:, 0] * delta[..., 0] ** 2 + conic[:, 2] * delta[..., 1] ** 2) + (
            conic[:, 1] * delta[..., 0] * delta[..., 1]
        )
        alpha = torch.clamp_max(opacity[None] * torch.exp(-sigma), ALPHA_MAX)
        keep = covered & (sigma >= 0) & (alpha >= ALPHA_MIN)
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        after = torch.cumprod(1.0 - alpha, dim=-1)
        before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=-1)
        # gsplat stops at the first Gaussian that would bring the transmittance to <= 1e-4, without it
        alive = torch.cummin((after.detach() > TRANSMITTANCE_MIN).to(torch.int8), dim=-1).values.bool()
        weights = torch.where(alive, alpha * before, torch.zeros_like(alpha))
        out_color.append(weights @ feature)
        out_alpha.append(weights.sum(-1, keepdim=True))
    color = torch.cat(out_color).reshape(height, width, num_channels)
    return color, torch.cat(out_alpha).reshape(height, width, 1)
