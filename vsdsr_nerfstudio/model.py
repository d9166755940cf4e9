"""The NeRF that `vsd-sr` super-resolves: Nerfacto with defaults for 4x detail and offline HR evaluation.

Differences from nerfstudio's Nerfacto, and why:

- **Camera optimiser off.** Held-out views are rendered from the dataset poses. Nerfacto's SO3xR3 optimiser moves
  the *training* poses (and so the whole reconstructed scene) while the eval cameras stay put, so held-out renders
  come out shifted against the real images (seen on fern: 15.9 dB vs 25.6 dB for bicubic of the real LR view).
  Between the LR and HR stages of I3DS a pose change would also corrupt the super-resolved training targets.
- **Finer hash grid** (``max_res`` 4096, as DiSR-NeRF) so the finest level can resolve the 4x images.
- **LPIPS built lazily** at the first evaluation, from a local weights file if given, and kept out of the module
  tree (so out of checkpoints). Nerfacto builds it in ``populate_modules``, which downloads AlexNet: with no
  network, training would fail before it starts. Without weights and network, LPIPS is skipped with one warning.
- **NIQE** (no-reference, BasicSR-compatible) is reported with PSNR/SSIM/LPIPS on every eval image.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Literal, Optional, Tuple, Type

import torch
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from torch import Tensor

from vsdsr_nerfstudio.metrics.lazy_lpips import LazyLPIPS


@dataclass
class VsdSrModelConfig(NerfactoModelConfig):
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
    lpips_weights: Optional[Path] = None
    """Local LPIPS-AlexNet weights (.npz with torchvision ``features.*`` and LPIPS ``lin*`` heads, as in
    shared/metrics/lpips_alex_features.npz). None: torchvision's cached/downloaded AlexNet; if that cannot be had
    (no network), LPIPS is skipped with a warning and the other metrics are still reported."""
    niqe_channel: Literal["y", "gray"] = "y"
    """Channel NIQE is computed on: BT.601 luma ``y`` (BasicSR's default) or ``gray`` (OpenCV BGR2GRAY)."""


@contextlib.contextmanager
def _no_lpips_download() -> Iterator[None]:
    """Let Nerfacto's ``populate_modules`` run without building its LPIPS network (which downloads AlexNet).

    Nerfacto imports ``LearnedPerceptualImagePatchSimilarity`` inside ``populate_modules``; for the duration of
    that call the class is replaced by a no-op. Our model then replaces ``self.lpips`` with :class:`LazyLPIPS`.
    """
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original


class VsdSrModel(NerfactoModel):
    """Nerfacto whose evaluation works offline at the HR eval resolution and reports NIQE."""

    config: VsdSrModelConfig

    def populate_modules(self) -> None:
        with _no_lpips_download():
            super().populate_modules()
        # Not an nn.Module: stays out of state_dict and checkpoints; built at the first evaluation.
        self.lpips = LazyLPIPS(self.config.lpips_weights)

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        if not self.lpips.available:
            metrics.pop("lpips", None)
        from vsdsr_nerfstudio.metrics.niqe import calculate_niqe

        rgb = outputs["rgb"].detach().clamp(0.0, 1.0)
        metrics["niqe"] = float(calculate_niqe(torch.moveaxis(rgb, -1, 0), convert_to=self.config.niqe_channel))
        return metrics, images
