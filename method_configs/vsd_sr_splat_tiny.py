"""`vsd-sr-splat-tiny`: `vsd-sr-splat` shrunk to run on a CPU in seconds (tests, smoke checks): the pure-torch
rasteriser, few Gaussians, SH degree 1, the `tiny` prior (random weights: it exercises the code paths, it does not
improve images), no viewer, and 20 LR steps then 2 cycles of (3 SR steps, 10 sync steps)."""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from vsdsr_nerfstudio.method_configs.vsd_sr import i3ds_steps
from vsdsr_nerfstudio.method_configs.vsd_sr_splat import splat_optimizers, vsd_sr_splat_config


def vsd_sr_splat_tiny_config():
    """`vsd-sr-splat` with CPU-sized model and schedule."""
    config = vsd_sr_splat_config()
    config.method_name = "vsd-sr-splat-tiny"
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    pipeline = config.pipeline
    pipeline.pretrain_steps, pipeline.upscale_steps, pipeline.sync_steps, pipeline.num_cycles = 20, 3, 10, 2
    config.max_num_iterations = i3ds_steps(pipeline.pretrain_steps, pipeline.sync_steps, pipeline.num_cycles)
    config.optimizers = splat_optimizers(config.max_num_iterations)
    config.steps_per_save = 10
    config.steps_per_eval_image = 1000
    pipeline.prior.prior = "tiny"
    pipeline.stage.batch_size = 2
    pipeline.stage.patch_size = 8
    pipeline.steps_per_chunk = 1
    model = pipeline.model
    model.rasterizer = "torch"
    model.num_random = 200
    model.random_scale = 2.0
    model.sh_degree = 1
    model.warmup_length = 5
    model.refine_every = 5
    model.max_gaussians = 500
    return config


vsd_sr_splat_tiny = MethodSpecification(
    config=vsd_sr_splat_tiny_config(),
    description="vsd-sr-splat sized for a CPU (pure-torch rasteriser, few Gaussians), for tests and smoke runs.",
)
