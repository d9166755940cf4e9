"""The contract between a x4 diffusion prior and the code that distils from it.

Everything above this line (objectives, LoRA, the stage optimiser, the I3DS pipeline) talks to a prior only
through :class:`SRPrior`. Two priors implement it:

- ``SDUpscalerPrior`` (``sr/priors/sd_upscaler.py``): Stable Diffusion x4 upscaler, VAE latent with 4 channels;
- the pixel-space prior (`sr/priors/pixel_prior.py`; the embedded one ships in the package): pixel-unshuffle x4
  as an exact "VAE", 48 channels.

This module is import-light on purpose (torch only): the nerfstudio plugin imports it.
"""

from __future__ import annotations

import abc
from typing import Literal, Optional, Tuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

PredictionType = Literal["v_prediction", "epsilon"]


class SRPrior(abc.ABC):
    """A x4 super-resolution diffusion prior whose latent lives on the low-resolution pixel grid.

    A latent of an HR image of size ``H x W`` has shape ``(latent_channels, H / scale, W / scale)``, the size
    of the LR image that conditions it. The denoiser sees ``cat([z_t, lr_noised], dim=1)``.

    Attributes every implementation sets:
        scale: HR pixels per latent pixel along each side (4).
        latent_channels: channels of the latent (4 for the SD VAE, 48 for pixel-unshuffle x4).
        prediction_type: what the denoiser outputs, ``"v_prediction"`` or ``"epsilon"``.
        alphas_cumprod: the training schedule's cumulative alphas, ``(T,)`` float32 on ``device``.
        max_noise_level: the largest noise level the LR conditioning supports.
        uses_text: whether ``text`` conditioning has any effect.
        class_embedding_dim: width of the noise-level class embedding, where camera embeddings are added.
        denoiser: the frozen denoiser (a diffusers ``UNet2DConditionModel``). LoRA adapters may be injected
            into it by ``sr.lora``; they are *disabled* unless the LoRA code enables them.
        device: where the denoiser runs; ``dtype``: its compute dtype.
    """

    scale: int = 4
    latent_channels: int
    prediction_type: PredictionType
    alphas_cumprod: Float[Tensor, " T"]
    max_noise_level: int
    uses_text: bool
    class_embedding_dim: int
    denoiser: nn.Module
    device: torch.device
    dtype: torch.dtype

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @abc.abstractmethod
    def encode(
        self, images: Float[Tensor, "B 3 H W"], sample: bool = False, generator: Optional[torch.Generator] = None
    ) -> Float[Tensor, "B C h w"]:
        """HR images in [0, 1] -> latents on the LR grid (float32). ``sample`` draws from the posterior
        instead of taking its mode (no effect for an exact encoder). Large images are processed in tiles."""

    @abc.abstractmethod
    def decode(self, latents: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """Latents -> HR images in [0, 1] (float32, clamped). Large latents are processed in tiles."""

    @abc.abstractmethod
    def noise_lr(
        self,
        lr_images: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        generator: Optional[torch.Generator] = None,
    ) -> Float[Tensor, "B 3 h w"]:
        """LR images in [0, 1] -> the denoiser's LR conditioning: scaled to [-1, 1] and noised at
        ``noise_level`` with the low-res scheduler (``sqrt(a_k) y + sqrt(1 - a_k) eta``)."""

    @abc.abstractmethod
    def text_embeddings(self) -> Optional[Tuple[Float[Tensor, "1 L D"], Float[Tensor, "1 L D"]]]:
        """(conditional, unconditional) prompt embeddings, computed once; ``None`` if ``uses_text`` is False."""

    @abc.abstractmethod
    def predict(
        self,
        z_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        lr_cond: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        text: Optional[Float[Tensor, "B L D"]] = None,
        extra_class_embedding: Optional[Float[Tensor, "B E"]] = None,
    ) -> Float[Tensor, "B C h w"]:
        """Raw denoiser output (in ``prediction_type``), float32.

        ``noise_level`` is passed as ``class_labels`` (the noise-level embedding). ``extra_class_embedding``
        (width ``class_embedding_dim``) is *added* to that embedding: this is how the LoRA model's camera
        embedding enters. Gradients flow to ``z_t`` and to any trainable parameters (LoRA, camera MLP)."""
