"""`vsd-sr-tiny`: the default method shrunk to run on a CPU in seconds (tests, smoke checks, CI).

Same classes as `vsd-sr`; only sizes change: a small hash grid and proposal networks, few rays and samples,
torch hash grid (not tinycudann or Triton), no viewer, the `tiny` diffusion prior (random weights: it exercises
every code path, it does not improve images), and a short schedule: 20 LR steps, then 2 cycles of (3 SR steps, 10
sync steps).
"""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from vsdsr_nerfstudio.method_configs.vsd_sr import i3ds_steps, vsd_sr_config


def vsd_sr_tiny_config():
    """`vsd-sr` with CPU-sized model and batches."""
    config = vsd_sr_config()
    config.method_name = "vsd-sr-tiny"
    config.machine.device_type = "cpu"
    config.mixed_precision = False
    config.vis = "tensorboard"
    pipeline = config.pipeline
    pipeline.pretrain_steps, pipeline.upscale_steps, pipeline.sync_steps, pipeline.num_cycles = 20, 3, 10, 2
    config.max_num_iterations = i3ds_steps(pipeline.pretrain_steps, pipeline.sync_steps, pipeline.num_cycles)
    config.steps_per_save = 10
    config.steps_per_eval_batch = 1000
    config.steps_per_eval_image = 1000
    pipeline.prior.prior = "tiny"
    pipeline.stage.batch_size = 2
    pipeline.stage.patch_size = 8
    pipeline.steps_per_chunk = 1
    datamanager = config.pipeline.datamanager
    datamanager.train_num_rays_per_batch = 256
    datamanager.eval_num_rays_per_batch = 256
    model = config.pipeline.model
    model.hash_backend = "torch"
    model.num_levels = 8
    model.max_res = 512
    model.log2_hashmap_size = 14
    model.hidden_dim = 32
    model.hidden_dim_color = 32
    model.appearance_embed_dim = 8
    model.num_proposal_samples_per_ray = (32, 16)
    model.num_nerf_samples_per_ray = 16
    model.proposal_net_args_list = [
        {"hidden_dim": 16, "log2_hashmap_size": 12, "num_levels": 4, "max_res": 64, "use_linear": False},
        {"hidden_dim": 16, "log2_hashmap_size": 12, "num_levels": 4, "max_res": 128, "use_linear": False},
    ]
    model.eval_num_rays_per_chunk = 1 << 12
    return config


vsd_sr_tiny = MethodSpecification(
    config=vsd_sr_tiny_config(),
    description="vsd-sr sized for a CPU: tiny hash grid and batches, for tests and smoke runs.",
)
