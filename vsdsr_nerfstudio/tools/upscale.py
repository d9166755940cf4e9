"""``vsdsr-upscale IMAGE -o OUT``: x4-upscale one image with an x4 diffusion prior (DDIM sampling).

Examples::

    vsdsr-upscale photo.png -o photo_x4.png                              # the embedded pixel prior
    vsdsr-upscale photo.png -o photo_x4.png --model-path runs/prior/model   # a prior you trained
    vsdsr-upscale photo.png -o photo_x4.png --prior sd-x4-upscaler --model-path /data/sd-x4 --guidance-scale 9

Sampling: deterministic DDIM (eta 0, trailing spacing from t = 999) with ``--steps`` steps, the LR image noised
at ``--noise-level`` (20), x0 clamped to the latent range for the pixel prior. Memory is bounded by ``--tile``: the
denoiser runs on overlapping LR windows of that size, blended at every step (no seams), so any image size works.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import tyro
from jaxtyping import Float
from torch import Tensor
from typing_extensions import Annotated

from vsdsr_nerfstudio.sr.priors.config import DtypeName, PriorName, SRPriorConfig, is_pixel_prior_folder, resolve_prior


@dataclass
class UpscaleConfig:
    """x4-upscale one image with a diffusion prior."""

    image: Annotated[Path, tyro.conf.Positional]
    """Input (LR) image."""
    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])]
    """Output (x4) image; the format follows the extension (png recommended: it keeps an alpha channel; an unknown
    extension is refused before the upscale runs). Grey inputs give grey outputs."""
    prior: PriorName = "embedded"
    """Which prior (``SRPriorConfig.prior``): ``embedded`` = the pixel-space prior shipped in the package,
    ``sd-x4-upscaler`` = Stable Diffusion x4 upscaler from ``model-path``, ``pixel-tiny`` / ``tiny`` = random
    weights (smoke tests)."""
    model_path: Optional[str] = None
    """A pixel-prior folder (e.g. ``vsdsr-train-prior``'s ``OUTPUT/model``; overrides ``prior``) or, with
    ``--prior sd-x4-upscaler`` (the default then), an SD x4 upscaler folder / hub id."""
    steps: int = 20
    """DDIM steps."""
    noise_level: int = 20
    """Noise level of the LR conditioning (0..350)."""
    guidance_scale: float = 1.0
    """Text CFG scale (text priors only; the SD pipeline default is 9)."""
    prompt: str = "high resolution, 4K, photo"
    """Prompt (text priors only; changing it with a pixel-space prior is an error)."""
    tile: int = 256
    """LR pixels per denoiser window (0: the whole image at once)."""
    tile_overlap: int = 32
    """Overlap of neighbouring windows in LR pixels."""
    seed: int = 0
    """Seed of the sampling noise."""
    device: str = "auto"
    """Torch device (``auto``: cuda if available)."""
    dtype: DtypeName = "bf16"
    """Denoiser dtype on a GPU (always fp32 on a CPU)."""
    local_files_only: bool = False
    """SD prior from a hub id: use the local Hugging Face cache only."""


class UpscaleInputError(ValueError):
    """A bad command line or input file (printed as one line by :func:`main`, no traceback)."""


def prior_choice(cfg: UpscaleConfig) -> SRPriorConfig:
    """The ``SRPriorConfig`` of the command line: a pixel-prior folder in ``--model-path`` loads that prior
    (whatever ``--prior`` says); with ``--prior embedded`` (the default) another path means an SD x4 folder / hub
    id."""
    pc = SRPriorConfig(prior=cfg.prior, unet_dtype=cfg.dtype, local_files_only=cfg.local_files_only)
    if cfg.prompt != pc.prompt:
        pc.prompt = cfg.prompt
    if cfg.model_path is not None:
        pc.model_path = cfg.model_path
        if cfg.prior == "embedded" or is_pixel_prior_folder(cfg.model_path):
            pc.prior = "embedded" if is_pixel_prior_folder(cfg.model_path) else "sd-x4-upscaler"
    return pc


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA if available, else the CPU; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sample_x4(
    prior,
    lr: Float[Tensor, "B 3 h w"],
    *,
    steps: int,
    noise_level: int,
    guidance_scale: float,
    tile: int,
    tile_overlap: int,
    seed: int,
    progress: bool = False,
) -> Float[Tensor, "B 3 H W"]:
    """The x4 DDIM sampler of ``vsdsr-upscale`` (also the 2D-SR baseline of ``vsdsr-compare``): ``ddim_upscale``
    with a generator seeded by ``seed`` and autocast when the prior runs in half precision on CUDA; float32 out."""
    from vsdsr_nerfstudio.sr.priors.pixel_prior import ddim_upscale

    device = torch.device(prior.device)
    generator = torch.Generator(device=device).manual_seed(seed)
    autocast = (
        torch.autocast("cuda", dtype=prior.dtype)
        if device.type == "cuda" and prior.dtype != torch.float32
        else contextlib.nullcontext()
    )
    with autocast:
        hr = ddim_upscale(
            prior,
            lr,
            steps=steps,
            noise_level=noise_level,
            generator=generator,
            guidance_scale=guidance_scale,
            tile=tile,
            tile_overlap=tile_overlap,
            progress=progress,
        )
    return hr.float()


def _sample(cfg: UpscaleConfig, prior, rgb: torch.Tensor, device: torch.device) -> torch.Tensor:
    """DDIM x4 of one ``(3, h, w)`` image in [0, 1] -> ``(3, 4h, 4w)``."""
    options = dict(steps=cfg.steps, noise_level=cfg.noise_level, guidance_scale=cfg.guidance_scale)
    options.update(tile=cfg.tile, tile_overlap=cfg.tile_overlap, seed=cfg.seed)
    return sample_x4(prior, rgb[None].to(device), progress=True, **options)[0]


def upscale(cfg: UpscaleConfig) -> Path:
    """Check the inputs, load the prior, upscale ``cfg.image`` and write ``cfg.output``; returns the output path.

    Bad inputs raise :class:`UpscaleInputError` (a non-image or missing input, an output extension that cannot be
    written: both before any work) or ``ValueError`` (a prior option the chosen prior does not use). Grey inputs
    give grey outputs (the three channels of the result averaged), 16-bit inputs are scaled correctly, an alpha
    channel is upscaled bicubically and kept (or dropped with a note when the output format has none)."""
    from nerfstudio.utils.rich_utils import CONSOLE

    from vsdsr_nerfstudio.data.images import ImageReadError, output_format, read_image, save_image
    from vsdsr_nerfstudio.data.resample import bicubic_upscale

    try:
        output_format(cfg.output)
        image = read_image(cfg.image)
    except (ValueError, ImageReadError) as err:
        raise UpscaleInputError(str(err)) from None
    pc = prior_choice(cfg)
    resolve_prior(pc, strict="--")  # an option the chosen prior does not use: refuse before loading
    device = resolve_device(cfg.device)
    prior = pc.setup(device=device)
    t0 = time.perf_counter()
    hr = _sample(cfg, prior, image.rgb, device)
    alpha = None if image.alpha is None else bicubic_upscale(image.alpha[None], prior.scale)[0]
    note = save_image(hr, cfg.output, alpha=alpha, grey=image.grey)
    if note:
        CONSOLE.print(f"[yellow]{note}")
    kind = ("grey" if image.grey else "RGB") + (" + alpha" if image.alpha is not None else "")
    CONSOLE.print(
        f"{cfg.image} {tuple(image.rgb.shape[-2:])} {image.bit_depth}-bit {kind} -> {cfg.output} "
        f"{tuple(hr.shape[-2:])}: DDIM {cfg.steps} steps in {time.perf_counter() - t0:.1f} s on {device}."
    )
    return cfg.output


def main() -> None:
    """Console script ``vsdsr-upscale``: bad inputs end with one line on stderr and exit status 2."""
    import sys

    from vsdsr_nerfstudio.sr.priors.loading import PriorLoadError

    cfg = tyro.cli(UpscaleConfig, description=__doc__.split("\n\n")[0] if __doc__ else None)
    try:
        upscale(cfg)
    except (UpscaleInputError, ValueError) as err:
        sys.exit(f"vsdsr-upscale: error: {err}")
    except PriorLoadError as err:
        sys.exit(f"vsdsr-upscale: error: {err}")


if __name__ == "__main__":
    main()
