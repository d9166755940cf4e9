"""`vsd-sr-splat`: the method on 3D Gaussians. Splatfacto (gsplat) with Mip-Splatting's filters, seeded from the
scene's SfM points (LLFF `sparse/0`), pretrained on the LR views, then I3DS cycles (VSD upscaling stage with the
Stable Diffusion x4 upscaler, sync stage on the rewritten 4x views), evaluated at 4x against real HR images.

Schedule: P=2000 LR steps, then C=4 cycles of K=1000 VSD steps and S=1000 sync steps (6000 Gaussian steps). The
upscaling stage is `vsd-sr`'s; the sync stage is half as long because a Gaussian step fits a whole 4x view (about
3 M pixels) where a Nerfacto step fits 4096 rays: S=1000 shows each of fern's 17 views about 59 times, Nerfacto's
S=2000 shows 0.16 of the 4x pixels once. It keeps the whole schedule on fern within minutes
(docs/benchmarks.md, "vsd-sr-splat").

What differs from `vsd-sr`: the model (`VsdSrSplatModelConfig`, reasons in its help texts and
docs/pipeline.md "Gaussians"), the datamanager (full images, `SRFullImageDataManagerConfig`) and splatfacto's
optimisers (per Gaussian parameter; the means' learning rate decays over the whole schedule).
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from vsdsr_nerfstudio.data.llff_dataparser import LLFFDataParserConfig
from vsdsr_nerfstudio.method_configs.vsd_sr import i3ds_steps
from vsdsr_nerfstudio.models.splatfacto import VsdSrSplatModelConfig
from vsdsr_nerfstudio.pipeline.full_image_datamanager import SRFullImageDataManagerConfig
from vsdsr_nerfstudio.pipeline.i3ds import I3DSPipelineConfig
from vsdsr_nerfstudio.pipeline.trainer import SRTrainerConfig
from vsdsr_nerfstudio.sr.core.stage import SRStageConfig
from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig


def splat_optimizers(max_steps: int) -> dict:
    """Splatfacto's optimiser groups (nerfstudio 1.1.5's values); the means' decay spans ``max_steps``."""

    def adam(lr: float) -> dict:
        return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None}

    return {
        "means": {
            "optimizer": AdamOptimizerConfig(lr=1.6e-4, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps),
        },
        "features_dc": adam(0.0025),
        "features_rest": adam(0.0025 / 20),
        "opacities": adam(0.05),
        "scales": adam(0.005),
        "quats": adam(0.001),
    }


def vsd_sr_splat_config() -> SRTrainerConfig:
    """The `vsd-sr-splat` trainer config."""
    pretrain, upscale, sync, cycles = 2000, 1000, 1000, 4
    steps = i3ds_steps(pretrain, sync, cycles)
    return SRTrainerConfig(
        method_name="vsd-sr-splat",
        steps_per_eval_batch=0,
        steps_per_eval_image=500,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=2000,
        max_num_iterations=steps,
        mixed_precision=False,
        pipeline=I3DSPipelineConfig(
            datamanager=SRFullImageDataManagerConfig(
                dataparser=LLFFDataParserConfig(downscale_factor=8, sr_scale=4), sr_scale=4
            ),
            model=VsdSrSplatModelConfig(reset_alpha_every=sync // 100),  # refine_every 100: a reset per sync stage
            prior=SRPriorConfig(prior="sd-x4-upscaler"),
            stage=SRStageConfig(guidance="vsd", guidance_scale=10.0, camera_guidance_scale=1.0, vsd_loss="l1"),
            pretrain_steps=pretrain,
            upscale_steps=upscale,
            sync_steps=sync,
            num_cycles=cycles,
        ),
        optimizers=splat_optimizers(steps),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


vsd_sr_splat = MethodSpecification(
    config=vsd_sr_splat_config(),
    description="4x super-resolution with VSD (I3DS) on 3D Gaussians (splatfacto + gsplat, Mip-Splatting filters).",
)
