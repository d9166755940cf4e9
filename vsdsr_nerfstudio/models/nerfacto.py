"""The NeRF that `vsd-sr` super-resolves: Nerfacto with defaults for 4x detail and offline HR evaluation.

Differences from nerfstudio's Nerfacto, and why:

- **Camera optimiser off.** Held-out views are rendered from the dataset poses. Nerfacto's SO3xR3 optimiser moves
  the *training* poses (and so the whole reconstructed scene) while the eval cameras stay put, so held-out renders
  come out shifted against the real images (seen on fern: 15.9 dB vs 25.6 dB for bicubic of the real LR view).
  Between the LR and HR stages of I3DS a pose change would also corrupt the super-resolved training targets.
- **Finer hash grid** (``max_res`` 4096, as DiSR-NeRF) so the finest level can resolve the 4x images.
- **Offline HR evaluation** (:mod:`vsdsr_nerfstudio.models.offline_eval`, shared with the Instant-NGP model of
  `vsd-sr-ngp`): LPIPS built lazily at the first evaluation from a local weights file if given, kept out of the
  module tree (Nerfacto builds it in ``populate_modules``, which downloads AlexNet: with no network, training would
  fail before it starts; without weights and network LPIPS is skipped with one warning), and **NIQE** (no-reference,
  BasicSR-compatible) reported with PSNR/SSIM/LPIPS on every eval image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig

from vsdsr_nerfstudio.models.offline_eval import OfflineEvalConfig, OfflineEvalMixin


@dataclass
class VsdSrModelConfig(OfflineEvalConfig, NerfactoModelConfig):
    """Nerfacto for 4x super-resolution: camera optimiser off, finer hash grid, offline HR metrics."""

    _target: Type = field(default_factory=lambda: VsdSrModel)
    max_res: int = 4096
    """Finest hash-grid resolution. It must resolve the 4x images (DiSR-NeRF uses 4096)."""
    average_init_density: float = 0.01
    """Average initial density output from MLP (nerfstudio's nerfacto preset value)."""
    eval_num_rays_per_chunk: int = 1 << 13
    """Rays per forward pass when rendering whole images (eval, viewer, ns-render, the 4x renders of every
    upscaling stage). With the pure-torch hash grid, 32768 rays took 66 GiB on fern; 8192 keeps it near 16 GiB."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="off"))
    """Camera pose optimiser. Off by default: held-out views are rendered from the dataset poses, and optimised
    train poses shift the scene against them; a pose change between the LR and HR stages also corrupts the SR
    targets. Turn it on only if your poses are poor, and expect held-out metrics to drop."""


class VsdSrModel(OfflineEvalMixin, NerfactoModel):
    """Nerfacto whose evaluation works offline at the HR eval resolution and reports NIQE."""

    config: VsdSrModelConfig
