"""The offline HR evaluation of our models, in one place for every NeRF `vsd-sr` can super-resolve.

Both :class:`~vsdsr_nerfstudio.models.nerfacto.VsdSrModel` (Nerfacto) and
:class:`~vsdsr_nerfstudio.models.instant_ngp.VsdSrNGPModel` (Instant-NGP) mix these in, so their held-out
metrics are computed the same way:

- **PSNR / SSIM / LPIPS** are the parent model's own (nerfstudio's Nerfacto and Instant-NGP compute them
  identically: ``PeakSignalNoiseRatio(data_range=1)``, the functional SSIM and LPIPS on the background-blended
  ground truth and ``outputs["rgb"]``, as ``[1, 3, H, W]``).
- **LPIPS is built lazily** (:class:`LazyLPIPS`) at the first evaluation, from a local weights file if given,
  and kept out of the module tree (so out of checkpoints). nerfstudio builds torchmetrics' LPIPS in
  ``populate_modules``, which downloads AlexNet: with no network, training would fail before it starts. Without
  weights and network, LPIPS is skipped (dropped from the metrics) with one warning.
- **NIQE** (no-reference, BasicSR-compatible) is added for every eval image.

Usage: ``class M(OfflineEvalMixin, SomeNerfstudioModel)`` with ``@dataclass class MConfig(OfflineEvalConfig,
SomeNerfstudioModelConfig)`` (the mixins first, so their methods and fields take precedence).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Literal, Optional, Tuple

import torch
from torch import Tensor

from vsdsr_nerfstudio.metrics.lazy_lpips import LazyLPIPS


@dataclass
class OfflineEvalConfig:
    """Model-config fields of the offline HR evaluation (a mixin of our model configs)."""

    lpips_weights: Optional[Path] = None
    """Local LPIPS-AlexNet weights (.npz with torchvision ``features.*`` and LPIPS ``lin*`` heads, as in
    shared/metrics/lpips_alex_features.npz). None: torchvision's cached/downloaded AlexNet; if that cannot be had
    (no network), LPIPS is skipped with a warning and the other metrics are still reported."""
    niqe_channel: Literal["y", "gray"] = "y"
    """Channel NIQE is computed on: BT.601 luma ``y`` (BasicSR's default) or ``gray`` (OpenCV BGR2GRAY)."""


@contextlib.contextmanager
def no_lpips_download() -> Iterator[None]:
    """Let a nerfstudio model's ``populate_modules`` run without building its LPIPS network (which downloads
    AlexNet).

    Nerfacto and Instant-NGP import ``LearnedPerceptualImagePatchSimilarity`` inside ``populate_modules``; for the
    duration of that call the class is replaced by a no-op. :class:`OfflineEvalMixin` then sets ``self.lpips`` to
    a :class:`LazyLPIPS`.
    """
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original


def finish_eval_metrics(
    metrics: Dict[str, float], rgb: Tensor, lpips: LazyLPIPS, niqe_channel: str = "y"
) -> Dict[str, float]:
    """The parent model's image metrics with ours applied: LPIPS dropped when it could not be built, NIQE of the
    render ``rgb`` (H, W, 3) added. Returns ``metrics`` (changed in place)."""
    if not lpips.available:
        metrics.pop("lpips", None)
    from vsdsr_nerfstudio.metrics.niqe import calculate_niqe

    image = torch.moveaxis(rgb.detach().clamp(0.0, 1.0), -1, 0)
    metrics["niqe"] = float(calculate_niqe(image, convert_to=niqe_channel))  # type: ignore[arg-type]
    return metrics


class OfflineEvalMixin:
    """Offline HR evaluation for a nerfstudio model: lazy LPIPS (no AlexNet download at construction) and NIQE.

    Put it before the model class; the model's config must have the :class:`OfflineEvalConfig` fields.
    """

    config: OfflineEvalConfig
    lpips: LazyLPIPS

    def populate_modules(self) -> None:
        with no_lpips_download():
            super().populate_modules()  # type: ignore[misc]
        # Not an nn.Module: stays out of state_dict and checkpoints; built at the first evaluation.
        self.lpips = LazyLPIPS(self.config.lpips_weights)

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        metrics, images = super().get_image_metrics_and_images(outputs, batch)  # type: ignore[misc]
        return finish_eval_metrics(metrics, outputs["rgb"], self.lpips, self.config.niqe_channel), images
