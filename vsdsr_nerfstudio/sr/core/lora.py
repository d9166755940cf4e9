"""The VSD "LoRA model": camera-conditioned LoRA adapters inside the prior's own (frozen) denoiser.

VSD (ProlificDreamer) estimates the score of the *current* rendering distribution with a LoRA-finetuned copy of
the pretrained denoiser that is also conditioned on the camera. Here:

- the LoRA adapters (peft, rank 4, on ``to_q/to_k/to_v/to_out.0`` of every attention) are injected into
  ``prior.denoiser`` itself, so the pretrained and the LoRA branch share ONE copy of the frozen base weights. They
  are disabled by default (pretrained branch) and enabled only inside :meth:`CameraLoRA.enabled` (LoRA branch);
- the camera MLP ``Linear(16, D) - SiLU - Linear(D, D)`` (diffusers' ``TimestepEmbedding`` shape, ``D =
  prior.class_embedding_dim``) embeds the patch's own view's flattened, normalised 4x4 c2w. Its output is ADDED to
  the noise-level class embedding (``prior.predict(..., extra_class_embedding=...)``) and ``noise_level`` is still
  passed as ``class_labels``: the LR-noise conditioning is never dropped (defect §2.6.3 of VSD-SR);
- the LoRA is trained towards the target of ``prior.prediction_type`` (``v = a_t eps - s_t z`` for the x4 upscaler;
  defect §2.6.2 forced an eps target) at ``t ~ U{0..T-1}`` on ``sg(z)``, with the camera zeroed for the whole batch
  with probability ``camera_drop_prob``; it is updated on every ``every``-th call of :meth:`CameraLoRA.maybe_train`,
  counted by an explicit persistent counter (defect §2.6.1 never incremented its counter).

All parameters (LoRA + camera MLP) and the optimiser live in this plain object, outside any NeRF ``nn.Module``
tree; :meth:`CameraLoRA.state_dict` / :meth:`CameraLoRA.load_state_dict` checkpoint them. peft is imported lazily.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from vsdsr_nerfstudio.sr.core.objectives import cfg_combine, q_sample, schedule_coefficients, training_target
from vsdsr_nerfstudio.sr.core.schedules import lora_timesteps
from vsdsr_nerfstudio.sr.priors.base import SRPrior

DEFAULT_LORA_TARGETS: Tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


# ----------------------------------------------------------------------------------------------------------------
# Cameras (pure functions)
# ----------------------------------------------------------------------------------------------------------------


def homogeneous_c2w(c2w: Float[Tensor, "N 3 4"] | Float[Tensor, "N 4 4"]) -> Float[Tensor, "N 4 4"]:
    """``(N, 3, 4)`` or ``(N, 4, 4)`` camera-to-world matrices -> ``(N, 4, 4)`` with the row ``[0, 0, 0, 1]``."""
    if c2w.ndim != 3 or c2w.shape[-1] != 4 or c2w.shape[-2] not in (3, 4):
        raise ValueError(f"expected c2w of shape (N, 3, 4) or (N, 4, 4), got {tuple(c2w.shape)}")
    c2w = c2w.float()
    if c2w.shape[-2] == 4:
        return c2w
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=c2w.device).expand(c2w.shape[0], 1, 4)
    return torch.cat([c2w, bottom], dim=1)


def camera_normalization(c2w: Float[Tensor, "N 3 4"] | Float[Tensor, "N 4 4"]) -> Tuple[Float[Tensor, "3"], float]:
    """``(center, scale)`` that map the camera centres into the unit ball: mean centre, max distance to it."""
    centers = homogeneous_c2w(c2w)[:, :3, 3]
    center = centers.mean(dim=0)
    scale = float((centers - center).norm(dim=-1).max().item()) if centers.shape[0] > 0 else 1.0
    return center, (scale if scale > 1e-8 else 1.0)


def normalized_flat_c2w(
    c2w: Float[Tensor, "N 3 4"] | Float[Tensor, "N 4 4"], center: Float[Tensor, "3"], scale: float
) -> Float[Tensor, "N 16"]:
    """The camera MLP's input: the 4x4 c2w with translation ``(t - center) / scale``, flattened row-major."""
    m = homogeneous_c2w(c2w).clone()
    m[:, :3, 3] = (m[:, :3, 3] - center.to(m)) / scale
    return m.reshape(m.shape[0], 16)


class CameraMLP(nn.Module):
    """``Linear(16, D) - SiLU - Linear(D, D)``: the shape of diffusers' ``TimestepEmbedding(16, D)``.

    With ``zero_init`` the last layer starts at zero, so at the start the LoRA model (LoRA B matrices are zero
    too) is exactly the pretrained model and the VSD gradient has no spurious camera term.
    """

    def __init__(self, embed_dim: int, in_dim: int = 16, zero_init: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embed_dim, embed_dim)
        if zero_init:
            nn.init.zeros_(self.linear_2.weight)
            nn.init.zeros_(self.linear_2.bias)

    def forward(self, cameras: Float[Tensor, "B 16"]) -> Float[Tensor, "B D"]:
        return self.linear_2(self.act(self.linear_1(cameras)))


def drop_cameras(cameras: Float[Tensor, "B 16"], drop: bool) -> Float[Tensor, "B 16"]:
    """The unconditional camera ``pi = 0`` for the whole batch if ``drop``, else the cameras unchanged."""
    return torch.zeros_like(cameras) if drop else cameras


# ----------------------------------------------------------------------------------------------------------------
# The LoRA model
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class CameraLoRAConfig(InstantiateConfig):
    """The VSD LoRA model: rank and targets of the adapters, its optimiser and update schedule, camera dropout.
    Nested in the stage config as ``--pipeline.stage.lora.*`` (as Nerfacto nests ``camera_optimizer``)."""

    _target: Type = field(default_factory=lambda: CameraLoRA)
    """The LoRA model class this config builds."""
    rank: int = 4
    """Rank of the LoRA adapters on the attention projections."""
    alpha: Optional[float] = None
    """LoRA alpha (``None`` = rank, i.e. scale 1 as diffusers' LoRAAttnProcessor)."""
    targets: Tuple[str, ...] = DEFAULT_LORA_TARGETS
    """Module-name suffixes of the denoiser that get LoRA adapters."""
    lr: float = 1e-4
    """AdamW learning rate of the LoRA and the camera MLP."""
    weight_decay: float = 0.01
    """AdamW weight decay of the LoRA and the camera MLP."""
    every: int = 3
    """The LoRA is updated on every every-th VSD step (the 1st, (k+1)-th, ...); the counter persists."""
    grad_clip: float = 1.0
    """Gradient-norm clip of the LoRA update (<= 0: off)."""
    camera_drop_prob: float = 0.1
    """Probability that a LoRA training batch gets the unconditional camera (pi = 0) for all its patches."""
    zero_init_camera: bool = True
    """Zero-initialise the camera MLP's output layer, so the LoRA model starts as the pretrained model."""
    mixed_precision: bool = True
    """Autocast the LoRA update (GradScaler for fp16) when the prior runs in half precision on CUDA."""
    gradient_checkpointing: bool = True
    """Gradient checkpointing of the denoiser during the LoRA update (no effect on no-grad guidance forwards)."""
    persist: bool = True
    """Keep the LoRA (and its optimiser, counter) across SR stages, as VSD-SR; False re-initialises it per stage."""

    def setup(self, prior: SRPrior, seed: int = 0, **kwargs: Any) -> "CameraLoRA":  # type: ignore[override]
        """Inject the adapters into ``prior.denoiser`` and build the LoRA model."""
        return self._target(prior, self, seed=seed, **kwargs)


LEGACY_STAGE_LORA_FIELDS: Dict[str, str] = {
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_targets": "targets",
    "lora_lr": "lr",
    "lora_weight_decay": "weight_decay",
    "lora_every": "every",
    "lora_grad_clip": "grad_clip",
    "camera_drop_prob": "camera_drop_prob",
    "camera_zero_init": "zero_init_camera",
    "lora_mixed_precision": "mixed_precision",
    "lora_gradient_checkpointing": "gradient_checkpointing",
    "lora_persist": "persist",
}
"""Flat stage-config fields of releases before the nested ``lora`` config -> their :class:`CameraLoRAConfig` name
(old ``config.yml`` files are migrated on load)."""


class CameraLoRA:
    """Camera-conditioned LoRA inside ``prior.denoiser`` plus its own optimiser and update counter.

    Args:
        prior: the SR prior; adapters are injected into ``prior.denoiser`` (shared frozen weights).
        config: rank, targets, optimiser, schedule and camera dropout (:class:`CameraLoRAConfig`; default: its
            defaults).
        adapter_name: peft adapter name.
        seed: seed of this object's random draws (timesteps, noise, camera dropout).
        **overrides: fields of ``config`` to replace (e.g. ``every=1``), for direct use in scripts and tests.
    """

    def __init__(
        self,
        prior: SRPrior,
        config: Optional[CameraLoRAConfig] = None,
        adapter_name: str = "vsd_camera_lora",
        seed: int = 0,
        **overrides: Any,
    ) -> None:
        config = replace(config or CameraLoRAConfig(), **overrides)
        if config.every < 1:
            raise ValueError(f"every must be >= 1, got {config.every}")
        if not 0.0 <= config.camera_drop_prob <= 1.0:
            raise ValueError(f"camera_drop_prob must lie in [0, 1], got {config.camera_drop_prob}")
        self.config = config
        self.prior = prior
        self.rank = int(config.rank)
        self.alpha = float(config.alpha) if config.alpha is not None else float(config.rank)
        self.target_modules = list(config.targets)
        self.lr = config.lr
        self.weight_decay = config.weight_decay
        self.grad_clip = config.grad_clip
        self.every = int(config.every)
        self.camera_drop_prob = float(config.camera_drop_prob)
        self.adapter_name = adapter_name
        self.zero_init_camera = config.zero_init_camera
        self.seed = seed
        self.device = torch.device(prior.device)

        self._inject()
        if config.gradient_checkpointing and hasattr(prior.denoiser, "enable_gradient_checkpointing"):
            prior.denoiser.enable_gradient_checkpointing()
        self.camera_mlp = CameraMLP(prior.class_embedding_dim, zero_init=config.zero_init_camera).to(self.device)

        half = prior.dtype in (torch.float16, torch.bfloat16)
        self.use_autocast = bool(config.mixed_precision and half and self.device.type == "cuda")
        self.autocast_dtype = prior.dtype if self.use_autocast else torch.float32
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_autocast and prior.dtype == torch.float16)
        self.optimizer = self._make_optimizer()

        self.generator = torch.Generator().manual_seed(seed)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        #: number of :meth:`maybe_train` calls so far (persists across stages and checkpoints).
        self.num_calls = 0
        #: number of LoRA optimiser updates so far.
        self.num_updates = 0
        #: number of SR stages started with this LoRA (see :meth:`begin_stage`).
        self.num_stages = 0
        #: camera normalisation ``(center, scale)``, fixed on the first :meth:`encode_cameras` call.
        self.camera_center: Optional[Tensor] = None
        self.camera_scale: Optional[float] = None

    # -- setup --------------------------------------------------------------------------------------------------

    def _inject(self) -> None:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer

        denoiser = self.prior.denoiser
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            target_modules=self.target_modules,
            init_lora_weights="gaussian",
            lora_dropout=0.0,
            bias="none",
        )
        base_ids = {id(p) for p in denoiser.parameters()}
        if hasattr(denoiser, "add_adapter"):  # diffusers' PEFT integration (ModelMixin + PeftAdapterMixin)
            denoiser.add_adapter(config, adapter_name=self.adapter_name)
        else:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(config, denoiser, adapter_name=self.adapter_name)
        self._layers: List[nn.Module] = [
            m
            for m in denoiser.modules()
            if isinstance(m, BaseTunerLayer) and self.adapter_name in getattr(m, "lora_A", {})
        ]
        if not self._layers:
            raise ValueError(f"no module of the denoiser matches the LoRA targets {self.target_modules}")
        self.lora_names: List[str] = sorted(
            n for n, p in denoiser.named_parameters() if id(p) not in base_ids and f".{self.adapter_name}." in n
        )
        params = dict(denoiser.named_parameters())
        self.lora_params: List[nn.Parameter] = [params[n] for n in self.lora_names]
        lora_ids = {id(p) for p in self.lora_params}
        for p in denoiser.parameters():  # the base stays frozen: no grads are ever computed for it
            if id(p) not in lora_ids:
                p.requires_grad_(False)
        for p in self.lora_params:  # fp32 master weights even under a half-precision denoiser
            p.data = p.data.float()
        self._set_enabled(False)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def parameters(self) -> List[nn.Parameter]:
        """The trainable parameters: LoRA matrices (sorted by name) then the camera MLP."""
        return list(self.lora_params) + list(self.camera_mlp.parameters())

    def reset(self) -> None:
        """Re-initialise LoRA, camera MLP, optimiser and counters (for a LoRA that does not persist across stages)."""
        for layer in self._layers:
            layer.reset_lora_parameters(self.adapter_name, "gaussian")
        self.camera_mlp = CameraMLP(self.prior.class_embedding_dim, zero_init=self.zero_init_camera).to(self.device)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.scaler.is_enabled())
        self.num_calls = 0
        self.num_updates = 0

    def begin_stage(self, persist: bool = True) -> None:
        """Called at the start of every SR stage: re-initialises the LoRA first if ``persist`` is False (and this
        is not the first stage), then counts the stage."""
        if not persist and self.num_stages > 0:
            self.reset()
        self.num_stages += 1

    # -- adapters on / off --------------------------------------------------------------------------------------

    def _set_enabled(self, enabled: bool) -> None:
        for layer in self._layers:
            layer.enable_adapters(enabled)

    @property
    def is_enabled(self) -> bool:
        """Whether the adapters currently act on the denoiser's output."""
        return not self._layers[0].disable_adapters

    @contextlib.contextmanager
    def enabled(self, enabled: bool = True) -> Iterator[None]:
        """Context in which the adapters are on (``enabled=True``, LoRA branch) or off (pretrained branch)."""
        previous = self.is_enabled
        self._set_enabled(enabled)
        try:
            yield
        finally:
            self._set_enabled(previous)

    # -- cameras ------------------------------------------------------------------------------------------------

    def encode_cameras(self, c2w: Float[Tensor, "N 3 4"] | Float[Tensor, "N 4 4"]) -> Float[Tensor, "N 16"]:
        """Flattened normalised c2w (the MLP input). The normalisation is fixed by the first call (all train views)
        and persists (checkpointed), so a persistent LoRA sees the same camera coordinates every stage."""
        if self.camera_center is None or self.camera_scale is None:
            center, scale = camera_normalization(c2w)
            self.camera_center, self.camera_scale = center.detach().cpu(), scale
        return normalized_flat_c2w(c2w, self.camera_center, self.camera_scale)

    def camera_embedding(self, cameras: Float[Tensor, "B 16"]) -> Float[Tensor, "B D"]:
        """Camera MLP output, added to the noise-level class embedding of the LoRA branch."""
        return self.camera_mlp(cameras.to(self.device, torch.float32))

    # -- LoRA branch --------------------------------------------------------------------------------------------

    def predict(
        self,
        z_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        lr_cond: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        text: Optional[Float[Tensor, "B L D"]],
        cameras: Float[Tensor, "B 16"],
    ) -> Float[Tensor, "B C h w"]:
        """Raw output (``prior.prediction_type``) of the LoRA model: adapters on, ``class_labels = noise_level``,
        camera embedding added to the class embedding."""
        with self.enabled(True):
            emb = self.camera_embedding(cameras)
            return self.prior.predict(z_t, t, lr_cond, noise_level, text=text, extra_class_embedding=emb)

    def predict_guided(
        self,
        z_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
        lr_cond: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        text: Optional[Float[Tensor, "B L D"]],
        cameras: Float[Tensor, "B 16"],
        camera_guidance_scale: float = 1.0,
    ) -> Float[Tensor, "B C h w"]:
        """Camera-CFG ``f(pi=0) + gamma (f(pi) - f(pi=0))``; ``gamma = 1`` needs (and runs) only ``f(pi)``."""
        if camera_guidance_scale == 1.0:
            return self.predict(z_t, t, lr_cond, noise_level, text, cameras)
        two = lambda x: None if x is None else torch.cat([x, x], dim=0)
        out = self.predict(
            two(z_t),
            two(t),
            two(lr_cond),
            two(noise_level),
            two(text),
            torch.cat([cameras, torch.zeros_like(cameras)], dim=0),
        )
        cond, uncond = out.chunk(2, dim=0)
        return cfg_combine(uncond, cond, camera_guidance_scale)

    # -- training -----------------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_autocast:
            return torch.autocast(device_type="cuda", dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def draw_camera_drop(self) -> bool:
        """One Bernoulli(``camera_drop_prob``) draw: whether a training batch gets ``pi = 0``."""
        return bool(torch.rand((), generator=self.generator).item() < self.camera_drop_prob)

    def train_step(
        self,
        z: Float[Tensor, "B C h w"],
        lr_cond: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        text: Optional[Float[Tensor, "B L D"]],
        cameras: Float[Tensor, "B 16"],
    ) -> Dict[str, float]:
        """One LoRA update: ``|| f_phi(a_t sg(z) + s_t eps; lr, text, pi * [u > p]) - target ||^2`` at
        ``t ~ U{0..T-1}``, target per ``prior.prediction_type``; AdamW, grad-norm clip. Returns loss / drop flag."""
        prior = self.prior
        z = z.detach().float()
        batch = z.shape[0]
        t = lora_timesteps(batch, prior.num_train_timesteps, self.generator).to(self.device)
        noise = torch.randn(z.shape, generator=self.noise_generator, device=self.device, dtype=z.dtype)
        a_t, s_t = schedule_coefficients(prior.alphas_cumprod, t)
        z_t = q_sample(z, noise, a_t, s_t)
        drop = self.draw_camera_drop()
        cameras = drop_cameras(cameras, drop)
        target = training_target(z, noise, a_t, s_t, prior.prediction_type)
        self.camera_mlp.train()
        with self.enabled(True):  # backward and step inside: peft toggles requires_grad with the adapters
            with self._autocast():
                pred = self.predict(z_t, t, lr_cond.detach(), noise_level, text, cameras)
            loss = F.mse_loss(pred.float(), target)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            params = self.parameters()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else math.inf)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        return {"lora_loss": float(loss.item()), "lora_grad_norm": float(grad_norm.item()), "camera_dropped": drop}

    def should_train(self) -> bool:
        """Whether the next :meth:`maybe_train` call trains (calls ``0, every, 2 every, ...``, 0-based)."""
        return self.num_calls % self.every == 0

    def maybe_train(
        self,
        z: Float[Tensor, "B C h w"],
        lr_cond: Float[Tensor, "B 3 h w"],
        noise_level: Int[Tensor, " B"],
        text: Optional[Float[Tensor, "B L D"]],
        cameras: Float[Tensor, "B 16"],
    ) -> Optional[Dict[str, float]]:
        """Call once per VSD step: trains on the ``every``-th calls (see :meth:`should_train`), counts every call."""
        train = self.should_train()
        self.num_calls += 1
        return self.train_step(z, lr_cond, noise_level, text, cameras) if train else None

    # -- checkpoints --------------------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """LoRA weights, camera MLP, optimiser, grad scaler, counters, camera normalisation and RNG states."""
        return {
            "meta": {
                "rank": self.rank,
                "alpha": self.alpha,
                "target_modules": list(self.target_modules),
                "adapter_name": self.adapter_name,
            },
            "lora": {n: p.detach().clone() for n, p in zip(self.lora_names, self.lora_params, strict=True)},
            "camera_mlp": {k: v.detach().clone() for k, v in self.camera_mlp.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # no tensors shared with the live state
            "scaler": self.scaler.state_dict(),
            "num_calls": self.num_calls,
            "num_updates": self.num_updates,
            "num_stages": self.num_stages,
            "camera_center": None if self.camera_center is None else self.camera_center.clone(),
            "camera_scale": self.camera_scale,
            "generator": self.generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (same rank / targets / adapter name required)."""
        meta = state["meta"]
        if meta["rank"] != self.rank or list(meta["target_modules"]) != self.target_modules:
            raise ValueError(
                f"LoRA checkpoint (rank {meta['rank']}, targets {meta['target_modules']}) does not "
                f"match this LoRA (rank {self.rank}, targets {self.target_modules})"
            )
        missing = set(self.lora_names) ^ set(state["lora"])
        if missing:
            raise ValueError(f"LoRA checkpoint parameter names differ: {sorted(missing)[:5]} ...")
        with torch.no_grad():
            for n, p in zip(self.lora_names, self.lora_params, strict=True):
                p.copy_(state["lora"][n].to(p))
        self.camera_mlp.load_state_dict(state["camera_mlp"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.num_calls = int(state["num_calls"])
        self.num_updates = int(state["num_updates"])
        self.num_stages = int(state.get("num_stages", 0))
        self.camera_center = state["camera_center"]
        self.camera_scale = state["camera_scale"]
        self.generator.set_state(state["generator"])
        self.noise_generator.set_state(state["noise_generator"])
