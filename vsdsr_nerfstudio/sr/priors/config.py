"""The user-facing choice of the x4 diffusion prior, and the registry that turns it into a prior of one kind.

Import-light: diffusers/transformers load in ``setup``.

Usage::

    from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig
    prior = SRPriorConfig(prior="tiny").setup(device="cpu")          # tests / CPU, seeded random weights
    prior = SRPriorConfig(model_path="/data/sd-x4").setup(device="cuda")  # real weights from a local folder
    prior = SRPriorConfig(prior="embedded").setup(device="cuda")     # the pixel-space prior shipped in the package

``SRPriorConfig.prior`` names a kind; :data:`PRIOR_KINDS` maps each name to a function that builds that kind's
config (``sr/priors/kinds.py``) from the user's settings, refusing settings the kind does not use. Adding a prior =
one kind config in ``kinds.py`` + one entry here (and its name in :data:`PriorName`).

See ``docs/prior.md`` (Stable Diffusion x4 upscaler) and ``docs/embedded_prior.md`` (pixel-space prior).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Literal, Optional, Tuple, Type, Union

import torch
from nerfstudio.configs.base_config import InstantiateConfig

from vsdsr_nerfstudio.sr.priors.kinds import (
    PixelFolderConfig,
    PixelRandomConfig,
    PriorKindConfig,
    SDX4PretrainedConfig,
    SDX4RandomConfig,
    SDX4TextVaeSettings,
)
from vsdsr_nerfstudio.sr.priors.loading import (  # noqa: F401 - re-exported: the names users import from here
    EMBEDDED_PRIOR_DIR,
    MODEL_PATH_FIELD,
    PIXEL_PRIOR_CONFIG_NAME,
    DtypeName,
    PriorLoadError,
    embedded_prior_missing_message,
    hf_hub_offline_env,
    is_pixel_prior_folder,
    looks_like_local_path,
    prior_load_error_message,
    resolve_dtype,
)

if TYPE_CHECKING:
    from vsdsr_nerfstudio.sr.priors.base import SRPrior

PriorName = Literal["sd-x4-upscaler", "sd-x4-random", "tiny", "embedded", "pixel-tiny"]

CLI_PREFIX = "--pipeline.prior."
"""How messages name this config's options on the ``ns-train`` command line."""

_TEXT_VAE_FIELDS = ("prompt", "negative_prompt", "vae_tile_size", "vae_tile_overlap")


def _refuse_unused(config: "SRPriorConfig", used: Tuple[str, ...], why: str, strict: Union[bool, str] = True) -> None:
    """Raise ``ValueError`` naming every option set away from its default that the chosen prior does not use.
    ``strict``: True names them as ``ns-train`` options (:data:`CLI_PREFIX`); a string is another command's prefix
    (``"--"`` for ``vsdsr-upscale``)."""
    prefix = strict if isinstance(strict, str) else CLI_PREFIX

    def option(name: str) -> str:
        return prefix + name.replace("_", "-")

    defaults = SRPriorConfig()
    settable = ("model_path", "local_files_only", "seed") + _TEXT_VAE_FIELDS
    unused = [n for n in settable if n not in used and getattr(config, n) != getattr(defaults, n)]
    if unused:
        given = ", ".join(f"{option(n)} {getattr(config, n)!r}" for n in unused)
        raise ValueError(
            f"The prior {config.prior!r} does not use {given} ({why}). Remove {'it' if len(unused) == 1 else 'them'}, "
            f"or choose a prior that does: {option('prior')} sd-x4-upscaler (weights from "
            f"{option('model_path')}), embedded (a pixel-prior folder in {option('model_path')}); see docs/prior.md."
        )


def _text_vae(config: "SRPriorConfig") -> SDX4TextVaeSettings:
    return SDX4TextVaeSettings(**{n: getattr(config, n) for n in _TEXT_VAE_FIELDS})


def _sd_x4_upscaler(config: "SRPriorConfig", strict: bool) -> PriorKindConfig:
    if is_pixel_prior_folder(config.model_path):  # a pixel-prior folder given as model_path loads that prior
        return _embedded(config, strict)
    if strict:
        _refuse_unused(
            config, ("model_path", "local_files_only") + _TEXT_VAE_FIELDS, "it loads pretrained weights", strict
        )
    return SDX4PretrainedConfig(
        unet_dtype=config.unet_dtype,
        model_path=config.model_path,
        local_files_only=config.local_files_only,
        text=_text_vae(config),
    )


def _sd_x4_random(config: "SRPriorConfig", strict: bool) -> PriorKindConfig:
    if strict:
        _refuse_unused(config, ("seed",) + _TEXT_VAE_FIELDS, "it has seeded random weights, nothing is loaded", strict)
    return SDX4RandomConfig(
        unet_dtype=config.unet_dtype, architecture=config.prior, seed=config.seed, text=_text_vae(config)
    )


def _embedded(config: "SRPriorConfig", strict: bool) -> PriorKindConfig:
    if strict:
        _refuse_unused(
            config, ("model_path",), "a pixel-space prior: no text, no VAE, weights from a local folder", strict
        )
    if is_pixel_prior_folder(config.model_path) or config.model_path != SRPriorConfig().model_path:
        return PixelFolderConfig(unet_dtype=config.unet_dtype, folder=config.model_path)
    # the package's own weights; looked up now, so tests can point EMBEDDED_PRIOR_DIR elsewhere
    return PixelFolderConfig(unet_dtype=config.unet_dtype, folder=str(EMBEDDED_PRIOR_DIR), embedded=True)


def _pixel_tiny(config: "SRPriorConfig", strict: bool) -> PriorKindConfig:
    if strict:
        _refuse_unused(
            config, ("seed",), "a pixel-space prior with seeded random weights: no text, no VAE, no files", strict
        )
    return PixelRandomConfig(unet_dtype=config.unet_dtype, seed=config.seed)


PRIOR_KINDS: Dict[str, Callable[["SRPriorConfig", bool], PriorKindConfig]] = {
    "sd-x4-upscaler": _sd_x4_upscaler,
    "sd-x4-random": _sd_x4_random,
    "tiny": _sd_x4_random,
    "embedded": _embedded,
    "pixel-tiny": _pixel_tiny,
}
"""The registry: ``SRPriorConfig.prior`` -> ``(config, strict) -> kind config``. ``strict`` refuses options the
kind does not use (the start-of-training check and the CLI); loading itself is lenient."""


def resolve_prior(config: "SRPriorConfig", strict: Union[bool, str] = False) -> PriorKindConfig:
    """The one dispatch from the user's choice to a kind config (see :data:`PRIOR_KINDS`). ``strict`` refuses
    unused options, naming them as ``ns-train`` options (True) or with another command's prefix (e.g. ``"--"``)."""
    try:
        make = PRIOR_KINDS[config.prior]
    except KeyError:
        raise ValueError(f"Unknown prior {config.prior!r}; expected one of {sorted(PRIOR_KINDS)}.") from None
    return make(config, strict)


def check_prior_source(config: "SRPriorConfig", cache_dir: Optional[Union[str, Path]] = None) -> Optional[str]:
    """The check at the start of training, before hours of LR pretraining (the prior itself loads lazily at the
    first upscaling stage). Never reads weights or touches the network. Raises:

    - ``ValueError`` for an option the chosen prior does not use (e.g. ``model_path`` with ``prior="tiny"``);
    - :class:`PriorLoadError` for a local folder that does not exist, is a file, or lacks a subfolder, config or
      weights file (SD x4 diffusers folder or pixel-prior folder), and for a Hugging Face id that is not in the local
      cache (``cache_dir``, default: the hub's) while downloads are off (``HF_HUB_OFFLINE``/``local_files_only``).

    Returns a warning for a hub id that is not cached while downloads are on (the weights will be downloaded at the
    first stage), else None."""
    return resolve_prior(config, strict=True).check(cache_dir)


class PriorFactory:
    """``_target`` of :class:`SRPriorConfig`: ``PriorFactory(config, device=...)`` returns the prior that
    :func:`resolve_prior` chooses (a class rather than a function, so tyro sees a ``Type``)."""

    def __new__(cls, config: "SRPriorConfig", **kwargs: Any) -> "SRPrior":  # type: ignore[misc]
        return resolve_prior(config).setup(**kwargs)


@dataclass
class SRPriorConfig(InstantiateConfig):
    """The x4 diffusion prior as an :class:`~vsdsr_nerfstudio.sr.priors.base.SRPrior`: the Stable Diffusion x4
    upscaler (default) or the pixel-space prior (``embedded``, ``pixel-tiny``, or a ``model_path`` folder of one).

    Each option is used by some priors only; at the start of training (:func:`check_prior_source`) an option set
    away from its default that the chosen prior does not use is an error."""

    _target: Type = field(default_factory=lambda: PriorFactory)
    """Factory of the prior: dispatches on ``prior`` through the registry (``PRIOR_KINDS``); imports diffusers
    lazily."""
    prior: PriorName = "sd-x4-upscaler"
    """Which weights: ``sd-x4-upscaler`` = pretrained, from ``model_path``; ``sd-x4-random`` = the real x4
    architecture with seeded random weights (GPU benchmarks without the hub); ``tiny`` = the same classes with
    small configs and seeded random weights (tests, CPU); ``embedded`` = the small pixel-space prior whose weights
    ship inside the package (``assets/embedded_prior/``; no text, no VAE, no download, see docs/embedded_prior.md);
    ``pixel-tiny`` = a tiny pixel-space prior with seeded random weights (tests, CPU)."""
    model_path: str = "stabilityai/stable-diffusion-x4-upscaler"
    """Hugging Face id or local diffusers folder of the upscaler (only for ``prior="sd-x4-upscaler"``). A folder
    written by ``sd_upscaler.save_tiny_prior`` also works. A local folder of a pixel-space prior (it holds
    ``pixel_prior.json``, e.g. ``vsdsr-train-prior``'s ``OUTPUT/model``) loads that prior, with ``prior`` set to
    ``sd-x4-upscaler`` or ``embedded``. Not used by ``tiny``, ``sd-x4-random``, ``pixel-tiny``."""
    local_files_only: bool = False
    """Never contact the hub; load ``model_path`` from the local Hugging Face cache only (``sd-x4-upscaler``)."""
    unet_dtype: DtypeName = "bf16"
    """Compute dtype of the UNet on a GPU. On a CPU the UNet always runs in float32. The VAE always runs in float32
    (it overflows in fp16) and the text encoder runs once, in float32, at setup."""
    prompt: str = "high resolution, 4K, photo"
    """Conditional prompt (DiSR's). The caller may prepend the scene name, see :meth:`scene_prompt`. Ignored by
    the pixel-space priors (``embedded``, ``pixel-tiny``), which have no text conditioning."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch of classifier-free guidance (DiSR: empty). Ignored by the pixel-space
    priors (``embedded``, ``pixel-tiny``), which have no text conditioning."""
    vae_tile_size: int = 128
    """VAE tile size in latent (= LR) pixels; bounds the VAE memory (128 -> 512x512 HR pixels per tile, about
    2.6 GB to decode a 2016x1512 view). Latents that fit in one tile are encoded/decoded in one piece. 0 disables
    tiling: exact (tiles see tile-wide GroupNorm statistics and attention), but about 16 GB for a 2016x1512 view.
    SD priors only (the pixel-space priors have no VAE)."""
    vae_tile_overlap: int = 32
    """Overlap of neighbouring VAE tiles in latent pixels, blended linearly (SD priors only, as ``vae_tile_size``)."""
    seed: int = 0
    """Seed of the random weights of the ``tiny``, ``sd-x4-random`` and ``pixel-tiny`` presets (not used by the
    others)."""

    def setup(self, device: Union[str, torch.device] = "cpu", **kwargs: Any) -> "SRPrior":
        """Load the prior onto ``device`` (imports diffusers/transformers now), through :func:`resolve_prior`
        whatever ``_target`` holds (configs written by older releases name an older factory there)."""
        return resolve_prior(self).setup(device=device, **kwargs)

    def kind(self, strict: bool = False) -> PriorKindConfig:
        """The kind config this choice resolves to (see :func:`resolve_prior`)."""
        return resolve_prior(self, strict)

    @property
    def pixel_space(self) -> bool:
        """True if this choice sets up a pixel-space prior (``embedded``, ``pixel-tiny``, or a ``model_path``
        folder holding ``pixel_prior.json``) rather than the Stable Diffusion x4 upscaler."""
        return resolve_prior(self).pixel_space

    def scene_prompt(self, scene: Optional[str]) -> str:
        """``"<scene>, <prompt>"`` as in DiSR (``"horns, high resolution, 4K, photo"``); ``prompt`` if no scene."""
        return f"{scene}, {self.prompt}" if scene else self.prompt
