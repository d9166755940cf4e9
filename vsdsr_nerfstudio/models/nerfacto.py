"""The NeRF that `vsd-sr` super-resolves: Nerfacto with defaults for 4x detail and offline HR evaluation.

Differences from nerfstudio's Nerfacto, and why:

- **Camera optimiser off.** Held-out views are rendered from the dataset poses. Nerfacto's SO3xR3 optimiser moves
  the *training* poses (and so the whole reconstructed scene) while the eval cameras stay put, so held-out renders
  come out shifted against the real images (seen on fern: 15.9 dB vs 25.6 dB for bicubic of the real LR view).
  Between the LR and HR stages of I3DS a pose change would also corrupt the super-resolved training targets.
- **Finer hash grid** (``max_res`` 4096, as DiSR-NeRF) so the finest level can resolve the 4x images.
- **Fast hash grid without tinycudann** (``hash_backend``): on CUDA without tinycudann, the fused Triton encoding
  (:mod:`vsdsr_nerfstudio.models.triton_hash_encoding`) replaces nerfstudio's pure-torch grid, with the same table
  layout, so checkpoints load with either.
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
from vsdsr_nerfstudio.models.triton_hash_encoding import HashGridBackend, hash_backend_for_device, swap_hash_encodings


@dataclass
class VsdSrModelConfig(OfflineEvalConfig, NerfactoModelConfig):
    """Nerfacto for 4x super-resolution: camera optimiser off, finer hash grid, offline HR metrics."""

    _target: Type = field(default_factory=lambda: VsdSrModel)
    max_res: int = 4096
    """Finest hash-grid resolution. It must resolve the 4x images (DiSR-NeRF uses 4096)."""
    average_init_density: float = 0.01
    """Average initial density output from MLP (nerfstudio's nerfacto preset value)."""
    eval_num_rays_per_chunk: int = 1 << 16
    """Rays per forward pass when rendering whole images (eval, viewer, ns-render, the 4x renders of every
    upscaling stage). 65536 with the Triton or tinycudann grid: 2.65 M rays/s on an H200 at 5 GiB, 2.5x the
    throughput of 8192 chunks, bit-identical images (bench/results/nerfacto_fern_backends_h200.json). The pure-torch
    grid is capped at ``torch_grid_max_chunk``."""
    torch_grid_max_chunk: int = 1 << 13
    """Largest render chunk with nerfstudio's pure-torch hash grid, which materialises every level's corners: 32768
    rays took 66 GiB on fern, 8192 about 16 GiB."""
    hash_backend: HashGridBackend = "auto"
    """Hash-grid implementation: ``auto`` = tinycudann if installed, else the fused Triton kernels on CUDA, else
    nerfstudio's pure-torch grid; or ``tcnn`` / ``triton`` / ``torch`` explicitly (an explicit choice that cannot run
    here is an error). Triton and torch share the table layout: a checkpoint of one loads in the other. It also
    decides nerfstudio's ``implementation`` (tinycudann MLPs only with ``tcnn``)."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="off"))
    """Camera pose optimiser. Off by default: held-out views are rendered from the dataset poses, and optimised
    train poses shift the scene against them; a pose change between the LR and HR stages also corrupts the SR
    targets. Turn it on only if your poses are poor, and expect held-out metrics to drop."""


class VsdSrModel(OfflineEvalMixin, NerfactoModel):
    """Nerfacto whose evaluation works offline at the HR eval resolution and reports NIQE."""

    config: VsdSrModelConfig

    def populate_modules(self) -> None:
        requested = self.config.hash_backend
        if requested == "auto" and self.config.implementation == "torch":
            requested = "torch"  # an explicit nerfstudio `implementation torch` (and runs saved before hash_backend)
        backend = hash_backend_for_device(requested, self.kwargs.get("device"))
        implementation = self.config.implementation
        self.config.implementation = "tcnn" if backend == "tcnn" else "torch"  # read by Nerfacto's field builders
        try:
            super().populate_modules()
        finally:
            self.config.implementation = implementation
        #: the hash-grid implementation this model was built with (``tcnn``, ``triton`` or ``torch``)
        self.hash_backend = backend
        if backend == "torch":
            self.config.eval_num_rays_per_chunk = min(
                self.config.eval_num_rays_per_chunk, self.config.torch_grid_max_chunk
            )
        swap_hash_encodings(self, backend)
