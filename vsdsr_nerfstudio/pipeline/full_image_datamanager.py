"""The full-image datamanager of the I3DS pipeline for Gaussian models (`vsd-sr-splat`).

Splatfacto trains on whole images (nerfstudio's ``FullImageDatamanager``: one camera and its image a step), not on
ray batches. This is that datamanager with the same LR originals and rewritable HR buffer as
:class:`~vsdsr_nerfstudio.pipeline.datamanager.SRDataManager` (shared through
:class:`~vsdsr_nerfstudio.pipeline.datamanager.HRBufferMixin`, so the pipeline talks to both the same way): after
the first write, ``next_train`` returns the 4x camera of a view and its HR image from the buffer, and
``train_cameras`` are the 4x cameras (what the model's 3D filter is fit to).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset

from vsdsr_nerfstudio.pipeline.datamanager import (
    HRBufferConfig,
    HRBufferMixin,
    _to_float,
    check_render_downscale,
    check_sr_scale,
)


@dataclass
class SRFullImageDataManagerConfig(HRBufferConfig, FullImageDatamanagerConfig):
    """FullImageDatamanager plus immutable LR originals and a rewritable 4x HR training buffer."""

    _target: Type = field(default_factory=lambda: SRFullImageDataManager)


class SRFullImageDataManager(HRBufferMixin, FullImageDatamanager[InputDataset]):
    """Full-image training views that the I3DS pipeline can replace by 4x super-resolved versions."""

    config: SRFullImageDataManagerConfig

    def __init__(self, config: SRFullImageDataManagerConfig, *args, **kwargs):
        check_sr_scale(config.sr_scale)  # before any data is read
        check_render_downscale(config)
        super().__init__(config, *args, **kwargs)
        if self.test_mode != "val":
            # loaded for evaluation or rendering (ns-eval, ns-render, ns-viewer): the train cameras are at 4x (the
            # render rule), no training image is needed and the LR ones would not match those cameras
            return
        cached = self.cached_train  # loads (and caches) every LR training image, in dataset order
        self._init_hr_buffer(torch.stack([item["image"] for item in cached]), self._lr_train_cameras)

    def _on_switch_to_hr(self) -> None:
        self.train_cameras = self.hr_cameras()

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        if getattr(self, "_hr", None) is None:
            return super().next_train(step)
        index = self.train_unseen_cameras.pop(0)
        if not self.train_unseen_cameras:
            self.train_unseen_cameras = self.sample_train_cameras()
        assert self._hr is not None
        data = {"image_idx": index, "image": _to_float(self._hr[index]).to(self.device)}
        camera = self.train_cameras[index : index + 1].to(self.device)
        camera.metadata = {"cam_idx": index}
        return camera, data
