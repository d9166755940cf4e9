"""Config of the x4 diffusion prior. Import-light: diffusers/transformers load in ``setup``.

Usage::

    from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig
    prior = SRPriorConfig(prior="tiny").setup(device="cpu")          # tests / CPU, seeded random weights
    prior = SRPriorConfig(model_path="/data/sd-x4").setup(device="cuda")  # real weights from a local folder
    prior = SRPriorConfig(prior="embedded").setup(device="cuda")     # the pixel-space prior shipped in the package

See ``docs/prior.md`` (Stable Diffusion x4 upscaler) and ``docs/embedded_prior.md`` (pixel-space prior).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Type, Union

import torch
from nerfstudio.configs.base_config import InstantiateConfig

if TYPE_CHECKING:
    from vsdsr_nerfstudio.sr.priors.base import SRPrior

PriorName = Literal["sd-x4-upscaler", "sd-x4-random", "tiny", "embedded", "pixel-tiny"]
DtypeName = Literal["bf16", "fp16", "fp32"]

MODEL_PATH_FIELD = "prior.model_path"
"""How error messages name the config field holding the weights location (the CLI path depends on where the
pipeline nests this config, e.g. ``--pipeline.prior.model-path``)."""


class PriorLoadError(RuntimeError):
    """The diffusion prior's weights could not be loaded (missing local folder, hub unreachable or offline)."""


PIXEL_PRIOR_CONFIG_NAME = "pixel_prior.json"
"""The file that marks a folder as a pixel-space prior (``sr/priors/pixel_prior.py``); ``model_path`` folders holding it
load as :class:`~vsdsr_nerfstudio.sr.priors.pixel_prior.PixelSpacePrior`."""

PIXEL_PRIOR_NAMES = ("embedded", "pixel-tiny")
"""Values of ``SRPriorConfig.prior`` that select the pixel-space prior."""

EMBEDDED_PRIOR_DIR = Path(__file__).resolve().parents[2] / "assets" / "embedded_prior"
"""Where the package ships the weights of the ``embedded`` prior (written by ``vsdsr-train-prior``)."""


def is_pixel_prior_folder(model_path: Union[str, Path]) -> bool:
    """True if ``model_path`` is a local folder of a pixel-space prior (it holds ``pixel_prior.json``)."""
    try:
        return bool(str(model_path)) and (Path(model_path).expanduser() / PIXEL_PRIOR_CONFIG_NAME).is_file()
    except OSError:
        return False


def uses_pixel_prior(config: "SRPriorConfig") -> bool:
    """True if ``config`` sets up the pixel-space prior (``embedded``, ``pixel-tiny``, or an ``sd-x4-upscaler``
    ``model_path`` that is a pixel-prior folder) rather than the Stable Diffusion x4 upscaler."""
    return config.prior in PIXEL_PRIOR_NAMES or (
        config.prior == "sd-x4-upscaler" and is_pixel_prior_folder(config.model_path)
    )


def embedded_prior_missing_message(folder: Union[str, Path]) -> str:
    """Wording of the :class:`PriorLoadError` for ``prior="embedded"`` when the shipped weights are missing."""
    return (
        f"The embedded pixel-space x4 prior's weights are missing: {str(folder)!r} has no {PIXEL_PRIOR_CONFIG_NAME}.\n"
        "The package ships them there: reinstall it (`pip install --force-reinstall --no-deps vsdsr_nerfstudio`, or "
        "from the source tree).\nOr train your own with `vsdsr-train-prior --images /path/to/photos --output "
        "/path/to/run` (see docs/embedded_prior.md), then either copy /path/to/run/model/* into that folder, or set "
        f"`{MODEL_PATH_FIELD}` to the trained folder, e.g. `--pipeline.prior.model-path /path/to/run/model`.\n"
        'For tests and CPU runs without any weights use `prior="pixel-tiny"` (or the SD-architecture `tiny`).'
    )


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
        "`--pipeline.prior.model-path /path/to/stable-diffusion-x4-upscaler`, or make the Hugging Face hub "
        "reachable (and unset HF_HUB_OFFLINE / local_files_only) so the weights can be downloaded once.",
        "Offline alternative without any download: the pixel-space prior embedded in the package, "
        "`ns-train vsd-sr-embedded` (its stage settings are tuned for it; docs/embedded_prior.md).",
        'For tests and CPU runs without any weights use the `tiny` preset (`prior="tiny"`); for GPU benchmarks '
        'with the real architecture and random weights use `prior="sd-x4-random"`.',
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


def hf_hub_offline_env() -> bool:
    """True if the ``HF_HUB_OFFLINE`` environment variable turns Hugging Face downloads off (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def hub_offline(config: "SRPriorConfig") -> bool:
    """True if Hugging Face downloads are off for ``config`` (``HF_HUB_OFFLINE`` or ``local_files_only``)."""
    return config.local_files_only or hf_hub_offline_env()


def check_prior_source(config: "SRPriorConfig", cache_dir: Optional[Union[str, Path]] = None) -> Optional[str]:
    """Cheap check at the start of training, before hours of LR pretraining (the prior itself loads lazily at the
    first upscaling stage). For the SD x4 upscaler:

    - a local folder given as ``model_path`` must exist;
    - a Hugging Face id must be in the local Hugging Face cache (``cache_dir``, default: the hub's) when downloads
      are off (``HF_HUB_OFFLINE``/``local_files_only``): loading could only fail later;

    both raise :class:`PriorLoadError` with the usual message. A hub id that is not cached while downloads are on
    returns a warning (the weights will be downloaded at the first stage; an offline machine should stop now).
    Returns None when there is nothing to say. Never touches the network."""
    if config.prior != "sd-x4-upscaler":
        return None
    if looks_like_local_path(config.model_path):
        if not Path(config.model_path).expanduser().is_dir():
            raise PriorLoadError(prior_load_error_message(config.model_path, "the local folder does not exist"))
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - diffusers depends on it
        return None
    cached = try_to_load_from_cache(config.model_path, "model_index.json", cache_dir=cache_dir)
    if isinstance(cached, str):
        return None
    if hub_offline(config):
        raise PriorLoadError(
            prior_load_error_message(
                config.model_path,
                "it is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE or local_files_only)",
            )
        )
    return (
        f"The prior {config.model_path!r} is not in the local Hugging Face cache: it will be downloaded (about 2 GB) "
        "when the first upscaling stage starts, after the LR pretraining. If this machine has no network, stop now "
        "and use `ns-train vsd-sr-embedded` (no download) or --pipeline.prior.model-path /local/folder."
    )


def resolve_dtype(name: DtypeName, device: Union[str, torch.device]) -> torch.dtype:
    """``"bf16"|"fp16"|"fp32"`` -> torch dtype; always float32 on a CPU (half-precision convs are slow or missing)."""
    if torch.device(device).type == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


class LazySDUpscalerPrior:
    """Lazy ``_target``: ``LazySDUpscalerPrior(config, device=...)`` imports ``sr.sd_upscaler`` (diffusers) only
    now and returns an ``SDUpscalerPrior`` (a class rather than a function, so tyro sees a ``Type``).

    ``prior="embedded"``/``"pixel-tiny"``, or a ``model_path`` folder holding ``pixel_prior.json``, give a
    ``PixelSpacePrior`` (``sr/priors/pixel_prior.py``) instead."""

    def __new__(cls, config: "SRPriorConfig", **kwargs: Any) -> "SRPrior":  # type: ignore[misc]
        if uses_pixel_prior(config):
            from vsdsr_nerfstudio.sr.priors.pixel_prior import build_pixel_prior

            return build_pixel_prior(config, **kwargs)
        from vsdsr_nerfstudio.sr.priors.sd_upscaler import SDUpscalerPrior

        return SDUpscalerPrior(config, **kwargs)


@dataclass
class SRPriorConfig(InstantiateConfig):
    """The x4 diffusion prior as an :class:`~vsdsr_nerfstudio.sr.priors.base.SRPrior`: the Stable Diffusion x4
    upscaler (default) or the pixel-space prior (``embedded``, ``pixel-tiny``, or a ``model_path`` folder of one)."""

    _target: Type = field(default_factory=lambda: LazySDUpscalerPrior)
    """Factory of the prior; imports ``sr.sd_upscaler`` (diffusers) lazily."""
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
    ``sd-x4-upscaler`` or ``embedded``."""
    local_files_only: bool = False
    """Never contact the hub; load ``model_path`` from the local Hugging Face cache only."""
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
    tiling: exact (tiles see tile-wide GroupNorm statistics and attention), but about 16 GB for a 2016x1512 view."""
    vae_tile_overlap: int = 32
    """Overlap of neighbouring VAE tiles in latent pixels, blended linearly."""
    seed: int = 0
    """Seed of the random weights of the ``tiny``, ``sd-x4-random`` and ``pixel-tiny`` presets."""

    def setup(self, device: Union[str, torch.device] = "cpu", **kwargs: Any) -> "SRPrior":
        """Load the prior onto ``device`` (imports diffusers/transformers now)."""
        return self._target(self, device=device, **kwargs)

    def scene_prompt(self, scene: Optional[str]) -> str:
        """``"<scene>, <prompt>"`` as in DiSR (``"horns, high resolution, 4K, photo"``); ``prompt`` if no scene."""
        return f"{scene}, {self.prompt}" if scene else self.prompt
