"""The 3D-Gaussian model of `vsd-sr-splat`: nerfstudio's Splatfacto with Mip-Splatting's filters, SfM seeding, a
pure-torch CPU path and the same offline HR evaluation as the NeRF models.

Differences from nerfstudio's splatfacto (1.1.5), and why:

- **Mip-Splatting filters** (zooming a model fit at LR to 4x makes 3DGS's too-thin Gaussians into needles and
  holes): the 3D smoothing filter bounded by the training cameras' sampling rate
  (:mod:`vsdsr_nerfstudio.models.gaussian_filters`; recomputed from the *current* training cameras: LR during
  pretraining, the 4x cameras after the first upscaling stage) and the 2D mip filter, gsplat's
  ``rasterize_mode="antialiased"``.
- **Seeded from the scene's SfM points** when the data parser gives ``points3D_xyz``/``points3D_rgb`` (``llff-data``
  does when the scene has ``sparse/0``), random otherwise; works on a CPU (splatfacto's seeding calls ``.cuda()``).
- **Rasteriser**: gsplat's CUDA kernels, or :func:`~vsdsr_nerfstudio.models.torch_rasterizer.rasterization_torch`
  when CUDA is absent (``--pipeline.model.rasterizer``; asking for ``cuda`` without CUDA/nvcc is a clear error).
- **Densification with a cap** on the number of Gaussians (memory stays bounded when the 4x images bring detail),
  running statistics restarted at each sync stage (see docs/pipeline.md, "Gaussians").
- **No resolution warm-up** (``num_downscales`` 0): splatfacto's schedule counts global steps, so it would train the
  first sync stage's 4x images at 1/4 size; the LR views are small anyway.
- **Camera optimiser off** (as `vsd-sr`'s Nerfacto: held-out views use the dataset poses).
- **Offline HR evaluation** (:mod:`vsdsr_nerfstudio.models.offline_eval`): lazy offline LPIPS, NIQE.

Hooks the I3DS pipeline uses: :meth:`VsdSrSplatModelConfig.check_runtime`, :meth:`VsdSrSplatModel.render_camera_rgb`
(a 4x training view from a camera, no rays) and :meth:`VsdSrSplatModel.begin_sync_stage`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Optional, Type, Union

import torch
from jaxtyping import Float
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from vsdsr_nerfstudio.models.gaussian_filters import apply_3d_filter, filter_variance, max_sampling_rate
from vsdsr_nerfstudio.models.gaussian_strategy import CappedDefaultStrategy
from vsdsr_nerfstudio.models.offline_eval import OfflineEvalConfig, OfflineEvalMixin


class GsplatCudaError(RuntimeError):
    """gsplat's CUDA rasteriser was asked for but cannot run here."""


@dataclass
class VsdSrSplatModelConfig(OfflineEvalConfig, SplatfactoModelConfig):
    """Splatfacto for 4x super-resolution: Mip-Splatting filters, SfM seeding, CPU path, offline HR metrics."""

    _target: Type = field(default_factory=lambda: VsdSrSplatModel)
    rasterize_mode: Literal["classic", "antialiased"] = "antialiased"
    """2D filter: "antialiased" is Mip-Splatting's 2D mip filter (gsplat's opacity-compensated screen-space
    dilation), which keeps tiny Gaussians from turning into aliasing when rendered at 4x; "classic" is 3DGS's."""
    filter_3d: bool = True
    """Mip-Splatting's 3D smoothing filter: each Gaussian is convolved with a low-pass of variance
    filter-3d-strength / nu^2, nu its maximal sampling rate (focal / depth) over the training cameras."""
    filter_3d_strength: float = 0.2
    """s of the 3D filter (Mip-Splatting's value): variance in units of the finest training sample spacing^2."""
    rasterizer: Literal["auto", "cuda", "torch"] = "auto"
    """auto: gsplat's CUDA kernels on a CUDA device, the pure-torch rasteriser otherwise (slow; tiny scenes).
    cuda: gsplat's kernels, a clear error without CUDA or nvcc. torch: the pure-torch path everywhere."""
    max_gaussians: int = 1_500_000
    """Cap on the Gaussian count: densification adds only the highest-gradient candidates up to it (0: no cap).
    4x views bring new detail, and each Gaussian costs ~250 B of parameters + Adam state plus render buffers."""
    num_downscales: int = 0
    """Splatfacto's resolution warm-up (train at 1/2^d first). 0: its schedule counts global steps, so it would
    train the first sync stage's 4x images at reduced size."""
    reset_alpha_every: int = 20
    """Opacity reset every this many refinements (x refine-every 100 = 2000 steps): with P and S multiples of it the
    resets fall at the start of every sync stage, when the views have just been rewritten at 4x (the presets set
    it to S / 100)."""
    random_init: bool = False
    """Initialise at random (num-random Gaussians in a cube of random-scale) even when SfM points are available."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="off"))
    """Camera pose optimiser. Off: held-out views are rendered from the dataset poses, and a pose change between
    the LR and HR stages would corrupt the SR targets (as vsd-sr's Nerfacto)."""

    def check_runtime(self, device: Union[str, torch.device]) -> None:
        """Raise :class:`GsplatCudaError` when ``rasterizer`` is "cuda" but gsplat's kernels cannot run."""
        if self.rasterizer == "cuda":
            require_gsplat_cuda(device)


def require_gsplat_cuda(device: Union[str, torch.device, None] = None) -> None:
    """Raise :class:`GsplatCudaError` unless gsplat's CUDA kernels can run on ``device`` (loads them now)."""
    fix = "Or use --pipeline.model.rasterizer auto (pure-torch on a CPU: slow, for tiny scenes)."
    if (device is not None and torch.device(device).type != "cuda") or not torch.cuda.is_available():
        raise GsplatCudaError(
            f"--pipeline.model.rasterizer cuda needs a CUDA GPU: gsplat's kernels are CUDA-only, and this run's "
            f"device is {str(device)!r} (torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}). "
            "Run with --machine.device-type cuda on an NVIDIA GPU. " + fix
        )
    try:
        from gsplat.cuda._backend import _C
    except Exception as error:  # torch's extension builder raises several types
        raise GsplatCudaError(f"gsplat could not build or load its CUDA kernels: {error}. {fix}") from error
    if _C is None:
        nvcc = shutil.which("nvcc")
        raise GsplatCudaError(
            "gsplat's CUDA kernels are not built and cannot be JIT-compiled: "
            + ("no `nvcc` on PATH" if nvcc is None else f"the build with {nvcc} failed")
            + f". Install the CUDA toolkit matching torch (CUDA {torch.version.cuda}) or a gsplat wheel with prebuilt "
            "kernels. " + fix
        )


def opencv_viewmats(camera_to_worlds: Float[Tensor, "C 3 4"]) -> Float[Tensor, "C 4 4"]:
    """nerfstudio (OpenGL) camera-to-world -> gsplat world-to-camera (OpenCV: y down, z forward)."""
    rotation = camera_to_worlds[:, :3, :3] * torch.tensor([1.0, -1.0, -1.0], device=camera_to_worlds.device)
    translation = camera_to_worlds[:, :3, 3:4]
    viewmats = torch.zeros(camera_to_worlds.shape[0], 4, 4, device=camera_to_worlds.device)
    viewmats[:, :3, :3] = rotation.transpose(1, 2)
    viewmats[:, :3, 3:4] = -rotation.transpose(1, 2) @ translation
    viewmats[:, 3, 3] = 1.0
    return viewmats


def seeded_gaussians(
    xyz: Float[Tensor, "N 3"], rgb: Tensor, sh_degree: int, knn: Callable[[Tensor, int], Any]
) -> Dict[str, Tensor]:
    """Splatfacto's initialisation from points (scale = mean distance to the 3 nearest, random rotation, opacity
    0.1, SH DC from the colour in [0, 255]), on the points' device."""
    distances, _ = knn(xyz, 3)
    scales = torch.log(torch.as_tensor(distances, dtype=torch.float32).mean(-1, keepdim=True).clamp_min(1e-7))
    n = xyz.shape[0]
    colors = rgb.float() / 255.0
    features_dc = RGB2SH(colors) if sh_degree > 0 else torch.logit(colors, eps=1e-10)
    return {
        "means": xyz.float(),
        "scales": scales.repeat(1, 3),
        "quats": random_quat_tensor(n),
        "features_dc": features_dc,
        "features_rest": torch.zeros(n, num_sh_bases(sh_degree) - 1, 3),
        "opacities": torch.logit(0.1 * torch.ones(n, 1)),
    }


class VsdSrSplatModel(OfflineEvalMixin, SplatfactoModel):
    """Splatfacto with the changes listed in the module docstring."""

    config: VsdSrSplatModelConfig

    def populate_modules(self) -> None:
        if self.config.use_bilateral_grid:
            raise ValueError(
                "--pipeline.model.use-bilateral-grid is not supported by vsd-sr-splat: its per-image colour grids "
                "would absorb the differences between the rewritten 4x views that the sync stage must reconcile. "
                "Leave it off."
            )
        seeds, self.seed_points = self.seed_points, None
        use_seeds = seeds is not None and not self.config.random_init and seeds[0].shape[0] >= 4
        saved = self.config.num_random
        if use_seeds:
            self.config.num_random = 8  # the parent's random set is replaced below; keep its k-NN cheap
        try:
            super().populate_modules()
        finally:
            self.config.num_random = saved
        if use_seeds:
            assert seeds is not None
            params = seeded_gaussians(seeds[0].cpu(), seeds[1].cpu(), self.config.sh_degree, self.k_nearest_sklearn)
            self.gauss_params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in params.items()})
            CONSOLE.log(f"Gaussians seeded from {params['means'].shape[0]} SfM points.")
        else:
            CONSOLE.log(f"Gaussians initialised at random ({self.num_points}): no SfM points, or random-init set.")
        base = self.strategy
        self.strategy = CappedDefaultStrategy(**{k: getattr(base, k) for k in base.__dataclass_fields__})
        self.strategy.max_gaussians = self.config.max_gaussians
        self.filter_cameras: Optional[Callable[[], Cameras]] = None
        self.register_buffer("filter_3d_variance", torch.zeros(self.num_points))

    # ------------------------------------------------------------------------------------------- state
    def load_state_dict(self, dict, **kwargs):  # type: ignore  # noqa: A002 (splatfacto's signature)
        if "filter_3d_variance" in dict:
            # on the model's device: ns-eval / ns-render load checkpoints with map_location="cpu"
            self.filter_3d_variance = torch.zeros_like(dict["filter_3d_variance"], device=self.device)
        result = super().load_state_dict(dict, **kwargs)
        CONSOLE.log(f"Gaussians loaded from the checkpoint: {self.num_points}.")
        return result

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        datamanager = training_callback_attributes.pipeline.datamanager  # type: ignore[union-attr]
        self.filter_cameras = lambda: getattr(datamanager, "train_cameras", datamanager.train_dataset.cameras)
        callbacks.append(
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._refresh_filter_after_refine)
        )
        return callbacks

    def _refresh_filter_after_refine(self, step: int) -> None:
        if self.filter_3d_variance.shape[0] != self.num_points or step % self.config.refine_every == 0:
            self.update_3d_filter()

    @torch.no_grad()
    def update_3d_filter(self, cameras: Optional[Cameras] = None) -> None:
        """Recompute every Gaussian's 3D filter variance from ``cameras`` (default: the training cameras)."""
        if cameras is None:
            cameras = self.filter_cameras() if self.filter_cameras is not None else None
        if cameras is None or not self.config.filter_3d:
            self.filter_3d_variance = torch.zeros(self.num_points, device=self.means.device)
            return
        cameras = cameras.to(self.means.device)
        rate, _ = max_sampling_rate(
            self.means.detach(),
            opencv_viewmats(cameras.camera_to_worlds),
            cameras.fx.view(-1).float(),
            cameras.width.view(-1).float(),
            cameras.height.view(-1).float(),
        )
        self.filter_3d_variance = filter_variance(rate, self.config.filter_3d_strength)

    def begin_sync_stage(self, step: int) -> None:
        """Hook (I3DS pipeline, after the views were rewritten at 4x): restart the densification statistics
        gathered on the previous images and refit the 3D filter to the 4x training cameras."""
        for key in ("grad2d", "count", "radii"):
            if self.strategy_state.get(key) is not None:
                self.strategy_state[key] = None
        self.update_3d_filter()
        CONSOLE.log(f"Gaussians at sync start (step {step}): {self.num_points}.")

    # ------------------------------------------------------------------------------------------- rendering
    def _rasterize(self, **kwargs: Any):
        mode = self.config.rasterizer
        if mode == "cuda" or (mode == "auto" and self.means.device.type == "cuda"):
            if self.means.device.type != "cuda":
                require_gsplat_cuda(self.means.device)
            from gsplat.rendering import rasterization

            return rasterization(**kwargs)
        from vsdsr_nerfstudio.models.torch_rasterizer import rasterization_torch

        return rasterization_torch(**kwargs)

    def render_camera_rgb(self, camera: Cameras) -> Float[Tensor, "H W 3"]:
        """Hook (I3DS pipeline): render one camera's RGB in [0, 1] (eval mode; no rays), the whole scene: a crop box
        the viewer left set would otherwise empty the rewritten training views outside it."""
        crop_box, self.crop_box = self.crop_box, None
        try:
            return self.get_outputs(camera.to(self.device))["rgb"]
        finally:
            self.crop_box = crop_box

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:
        """Splatfacto's ``get_outputs`` with the 3D filter applied and the rasteriser chosen by ``rasterizer``."""
        if not isinstance(camera, Cameras):
            raise TypeError("VsdSrSplatModel.get_outputs takes a Cameras object (one camera)")
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            camera_to_world = self.camera_optimizer.apply_to_camera(camera)
        else:
            camera_to_world = camera.camera_to_worlds
        crop = None
        if self.crop_box is not None and not self.training:
            crop = self.crop_box.within(self.means).squeeze()
            if crop.sum() == 0:
                return self.get_empty_outputs(
                    int(camera.width.item()), int(camera.height.item()), self.background_color
                )
        pick = (lambda t: t[crop]) if crop is not None else (lambda t: t)
        scales = torch.exp(pick(self.scales))
        opacities = torch.sigmoid(pick(self.opacities)).squeeze(-1)
        if self.config.filter_3d and self.filter_3d_variance.shape[0] == self.num_points:
            scales, opacities = apply_3d_filter(scales, opacities, pick(self.filter_3d_variance))
        colors = torch.cat((pick(self.features_dc)[:, None, :], pick(self.features_rest)), dim=1)
        if self.config.sh_degree > 0:
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors, sh_degree = torch.sigmoid(colors).squeeze(1), None
        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        Ks = camera.get_intrinsics_matrices().to(self.device)
        width, height = int(camera.width.item()), int(camera.height.item())
        self.last_size = (height, width)
        camera.rescale_output_resolution(scale)
        render_mode = "RGB+ED" if self.config.output_depth_during_training or not self.training else "RGB"
        render, alpha, self.info = self._rasterize(
            means=pick(self.means),
            quats=pick(self.quats),
            scales=scales,
            opacities=opacities,
            colors=colors,
            viewmats=opencv_viewmats(camera_to_world.to(self.device)),
            Ks=Ks,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode=render_mode,
            sh_degree=sh_degree,
            sparse_grad=False,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
        )
        if self.training:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )
        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        depth = None
        if render_mode == "RGB+ED":
            depth = torch.where(alpha > 0, render[..., 3:4], render[..., 3:4].detach().max()).squeeze(0)
        if not self.training:
            background = background.expand(height, width, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}
