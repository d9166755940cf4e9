"""One config per kind of x4 prior; each builds its :class:`~vsdsr_nerfstudio.sr.priors.base.SRPrior` from parts.

- :class:`SDX4PretrainedConfig`: the Stable Diffusion x4 upscaler from a Hugging Face id or a diffusers folder;
- :class:`SDX4RandomConfig`: the SD x4 classes with seeded random weights, real architecture (``sd-x4-random``) or
  small configs (``tiny``);
- :class:`PixelFolderConfig`: the pixel-space prior from a folder (the package's ``embedded`` one by default);
- :class:`PixelRandomConfig`: the tiny pixel-space prior with seeded random weights (``pixel-tiny``).

``setup(device)`` loads the parts (through ``sr/priors/loading.py``) and hands them to the prior's constructor;
``check()`` is the cheap test at the start of training (no weights read, no network). Users choose a kind with
``SRPriorConfig.prior``; ``sr/priors/config.py`` maps that choice to one of these (the registry).

Import-light: diffusers and the prior modules are imported inside ``setup``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Optional, Union

import torch

from vsdsr_nerfstudio.sr.priors import loading
from vsdsr_nerfstudio.sr.priors.loading import DtypeName, resolve_dtype

if TYPE_CHECKING:
    from vsdsr_nerfstudio.sr.priors.base import SRPrior


@dataclass
class PriorKindConfig(abc.ABC):
    """A prior of one kind, with exactly the settings that kind uses."""

    pixel_space: ClassVar[bool] = False
    """True for the pixel-space priors (exact pixel-unshuffle latent, no text, no VAE)."""

    unet_dtype: DtypeName = "bf16"
    """Compute dtype of the denoiser on a GPU (always float32 on a CPU)."""

    @abc.abstractmethod
    def setup(self, device: Union[str, torch.device] = "cpu") -> "SRPrior":
        """Load or build the parts and construct the prior on ``device``."""

    def check(self, cache_dir: Optional[Union[str, Path]] = None) -> Optional[str]:
        """Cheap check at the start of training: raises ``PriorLoadError`` for what could only fail later; returns
        a warning, or None."""
        return None

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for logs: the kind and where its weights come from."""


@dataclass
class SDX4TextVaeSettings:
    """Settings shared by the two SD x4 kinds (text prompts, VAE tiling)."""

    prompt: str = "high resolution, 4K, photo"
    """Conditional prompt."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch of classifier-free guidance."""
    vae_tile_size: int = 128
    """VAE tile size in latent pixels (0: no tiling)."""
    vae_tile_overlap: int = 32
    """Overlap of neighbouring VAE tiles in latent pixels."""


def _build_sd_prior(
    comps: loading.UpscalerComponents, device: torch.device, dtype: torch.dtype, text: SDX4TextVaeSettings
) -> "SRPrior":
    """The SD x4 prior from its parts; the text encoder is released afterwards (only its embeddings are kept)."""
    import gc

    from vsdsr_nerfstudio.sr.priors.sd_upscaler import SDUpscalerPrior

    prior = SDUpscalerPrior(
        unet=comps.unet,
        vae=comps.vae,
        text_encoder=comps.text_encoder,
        tokenize=comps.tokenize,
        scheduler=comps.scheduler,
        low_res_scheduler=comps.low_res_scheduler,
        max_noise_level=comps.max_noise_level,
        prompt=text.prompt,
        negative_prompt=text.negative_prompt,
        vae_tile_size=text.vae_tile_size,
        vae_tile_overlap=text.vae_tile_overlap,
        device=device,
        dtype=dtype,
        source=comps.source,
    )
    comps.text_encoder = comps.tokenize = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return prior


@dataclass
class SDX4PretrainedConfig(PriorKindConfig):
    """The Stable Diffusion x4 upscaler from a Hugging Face id or a local diffusers folder."""

    model_path: str = "stabilityai/stable-diffusion-x4-upscaler"
    """Hugging Face id or local diffusers folder."""
    local_files_only: bool = False
    """Never contact the hub."""
    text: SDX4TextVaeSettings = field(default_factory=SDX4TextVaeSettings)
    """Prompts and VAE tiling."""

    def setup(self, device: Union[str, torch.device] = "cpu") -> "SRPrior":
        from nerfstudio.utils.rich_utils import CONSOLE

        from vsdsr_nerfstudio.sr.priors.sd_upscaler import config_mismatches
        from vsdsr_nerfstudio.sr.priors.sd_x4_configs import SD_X4_UNET, SD_X4_VAE

        device = torch.device(device)
        dtype = resolve_dtype(self.unet_dtype, device)
        comps = loading.load_sd_x4_parts(self.model_path, self.local_files_only, dtype)
        mismatches = config_mismatches(comps.unet.config, SD_X4_UNET) + config_mismatches(comps.vae.config, SD_X4_VAE)
        if mismatches:
            CONSOLE.print(
                f"[yellow]SD x4 prior: {comps.source} differs from stabilityai/stable-diffusion-x4-upscaler in: "
                + "; ".join(mismatches)
            )
        return _build_sd_prior(comps, device, dtype, self.text)

    def check(self, cache_dir: Optional[Union[str, Path]] = None) -> Optional[str]:
        if loading.looks_like_local_path(self.model_path):
            loading.check_local_sd_folder(self.model_path)
            return None
        offline = self.local_files_only or loading.hf_hub_offline_env()
        return loading.check_hub_cache(self.model_path, offline, cache_dir)

    def describe(self) -> str:
        return f"sd-x4-upscaler: {self.model_path}"


@dataclass
class SDX4RandomConfig(PriorKindConfig):
    """The SD x4 classes with seeded random weights: the real architecture or the tiny test configs."""

    architecture: Literal["sd-x4-random", "tiny"] = "tiny"
    """``sd-x4-random``: the real configs (0.87 B parameters, built on the device); ``tiny``: small configs, built
    on the CPU (same weights everywhere)."""
    seed: int = 0
    """Seed of the weights."""
    text: SDX4TextVaeSettings = field(default_factory=SDX4TextVaeSettings)
    """Prompts and VAE tiling."""

    def setup(self, device: Union[str, torch.device] = "cpu") -> "SRPrior":
        from vsdsr_nerfstudio.sr.priors.sd_upscaler import build_random_components

        device = torch.device(device)
        build_device = device if self.architecture == "sd-x4-random" else torch.device("cpu")
        comps = build_random_components(self.architecture, self.seed, build_device)
        return _build_sd_prior(comps, device, resolve_dtype(self.unet_dtype, device), self.text)

    def describe(self) -> str:
        return f"{self.architecture}: random weights, seed {self.seed}"


@dataclass
class PixelFolderConfig(PriorKindConfig):
    """The pixel-space prior from a folder (``vsdsr-train-prior``'s ``OUTPUT/model``); None: the ``embedded`` one
    shipped in the package."""

    pixel_space: ClassVar[bool] = True
    """A pixel-space prior."""
    folder: Optional[str] = None
    """The pixel-prior folder; None: ``loading.EMBEDDED_PRIOR_DIR``."""
    embedded: bool = False
    """``folder`` is the package's own (``prior="embedded"``): missing weights get the reinstall/train message."""

    def _folder(self) -> Path:
        folder = Path(self.folder).expanduser() if self.folder is not None else loading.EMBEDDED_PRIOR_DIR
        if (self.embedded or self.folder is None) and not loading.is_pixel_prior_folder(folder):
            raise loading.PriorLoadError(loading.embedded_prior_missing_message(folder))
        return folder

    def setup(self, device: Union[str, torch.device] = "cpu") -> "SRPrior":
        from vsdsr_nerfstudio.sr.priors.pixel_prior import PixelSpacePrior, log_pixel_prior

        device = torch.device(device)
        return log_pixel_prior(
            PixelSpacePrior.from_pretrained(self._folder(), device, resolve_dtype(self.unet_dtype, device))
        )

    def check(self, cache_dir: Optional[Union[str, Path]] = None) -> Optional[str]:
        loading.check_pixel_folder(self._folder())
        return None

    def describe(self) -> str:
        return f"{'embedded' if self.embedded else 'pixel-space'} prior: {self.folder}"


@dataclass
class PixelRandomConfig(PriorKindConfig):
    """The tiny pixel-space prior with seeded random weights (tests, CPU)."""

    pixel_space: ClassVar[bool] = True
    """A pixel-space prior."""
    seed: int = 0
    """Seed of the weights."""

    def setup(self, device: Union[str, torch.device] = "cpu") -> "SRPrior":
        from vsdsr_nerfstudio.sr.priors.pixel_prior import PixelSpacePrior, log_pixel_prior

        device = torch.device(device)
        return log_pixel_prior(
            PixelSpacePrior.random("tiny", self.seed, device, resolve_dtype(self.unet_dtype, device))
        )

    def describe(self) -> str:
        return f"pixel-tiny: random weights, seed {self.seed}"
