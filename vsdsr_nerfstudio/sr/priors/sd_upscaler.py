"""The Stable Diffusion x4 upscaler as an :class:`SRPrior` (diffusers backend; heavy imports, load lazily).

:class:`SDUpscalerPrior` is built from its parts (UNet, VAE, text encoder + tokenizer, the two schedulers). Three
presets share it (see ``sr/priors/kinds.py``):

- ``sd-x4-upscaler``: parts from ``sr/priors/loading.py`` (``from_pretrained(model_path, subfolder=...)``) for a
  Hugging Face id or a local diffusers folder (also a folder written by :func:`save_tiny_prior`);
- ``sd-x4-random``: the real architecture (``sd_x4_configs.SD_X4_*``), :func:`build_random_components`;
- ``tiny``: small configs (``sd_x4_configs.TINY_*``) with seeded random weights, for tests and CPU runs.

Conventions (``method.md`` section 1): images in [0, 1] (the VAE sees [-1, 1]); latents are VAE latents times
``scaling_factor`` (0.08333) on the LR grid; the UNet input is ``cat([z_t, lr_noised])`` (7 channels); the noise
level of the LR conditioning goes in as ``class_labels``; the UNet predicts ``v`` (read from the scheduler config).
"""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from jaxtyping import Float, Int
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from vsdsr_nerfstudio.sr.priors.base import SRPrior
from vsdsr_nerfstudio.sr.priors.loading import PriorLoadError, UpscalerComponents
from vsdsr_nerfstudio.sr.priors.loading import load_sd_x4_parts as load_pretrained_components
from vsdsr_nerfstudio.sr.priors.sd_x4_configs import preset_configs
from vsdsr_nerfstudio.sr.priors.text import ByteTokenizer, TokenizeFn, encode_prompts
from vsdsr_nerfstudio.sr.priors.tiled_vae import tiled_decode, tiled_encode, vae_downscale
from vsdsr_nerfstudio.sr.priors.utils import AddToOutput as _AddToOutput
from vsdsr_nerfstudio.sr.priors.utils import as_batch as _as_batch
from vsdsr_nerfstudio.sr.priors.utils import denoise_with_class_offset, noise_lr_images, set_schedules
from vsdsr_nerfstudio.sr.priors.utils import randn_on as _randn

__all__ = [
    "PriorLoadError",
    "SDUpscalerPrior",
    "UpscalerComponents",
    "build_random_components",
    "load_pretrained_components",
    "save_random_prior",
    "save_tiny_prior",
]

# --------------------------------------------------------------------------------------------------------------
# Creating components
# --------------------------------------------------------------------------------------------------------------


def build_random_components(preset: str, seed: int = 0, device: Union[str, torch.device] = "cpu") -> UpscalerComponents:
    """The ``tiny`` or ``sd-x4-random`` preset: configs from ``sd_x4_configs``, weights from ``torch.manual_seed``
    (the global RNG states are restored afterwards), created directly on ``device``. Deterministic for a given
    seed, torch version and device type; the prior always builds ``tiny`` on the CPU (same weights everywhere)
    and ``sd-x4-random`` on its device (0.87 B parameters: about 30 s on a CPU)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = preset_configs(preset)
    device = torch.device(device)
    rng_devices = []
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=rng_devices), device:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg["unet"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**cfg["vae"])
        torch.manual_seed(seed + 2)
        text_config = CLIPTextConfig(**cfg["text_encoder"])
        text_encoder = CLIPTextModel(text_config)
    tokenizer = ByteTokenizer(max_length=text_config.max_position_embeddings)
    if tokenizer.vocab_size > text_config.vocab_size:
        raise ValueError(f"Text vocab {text_config.vocab_size} is smaller than the byte tokenizer's.")
    return UpscalerComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenize=tokenizer,
        scheduler=DDIMScheduler.from_config(cfg["scheduler"]),
        low_res_scheduler=DDPMScheduler.from_config(cfg["low_res_scheduler"]),
        max_noise_level=int(cfg["max_noise_level"]),
        source=f"preset {preset!r} (random weights, seed {seed})",
    )


def config_mismatches(config: Any, reference: Dict[str, Any]) -> List[str]:
    """Keys of ``reference`` whose value differs in a loaded diffusers ``config`` (lists and tuples compare equal)."""

    def norm(v: Any) -> Any:
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v

    out = []
    for key, ref in reference.items():
        got = config.get(key, None) if hasattr(config, "get") else getattr(config, key, None)
        if norm(got) != norm(ref):
            out.append(f"{key}: {got!r} (expected {ref!r})")
    return out


# --------------------------------------------------------------------------------------------------------------
# Saving random-weight presets as diffusers folders
# --------------------------------------------------------------------------------------------------------------


def save_random_prior(folder: Union[str, Path], preset: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight preset as a diffusers upscaler folder that ``SRPriorConfig(model_path=folder)``
    loads back (identical outputs to ``SRPriorConfig(prior=preset, seed=seed)``).

    Layout: ``unet/ vae/ text_encoder/ scheduler/ low_res_scheduler/`` (``save_pretrained``), ``tokenizer/
    byte_tokenizer.json`` (marker selecting :class:`ByteTokenizer`), ``model_index.json``."""
    import diffusers

    folder = Path(folder)
    comps = build_random_components(preset, seed)
    folder.mkdir(parents=True, exist_ok=True)
    comps.unet.save_pretrained(folder / "unet")
    comps.vae.save_pretrained(folder / "vae")
    comps.text_encoder.save_pretrained(folder / "text_encoder")
    comps.scheduler.save_pretrained(folder / "scheduler")
    comps.low_res_scheduler.save_pretrained(folder / "low_res_scheduler")
    assert isinstance(comps.tokenize, ByteTokenizer)
    comps.tokenize.save(folder / "tokenizer")
    index = {
        "_class_name": "StableDiffusionUpscalePipeline",
        "_diffusers_version": diffusers.__version__,
        "_vsdsr_preset": {"preset": preset, "seed": seed},
        "max_noise_level": comps.max_noise_level,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["vsdsr_nerfstudio", "ByteTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "low_res_scheduler": ["diffusers", "DDPMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def save_tiny_prior(folder: Union[str, Path], seed: int = 0) -> Path:
    """Write the ``tiny`` preset (seed ``seed``) as a diffusers folder; see :func:`save_random_prior`."""
    return save_random_prior(folder, preset="tiny", seed=seed)


# --------------------------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------------------------


def _to(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move ``module`` to ``device``, casting only if its dtype differs (avoids diffusers' cast warning)."""
    if next(module.parameters()).dtype != dtype:
        nn.Module.to(module, dtype=dtype)  # plain cast: these models have no fp32-pinned modules
    return module.to(device=device)


class SDUpscalerPrior(SRPrior):
    """Stable Diffusion x4 upscaler prior: frozen UNet (``denoiser``) in ``dtype``, frozen float32 VAE, prompt
    embeddings computed once at construction (the text encoder is released afterwards).

    Built from its parts, in the diffusers manner; ``sr/priors/kinds.py`` loads them (``SDX4PretrainedConfig``)
    or creates them with random weights (``SDX4RandomConfig``).

    Args:
        unet: ``UNet2DConditionModel`` (7 -> 4 channels, noise-level class embedding); moved, cast, frozen in place.
        vae: ``AutoencoderKL`` with a 4x downscale; float32 always (it overflows in fp16).
        text_encoder: ``CLIPTextModel``, used once for the two prompts, then released.
        tokenize: prompts -> padded token ids.
        scheduler: the training schedule (``alphas_cumprod``, ``prediction_type``).
        low_res_scheduler: the schedule that noises the LR conditioning.
        max_noise_level: largest LR noise level.
        prompt, negative_prompt: the two prompts of classifier-free guidance.
        vae_tile_size, vae_tile_overlap: VAE tiling in latent pixels (``tile <= 0``: none).
        device, dtype: where and in which dtype the UNet runs.
        source: human-readable origin, for logs.

    Extra attributes: ``vae``, ``scheduler``, ``low_res_scheduler``, ``low_res_alphas_cumprod`` (float32 on
    ``device``), ``scaling_factor``, ``vae_tile_size``, ``vae_tile_overlap``, ``source``.
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenize: TokenizeFn,
        scheduler: Any,
        low_res_scheduler: Any,
        max_noise_level: int,
        prompt: str = "high resolution, 4K, photo",
        negative_prompt: str = "",
        vae_tile_size: int = 128,
        vae_tile_overlap: int = 32,
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        source: str = "",
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.source = source
        self.vae_tile_size = int(vae_tile_size)
        self.vae_tile_overlap = int(vae_tile_overlap)
        self._setup_denoiser(unet)
        self._setup_vae(vae)
        set_schedules(self, scheduler, low_res_scheduler, max_noise_level)
        self._setup_text(text_encoder, tokenize, prompt, negative_prompt)
        CONSOLE.print(
            f"SD x4 prior from {self.source}: UNet {self.dtype} on {self.device}, VAE float32, "
            f"{self.prediction_type}, text encoder released."
        )

    def _setup_denoiser(self, unet: nn.Module) -> None:
        """Frozen, eval mode, SDPA attention (diffusers' default AttnProcessor2_0); the camera-embedding hook."""
        unet = _to(unet, self.device, self.dtype)
        unet.requires_grad_(False).eval()
        if getattr(unet, "class_embedding", None) is None:
            raise ValueError("The UNet has no noise-level class embedding; is this an x4 upscaler UNet?")
        self.denoiser = unet
        self._class_hook = _AddToOutput()
        self._class_hook_handle = unet.class_embedding.register_forward_hook(self._class_hook)
        self.class_embedding_dim = int(unet.class_embedding.weight.shape[1])

    def _setup_vae(self, vae: nn.Module) -> None:
        """Float32 always (it overflows in fp16); its channels must match the UNet's."""
        vae = _to(vae, self.device, torch.float32)
        vae.requires_grad_(False).eval()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.scale = vae_downscale(vae)
        self.latent_channels = int(vae.config.latent_channels)
        cfg = self.denoiser.config
        if cfg.in_channels != self.latent_channels + 3 or cfg.out_channels != self.latent_channels:
            raise ValueError(
                f"UNet channels {cfg.in_channels}->{cfg.out_channels} do not match a "
                f"{self.latent_channels}-channel latent plus a 3-channel LR image."
            )

    def _setup_text(self, text_encoder: nn.Module, tokenize: TokenizeFn, prompt: str, negative_prompt: str) -> None:
        """Prompt embeddings once; the encoder is released when the caller drops its reference (the kind configs
        do: their parts live only for the construction)."""
        self.uses_text = True
        text_encoder = _to(text_encoder, self.device, torch.float32)
        text_encoder.requires_grad_(False).eval()
        embeds = encode_prompts(text_encoder, tokenize, [prompt, negative_prompt], device=self.device)
        self._cond_embedding = embeds[:1].contiguous()
        self._uncond_embedding = embeds[1:].contiguous()
        self._text_encoder_ref = weakref.ref(text_encoder)
        del text_encoder
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- SRPrior -------------------------------------------------------------------------------------------

    def text_embeddings(self) -> Tuple[Float[Tensor, "1 L D"], Float[Tensor, "1 L D"]]:
        """(conditional, unconditional) prompt embeddings, float32 on ``device``."""
        return self._cond_embedding, self._uncond_embedding

    def encode(
        self, images: Float[Tensor, "B 3 H W"], sample: bool = False, generator: Optional[torch.Generator] = None
    ) -> Float[Tensor, "B C h w"]:
        """HR images in [0, 1] -> scaled latents (posterior mode, or a draw if ``sample``), tiled, float32.
        Runs with whatever grad mode the caller set; wrap in ``torch.no_grad()`` for renders."""
        x = images.to(device=self.device, dtype=torch.float32) * 2.0 - 1.0
        mean, logvar = tiled_encode(self.vae, x, self.vae_tile_size, self.vae_tile_overlap)
        if sample:
            mean = mean + torch.exp(0.5 * logvar) * _randn(tuple(mean.shape), generator, self.device)
        return mean * self.scaling_factor

    def decode(self, latents: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """Scaled latents -> HR images in [0, 1] (clamped), tiled, float32."""
        z = latents.to(device=self.device, dtype=torch.float32) / self.scaling_factor
        x = tiled_decode(self.vae, z, self.vae_tile_size, self.vae_tile_overlap)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def noise_lr(
        self,
        lr_images: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        generator: Optional[torch.Generator] = None,
    ) -> Float[Tensor, "B 3 h w"]:
        """``sqrt(a_k) (2y - 1) + sqrt(1 - a_k) eta`` with the low-res scheduler's ``alphas_cumprod``, as
        ``low_res_scheduler.add_noise`` in the diffusers upscale pipeline; per-sample ``noise_level`` (an int
        broadcasts). Levels above ``max_noise_level`` raise, like the pipeline."""
        return noise_lr_images(lr_images, noise_level, self.low_res_alphas_cumprod, self.max_noise_level, generator)

    def predict(
        self,
        z_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        lr_cond: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        text: Optional[Float[Tensor, "B L D"]] = None,
        extra_class_embedding: Optional[Float[Tensor, "B E"]] = None,
    ) -> Float[Tensor, "B C h w"]:
        """UNet output (``prediction_type``) in float32. Inputs are cast to the UNet dtype; ``t`` and
        ``noise_level`` may be ints or ``(B,)`` tensors; ``text`` of batch 1 broadcasts, ``None`` is the
        unconditional (negative-prompt) embedding; ``extra_class_embedding`` is added to the noise-level embedding
        output through a forward hook on ``unet.class_embedding`` (set only for this call)."""
        batch = z_t.shape[0]
        x = torch.cat([z_t.to(self.device, self.dtype), lr_cond.to(self.device, self.dtype)], dim=1)
        timesteps = _as_batch(t, batch, self.device)
        labels = _as_batch(noise_level, batch, self.device)
        emb = self._uncond_embedding if text is None else text
        emb = emb.to(self.device, self.dtype)
        if emb.shape[0] == 1 and batch != 1:
            emb = emb.expand(batch, -1, -1)
        out = denoise_with_class_offset(
            self.denoiser, self._class_hook, x, timesteps, labels, emb, extra_class_embedding, self.class_embedding_dim
        )
        return out.float()

    # ---- helpers -------------------------------------------------------------------------------------------

    def to(self, device: Union[str, torch.device]) -> "SDUpscalerPrior":
        """Move the denoiser (with any adapters), the VAE, the prompt embeddings and the schedules to ``device``,
        e.g. to offload to the CPU during NeRF synchronisation. Parameters are moved in place (optimisers that
        hold them stay valid); the dtypes do not change (a bf16 denoiser stays bf16 on the CPU)."""
        device = torch.device(device)
        leaving_cuda = self.device.type == "cuda" and device.type != "cuda"
        self.denoiser.to(device)
        self.vae.to(device)
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        self.low_res_alphas_cumprod = self.low_res_alphas_cumprod.to(device)
        self._cond_embedding = self._cond_embedding.to(device)
        self._uncond_embedding = self._uncond_embedding.to(device)
        self.device = device
        if leaving_cuda:
            torch.cuda.empty_cache()
        return self

    @property
    def text_encoder_released(self) -> bool:
        """True once the text encoder used at setup has been garbage-collected."""
        return self._text_encoder_ref() is None
