"""`vsd-sr-embedded`: `vsd-sr` with the pixel-space x4 prior shipped in the package, no download.

Everything is the default preset's (Nerfacto, schedule P=2000 / K=1000 / S=2000 / C=4, evaluation) except the prior,
`embedded` (docs/embedded_prior.md), and two VSD settings measured for it on real fern views
(bench/fern_sr_diagnose.py, docs/embedded_prior.md "On fern"): latent lr 1e-3 instead of the SD-tuned 1e-2, and the
timestep ramp down to t = 20 instead of 500. With the SD settings, VSD on this prior writes high-frequency noise
into the views (16 dB per view); with these, VSD from the bicubic 4x of fern views gives LPIPS 0.263 against
bicubic's 0.375 at K = 1000 and keeps the views consistent with their LR photos.
"""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from vsdsr_nerfstudio.method_configs.vsd_sr import vsd_sr_config
from vsdsr_nerfstudio.sr.core.stage import pixel_prior_stage_settings


def vsd_sr_embedded_config():
    """`vsd-sr` with the embedded pixel-space prior and VSD settings for it."""
    config = vsd_sr_config()
    config.method_name = "vsd-sr-embedded"
    config.pipeline.prior.prior = "embedded"
    config.pipeline.stage = pixel_prior_stage_settings(config.pipeline.stage)
    return config


vsd_sr_embedded = MethodSpecification(
    config=vsd_sr_embedded_config(),
    description="vsd-sr with the pixel-space x4 prior shipped in the package (offline, research-use weights).",
)
