"""`vsd-sr-disr`: the DiSR-NeRF baseline schedule and guidance (`configs/nerfdiffusr-sr.yaml`).

Guidance RSD (one DDIM step with the same noise for t and t-1, L1 to the stop-gradient target), text CFG 10,
P=20k LR steps, then cycles of K=5k RSD steps and S=20k NeRF steps. DiSR schedules 4 stages in 100k steps but its
last one is never synchronised; we run the 3 that are: 20k + 3 x 20k = 80,000 NeRF steps.
"""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from vsdsr_nerfstudio.method_configs.vsd_sr import i3ds_steps, vsd_sr_config


def vsd_sr_disr_config():
    """`vsd-sr` with DiSR-NeRF's RSD guidance and schedule."""
    config = vsd_sr_config()
    config.method_name = "vsd-sr-disr"
    pipeline = config.pipeline
    pipeline.pretrain_steps, pipeline.upscale_steps, pipeline.sync_steps, pipeline.num_cycles = 20_000, 5000, 20_000, 3
    config.max_num_iterations = i3ds_steps(pipeline.pretrain_steps, pipeline.sync_steps, pipeline.num_cycles)
    pipeline.stage.guidance = "rsd"
    pipeline.stage.guidance_scale = 10.0
    return config


vsd_sr_disr = MethodSpecification(
    config=vsd_sr_disr_config(),
    description="DiSR-NeRF baseline: RSD guidance, P=20k, 3 cycles of K=5k RSD and S=20k sync steps.",
)
