"""Config of the Stable Diffusion x4 upscaler prior. Import-light: diffusers/transformers load in ``setup``.

Usage::

    from vsdsr_nerfstudio.sr.prior_config import SRPriorConfig
    prior = SRPriorConfig(prior="tiny").setup(device="cpu")          # tests / CPU, seeded random weights
    prior = SRPriorConfig(model_path="/data/sd-x4").setup(device="cuda")  # real weights from a local folder

See ``docs/prior.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Type, Union

import torch
from nerfstudio.configs.base_config import InstantiateConfig

if TYPE_CHECKING:
    from vsdsr_nerfstudio.sr.prior_base import SRPrior

PriorName = Literal["sd-x4-upscaler", "sd-x4-random", "tiny"]
DtypeName = Literal["bf16", "fp16", "fp32"]

MODEL_PATH_FIELD = "prior.model_path"
"""How error messages name the config field holding the weights location (the CLI path depends on where the
pipeline nests this config, e.g. ``--pipeline.sr.prior.model-path``)."""


class PriorLoadError(RuntimeError):
    """The diffusion prior's weights could not be loaded (missing local folder, hub unreachable or offline)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def prior_load_error_message(model_path: str, tried: str, cause: Optional[BaseException] = None) -> str:
    """The one place that words a :class:`PriorLoadError`: what was tried, how to fix it, the ``tiny`` preset."""
    lines = [
        f"Could not load the Stable Diffusion x4 upscaler from {model_path!r}: {tried}.",
    ]
    if cause is not None:
        lines.append(f"Cause: {_first_line(cause)}")
        root = cause
        for _ in range(8):  # the hub/network error that a loader wrapped, if any
            nxt = root.__cause__ or root.__context__
            if nxt is None:
                break
            root = nxt
        if root is not cause:
            lines.append(f"Root cause: {_first_line(root)}")
    lines += [
        f"Set `{MODEL_PATH_FIELD}` to a local diffusers folder of stabilityai/stable-diffusion-x4-upscaler "
        "(with unet/, vae/, text_encoder/, tokenizer/, scheduler/, low_res_scheduler/), e.g. "
        "`--pipeline.sr.prior.model-path /path/to/stable-diffusion-x4-upscaler`, or make the Hugging Face hub "
        "reachable (and unset HF_HUB_OFFLINE / local_files_only) so the weights can be downloaded once.",
        "For tests and CPU runs without any weights use the `tiny` preset (`prior=\"tiny\"`); for GPU benchmarks "
        "with the real architecture and random weights use `prior=\"sd-x4-random\"`.",
    ]
    return "\n".join(lines)


def looks_like_local_path(model_path: str) -> bool:
    """True if ``model_path`` is meant as a filesystem path rather than a Hugging Face id (``owner/name``).

    Paths: existing entries, absolute paths, ``~``/``.``-prefixed ones, Windows separators, or more than one ``/``.
    """
    if not model_path:
        return True
    if Path(model_path).expanduser().exists():
        return True
    if model_path.startswith(("/", "~", ".")) or os.path.isabs(model_path) or "\\" in model_path:
        return True
    return model_path.count("/") > 1


def resolve_dtype(name: DtypeName, device: Union[str, torch.device]) -> torch.dtype:
    """``"bf16"|"fp16"|"fp32"`` -> torch dtype; always float32 on a CPU (half-precision convs are slow or missing)."""
    if torch.device(device).type == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


class LazySDUpscalerPrior:
    """Lazy ``_target``: ``LazySDUpscalerPrior(config, device=...)`` imports ``sr.sd_upscaler`` (diffusers) only
    now and returns an ``SDUpscalerPrior`` (a class rather than a function, so tyro sees a ``Type``)."""

    def __new__(cls, config: "SRPriorConfig", **kwargs: Any) -> "SRPrior":  # type: ignore[misc]
        from vsdsr_nerfstudio.sr.sd_upscaler import SDUpscalerPrior

        return SDUpscalerPrior(config, **kwargs)


@dataclass
class SRPriorConfig(InstantiateConfig):
    """The Stable Diffusion x4 upscaler as an :class:`~vsdsr_nerfstudio.sr.prior_base.SRPrior`."""

    _target: Type = field(default_factory=lambda: LazySDUpscalerPrior)
    """Factory of the prior; imports ``sr.sd_upscaler`` (diffusers) lazily."""
    prior: PriorName = "sd-x4-upscaler"
    """Which weights: ``sd-x4-upscaler`` = pretrained, from ``model_path``; ``sd-x4-random`` = the real x4
    architecture with seeded random weights (GPU benchmarks without the hub); ``tiny`` = the same classes with
    small configs and seeded random weights (tests, CPU)."""
    model_path: str = "stabilityai/stable-diffusion-x4-upscaler"
    """Hugging Face id or local diffusers folder of the upscaler (only for ``prior="sd-x4-upscaler"``). A folder
    written by ``sd_upscaler.save_tiny_prior`` also works."""
    local_files_only: bool = False
    """Never contact the hub; load ``model_path`` from the local Hugging Face cache only."""
    unet_dtype: DtypeName = "bf16"
    """Compute dtype of the UNet on a GPU. On a CPU the UNet always runs in float32. The VAE always runs in float32
    (it overflows in fp16) and the text encoder runs once, in float32, at setup."""
    prompt: str = "high resolution, 4K, photo"
    """Conditional prompt (DiSR's). The caller may prepend the scene name, see :meth:`scene_prompt`."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch of classifier-free guidance (DiSR: empty)."""
    vae_tile_size: int = 128
    """VAE tile size in latent (= LR) pixels; bounds the VAE memory (128 -> 512x512 HR pixels per tile, about
    2.6 GB to decode a 2016x1512 view). Latents that fit in one tile are encoded/decoded in one piece. 0 disables
    tiling: exact (tiles see tile-wide GroupNorm statistics and attention), but about 16 GB for a 2016x1512 view."""
    vae_tile_overlap: int = 32
    """Overlap of neighbouring VAE tiles in latent pixels, blended linearly."""
    seed: int = 0
    """Seed of the random weights of the ``tiny`` and ``sd-x4-random`` presets."""

    def setup(self, device: Union[str, torch.device] = "cpu", **kwargs: Any) -> "SRPrior":
        """Load the prior onto ``device`` (imports diffusers/transformers now)."""
        return self._target(self, device=device, **kwargs)

    def scene_prompt(self, scene: Optional[str]) -> str:
        """``"<scene>, <prompt>"`` as in DiSR (``"horns, high resolution, 4K, photo"``); ``prompt`` if no scene."""
        return f"{scene}, {self.prompt}" if scene else self.prompt
