"""The SR stage optimiser and its config: distil a x4 diffusion prior into per-view latent residuals, then
decode HR images.

One stage (``docs/method.md`` §2.2) over the N training views::

    stage = SRStageConfig().setup(prior=prior)       # once; the LoRA persists across stages
    stage.begin(renders, lr_images, c2w, num_steps)  # encode renders -> z_r, delta = 0, t-ramp restarts
    while not stage.done:
        stats = stage.step()                         # B patches, one guidance + delta update (+ LoRA every k)
    hr_images = stage.finish()                       # decode(z_r + delta): (N, 3, H, W) in [0, 1]

or ``stage.run(renders, lr_images, c2w, num_steps, callback)``. The caller can interleave ``step()`` calls with
anything (chunks, logging, checkpoints). Memory on the prior's device is bounded by the batch B and the patch size:
the N latents/residuals are small and may live on another device (``latent_device``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Type, Union

import torch
from jaxtyping import Float, Int
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from vsdsr_nerfstudio.sr.core.lora import (
    LEGACY_STAGE_LORA_FIELDS,
    CameraLoRA,
    CameraLoRAConfig,
    camera_normalization,
    normalized_flat_c2w,
)
from vsdsr_nerfstudio.sr.core.objectives import (
    ddim_step,
    pred_to_eps,
    pred_to_x0,
    q_sample,
    rsd_loss,
    schedule_coefficients,
    sds_gradient,
    surrogate_loss,
    vsd_gradient,
)
from vsdsr_nerfstudio.sr.core.schedules import stage_timesteps
from vsdsr_nerfstudio.sr.priors.base import SRPrior
from vsdsr_nerfstudio.sr.priors.utils import guided_predict

ImagesLike = Union[Tensor, Sequence[Tensor]]


@dataclass
class SRStageConfig(InstantiateConfig):
    """One SR stage: optimise a latent residual per training view against a diffusion prior, then decode."""

    _target: Type = field(default_factory=lambda: SRStage)
    """The stage optimiser class this config builds."""

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
    lora: CameraLoRAConfig = field(default_factory=CameraLoRAConfig)
    """The camera-conditioned LoRA model of VSD (rank, optimiser, update schedule, camera dropout, persistence)."""

    seed: int = 0
    """Seed of patches, timesteps, noise and LoRA training draws."""

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """Restore from a pickle or a ``config.yml``; files of releases with flat ``lora_*`` stage fields (before
        the nested :attr:`lora` config) load with those values moved into :attr:`lora`."""
        legacy = {LEGACY_STAGE_LORA_FIELDS[k]: state.pop(k) for k in list(state) if k in LEGACY_STAGE_LORA_FIELDS}
        self.__dict__.update(state)
        if "lora" not in state:
            self.lora = CameraLoRAConfig(**legacy)

    def setup(self, prior: "SRPrior", **kwargs: Any) -> "SRStage":  # type: ignore[override]
        """Build the stage optimiser on ``prior`` (the LoRA for ``vsd`` is injected there; peft loads lazily)."""
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


@dataclass
class SRStepStats:
    """What one :meth:`SRStage.step` did."""

    step: int
    """0-based step index within the stage."""
    num_steps: int
    """Steps of the stage."""
    t: float
    """Mean diffusion timestep of the batch (all equal for the linear schedule)."""
    loss: float
    """Value of the distillation loss that was back-propagated (the surrogate for vsd / sds)."""
    grad_norm: float
    """L2 norm of the gradient wrt the latent residuals."""
    views: List[int]
    """View index of each patch of the batch."""
    patches: List[Tuple[int, int]] = field(default_factory=list)
    """Top-left (row, col) latent coordinate of each patch."""
    lora: Optional[Dict[str, float]] = None
    """LoRA training stats if the LoRA was updated this step (vsd), else None."""


def patch_size_for(latent_hw: Tuple[int, int], patch_size: int, multiple: int = 8) -> Tuple[int, int]:
    """Patch ``(ph, pw)``: ``patch_size`` clipped to the latent size, rounded down to ``multiple`` when clipped
    (unless the latent side itself is smaller than ``multiple``)."""
    out = []
    for side in latent_hw:
        p = min(patch_size, side)
        if p < patch_size and p >= multiple:
            p = (p // multiple) * multiple
        out.append(max(p, 1))
    return out[0], out[1]


def rolling_views(cursor: int, batch_size: int, num_views: int) -> Tuple[List[int], int]:
    """``batch_size`` view indices in rolling order from ``cursor`` (wrapping; repeats if B > N), next cursor."""
    views = [(cursor + i) % num_views for i in range(batch_size)]
    return views, (cursor + batch_size) % num_views


def crop_patches(
    images: Float[Tensor, "N C h w"], views: Sequence[int], corners: Sequence[Tuple[int, int]], ph: int, pw: int
) -> Float[Tensor, "B C ph pw"]:
    """Stack ``images[v, :, y:y+ph, x:x+pw]`` (differentiable if ``images`` requires grad)."""
    return torch.stack([images[v, :, y : y + ph, x : x + pw] for v, (y, x) in zip(views, corners, strict=True)])


class SRStage:
    """Stage optimiser over N views; persistent across stages (LoRA, counters), reset per stage (delta, t-ramp).

    Args:
        config: the stage config.
        prior: the x4 diffusion prior.
        lora: an existing :class:`CameraLoRA` to use (``vsd``); by default one is created from ``config``.
    """

    def __init__(self, config: SRStageConfig, prior: SRPrior, lora: Optional[CameraLoRA] = None) -> None:
        if config.noise_level < 0 or config.noise_level > prior.max_noise_level:
            raise ValueError(f"noise_level {config.noise_level} outside [0, {prior.max_noise_level}]")
        self.config = config
        self.prior = prior
        # the CFG scales in use: the config's at start, then what set_guidance_scales gives (the viewer's sliders)
        self.guidance_scale = float(config.guidance_scale)
        self.camera_guidance_scale = float(config.camera_guidance_scale)
        self.device = torch.device(prior.device)
        self.latent_device = torch.device(config.latent_device) if config.latent_device else self.device
        if config.guidance == "vsd" and lora is None:
            lora = config.lora.setup(prior, seed=config.seed + 1000)
        self.lora = lora
        self.generator = torch.Generator().manual_seed(config.seed)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.stage_index = -1
        self.active = False
        self._step = 0
        self.num_steps = 0

    def set_guidance_scales(self, text: float, camera: float) -> None:
        """Change the text and camera CFG scales from the next step on (the config is left as it is)."""
        self.guidance_scale, self.camera_guidance_scale = float(text), float(camera)

    # -- stage lifecycle ----------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True when the stage has run all its steps (or no stage is active)."""
        return (not self.active) or self._step >= self.num_steps

    @property
    def step_index(self) -> int:
        """Steps taken in the current stage."""
        return self._step

    @property
    def num_views(self) -> int:
        return int(self.z_r.shape[0]) if self.active else 0

    @torch.no_grad()
    def begin(
        self,
        renders: ImagesLike,
        lr_images: ImagesLike,
        c2w: Optional[Union[Float[Tensor, "N 3 4"], Float[Tensor, "N 4 4"]]],
        num_steps: int,
    ) -> None:
        """Start a stage: encode the HR ``renders`` (N, 3, H, W) in [0, 1] to ``z_r``, keep the real
        ``lr_images`` (N, 3, H/4, W/4) in [0, 1] as conditioning and ``c2w`` (N, 3|4, 4) for the camera MLP,
        reset the residual and its optimiser, restart the timestep ramp."""
        cfg, prior = self.config, self.prior
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        n = len(renders)
        if len(lr_images) != n:
            raise ValueError(f"{n} renders but {len(lr_images)} LR images")
        if self.lora is not None and (c2w is None or len(c2w) != n):
            raise ValueError("vsd needs the N camera-to-world matrices of the views (c2w)")

        latents = []
        for i in range(0, n, cfg.encode_batch_size):
            batch = torch.stack([_as_float_image(renders[j]) for j in range(i, min(i + cfg.encode_batch_size, n))])
            latents.append(
                prior.encode(batch.to(self.device), sample=cfg.encode_sample, generator=self.noise_generator)
                .float()
                .to(self.latent_device)
            )
        self.z_r = torch.cat(latents)
        self.lr_images = torch.stack([_as_float_image(lr_images[j]) for j in range(n)]).to(self.latent_device)
        if self.lr_images.shape[-2:] != self.z_r.shape[-2:] or self.lr_images.shape[1] != 3:
            raise ValueError(
                f"LR images {tuple(self.lr_images.shape)} must be (N, 3, h, w) with (h, w) = the latent "
                f"grid {tuple(self.z_r.shape[-2:])} (HR size / {prior.scale})"
            )
        if self.lora is not None:
            self.cameras = self.lora.encode_cameras(c2w.detach().float().cpu()).to(self.device)
        elif c2w is not None:
            center, scale = camera_normalization(c2w.detach().float().cpu())
            self.cameras = normalized_flat_c2w(c2w.detach().float().cpu(), center, scale).to(self.device)
        else:
            self.cameras = None

        self.delta = nn.Parameter(torch.zeros_like(self.z_r))
        self.optimizer = torch.optim.AdamW(
            [self.delta],
            lr=cfg.latent_lr,
            betas=tuple(cfg.latent_betas),
            eps=cfg.latent_eps,
            weight_decay=cfg.latent_weight_decay,
        )
        self.patch_hw = patch_size_for(tuple(self.z_r.shape[-2:]), cfg.patch_size, cfg.patch_multiple)
        self.text = prior.text_embeddings() if prior.uses_text else None
        self.stage_index += 1
        if self.lora is not None:
            self.lora.begin_stage(persist=cfg.lora.persist)
        self._cursor = 0
        self._step = 0
        self.num_steps = int(num_steps)
        self.active = True

    def step(self) -> SRStepStats:
        """One distillation step on B patches; updates delta (and the LoRA on every ``lora.every``-th vsd step)."""
        if not self.active:
            raise RuntimeError("call begin() before step()")
        cfg, prior = self.config, self.prior
        B, (ph, pw) = cfg.batch_size, self.patch_hw
        n, _, h, w = self.z_r.shape
        views, self._cursor = rolling_views(self._cursor, B, n)
        ys = torch.randint(0, h - ph + 1, (B,), generator=self.generator).tolist()
        xs = torch.randint(0, w - pw + 1, (B,), generator=self.generator).tolist()
        corners = list(zip(ys, xs, strict=True))

        z = (crop_patches(self.z_r, views, corners, ph, pw) + crop_patches(self.delta, views, corners, ph, pw)).to(
            self.device
        )  # grad flows to delta
        lr_patch = crop_patches(self.lr_images, views, corners, ph, pw).to(self.device)
        noise_level = torch.full((B,), cfg.noise_level, dtype=torch.long, device=self.device)
        t = stage_timesteps(
            cfg.t_schedule,
            self._step,
            self.num_steps,
            B,
            prior.num_train_timesteps,
            cfg.t_max,
            cfg.t_min,
            self.generator,
        ).to(self.device)
        with torch.no_grad():
            lr_cond = prior.noise_lr(lr_patch, noise_level, generator=self.noise_generator)
        noise = self._randn(z.shape)
        a_t, s_t = schedule_coefficients(prior.alphas_cumprod, t)
        cameras = self.cameras[views] if self.cameras is not None else None

        if cfg.guidance == "vsd":
            loss = self._vsd_loss(z, noise, t, a_t, s_t, lr_cond, noise_level, cameras)
        elif cfg.guidance == "sds":
            loss = self._sds_loss(z, noise, t, a_t, s_t, lr_cond, noise_level)
        elif cfg.guidance == "rsd":
            loss = self._rsd_loss(z, noise, t, a_t, s_t, lr_cond, noise_level)
        else:
            raise ValueError(f"unknown guidance {cfg.guidance!r}")

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(self.delta.grad.norm().item()) if self.delta.grad is not None else 0.0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        lora_stats = None
        if cfg.guidance == "vsd" and self.lora is not None:
            text = self._text_cond(B)
            lora_stats = self.lora.maybe_train(z.detach(), lr_cond, noise_level, text, cameras)
        stats = SRStepStats(
            step=self._step,
            num_steps=self.num_steps,
            t=float(t.float().mean().item()),
            loss=float(loss.item()),
            grad_norm=grad_norm,
            views=views,
            patches=corners,
            lora=lora_stats,
        )
        self._step += 1
        return stats

    @torch.no_grad()
    def finish(self) -> Float[Tensor, "N 3 H W"]:
        """Decode ``z_r + delta`` of all views: HR images (N, 3, H, W) float32 in [0, 1] on ``output_device``.
        Frees the stage's latents and optimiser state."""
        if not self.active:
            raise RuntimeError("call begin() before finish()")
        cfg = self.config
        latents = self.current_latents()
        images = []
        for i in range(0, latents.shape[0], cfg.decode_batch_size):
            out = self.prior.decode(latents[i : i + cfg.decode_batch_size].to(self.device))
            images.append(out.float().clamp(0.0, 1.0).to(cfg.output_device))
        self.active = False
        del self.z_r, self.delta, self.optimizer, self.lr_images
        return torch.cat(images)

    def run(
        self,
        renders: ImagesLike,
        lr_images: ImagesLike,
        c2w: Optional[Tensor],
        num_steps: int,
        callback: Optional[Callable[[SRStepStats], None]] = None,
    ) -> Float[Tensor, "N 3 H W"]:
        """``begin``, ``num_steps`` x ``step`` (``callback(stats)`` after each), ``finish``."""
        self.begin(renders, lr_images, c2w, num_steps)
        while not self.done:
            stats = self.step()
            if callback is not None:
                callback(stats)
        return self.finish()

    @torch.no_grad()
    def current_latents(self) -> Float[Tensor, "N C h w"]:
        """``z_r + delta`` of all views (on ``latent_device``)."""
        return (self.z_r + self.delta).detach()

    # -- checkpoints --------------------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, object]:
        """What persists across stages: the LoRA state (vsd), the stage counter and the RNG states."""
        return {
            "stage_index": self.stage_index,
            "lora": self.lora.state_dict() if self.lora is not None else None,
            "generator": self.generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
        }

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore :meth:`state_dict` (between stages)."""
        self.stage_index = int(state["stage_index"])  # type: ignore[arg-type]
        if state.get("lora") is not None and self.lora is not None:
            self.lora.load_state_dict(state["lora"])  # type: ignore[arg-type]
        self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        self.noise_generator.set_state(state["noise_generator"])  # type: ignore[arg-type]

    # -- guidance -----------------------------------------------------------------------------------------------

    def _randn(self, shape: torch.Size) -> Tensor:
        """The diffusion noise eps of a step (single sampling point, so tests can spy on it)."""
        return torch.randn(shape, generator=self.noise_generator, device=self.device)

    def _text_cond(self, batch: int) -> Optional[Tensor]:
        return None if self.text is None else self.text[0].to(self.device).expand(batch, -1, -1)

    def _lora_off(self) -> contextlib.AbstractContextManager:
        return self.lora.enabled(False) if self.lora is not None else contextlib.nullcontext()

    @torch.no_grad()
    def _pretrained_pred(
        self,
        z_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        lr_cond: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
    ) -> Float[Tensor, "B C h w"]:
        """Pretrained branch (adapters off), text-CFG'd with ``guidance_scale``, raw prediction type."""
        with self._lora_off():
            return guided_predict(self.prior, z_t, t, lr_cond, noise_level, self.guidance_scale, text=self.text)

    def _vsd_loss(self, z, noise, t, a_t, s_t, lr_cond, noise_level, cameras) -> Tensor:
        prior, cfg = self.prior, self.config
        z_t = q_sample(z.detach(), noise, a_t, s_t)
        with torch.no_grad():
            eps_pre = pred_to_eps(
                self._pretrained_pred(z_t, t, lr_cond, noise_level), z_t, a_t, s_t, prior.prediction_type
            )
            pred_lora = self.lora.predict_guided(
                z_t, t, lr_cond, noise_level, self._text_cond(z.shape[0]), cameras, self.camera_guidance_scale
            )
            eps_lora = pred_to_eps(pred_lora, z_t, a_t, s_t, prior.prediction_type)
            grad = vsd_gradient(eps_pre, eps_lora, s_t**2)
        return surrogate_loss(z, grad, cfg.vsd_loss)

    def _sds_loss(self, z, noise, t, a_t, s_t, lr_cond, noise_level) -> Tensor:
        z_t = q_sample(z.detach(), noise, a_t, s_t)
        with torch.no_grad():
            eps_pre = pred_to_eps(
                self._pretrained_pred(z_t, t, lr_cond, noise_level), z_t, a_t, s_t, self.prior.prediction_type
            )
            grad = sds_gradient(eps_pre, noise, s_t**2)
        return surrogate_loss(z, grad, "l2")

    def _rsd_loss(self, z, noise, t, a_t, s_t, lr_cond, noise_level) -> Tensor:
        """DiSR: the SAME eps builds z_t and z_{t-1}; one DDIM step from z_t with the CFG'd prediction."""
        t_prev = (t - self.config.rsd_delta_t).clamp(min=-1)
        a_prev, s_prev = schedule_coefficients(self.prior.alphas_cumprod, t_prev)
        z_t = q_sample(z.detach(), noise, a_t, s_t)
        z_prev = q_sample(z, noise, a_prev, s_prev)
        with torch.no_grad():
            pred = self._pretrained_pred(z_t, t, lr_cond, noise_level)
            ptype = self.prior.prediction_type
            z_prev_hat = ddim_step(
                pred_to_x0(pred, z_t, a_t, s_t, ptype), pred_to_eps(pred, z_t, a_t, s_t, ptype), a_prev, s_prev
            )
        return rsd_loss(z_prev, z_prev_hat)


def _as_float_image(image: Tensor) -> Tensor:
    """A (3, H, W) image as float32 in [0, 1] (uint8 is divided by 255)."""
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return image.float()
