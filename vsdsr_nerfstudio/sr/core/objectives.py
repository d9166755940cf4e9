"""Score-distillation math on plain tensors: parameterisation conversions, CFG, and the VSD / SDS / RSD losses.

Everything here is a small pure function of tensors (no diffusers, no nerfstudio), so each equation of
``docs/sr_core.md`` can be unit-tested on its own. Notation (``docs/method.md`` §2): ``a_t = sqrt(alphas_cumprod[t])``,
``s_t = sqrt(1 - alphas_cumprod[t])``; ``z`` is a clean latent, ``z_t = a_t z + s_t eps`` its noisy version.

The denoiser of an x4 upscaler sees ``cat([z_t, lr_cond], dim=1)`` (latent channels + 3 LR channels). Every
conversion below takes the *latent* ``z_t`` only and refuses a tensor whose channel count differs from the
prediction's, so the LR channels can never leak into ``eps``/``x0`` (defect §2.6.2 of the research code).
"""

from __future__ import annotations

from typing import Literal, Tuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

PredictionType = Literal["v_prediction", "epsilon"]
VSDLossType = Literal["l1", "l2"]


def _check_latent_pair(pred: Tensor, z_t: Tensor) -> None:
    """Raise if ``z_t`` is not a latent of the same shape as ``pred`` (e.g. the UNet input with LR channels)."""
    if pred.shape != z_t.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and z_t {tuple(z_t.shape)} differ: pass the noisy *latent* z_t, never "
            "the denoiser input concatenated with the LR channels"
        )


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in ("v_prediction", "epsilon"):
        raise ValueError(f"unknown prediction_type {prediction_type!r} (expected 'v_prediction' or 'epsilon')")


def schedule_coefficients(
    alphas_cumprod: Float[Tensor, " T"], t: Int[Tensor, " B"]
) -> Tuple[Float[Tensor, "B 1 1 1"], Float[Tensor, "B 1 1 1"]]:
    """``(a_t, s_t) = (sqrt(abar_t), sqrt(1 - abar_t))`` shaped for broadcasting over ``(B, C, h, w)``.

    ``t = -1`` means "clean" (``abar = 1``, the DDIM convention for the step below ``t = 0``).
    """
    t = t.to(device=alphas_cumprod.device, dtype=torch.long)
    if bool((t < -1).any()) or bool((t >= alphas_cumprod.shape[0]).any()):
        raise ValueError(f"timesteps must lie in [-1, {alphas_cumprod.shape[0] - 1}], got {t.tolist()}")
    abar = torch.where(t >= 0, alphas_cumprod[t.clamp(min=0)], torch.ones_like(alphas_cumprod[t.clamp(min=0)]))
    abar = abar.float().view(-1, 1, 1, 1)
    return abar.sqrt(), (1.0 - abar).clamp(min=0.0).sqrt()


def vsd_weight(alphas_cumprod: Float[Tensor, " T"], t: Int[Tensor, " B"]) -> Float[Tensor, "B 1 1 1"]:
    """The VSD / SDS weight ``w(t) = 1 - abar_t`` (``= s_t^2``), shaped ``(B, 1, 1, 1)``."""
    _, s_t = schedule_coefficients(alphas_cumprod, t)
    return s_t**2


def q_sample(
    x0: Float[Tensor, "B C h w"],
    noise: Float[Tensor, "B C h w"],
    a_t: Float[Tensor, "B 1 1 1"],
    s_t: Float[Tensor, "B 1 1 1"],
) -> Float[Tensor, "B C h w"]:
    """Forward diffusion ``z_t = a_t x0 + s_t noise``."""
    return a_t * x0 + s_t * noise


def v_target(
    x0: Float[Tensor, "B C h w"],
    noise: Float[Tensor, "B C h w"],
    a_t: Float[Tensor, "B 1 1 1"],
    s_t: Float[Tensor, "B 1 1 1"],
) -> Float[Tensor, "B C h w"]:
    """The v-prediction target ``v = a_t noise - s_t x0``."""
    return a_t * noise - s_t * x0


def training_target(
    x0: Float[Tensor, "B C h w"],
    noise: Float[Tensor, "B C h w"],
    a_t: Float[Tensor, "B 1 1 1"],
    s_t: Float[Tensor, "B 1 1 1"],
    prediction_type: PredictionType,
) -> Float[Tensor, "B C h w"]:
    """What a denoiser of ``prediction_type`` is trained to output: ``v`` for a v-model, ``noise`` for an eps-model."""
    _check_prediction_type(prediction_type)
    if prediction_type == "v_prediction":
        return v_target(x0, noise, a_t, s_t)
    return noise


def pred_to_eps(
    pred: Float[Tensor, "B C h w"],
    z_t: Float[Tensor, "B C h w"],
    a_t: Float[Tensor, "B 1 1 1"],
    s_t: Float[Tensor, "B 1 1 1"],
    prediction_type: PredictionType,
) -> Float[Tensor, "B C h w"]:
    """Denoiser output -> noise estimate. v-model: ``eps = a_t v + s_t z_t``; eps-model: identity."""
    _check_prediction_type(prediction_type)
    _check_latent_pair(pred, z_t)
    if prediction_type == "v_prediction":
        return a_t * pred + s_t * z_t
    return pred


def pred_to_x0(
    pred: Float[Tensor, "B C h w"],
    z_t: Float[Tensor, "B C h w"],
    a_t: Float[Tensor, "B 1 1 1"],
    s_t: Float[Tensor, "B 1 1 1"],
    prediction_type: PredictionType,
) -> Float[Tensor, "B C h w"]:
    """Denoiser output -> clean estimate. v-model: ``x0 = a_t z_t - s_t v``; eps-model: ``(z_t - s_t eps) / a_t``."""
    _check_prediction_type(prediction_type)
    _check_latent_pair(pred, z_t)
    if prediction_type == "v_prediction":
        return a_t * z_t - s_t * pred
    return (z_t - s_t * pred) / a_t


def eps_to_pred(
    eps: Float[Tensor, "B C h w"],
    z_t: Float[Tensor, "B C h w"],
    a_t: Float[Tensor, "B 1 1 1"],
    s_t: Float[Tensor, "B 1 1 1"],
    prediction_type: PredictionType,
) -> Float[Tensor, "B C h w"]:
    """Inverse of :func:`pred_to_eps`. v-model: ``v = (eps - s_t z_t) / a_t``; eps-model: identity."""
    _check_prediction_type(prediction_type)
    _check_latent_pair(eps, z_t)
    if prediction_type == "v_prediction":
        return (eps - s_t * z_t) / a_t
    return eps


def x0_to_pred(
    x0: Float[Tensor, "B C h w"],
    z_t: Float[Tensor, "B C h w"],
    a_t: Float[Tensor, "B 1 1 1"],
    s_t: Float[Tensor, "B 1 1 1"],
    prediction_type: PredictionType,
) -> Float[Tensor, "B C h w"]:
    """Inverse of :func:`pred_to_x0`. v-model: ``v = (a_t z_t - x0) / s_t``; eps-model: ``(z_t - a_t x0) / s_t``."""
    _check_prediction_type(prediction_type)
    _check_latent_pair(x0, z_t)
    if prediction_type == "v_prediction":
        return (a_t * z_t - x0) / s_t
    return (z_t - a_t * x0) / s_t


def cfg_combine(
    uncond: Float[Tensor, "B C h w"], cond: Float[Tensor, "B C h w"], scale: float
) -> Float[Tensor, "B C h w"]:
    """Classifier-free guidance ``uncond + scale (cond - uncond)``. Affine, so it commutes with the conversions."""
    return uncond + scale * (cond - uncond)


def vsd_gradient(
    eps_pretrained: Float[Tensor, "B C h w"], eps_lora: Float[Tensor, "B C h w"], weight: Float[Tensor, "B 1 1 1"]
) -> Float[Tensor, "B C h w"]:
    """VSD gradient ``g = w(t) (eps_pre,omega - eps_lora,gamma)`` (both already guided; NaNs zeroed as in TS)."""
    return torch.nan_to_num(weight * (eps_pretrained - eps_lora))


def sds_gradient(
    eps_pretrained: Float[Tensor, "B C h w"], noise: Float[Tensor, "B C h w"], weight: Float[Tensor, "B 1 1 1"]
) -> Float[Tensor, "B C h w"]:
    """SDS gradient ``g = w(t) (eps_pre,omega - eps)`` for the noise ``eps`` that built ``z_t``."""
    return torch.nan_to_num(weight * (eps_pretrained - noise))


def surrogate_loss(
    z: Float[Tensor, "B C h w"], grad: Float[Tensor, "B C h w"], kind: VSDLossType = "l1"
) -> Float[Tensor, ""]:
    """A scalar whose gradient wrt ``z`` is the distillation gradient, with target ``sg(z - g)``.

    - ``"l2"``: ``0.5 ||z - sg(z - g)||_2^2 / B``, so ``dL/dz = g / B`` (threestudio's VSD);
    - ``"l1"``: ``0.5 ||z - sg(z - g)||_1 / B``, so ``dL/dz = 0.5 sign(g) / B`` (VSD-SR's final commit).
    """
    batch = z.shape[0]
    target = (z - grad).detach()
    if kind == "l2":
        return 0.5 * (z - target).pow(2).sum() / batch
    if kind == "l1":
        return 0.5 * (z - target).abs().sum() / batch
    raise ValueError(f"unknown surrogate loss {kind!r} (expected 'l1' or 'l2')")


def ddim_step(
    x0_hat: Float[Tensor, "B C h w"],
    eps_hat: Float[Tensor, "B C h w"],
    a_prev: Float[Tensor, "B 1 1 1"],
    s_prev: Float[Tensor, "B 1 1 1"],
) -> Float[Tensor, "B C h w"]:
    """One deterministic DDIM step (= first-order DPM-Solver++): ``z_{t-1} = a_{t-1} x0_hat + s_{t-1} eps_hat``."""
    return a_prev * x0_hat + s_prev * eps_hat


def rsd_loss(z_prev: Float[Tensor, "B C h w"], z_prev_hat: Float[Tensor, "B C h w"]) -> Float[Tensor, ""]:
    """DiSR's RSD loss ``B * mean|z_{t-1} - sg(z_hat_{t-1})|``; ``z_prev = a_{t-1} z + s_{t-1} eps`` carries the
    gradient (use the SAME ``eps`` that built ``z_t``)."""
    return z_prev.shape[0] * (z_prev - z_prev_hat.detach()).abs().mean()
