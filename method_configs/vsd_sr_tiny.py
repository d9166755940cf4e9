"""`vsd-sr-tiny`: the default method shrunk to run on a CPU in seconds (tests, smoke checks, CI).

Same classes as `vsd-sr`; only sizes change: a small hash grid and proposal networks, few rays and samples,
torch (not tinycudann) hash grid, no viewer.
"""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from vsdsr_nerfstudio.method_configs.vsd_sr import vsd_sr_config


def vsd_sr_tiny_config():
    """`vsd-sr` with CPU-sized model and batches."""
    config = vsd_sr_config()
    config.method_name = "vsd-sr-tiny"
    config.max_num_iterations = 200
    config.steps_per_save = 100
    config.steps_per_eval_batch = 100
    config.steps_per_eval_image = 100
    config.mixed_precision = False
    config.vis = "tensorboard"
    datamanager = config.pipeline.datamanager
    datamanager.train_num_rays_per_batch = 256
    datamanager.eval_num_rays_per_batch = 256
    model = config.pipeline.model
    model.implementation = "torch"
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
