"""`vsd-sr-splat-embedded`: `vsd-sr-splat` with the pixel-space x4 prior shipped in the package (no download), and
the VSD settings measured for it (`vsd-sr-embedded`'s: docs/embedded_prior.md "On fern")."""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from vsdsr_nerfstudio.method_configs.vsd_sr_splat import vsd_sr_splat_config
from vsdsr_nerfstudio.sr.core.stage import pixel_prior_stage_settings


def vsd_sr_splat_embedded_config():
    """`vsd-sr-splat` with the embedded pixel-space prior and VSD settings for it."""
    config = vsd_sr_splat_config()
    config.method_name = "vsd-sr-splat-embedded"
    config.pipeline.prior.prior = "embedded"
    config.pipeline.stage = pixel_prior_stage_settings(config.pipeline.stage)
    return config


vsd_sr_splat_embedded = MethodSpecification(
    config=vsd_sr_splat_embedded_config(),
    description="vsd-sr-splat with the pixel-space x4 prior shipped in the package (offline, research-use weights).",
)
