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
from typing_extensions import Annotated

from vsdsr_nerfstudio.sr.priors.config import DtypeName, PriorName, SRPriorConfig, is_pixel_prior_folder


@dataclass
class UpscaleConfig:
    """x4-upscale one image with a diffusion prior."""

    image: Annotated[Path, tyro.conf.Positional]
    """Input (LR) image."""
    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])]
    """Output (x4) image; the format follows the extension (png recommended)."""
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
    """Prompt (text priors only)."""
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


def upscale(cfg: UpscaleConfig) -> Path:
    """Load the prior, upscale ``cfg.image`` and write ``cfg.output``; returns the output path."""
    from nerfstudio.utils.rich_utils import CONSOLE

    from vsdsr_nerfstudio.sr.priors.pixel_prior import ddim_upscale
    from vsdsr_nerfstudio.tools.train_prior import load_rgb_uint8, save_rgb

    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    pc = SRPriorConfig(prior=cfg.prior, unet_dtype=cfg.dtype, prompt=cfg.prompt, local_files_only=cfg.local_files_only)
    if cfg.model_path is not None:
        pc.model_path = cfg.model_path
        if cfg.prior == "embedded" or is_pixel_prior_folder(cfg.model_path):
            pc.prior = "embedded" if is_pixel_prior_folder(cfg.model_path) else "sd-x4-upscaler"
    prior = pc.setup(device=device)
    lr = load_rgb_uint8(cfg.image).float()[None] / 255.0
    t0 = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    autocast = (
        torch.autocast("cuda", dtype=prior.dtype)
        if device.type == "cuda" and prior.dtype != torch.float32
        else contextlib.nullcontext()
    )
    with autocast:
        hr = ddim_upscale(
            prior,
            lr,
            steps=cfg.steps,
            noise_level=cfg.noise_level,
            generator=generator,
            guidance_scale=cfg.guidance_scale,
            tile=cfg.tile,
            tile_overlap=cfg.tile_overlap,
            progress=True,
        )
    save_rgb(hr[0], cfg.output)
    CONSOLE.print(
        f"{cfg.image} {tuple(lr.shape[-2:])} -> {cfg.output} {tuple(hr.shape[-2:])}: DDIM {cfg.steps} "
        f"steps in {time.perf_counter() - t0:.1f} s on {device}."
    )
    return cfg.output


def main() -> None:
    """Console script ``vsdsr-upscale``."""
    upscale(tyro.cli(UpscaleConfig, description=__doc__.split("\n\n")[0] if __doc__ else None))


if __name__ == "__main__":
    main()
