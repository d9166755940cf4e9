"""A small x4 super-resolution diffusion prior in pixel space: the "embedded" prior that ships with the package.

Design (``docs/embedded_prior.md``):

- **Latent = pixel-unshuffle x4** of the HR image mapped to [-1, 1]: ``48 = 3 * 4 * 4`` channels on the LR grid.
  Encoding and decoding are exact (a permutation plus ``2x - 1``), so there is no VAE, no tiling error and no fp32
  VAE memory; a latent patch of the SR stage is exactly the HR pixels above its LR patch.
- **Denoiser**: a diffusers ``UNet2DConditionModel`` with *self-attention-only* blocks (``AttnDownBlock2D`` /
  ``AttnUpBlock2D``: ``to_q/to_k/to_v/to_out.0``, so ``sr.lora.CameraLoRA`` injects unchanged), no text and no
  cross-attention. Input ``cat([z_t, lr_noised])`` (48 + 3 channels, same spatial size), output 48 channels.
- **Noise-level conditioning** as in the SD x4 upscaler: ``class_labels = noise_level`` through
  ``nn.Embedding(max_noise_level + 1, D)`` added to the timestep embedding; ``extra_class_embedding`` (the camera
  embedding of the VSD LoRA branch) is added to that embedding's output by a forward hook armed only during
  :meth:`PixelSpacePrior.predict`.
- **Schedules** as the SD x4 upscaler: v-prediction, scaled_linear betas 1e-4..0.02 over 1000 steps (so the SR
  stage's 980 -> 500 ramp and all v/eps conversions mean the same as with the SD prior); the LR conditioning is
  noised by a low-res DDPM schedule with the same betas, ``max_noise_level = 350``.
- **Sampling**: deterministic DDIM (eta = 0) with trailing timestep spacing (the first step at t = 999), x0 clipped
  to the latent range [-1, 1]; see :func:`ddim_upscale` (generic over any :class:`SRPrior`, tiled for large images).

Folder layout (``save_pretrained`` / ``from_pretrained``; diffusers-like, loads by path, no network)::

    pixel_prior.json                      # marker + metadata (scale, channels, schedules, sampler, training, terms)
    unet/config.json                      # UNet2DConditionModel config
    unet/diffusion_pytorch_model.safetensors   # weights (fp16 when shipped)
    scheduler/scheduler_config.json       # DDPMScheduler, training schedule (v_prediction)
    low_res_scheduler/scheduler_config.json    # DDPMScheduler of the LR noising

This module imports diffusers at import time: only the kind configs' ``setup`` (``sr/priors/kinds.py``), the
trainer and the CLIs import it, never the nerfstudio plugin.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from vsdsr_nerfstudio.sr.core.objectives import ddim_step, pred_to_eps, pred_to_x0, schedule_coefficients
from vsdsr_nerfstudio.sr.priors.base import SRPrior
from vsdsr_nerfstudio.sr.priors.loading import PIXEL_PRIOR_CONFIG_NAME, load_pixel_parts
from vsdsr_nerfstudio.sr.priors.tiling import tiled_map
from vsdsr_nerfstudio.sr.priors.utils import AddToOutput as _AddToOutput
from vsdsr_nerfstudio.sr.priors.utils import as_batch as _as_batch
from vsdsr_nerfstudio.sr.priors.utils import denoise_with_class_offset, guided_predict, noise_lr_images, set_schedules
from vsdsr_nerfstudio.sr.priors.utils import randn_on as _randn

__all__ = [
    "DEFAULT_SAMPLE_NOISE_LEVEL",
    "DEFAULT_SAMPLE_STEPS",
    "PIXEL_UNET_PRESETS",
    "PixelSpacePrior",
    "log_pixel_prior",
    "build_pixel_unet",
    "ddim_timesteps",
    "ddim_upscale",
    "pixel_decode",
    "pixel_encode",
]

SCALE = 4
"""HR pixels per LR pixel along each side."""
LATENT_CHANNELS = 3 * SCALE * SCALE
"""Channels of the pixel-unshuffle latent (48)."""
MAX_NOISE_LEVEL = 350
"""Largest LR-conditioning noise level (as the SD x4 upscaler)."""
FORMAT_VERSION = 1
"""Version of the ``pixel_prior.json`` layout."""
DEFAULT_SAMPLE_STEPS = 20
"""DDIM steps of :func:`ddim_upscale` unless told otherwise."""
DEFAULT_SAMPLE_NOISE_LEVEL = 20
"""LR-conditioning noise level used for sampling (the SR stage's and the SD x4 pipeline's default)."""

TRAIN_SCHEDULE: Dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "v_prediction",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "timestep_spacing": "trailing",
}
"""Training schedule of the denoiser (``DDPMScheduler`` config): the SD x4 upscaler's betas, v-prediction."""

LOW_RES_SCHEDULE: Dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": False,
}
"""Schedule that noises the LR conditioning (``DDPMScheduler`` config), as the SD x4 upscaler's low-res scheduler."""


def _unet_config(
    block_out_channels: Tuple[int, ...],
    attention_levels: Tuple[int, ...],
    layers_per_block: int,
    attention_head_dim: int,
    norm_num_groups: int,
    time_embedding_dim: int,
    sample_size: int,
) -> Dict[str, Any]:
    """A ``UNet2DConditionModel`` config with self-attention-only blocks at ``attention_levels`` (0 = LR grid)."""
    n = len(block_out_channels)
    return {
        "sample_size": sample_size,
        "in_channels": LATENT_CHANNELS + 3,
        "out_channels": LATENT_CHANNELS,
        "down_block_types": tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(n)),
        "up_block_types": tuple("AttnUpBlock2D" if (n - 1 - i) in attention_levels else "UpBlock2D" for i in range(n)),
        "mid_block_type": "UNetMidBlock2D",  # one ResNet (diffusers builds it without attention here)
        "block_out_channels": tuple(block_out_channels),
        "layers_per_block": layers_per_block,
        "attention_head_dim": attention_head_dim,
        "norm_num_groups": norm_num_groups,
        "time_embedding_dim": time_embedding_dim,
        "num_class_embeds": MAX_NOISE_LEVEL + 1,
        "cross_attention_dim": block_out_channels[-1],  # unused: there is no cross-attention block
    }


PIXEL_UNET_PRESETS: Dict[str, Dict[str, Any]] = {
    # 7.76 M parameters: 15.5 MB (14.8 MiB) of fp16 safetensors, under the 16 MiB a device run can return in one
    # file; ~19 GFLOP per forward of a 64x64 LR crop. Widest where it matters, on the LR grid (128 channels for the
    # 48 latent channels), 3 levels (receptive field far beyond a 16x16 HR neighbourhood), self-attention (6 heads
    # of 32) at LR/4 (256 tokens for a 64 px LR crop, 1024 for the SR stage's 128 px latent patch).
    "base": _unet_config(
        (128, 128, 192),
        attention_levels=(2,),
        layers_per_block=1,
        attention_head_dim=32,
        norm_num_groups=32,
        time_embedding_dim=256,
        sample_size=64,
    ),
    # Tests / CPU: ~0.1 M parameters, same block types.
    "tiny": _unet_config(
        (32, 32),
        attention_levels=(1,),
        layers_per_block=1,
        attention_head_dim=16,
        norm_num_groups=8,
        time_embedding_dim=64,
        sample_size=16,
    ),
}
"""UNet configs by preset name: ``base`` (the embedded prior) and ``tiny`` (``prior="pixel-tiny"``)."""


def build_pixel_unet(
    preset: str = "base", seed: Optional[int] = 0, device: Union[str, torch.device] = "cpu"
) -> nn.Module:
    """A ``UNet2DConditionModel`` of ``preset`` with weights from ``torch.manual_seed(seed)`` (global RNG restored;
    ``seed=None`` uses the current global RNG), built on ``device``."""
    from diffusers import UNet2DConditionModel

    if preset not in PIXEL_UNET_PRESETS:
        raise ValueError(f"unknown pixel UNet preset {preset!r} (expected one of {sorted(PIXEL_UNET_PRESETS)})")
    device = torch.device(device)
    if seed is None:
        with device:
            return UNet2DConditionModel(**PIXEL_UNET_PRESETS[preset])
    rng_devices = []
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=rng_devices), device:
        torch.manual_seed(seed)
        return UNet2DConditionModel(**PIXEL_UNET_PRESETS[preset])


def _make_schedulers() -> Tuple[Any, Any]:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(TRAIN_SCHEDULE), DDPMScheduler.from_config(LOW_RES_SCHEDULE)


# ----------------------------------------------------------------------------------------------------------------
# The exact "VAE"
# ----------------------------------------------------------------------------------------------------------------


def pixel_encode(images: Float[Tensor, "B 3 H W"], scale: int = SCALE) -> Float[Tensor, "B C h w"]:
    """HR images in [0, 1] -> ``pixel_unshuffle(2 x - 1, scale)``: ``(B, 3 scale^2, H / scale, W / scale)``.
    Channel ``c * scale^2 + i * scale + j`` holds colour ``c`` of HR pixel ``(scale y + i, scale x + j)``."""
    if images.shape[-2] % scale or images.shape[-1] % scale:
        raise ValueError(f"HR size {tuple(images.shape[-2:])} is not a multiple of {scale}")
    return F.pixel_unshuffle(images * 2.0 - 1.0, scale)


def pixel_decode(latents: Float[Tensor, "B C h w"], scale: int = SCALE, clamp: bool = True) -> Float[Tensor, "B 3 H W"]:
    """Inverse of :func:`pixel_encode`: ``(pixel_shuffle(z) + 1) / 2`` (clamped to [0, 1] unless ``clamp=False``)."""
    x = (F.pixel_shuffle(latents, scale) + 1.0) / 2.0
    return x.clamp(0.0, 1.0) if clamp else x


# ----------------------------------------------------------------------------------------------------------------
# The prior
# ----------------------------------------------------------------------------------------------------------------


class PixelSpacePrior(SRPrior):
    """Pixel-space x4 SR diffusion prior (see the module docstring). Implements :class:`SRPrior`.

    Args:
        unet: the denoiser (``UNet2DConditionModel``, 51 -> 48 channels, class embedding of the noise level). It is
            used as is (not copied): moved to ``device`` / ``dtype`` and, if ``freeze``, frozen and put in eval mode.
        scheduler: training-schedule ``DDPMScheduler`` (``alphas_cumprod``, ``prediction_type``).
        low_res_scheduler: ``DDPMScheduler`` of the LR noising.
        max_noise_level: largest LR noise level.
        device: where the denoiser runs.
        dtype: compute dtype of the denoiser (float32 on a CPU is the caller's choice; see ``resolve_dtype``).
        source: human-readable origin, for logs.
        meta: the ``pixel_prior.json`` metadata (kept in :attr:`meta`, rewritten by :meth:`save_pretrained`).
        freeze: freeze the denoiser and put it in eval mode (False for the trainer's validation of a live model).

    Extra attributes: ``scheduler``, ``low_res_scheduler``, ``low_res_alphas_cumprod``, ``latent_clip`` (1.0: the
    latent range, used by :func:`ddim_upscale`), ``size_multiple`` (inputs are padded to it inside
    :meth:`predict`), ``source``, ``meta``.
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any,
        low_res_scheduler: Any,
        max_noise_level: int = MAX_NOISE_LEVEL,
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        source: str = "",
        meta: Optional[Dict[str, Any]] = None,
        freeze: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.source = source
        self.meta = dict(meta or {})
        self.scale = SCALE
        self.latent_channels = LATENT_CHANNELS
        self.latent_clip = 1.0
        self.uses_text = False

        cfg = unet.config
        if cfg.in_channels != LATENT_CHANNELS + 3 or cfg.out_channels != LATENT_CHANNELS:
            raise ValueError(
                f"UNet channels {cfg.in_channels}->{cfg.out_channels}; a pixel prior needs "
                f"{LATENT_CHANNELS + 3}->{LATENT_CHANNELS}."
            )
        if getattr(unet, "class_embedding", None) is None:
            raise ValueError("The UNet has no noise-level class embedding (num_class_embeds).")
        if next(unet.parameters()).dtype != dtype:
            nn.Module.to(unet, dtype=dtype)
        unet.to(self.device)
        if freeze:
            unet.requires_grad_(False).eval()
        self.denoiser = unet
        self._class_hook = _AddToOutput()
        self._class_hook_handle = unet.class_embedding.register_forward_hook(self._class_hook)
        self.class_embedding_dim = int(unet.class_embedding.weight.shape[1])
        self.size_multiple = 2 ** (len(cfg.block_out_channels) - 1)
        if int(unet.class_embedding.num_embeddings) <= max_noise_level:
            raise ValueError(
                f"class embedding has {unet.class_embedding.num_embeddings} entries; max_noise_level "
                f"{max_noise_level} needs {max_noise_level + 1}."
            )

        set_schedules(self, scheduler, low_res_scheduler, max_noise_level)

    # ---- construction ------------------------------------------------------------------------------------------

    @classmethod
    def random(
        cls,
        preset: str = "tiny",
        seed: int = 0,
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "PixelSpacePrior":
        """A prior of UNet ``preset`` with seeded random weights (built on the CPU: same weights on every device)."""
        unet = build_pixel_unet(preset, seed, "cpu")
        scheduler, low_res = _make_schedulers()
        meta = {"preset": preset, "seed": seed, "random_weights": True}
        return cls(
            unet,
            scheduler,
            low_res,
            MAX_NOISE_LEVEL,
            device,
            dtype,
            source=f"preset {preset!r} (random weights, seed {seed})",
            meta=meta,
        )

    @classmethod
    def from_pretrained(
        cls, folder: Union[str, Path], device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32
    ) -> "PixelSpacePrior":
        """Load a folder written by :meth:`save_pretrained` (or ``vsdsr-train-prior``'s ``OUTPUT/model``).
        Local files only; any failure raises :class:`PriorLoadError`."""
        parts = load_pixel_parts(
            folder,
            dtype,
            supported=(("scale", SCALE), ("latent_channels", LATENT_CHANNELS)),
            format_version=FORMAT_VERSION,
            default_max_noise_level=MAX_NOISE_LEVEL,
        )
        return cls(
            parts.unet,
            parts.scheduler,
            parts.low_res_scheduler,
            parts.max_noise_level,
            device,
            dtype,
            source=parts.source,
            meta=parts.meta,
        )

    def save_pretrained(
        self, folder: Union[str, Path], dtype: torch.dtype = torch.float16, meta: Optional[Dict[str, Any]] = None
    ) -> Path:
        """Write the prior as a folder that :meth:`from_pretrained` and ``SRPriorConfig(model_path=folder)`` load:
        ``pixel_prior.json``, ``unet/`` (safetensors in ``dtype``, fp16 by default), ``scheduler/``,
        ``low_res_scheduler/``. ``meta`` entries are merged into the metadata. Refuses a denoiser with LoRA
        adapters (they are not part of the prior)."""
        names = [n for n, _ in self.denoiser.named_parameters() if "lora_" in n]
        if names:
            raise ValueError(f"the denoiser carries LoRA adapters ({names[0]}, ...); save a clean prior")
        return save_pixel_prior(
            folder,
            self.denoiser,
            self.scheduler,
            self.low_res_scheduler,
            self.max_noise_level,
            dtype=dtype,
            meta={**self.meta, **(meta or {})},
        )

    # ---- SRPrior -----------------------------------------------------------------------------------------------

    def encode(
        self, images: Float[Tensor, "B 3 H W"], sample: bool = False, generator: Optional[torch.Generator] = None
    ) -> Float[Tensor, "B C h w"]:
        """HR images in [0, 1] -> exact pixel-unshuffle latents in [-1, 1] (float32; ``sample`` has no effect)."""
        return pixel_encode(images.to(device=self.device, dtype=torch.float32))

    def decode(self, latents: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """Latents -> HR images in [0, 1] (float32, clamped): exact inverse of :meth:`encode`."""
        return pixel_decode(latents.to(device=self.device, dtype=torch.float32))

    def noise_lr(
        self,
        lr_images: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        generator: Optional[torch.Generator] = None,
    ) -> Float[Tensor, "B 3 h w"]:
        """``sqrt(a_k) (2y - 1) + sqrt(1 - a_k) eta`` with the low-res schedule (as the SD x4 pipeline); per-sample
        levels, an int broadcasts; levels outside ``[0, max_noise_level]`` raise."""
        return noise_lr_images(lr_images, noise_level, self.low_res_alphas_cumprod, self.max_noise_level, generator)

    def text_embeddings(self) -> None:
        """No text conditioning: always ``None`` (``uses_text`` is False)."""
        return None

    def predict(
        self,
        z_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        lr_cond: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        text: Optional[Float[Tensor, "B L D"]] = None,
        extra_class_embedding: Optional[Float[Tensor, "B E"]] = None,
    ) -> Float[Tensor, "B C h w"]:
        """Denoiser output (``prediction_type``) in float32. ``text`` is ignored. Inputs are cast to ``dtype`` and
        replicate-padded at the bottom/right to a multiple of ``size_multiple`` (output cropped back);
        ``extra_class_embedding`` is added to the noise-level embedding. Gradients flow to ``z_t``, the extra
        embedding and any trainable adapter."""
        batch, _, h, w = z_t.shape
        x = torch.cat([z_t.to(self.device, self.dtype), lr_cond.to(self.device, self.dtype)], dim=1)
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        timesteps = _as_batch(t, batch, self.device)
        labels = _as_batch(noise_level, batch, self.device)
        out = denoise_with_class_offset(
            self.denoiser, self._class_hook, x, timesteps, labels, None, extra_class_embedding, self.class_embedding_dim
        )
        return out[..., :h, :w].float()

    # ---- helpers -----------------------------------------------------------------------------------------------

    def to(self, device: Union[str, torch.device]) -> "PixelSpacePrior":
        """Move the denoiser (with any adapters) and the schedules to ``device`` in place; dtypes unchanged."""
        device = torch.device(device)
        leaving_cuda = self.device.type == "cuda" and device.type != "cuda"
        self.denoiser.to(device)
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        self.low_res_alphas_cumprod = self.low_res_alphas_cumprod.to(device)
        self.device = device
        if leaving_cuda:
            torch.cuda.empty_cache()
        return self

    @property
    def num_parameters(self) -> int:
        """Parameters of the denoiser (without LoRA adapters)."""
        return sum(p.numel() for n, p in self.denoiser.named_parameters() if "lora_" not in n)

    @torch.no_grad()
    def upscale(
        self,
        lr_images: Float[Tensor, "B 3 h w"],
        steps: int = DEFAULT_SAMPLE_STEPS,
        noise_level: int = DEFAULT_SAMPLE_NOISE_LEVEL,
        generator: Optional[torch.Generator] = None,
        **kwargs: Any,
    ) -> Float[Tensor, "B 3 H W"]:
        """x4 upscale LR images in [0, 1] by DDIM sampling; see :func:`ddim_upscale`."""
        return ddim_upscale(self, lr_images, steps=steps, noise_level=noise_level, generator=generator, **kwargs)


def save_pixel_prior(
    folder: Union[str, Path],
    unet: nn.Module,
    scheduler: Any,
    low_res_scheduler: Any,
    max_noise_level: int = MAX_NOISE_LEVEL,
    dtype: torch.dtype = torch.float16,
    meta: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a pixel-prior folder from its parts (the trainer exports its EMA UNet with this). The UNet is copied
    and cast to ``dtype`` on the CPU; the live module is untouched. Non-finite weights after the cast raise."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    export = copy.deepcopy(unet).to("cpu")
    nn.Module.to(export, dtype=dtype)
    bad = [n for n, p in export.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"non-finite weights after casting to {dtype}: {bad[:3]}")
    export.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    low_res_scheduler.save_pretrained(folder / "low_res_scheduler")
    n_params = sum(p.numel() for p in export.parameters())
    info = {
        "_class_name": "PixelSpacePrior",
        "_module": "vsdsr_nerfstudio.sr.priors.pixel_prior",
        "_diffusers_version": diffusers.__version__,
        "format_version": FORMAT_VERSION,
        "scale": SCALE,
        "latent_channels": LATENT_CHANNELS,
        "latent": "pixel_unshuffle(2 * hr - 1, 4)",
        "prediction_type": scheduler.config.prediction_type,
        "max_noise_level": int(max_noise_level),
        "num_parameters": n_params,
        "weights_dtype": str(dtype).replace("torch.", ""),
        "sampler": {
            "name": "ddim",
            "eta": 0.0,
            "timestep_spacing": "trailing",
            "steps": DEFAULT_SAMPLE_STEPS,
            "noise_level": DEFAULT_SAMPLE_NOISE_LEVEL,
            "clip_x0": 1.0,
        },
    }
    info.update(meta or {})
    info["num_parameters"] = n_params
    (folder / PIXEL_PRIOR_CONFIG_NAME).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return folder


def log_pixel_prior(prior: PixelSpacePrior) -> PixelSpacePrior:
    """Print the one line that says which pixel prior was set up; returns ``prior``."""
    CONSOLE.print(
        f"Pixel-space x4 prior from {prior.source}: {prior.num_parameters / 1e6:.2f} M parameters, "
        f"{prior.dtype} on {prior.device}, {prior.prediction_type}, no text, exact pixel-unshuffle latent."
    )
    return prior


# ----------------------------------------------------------------------------------------------------------------
# Sampling (generic over SRPrior)
# ----------------------------------------------------------------------------------------------------------------


def ddim_timesteps(num_train_timesteps: int, steps: int) -> List[int]:
    """Trailing DDIM spacing: ``round(T - i T / steps) - 1`` for ``i = 0..steps-1`` (999 first, decreasing)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    ts = [int(round(num_train_timesteps - i * num_train_timesteps / steps)) - 1 for i in range(steps)]
    return sorted(set(ts), reverse=True)


def _tiled_predict(
    prior: SRPrior,
    z_t: Tensor,
    t: Tensor,
    lr_cond: Tensor,
    noise_level: Tensor,
    guidance_scale: float,
    tile: int,
    overlap: int,
) -> Tensor:
    """The prediction over the whole latent, computed on overlapping ``tile`` x ``tile`` windows (LR pixels) and
    blended (``sr/priors/tiling.py``, MultiDiffusion-style: every DDIM step sees one seamless prediction)."""
    _, c, h, w = z_t.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return guided_predict(prior, z_t, t, lr_cond, noise_level, guidance_scale)

    def window(x: Tensor) -> Tensor:
        return guided_predict(prior, x[:, :c], t, x[:, c:], noise_level, guidance_scale)

    overlap = max(0, min(overlap, tile // 2))
    joint = torch.cat([z_t, lr_cond.to(z_t.dtype)], dim=1)
    return tiled_map(window, joint, (h, w), tile, overlap, in_scale=1, out_scale=1)


@torch.no_grad()
def ddim_upscale(
    prior: SRPrior,
    lr_images: Float[Tensor, "B 3 h w"],
    steps: int = DEFAULT_SAMPLE_STEPS,
    noise_level: int = DEFAULT_SAMPLE_NOISE_LEVEL,
    generator: Optional[torch.Generator] = None,
    guidance_scale: float = 1.0,
    tile: int = 256,
    tile_overlap: int = 32,
    clip_x0: Optional[float] = None,
    progress: bool = False,
) -> Float[Tensor, "B 3 H W"]:
    """x4 super-resolution of LR images in [0, 1] by deterministic DDIM (eta = 0) with any :class:`SRPrior`.

    Trailing timestep spacing (:func:`ddim_timesteps`, first step at ``t = T - 1``, last step to ``t = -1`` i.e.
    the x0 estimate), the LR conditioning noised once at ``noise_level`` (the SR stage's default 20), the starting
    latent ``z_T ~ N(0, I)`` drawn with ``generator``; x0 estimates are clamped to ``[-clip_x0, clip_x0]``
    (default: the prior's ``latent_clip`` if it has one, e.g. 1.0 for the pixel prior; none for the SD prior).
    Text priors use ``text_embeddings()`` with CFG ``guidance_scale``. Memory is bounded by ``tile`` (LR pixels per
    denoiser call; overlapping windows blended at every step; ``0`` = the whole image at once).
    Returns ``prior.decode`` of the final latent: ``(B, 3, 4h, 4w)`` float32 in [0, 1].
    """
    device = torch.device(prior.device)
    lr = lr_images.to(device=device, dtype=torch.float32)
    batch, _, h, w = lr.shape
    levels = torch.full((batch,), int(noise_level), dtype=torch.long, device=device)
    lr_cond = prior.noise_lr(lr, levels, generator=generator)
    z = _randn((batch, prior.latent_channels, h, w), generator, device)
    if clip_x0 is None:
        clip_x0 = getattr(prior, "latent_clip", None)
    ts = ddim_timesteps(prior.num_train_timesteps, steps)
    iterator: Any = ts
    if progress:
        from rich.progress import track

        iterator = track(ts, description=f"DDIM {len(ts)} steps", console=CONSOLE, transient=True)
    for i, t_int in enumerate(iterator):
        t_prev_int = ts[i + 1] if i + 1 < len(ts) else -1
        t = torch.full((batch,), t_int, dtype=torch.long, device=device)
        t_prev = torch.full((batch,), t_prev_int, dtype=torch.long, device=device)
        pred = _tiled_predict(prior, z, t, lr_cond, levels, guidance_scale, tile, tile_overlap)
        a_t, s_t = schedule_coefficients(prior.alphas_cumprod, t)
        a_p, s_p = schedule_coefficients(prior.alphas_cumprod, t_prev)
        x0 = pred_to_x0(pred, z, a_t, s_t, prior.prediction_type)
        eps = pred_to_eps(pred, z, a_t, s_t, prior.prediction_type)
        if clip_x0 is not None and clip_x0 > 0:
            x0 = x0.clamp(-clip_x0, clip_x0)
        z = ddim_step(x0, eps, a_p, s_p)
    return prior.decode(z)


def param_count_report(preset: str = "base") -> Dict[str, float]:
    """Parameters and fp16 size of a preset, built on the meta device (no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**PIXEL_UNET_PRESETS[preset])
    n = sum(p.numel() for p in unet.parameters())
    return {"parameters": float(n), "fp16_megabytes": n * 2 / 1e6, "fp16_mib": n * 2 / 2**20}
