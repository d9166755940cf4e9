"""`vsd-sr-ngp`: `vsd-sr` with Instant-NGP instead of Nerfacto as the NeRF being super-resolved.

Everything but the model is the default preset's (data, schedule P=2000 / K=1000 / S=2000 / C=4, prior, stage,
evaluation). The model is `VsdSrNGPModelConfig` (hash grid to 4096 with 2^21 entries a level, appearance embedding
averaged for eval renders, offline LPIPS and NIQE; see vsdsr_nerfstudio/models/instant_ngp.py for the reasons); its one
optimiser group, ``fields``, gets the same Adam and schedule as Nerfacto's.

Needs CUDA: nerfacc's ray marching is CUDA-only, so this preset stops at setup with a clear error on a machine
without it (use `vsd-sr`, Nerfacto, there). nerfacc 0.5.2 does not compile with CUDA 13 unpatched; the error
message gives the two-line fix (docs/pipeline.md, "Model choice").
"""

from __future__ import annotations

from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from vsdsr_nerfstudio.method_configs.vsd_sr import nerf_optimizers, vsd_sr_config
from vsdsr_nerfstudio.models.instant_ngp import VsdSrNGPModelConfig


def vsd_sr_ngp_config() -> TrainerConfig:
    """`vsd-sr` with the Instant-NGP model."""
    config = vsd_sr_config()
    config.method_name = "vsd-sr-ngp"
    config.pipeline.model = VsdSrNGPModelConfig()
    config.optimizers = nerf_optimizers(groups=("fields",))
    return config


vsd_sr_ngp = MethodSpecification(
    config=vsd_sr_ngp_config(),
    description="vsd-sr with Instant-NGP (nerfacc, CUDA only) as the NeRF instead of nerfacto.",
)
