"""Small tensor helpers shared by the prior implementations (torch only, import-light)."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from vsdsr_nerfstudio.sr.core.objectives import cfg_combine


class AddToOutput:
    """Forward hook that adds ``self.extra`` (when set) to a module's output: how a camera embedding is added to
    the noise-level class embedding. Holds no reference to the prior, so deep-copying the UNet copies only this
    small object."""

    def __init__(self) -> None:
        self.extra: Optional[Tensor] = None

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        if self.extra is None:
            return output
        return output + self.extra.to(output.dtype)


def randn_on(shape: Tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """Standard normal float32 noise on ``device``, drawn with ``generator`` on the generator's own device."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=torch.float32)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)


def as_batch(values: Union[int, Tensor], batch: int, device: torch.device) -> Tensor:
    """An int, a 0-d tensor or a ``(B,)`` tensor -> a ``(B,)`` int64 tensor on ``device``."""
    values = torch.as_tensor(values, device=device).long().reshape(-1)
    if values.numel() == 1 and batch != 1:
        values = values.expand(batch)
    if values.numel() != batch:
        raise ValueError(f"Expected {batch} values, got {values.numel()}.")
    return values


def noise_lr_images(
    lr_images: Tensor,
    noise_level: Union[int, Tensor],
    low_res_alphas_cumprod: Tensor,
    max_noise_level: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """LR images in [0, 1] -> ``sqrt(a_k) (2y - 1) + sqrt(1 - a_k) eta`` with the low-res schedule, as
    ``low_res_scheduler.add_noise`` in the diffusers upscale pipeline; per-sample levels (an int broadcasts);
    levels outside ``[0, max_noise_level]`` raise."""
    device = low_res_alphas_cumprod.device
    y = lr_images.to(device=device, dtype=torch.float32) * 2.0 - 1.0
    k = as_batch(noise_level, y.shape[0], device)
    if bool((k < 0).any()) or bool((k > max_noise_level).any()):
        raise ValueError(f"noise_level must be in [0, {max_noise_level}], got {k.tolist()}.")
    a = low_res_alphas_cumprod[k].view(-1, 1, 1, 1)
    eta = randn_on(tuple(y.shape), generator, device)
    return a**0.5 * y + (1 - a) ** 0.5 * eta


def denoise_with_class_offset(
    denoiser: nn.Module,
    hook: AddToOutput,
    x: Tensor,
    timesteps: Tensor,
    labels: Tensor,
    context: Optional[Tensor],
    extra_class_embedding: Optional[Tensor],
    class_embedding_dim: int,
) -> Tensor:
    """One UNet call with ``class_labels=labels`` and ``extra_class_embedding`` added to the class embedding
    (through ``hook``, armed only for this call)."""
    if extra_class_embedding is not None:
        if extra_class_embedding.shape[-1] != class_embedding_dim:
            raise ValueError(
                f"extra_class_embedding has width {extra_class_embedding.shape[-1]}, expected {class_embedding_dim}."
            )
        hook.extra = extra_class_embedding.to(x.device)
    try:
        return denoiser(x, timesteps, encoder_hidden_states=context, class_labels=labels, return_dict=False)[0]
    finally:
        hook.extra = None


def set_schedules(prior: Any, scheduler: Any, low_res_scheduler: Any, max_noise_level: int) -> None:
    """Set a prior's schedule attributes from its two schedulers (shared by every ``SRPrior`` implementation):
    ``scheduler``, ``low_res_scheduler``, ``prediction_type`` (``v_prediction`` or ``epsilon``, else
    ``ValueError``), ``alphas_cumprod`` and ``low_res_alphas_cumprod`` (float32 on ``prior.device``),
    ``max_noise_level``."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in ("v_prediction", "epsilon"):
        raise ValueError(f"Unsupported prediction_type {prediction_type!r}.")
    prior.scheduler = scheduler
    prior.low_res_scheduler = low_res_scheduler
    prior.prediction_type = prediction_type
    prior.alphas_cumprod = scheduler.alphas_cumprod.to(device=prior.device, dtype=torch.float32)
    prior.low_res_alphas_cumprod = low_res_scheduler.alphas_cumprod.to(device=prior.device, dtype=torch.float32)
    prior.max_noise_level = int(max_noise_level)


def guided_predict(
    prior: Any,
    z_t: Tensor,
    t: Tensor,
    lr_cond: Tensor,
    noise_level: Tensor,
    guidance_scale: float,
    text: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tensor:
    """``prior.predict`` (any ``SRPrior``) with text classifier-free guidance (``cfg_combine`` of
    ``sr/core/objectives``) where the prior uses text and ``guidance_scale != 1`` (one batched call for both
    branches); plain otherwise. The one text-guidance helper: the DDIM sampler and the SR stage's pretrained branch
    use it. ``text``: the (conditional, unconditional) embeddings if the caller holds them (default: the prior's)."""
    if not prior.uses_text:
        return prior.predict(z_t, t, lr_cond, noise_level)
    embeddings = text if text is not None else prior.text_embeddings()
    assert embeddings is not None
    cond, uncond = (e.to(z_t.device) for e in embeddings)
    batch = z_t.shape[0]
    if guidance_scale == 1.0:
        return prior.predict(z_t, t, lr_cond, noise_level, text=cond.expand(batch, -1, -1))
    two = lambda x: torch.cat([x, x])
    text_batch = torch.cat([cond.expand(batch, -1, -1), uncond.expand(batch, -1, -1)])
    pred_c, pred_u = prior.predict(two(z_t), two(t), two(lr_cond), two(noise_level), text=text_batch).chunk(2)
    return cfg_combine(pred_u, pred_c, guidance_scale)
