"""Config of the SR stage optimiser (VSD / RSD / SDS in latent space over all training views).

Import-light (torch + nerfstudio config only): ``setup`` imports ``sr.stage`` (and through it peft, lazily).
Defaults follow ``docs/method.md`` §3 / §5. See ``docs/sr_core.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Optional, Tuple, Type

from nerfstudio.configs.base_config import InstantiateConfig

if TYPE_CHECKING:
    from vsdsr_nerfstudio.sr.prior_base import SRPrior
    from vsdsr_nerfstudio.sr.stage import SRStage


def _build_stage(config: "SRStageConfig", **kwargs: Any) -> "SRStage":
    """Lazy ``_target``: imports ``sr.stage`` only when a stage is set up."""
    from vsdsr_nerfstudio.sr.stage import SRStage

    return SRStage(config, **kwargs)


@dataclass
class SRStageConfig(InstantiateConfig):
    """One SR stage: optimise a latent residual per training view against a diffusion prior, then decode."""

    _target: Type = field(default_factory=lambda: _build_stage)
    """Factory of the stage optimiser; imports ``sr.stage`` lazily."""

    # -- guidance -----------------------------------------------------------------------------------------------
    guidance: Literal["vsd", "rsd", "sds"] = "vsd"
    """Distillation objective: ``vsd`` = variational score distillation with a camera LoRA (arXiv 2410.18137),
    ``rsd`` = DiSR-NeRF's one-step DDIM residual loss, ``sds`` = score distillation (ablation)."""
    guidance_scale: float = 10.0
    """Text classifier-free guidance scale omega of the pretrained branch (all objectives)."""
    camera_guidance_scale: float = 1.0
    """Camera CFG scale gamma of the LoRA branch, ``f(pi=0) + gamma (f(pi) - f(pi=0))`` (1 = threestudio, only the
    camera-conditional forward runs; VSD-SR used 10)."""
    vsd_loss: Literal["l1", "l2"] = "l1"
    """Surrogate of the VSD gradient g: ``l1`` = ``0.5 |z - sg(z - g)|_1 / B`` (gradient ``sign(g) / 2B``, VSD-SR's
    final commit) or ``l2`` = ``0.5 |z - sg(z - g)|^2 / B`` (gradient ``g / B``, threestudio). SDS always uses l2."""
    noise_level: int = 20
    """Noise level of the LR conditioning, passed as ``class_labels`` to BOTH the pretrained and the LoRA branch."""

    # -- timesteps ----------------------------------------------------------------------------------------------
    t_schedule: Literal["linear", "uniform"] = "linear"
    """``linear`` = deterministic ramp t_max -> t_min over the stage (DiSR / VSD-SR), restarted every stage;
    ``uniform`` = t ~ U[t_min, t_max] per patch."""
    t_max: float = 0.98
    """Largest timestep as a fraction of T (980 for T = 1000)."""
    t_min: float = 0.5
    """Smallest timestep as a fraction of T (500 for T = 1000)."""
    rsd_delta_t: int = 1
    """RSD only: z_{t-1} is taken this many timesteps below t (DiSR's step_ratio 0.001 -> 1)."""

    # -- latents and their optimiser ----------------------------------------------------------------------------
    batch_size: int = 16
    """Patches per step B: views in rolling order through the N views (repeated if B > N), one patch each."""
    patch_size: int = 128
    """Side of the random latent patch (128 latent px = 512 HR px), clipped to the latent size."""
    patch_multiple: int = 8
    """A clipped patch side is rounded down to a multiple of this (the UNet's downsampling factor)."""
    encode_sample: bool = False
    """Encode renders with a posterior sample (DiSR) instead of the posterior mode."""
    latent_lr: float = 1e-2
    """AdamW learning rate of the latent residual delta."""
    latent_betas: Tuple[float, float] = (0.9, 0.99)
    """AdamW betas of the latent residual."""
    latent_eps: float = 1e-15
    """AdamW epsilon of the latent residual."""
    latent_weight_decay: float = 0.01
    """AdamW (decoupled) weight decay of the latent residual (torch's default, as DiSR / VSD-SR)."""
    latent_device: Optional[str] = None
    """Device of the N latents, residuals and their AdamW state (``None`` = the prior's device). Small: 4 x h x w
    floats per view; only the B patches of a step travel to the prior's device."""
    output_device: str = "cpu"
    """Device of the decoded HR images returned by ``finish``."""
    encode_batch_size: int = 1
    """Renders encoded per VAE call (the VAE tiles large images itself)."""
    decode_batch_size: int = 1
    """Latents decoded per VAE call."""

    # -- LoRA model (vsd only) ----------------------------------------------------------------------------------
    lora_rank: int = 4
    """Rank of the LoRA adapters on the attention projections."""
    lora_alpha: Optional[float] = None
    """LoRA alpha (``None`` = rank, i.e. scale 1 as diffusers' LoRAAttnProcessor)."""
    lora_targets: Tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """Module-name suffixes of the denoiser that get LoRA adapters."""
    lora_lr: float = 1e-4
    """AdamW learning rate of the LoRA and the camera MLP."""
    lora_weight_decay: float = 0.01
    """AdamW weight decay of the LoRA and the camera MLP."""
    lora_every: int = 3
    """The LoRA is updated on every lora_every-th VSD step (the 1st, (k+1)-th, ...); the counter persists."""
    lora_grad_clip: float = 1.0
    """Gradient-norm clip of the LoRA update (<= 0: off)."""
    camera_drop_prob: float = 0.1
    """Probability that a LoRA training batch gets the unconditional camera (pi = 0) for all its patches."""
    camera_zero_init: bool = True
    """Zero-initialise the camera MLP's output layer, so the LoRA model starts as the pretrained model."""
    lora_mixed_precision: bool = True
    """Autocast the LoRA update (GradScaler for fp16) when the prior runs in half precision on CUDA."""
    lora_gradient_checkpointing: bool = True
    """Gradient checkpointing of the denoiser during the LoRA update (no effect on no-grad guidance forwards)."""
    lora_persist: bool = True
    """Keep the LoRA (and its optimiser, counter) across SR stages, as VSD-SR; False re-initialises it per stage."""

    seed: int = 0
    """Seed of patches, timesteps, noise and LoRA training draws."""

    def setup(self, prior: "SRPrior", **kwargs: Any) -> "SRStage":  # type: ignore[override]
        """Build the stage optimiser on ``prior`` (imports ``sr.stage``; injects the LoRA for ``vsd``)."""
        return self._target(self, prior=prior, **kwargs)


PIXEL_PRIOR_VSD_LATENT_LR = 1e-3
"""Largest latent learning rate at which VSD on the pixel-space prior stays stable (measured on fern, K = 1000:
bench/results/fern_sr_diagnose.json, docs/embedded_prior.md "On fern")."""
PIXEL_PRIOR_VSD_T_MIN = 0.02
"""t_min of VSD on the pixel-space prior: in pixel space the fine detail is only visible to the prior at small t."""


def pixel_prior_stage_settings(config: SRStageConfig) -> SRStageConfig:
    """``config`` with the VSD settings measured to work on the pixel-space (embedded) prior: latent lr 1e-3 and
    t down to 0.02 (the ``vsd-sr-embedded`` preset). RSD and SDS keep their settings."""
    if config.guidance != "vsd":
        return config
    return replace(config, latent_lr=PIXEL_PRIOR_VSD_LATENT_LR, t_min=PIXEL_PRIOR_VSD_T_MIN)


def pixel_prior_vsd_problem(config: SRStageConfig) -> Optional[str]:
    """Why ``config`` is unsafe for VSD on the pixel-space prior, or ``None``.

    The default latent lr (1e-2) is the research code's, set for the SD upscaler's VAE latents. On the pixel prior,
    whose latent is the image itself, it writes saturated high-frequency noise into the views (measured on fern,
    K = 400: PSNR 16.2 dB against bicubic's 25.6, the views' own LR consistency 18.6 dB; 3e-3 still drifts at
    K = 1000; docs/embedded_prior.md, "On fern")."""
    if config.guidance != "vsd" or config.latent_lr <= PIXEL_PRIOR_VSD_LATENT_LR:
        return None
    return (
        f"VSD on the pixel-space (embedded) prior with --pipeline.stage.latent-lr {config.latent_lr:g} drifts into "
        "high-frequency noise (on fern: 16 dB PSNR per view at 1e-2; docs/embedded_prior.md, 'On fern'). Use the "
        f"`vsd-sr-embedded` preset, or --pipeline.stage.latent-lr {PIXEL_PRIOR_VSD_LATENT_LR:g} "
        f"--pipeline.stage.t-min {PIXEL_PRIOR_VSD_T_MIN:g}."
    )
