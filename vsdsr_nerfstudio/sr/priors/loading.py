"""The one loader of prior weights: ``from_pretrained``-style loading of the Stable Diffusion x4 upscaler's parts and
of a pixel-space prior folder, the cheap checks run at the start of training, and every offline / missing-file error.

Import-light (torch only): diffusers, transformers and huggingface_hub are imported inside the functions that load.
Nothing here builds an :class:`~vsdsr_nerfstudio.sr.priors.base.SRPrior`; the kind configs
(``sr/priors/kinds.py``) hand these parts to the prior constructors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch

DtypeName = Literal["bf16", "fp16", "fp32"]

MODEL_PATH_FIELD = "prior.model_path"
"""How error messages name the config field holding the weights location (the CLI path depends on where the
pipeline nests this config, e.g. ``--pipeline.prior.model-path``)."""

PIXEL_PRIOR_CONFIG_NAME = "pixel_prior.json"
"""The file that marks a folder as a pixel-space prior (``sr/priors/pixel_prior.py``)."""

EMBEDDED_PRIOR_DIR = Path(__file__).resolve().parents[2] / "assets" / "embedded_prior"
"""Where the package ships the weights of the ``embedded`` prior (written by ``vsdsr-train-prior``)."""

SD_X4_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "low_res_scheduler")
"""Subfolders of a diffusers ``StableDiffusionUpscalePipeline`` folder that the SD x4 prior reads."""

_MODEL_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
)
_TEXT_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.fp16.safetensors",
    "pytorch_model.fp16.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
SD_X4_REQUIRED_FILES: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "unet": (("config.json",), _MODEL_WEIGHTS),
    "vae": (("config.json",), _MODEL_WEIGHTS),
    "text_encoder": (("config.json",), _TEXT_WEIGHTS),
    "tokenizer": (("vocab.json", "byte_tokenizer.json"),),
    "scheduler": (("scheduler_config.json",),),
    "low_res_scheduler": (("scheduler_config.json",),),
}
"""Per subfolder, groups of file names of which one must exist (a config and a weights file, in any of the formats
``from_pretrained`` reads)."""

PIXEL_REQUIRED_FILES: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "unet": (("config.json",), _MODEL_WEIGHTS),
    "scheduler": (("scheduler_config.json",),),
    "low_res_scheduler": (("scheduler_config.json",),),
}
"""The same for a pixel-space prior folder (besides its ``pixel_prior.json``)."""


class PriorLoadError(RuntimeError):
    """The diffusion prior's weights could not be loaded (missing local folder, hub unreachable or offline)."""


# ----------------------------------------------------------------------------------------------------------------
# Paths and environment
# ----------------------------------------------------------------------------------------------------------------


def is_pixel_prior_folder(model_path: Union[str, Path]) -> bool:
    """True if ``model_path`` is a local folder of a pixel-space prior (it holds ``pixel_prior.json``)."""
    try:
        return bool(str(model_path)) and (Path(model_path).expanduser() / PIXEL_PRIOR_CONFIG_NAME).is_file()
    except OSError:
        return False


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


def resolve_dtype(name: DtypeName, device: Union[str, torch.device]) -> torch.dtype:
    """``"bf16"|"fp16"|"fp32"`` -> torch dtype; always float32 on a CPU (half-precision convs are slow or missing)."""
    if torch.device(device).type == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def missing_files(folder: Path, required: Dict[str, Tuple[Tuple[str, ...], ...]]) -> List[str]:
    """What ``folder`` lacks of ``required``: ``"unet/"`` for a missing subfolder, ``"unet/config.json"`` (or
    ``"unet/(a|b)"`` for alternatives) for a missing file."""
    out: List[str] = []
    for sub, groups in required.items():
        if not (folder / sub).is_dir():
            out.append(f"{sub}/")
            continue
        for names in groups:
            if not any((folder / sub / n).is_file() for n in names):
                out.append(f"{sub}/{names[0]}" if len(names) == 1 else f"{sub}/({'|'.join(names)})")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def prior_load_error_message(model_path: str, tried: str, cause: Optional[BaseException] = None) -> str:
    """The one place that words the SD x4 :class:`PriorLoadError`: what was tried, how to fix it, the ``tiny``
    preset."""
    lines = [f"Could not load the Stable Diffusion x4 upscaler from {model_path!r}: {tried}."]
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


def pixel_load_error(folder: Union[str, Path], what: str, cause: Optional[BaseException] = None) -> PriorLoadError:
    """The :class:`PriorLoadError` of a pixel-space prior folder that cannot be read."""
    lines = [f"Could not load the pixel-space x4 prior from {str(folder)!r}: {what}."]
    if cause is not None:
        lines.append(f"Cause: {_first_line(cause)}")
    lines.append(
        f"`{MODEL_PATH_FIELD}` must be a folder written by `vsdsr-train-prior` (its OUTPUT/model) or "
        "`PixelSpacePrior.save_pretrained`, with pixel_prior.json, unet/, scheduler/, low_res_scheduler/."
    )
    return PriorLoadError("\n".join(lines))


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


# ----------------------------------------------------------------------------------------------------------------
# Cheap checks (start of training: no weights read, no network)
# ----------------------------------------------------------------------------------------------------------------


def check_local_sd_folder(model_path: str) -> Path:
    """The folder of a path-like SD x4 ``model_path``; raises :class:`PriorLoadError` if it does not exist, is a
    file, or lacks a subfolder, a config or a weights file."""
    folder = Path(model_path).expanduser()
    if folder.is_file():
        raise PriorLoadError(prior_load_error_message(model_path, f"{str(folder)!r} is a file, not a diffusers folder"))
    if not folder.is_dir():
        raise PriorLoadError(prior_load_error_message(model_path, f"the local folder {str(folder)!r} does not exist"))
    subs = [s for s in SD_X4_SUBFOLDERS if not (folder / s).is_dir()]
    if subs:
        raise PriorLoadError(
            prior_load_error_message(
                model_path, f"the local folder {str(folder)!r} has no subfolder(s) {', '.join(subs)}"
            )
        )
    files = missing_files(folder, SD_X4_REQUIRED_FILES)
    if files:
        raise PriorLoadError(
            prior_load_error_message(
                model_path, f"the local folder {str(folder)!r} is incomplete: no {', '.join(files)}"
            )
        )
    return folder


def check_pixel_folder(folder: Union[str, Path]) -> Path:
    """A pixel-space prior folder with every file :func:`load_pixel_parts` reads; :class:`PriorLoadError` if not."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        raise pixel_load_error(folder, "it is a file, not a folder")
    if not folder.is_dir():
        raise pixel_load_error(folder, "the folder does not exist")
    if not is_pixel_prior_folder(folder):
        raise pixel_load_error(folder, f"it has no {PIXEL_PRIOR_CONFIG_NAME}")
    files = missing_files(folder, PIXEL_REQUIRED_FILES)
    if files:
        raise pixel_load_error(folder, f"it is incomplete: no {', '.join(files)}")
    return folder


def check_hub_cache(model_path: str, offline: bool, cache_dir: Optional[Union[str, Path]] = None) -> Optional[str]:
    """A Hugging Face id: None if its ``model_index.json`` is in the local cache; a :class:`PriorLoadError` when it
    is not and downloads are off (``offline``); else a warning that it will be downloaded at the first stage."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - diffusers depends on it
        return None
    if isinstance(try_to_load_from_cache(model_path, "model_index.json", cache_dir=cache_dir), str):
        return None
    if offline:
        raise PriorLoadError(
            prior_load_error_message(
                model_path,
                "it is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE or local_files_only)",
            )
        )
    return (
        f"The prior {model_path!r} is not in the local Hugging Face cache: it will be downloaded (about 2 GB) "
        "when the first upscaling stage starts, after the LR pretraining. If this machine has no network, stop now "
        "and use `ns-train vsd-sr-embedded` (no download) or --pipeline.prior.model-path /local/folder."
    )


# ----------------------------------------------------------------------------------------------------------------
# Loading parts
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class UpscalerComponents:
    """Everything the SD x4 prior is built from, before freezing and moving to a device."""

    unet: Any
    """``UNet2DConditionModel`` (7 -> 4 channels, noise-level class embedding)."""
    vae: Any
    """``AutoencoderKL`` with a 4x downscale."""
    text_encoder: Any
    """``CLIPTextModel``; used once at setup, then released."""
    tokenize: Any
    """Prompts -> padded token ids (``CLIPTokenizer`` or ``ByteTokenizer``)."""
    scheduler: Any
    """Main (``DDIMScheduler``) scheduler: ``alphas_cumprod`` and ``prediction_type``."""
    low_res_scheduler: Any
    """``DDPMScheduler`` that noises the LR conditioning."""
    max_noise_level: int
    """Largest supported LR noise level (``model_index.json``, 350)."""
    source: str
    """Human-readable origin, for logs."""


def _read_max_noise_level(model_path: str, local: bool, local_files_only: bool, default: int = 350) -> int:
    """``max_noise_level`` from ``model_index.json``; ``default`` if it cannot be read."""
    try:
        if local:
            index_file = Path(model_path).expanduser() / "model_index.json"
        else:
            from huggingface_hub import hf_hub_download

            index_file = Path(hf_hub_download(model_path, "model_index.json", local_files_only=local_files_only))
        return int(json.loads(index_file.read_text()).get("max_noise_level", default))
    except Exception:  # noqa: BLE001 - optional metadata
        return default


def _hub_attempt(model_path: str, local_files_only: bool) -> str:
    offline = hf_hub_offline_env()
    where = "from the local Hugging Face cache only" if (offline or local_files_only) else "from the hub"
    flags = ", ".join(f for f, on in (("HF_HUB_OFFLINE=1", offline), ("local_files_only", local_files_only)) if on)
    return f"from_pretrained({model_path!r}, subfolder=...) {where}" + (f" ({flags})" if flags else "")


def load_sd_x4_parts(
    model_path: str, local_files_only: bool = False, unet_dtype: torch.dtype = torch.float32
) -> UpscalerComponents:
    """``from_pretrained`` every part of the SD x4 upscaler from a Hugging Face id or a local diffusers folder.

    Raises :class:`PriorLoadError` (before contacting the hub) for a path-like ``model_path`` that is not a complete
    diffusers folder, and wraps any loading failure (offline, hub unreachable, not cached) in it.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from vsdsr_nerfstudio.sr.priors.text import load_tokenizer

    local = looks_like_local_path(model_path)
    if local:
        model_path = str(check_local_sd_folder(model_path))
        tried = f"loading the local diffusers folder {model_path!r}"
    else:
        tried = _hub_attempt(model_path, local_files_only)
    kw = dict(local_files_only=local_files_only)
    try:
        unet = UNet2DConditionModel.from_pretrained(model_path, subfolder="unet", torch_dtype=unet_dtype, **kw)
        vae = AutoencoderKL.from_pretrained(model_path, subfolder="vae", torch_dtype=torch.float32, **kw)
        text_encoder = CLIPTextModel.from_pretrained(model_path, subfolder="text_encoder", dtype=torch.float32, **kw)
        tokenize = load_tokenizer(
            model_path, local_files_only=local_files_only, max_length=text_encoder.config.max_position_embeddings
        )
        scheduler = DDIMScheduler.from_pretrained(model_path, subfolder="scheduler", **kw)
        low_res_scheduler = DDPMScheduler.from_pretrained(model_path, subfolder="low_res_scheduler", **kw)
    except Exception as err:  # noqa: BLE001 - every failure mode of the hub / disk ends up here
        raise PriorLoadError(prior_load_error_message(model_path, tried, err)) from err
    return UpscalerComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenize=tokenize,
        scheduler=scheduler,
        low_res_scheduler=low_res_scheduler,
        max_noise_level=_read_max_noise_level(model_path, local, local_files_only),
        source=model_path,
    )


@dataclass
class PixelPriorParts:
    """Everything a pixel-space prior is built from (as read from its folder)."""

    unet: Any
    """``UNet2DConditionModel`` (51 -> 48 channels)."""
    scheduler: Any
    """Training-schedule ``DDPMScheduler``."""
    low_res_scheduler: Any
    """``DDPMScheduler`` of the LR noising."""
    max_noise_level: int
    """Largest LR noise level."""
    meta: Dict[str, Any]
    """The ``pixel_prior.json`` metadata."""
    source: str
    """The folder, for logs."""


def load_pixel_parts(
    folder: Union[str, Path],
    dtype: torch.dtype = torch.float32,
    supported: Sequence[Tuple[str, int]] = (),
    format_version: int = 1,
    default_max_noise_level: int = 350,
) -> PixelPriorParts:
    """Read a pixel-space prior folder (local files only). ``supported``: ``(key, value)`` pairs of
    ``pixel_prior.json`` the caller's code needs; ``format_version``: the newest layout it reads. Any failure
    raises :class:`PriorLoadError`."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    folder = check_pixel_folder(folder)
    try:
        meta = json.loads((folder / PIXEL_PRIOR_CONFIG_NAME).read_text())
        if int(meta.get("format_version", 1)) > format_version:
            raise ValueError(f"format_version {meta['format_version']} is newer than this code ({format_version})")
        for key, want in supported:
            if int(meta.get(key, want)) != want:
                raise ValueError(f"{key} = {meta[key]}, this code supports {want}")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype, local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        low_res = DDPMScheduler.from_pretrained(folder / "low_res_scheduler", local_files_only=True)
    except Exception as err:  # noqa: BLE001 - every failure mode ends up as a PriorLoadError
        raise pixel_load_error(folder, "reading it failed", err) from err
    return PixelPriorParts(
        unet=unet,
        scheduler=scheduler,
        low_res_scheduler=low_res,
        max_noise_level=int(meta.get("max_noise_level", default_max_noise_level)),
        meta=meta,
        source=str(folder),
    )
