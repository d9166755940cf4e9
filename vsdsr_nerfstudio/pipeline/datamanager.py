"""Datamanager whose training images the I3DS pipeline rewrites at 4x.

It keeps two image sets for the training views:

- the **LR originals**, immutable: they condition the diffusion prior (the real low-res photo) for every stage;
- an **HR buffer** (N x H x W x 3, uint8 or fp16, on the CPU when it would not fit on the GPU), allocated at
  the first write. From then on the train cameras are a 4x-rescaled copy, the ray generator is rebuilt on them,
  and rays are sampled from the HR images.

The pipeline talks to it only through :meth:`write_view` / :meth:`write_views` / :meth:`lr_images_chw` /
:attr:`train_cameras` / :meth:`hr_state` / :meth:`load_hr_state`; it never pokes internal tensors.
(The parallel datamanager is not used: its worker processes hold their own copies of the images.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, Tuple, Type, Union

import torch
from jaxtyping import Float, UInt8
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from vsdsr_nerfstudio.data.resample import bicubic_upsample_hwc


class DataScaleError(ValueError):
    """The data's HR/LR scale does not match the configured super-resolution scale."""


@dataclass
class HRBufferConfig:
    """Config fields of the LR originals + rewritable HR buffer (ray-batch and full-image datamanagers)."""

    sr_scale: int = 4
    """Super-resolution factor: HR training images are this many times the LR size along each side. Must match
    the data parser's ``sr_scale`` (the held-out views are evaluated at that scale)."""
    hr_buffer_dtype: Literal["uint8", "float16"] = "uint8"
    """Storage type of the HR training images (uint8: 3 bytes a pixel; float16: 6 bytes, no quantisation)."""
    hr_buffer_device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where the HR buffer lives. auto: on the GPU if it takes under ``hr_buffer_gpu_fraction`` of the free GPU
    memory, else in CPU memory (rays are gathered there and only the batch moves to the GPU)."""
    hr_buffer_gpu_fraction: float = 0.25
    """Largest share of free GPU memory the HR buffer may take when ``hr_buffer_device`` is auto."""


@dataclass
class SRDataManagerConfig(HRBufferConfig, VanillaDataManagerConfig):
    """VanillaDataManager plus immutable LR originals and a rewritable 4x HR training buffer."""

    _target: Type = field(default_factory=lambda: SRDataManager)


class HRBufferMixin:
    """The LR originals and the HR buffer, and every query/write on them; a datamanager mixes it in, calls
    :meth:`_init_hr_buffer` at setup and implements :meth:`_on_switch_to_hr` (what changes when training moves
    to the HR images: the ray generator, or the full-image cameras)."""

    config: HRBufferConfig
    device: Union[torch.device, str]
    train_dataparser_outputs: Any
    test_mode: str

    def create_train_dataset(self):
        """The train views (of both datamanagers). Loaded for inference (ns-eval, ns-render, ns-viewer: any test mode
        but "val") their cameras render at ``sr_scale`` x the training size, the HR size of a vsd-sr run, like the
        eval views; training keeps the LR cameras until the first upscaling stage."""
        dataset = super().create_train_dataset()
        self._lr_train_cameras: Cameras = copy.deepcopy(dataset.cameras)
        if self.test_mode != "val":
            dataset.cameras.rescale_output_resolution(float(self.config.sr_scale))
        return dataset

    def _init_hr_buffer(self, lr_images: Float[Tensor, "N h w 3"], lr_cameras: Cameras) -> None:
        # float32 on CPU, (N, h, w, 3) in [0, 1], view i = camera i; never written to after this point.
        self._lr_images: Tensor = _to_float(lr_images[..., :3]).to("cpu", torch.float32).clone()
        self._image_idx: Tensor = torch.arange(lr_images.shape[0])
        self._hr: Optional[Tensor] = None
        self._written: Optional[Tensor] = None
        self._lr_cameras: Cameras = lr_cameras
        self._check_data_scale()

    def _on_switch_to_hr(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- queries
    def _check_data_scale(self) -> None:
        metadata = self.train_dataparser_outputs.metadata or {}
        data_scale = metadata.get("sr_scale")
        if data_scale is not None and int(data_scale) != self.config.sr_scale:
            raise DataScaleError(
                f"The data parser evaluates at sr_scale={data_scale} but the datamanager super-resolves by "
                f"sr_scale={self.config.sr_scale}. Set both to the same value, e.g. "
                f"`--pipeline.datamanager.sr-scale {data_scale}` or `llff-data --sr-scale {self.config.sr_scale}`."
            )

    @property
    def num_train_views(self) -> int:
        """Number of training views N."""
        return int(self._lr_images.shape[0])

    @property
    def is_hr(self) -> bool:
        """Whether training rays now come from the HR buffer."""
        return self._hr is not None

    @property
    def lr_size(self) -> Tuple[int, int]:
        """(height, width) of the LR training images."""
        return int(self._lr_images.shape[1]), int(self._lr_images.shape[2])

    @property
    def hr_size(self) -> Tuple[int, int]:
        """(height, width) of the HR training images: sr_scale x the LR size."""
        h, w = self.lr_size
        return h * self.config.sr_scale, w * self.config.sr_scale

    def lr_images_chw(self) -> Float[Tensor, "N 3 h w"]:
        """A copy of the immutable LR originals as (N, 3, h, w) float in [0, 1] (the prior's conditioning)."""
        return self._lr_images.permute(0, 3, 1, 2).contiguous()

    def hr_cameras(self) -> Cameras:
        """A copy of the LR train cameras rescaled by sr_scale (the dataset's cameras are left as they are)."""
        cameras = copy.deepcopy(self._lr_cameras)
        cameras.rescale_output_resolution(self.config.sr_scale)
        return cameras

    def hr_images(self) -> Float[Tensor, "N H W 3"]:
        """The HR training images as float in [0, 1] (CPU). Before the first write: bicubic x sr_scale of LR."""
        if self._hr is None:
            return bicubic_upsample_hwc(self._lr_images, self.config.sr_scale)
        return _to_float(self._hr).cpu()

    def hr_view(self, index: int) -> Float[Tensor, "H W 3"]:
        """One HR training image as float in [0, 1] (CPU): the view the last stage wrote (bicubic before any)."""
        if self._hr is None:
            return bicubic_upsample_hwc(self._lr_images[index : index + 1], self.config.sr_scale)[0]
        return _to_float(self._hr[index]).cpu()

    # ------------------------------------------------------------------------------------------- writes
    def _choose_buffer_device(self, num_bytes: int) -> torch.device:
        device = torch.device(self.device)
        if self.config.hr_buffer_device == "cpu" or device.type != "cuda":
            return torch.device("cpu")
        if self.config.hr_buffer_device == "gpu":
            return device
        free, _ = torch.cuda.mem_get_info(device)
        return device if num_bytes < self.config.hr_buffer_gpu_fraction * free else torch.device("cpu")

    def _ensure_hr(self) -> None:
        if self._hr is not None:
            return
        n = self.num_train_views
        h, w = self.hr_size
        dtype = torch.uint8 if self.config.hr_buffer_dtype == "uint8" else torch.float16
        num_bytes = n * h * w * 3 * (1 if dtype == torch.uint8 else 2)
        buffer_device = self._choose_buffer_device(num_bytes)
        CONSOLE.print(
            f"[bold]Switching training to {w}x{h} (x{self.config.sr_scale}):[/bold] HR buffer "
            f"{num_bytes / 2**20:.0f} MiB {self.config.hr_buffer_dtype} on {buffer_device}."
        )
        self._hr = _from_float(bicubic_upsample_hwc(self._lr_images, self.config.sr_scale), dtype).to(buffer_device)
        self._written = torch.zeros(n, dtype=torch.bool)
        self._on_switch_to_hr()

    def write_view(self, index: int, image: Float[Tensor, "H W 3"]) -> None:
        """Replace training view ``index`` by an HR image in [0, 1] of size ``hr_size``."""
        if not 0 <= index < self.num_train_views:
            raise IndexError(f"view index {index} out of range for {self.num_train_views} training views")
        expected = (*self.hr_size, 3)
        if tuple(image.shape) != expected:
            raise ValueError(f"HR image for view {index} has shape {tuple(image.shape)}, expected {expected}")
        self._ensure_hr()
        assert self._hr is not None and self._written is not None
        self._hr[index] = _from_float(image.detach().clamp(0, 1), self._hr.dtype).to(self._hr.device)
        self._written[index] = True

    def write_views(self, images: Float[Tensor, "N H W 3"]) -> None:
        """Replace every training view (the end of an upscaling stage)."""
        if images.shape[0] != self.num_train_views:
            raise ValueError(f"got {images.shape[0]} HR images for {self.num_train_views} training views")
        for index in range(self.num_train_views):
            self.write_view(index, images[index])

    def hr_state(self) -> Dict[str, Tensor]:
        """The HR buffer in its storage dtype (CPU) and which views were written, for checkpoints."""
        if self._hr is None or self._written is None:
            return {}
        return {"hr_images": self._hr.cpu(), "written": self._written.clone()}

    def load_hr_state(self, state: Dict[str, Tensor]) -> None:
        """Restore :meth:`hr_state` (switches training to HR)."""
        if not state:
            return
        images = state["hr_images"]
        if tuple(images.shape) != (self.num_train_views, *self.hr_size, 3):
            raise ValueError(
                f"saved HR images have shape {tuple(images.shape)}, expected "
                f"{(self.num_train_views, *self.hr_size, 3)}: was the run saved with other data or sr_scale?"
            )
        self._ensure_hr()
        assert self._hr is not None
        self._hr.copy_(images.to(self._hr.dtype).to(self._hr.device))
        self._written = state["written"].clone()


def check_sr_scale(sr_scale: object) -> None:
    """``--pipeline.datamanager.sr-scale`` must be a whole factor >= 1."""
    if isinstance(sr_scale, bool) or not isinstance(sr_scale, int) or sr_scale < 1:
        raise DataScaleError(
            f"--pipeline.datamanager.sr-scale must be an integer >= 1 (the super-resolution factor: 4 for the x4 "
            f"prior), got {sr_scale!r}. Keep it equal to the data parser's --sr-scale (llff-data --sr-scale)."
        )


def check_render_downscale(config: Any) -> None:
    """``ns-render dataset --downscale-factor X`` writes X into the data parser's ``downscale_factor`` (a float;
    the trained value is an int), which for llff-data would choose other image files, not a render size: stop
    and say how to get the size wanted."""
    value = getattr(config.dataparser, "downscale_factor", None)
    if not isinstance(value, float):
        return
    raise DataScaleError(
        f"`ns-render dataset --downscale-factor {value:g}` is not supported for vsd-sr runs: for llff-data it would "
        f"select other image files (images_<k>/), not a render size. ns-render dataset renders every split "
        f"(--split train, test or train+test) at sr_scale x the training resolution ({config.sr_scale}x, the "
        f"held-out HR size): leave --downscale-factor out for HR stills. For stills at another size render the "
        f"views with `ns-render interpolate --pose-source train (or eval) --interpolation-steps 1 "
        f"--downscale-factor {value:g} --output-format images` (--downscale-factor relative to the HR size; "
        f"every view but the last of each split), or resize the HR stills."
    )


class SRDataManager(HRBufferMixin, VanillaDataManager):
    """A VanillaDataManager whose training images can be replaced by 4x super-resolved versions."""

    config: SRDataManagerConfig

    def __init__(self, config: SRDataManagerConfig, *args, **kwargs) -> None:
        check_sr_scale(config.sr_scale)  # before any data is read
        check_render_downscale(config)
        super().__init__(config, *args, **kwargs)

    def setup_train(self) -> None:
        super().setup_train()
        batch = next(self.iter_train_image_dataloader)
        if len(batch["image_idx"]) != len(self.train_dataset):
            raise ValueError(
                "SRDataManager needs every training image in memory; leave train-num-images-to-sample-from at -1"
            )
        # The cached batch comes in a shuffled order (image_idx[k] is the view of image k): store views in
        # dataset order, so view i is camera i everywhere (LR conditioning, HR buffer, renders, c2w).
        order = torch.argsort(batch["image_idx"].detach().cpu())
        # float32 on CPU, (N, h, w, 3) in [0, 1]; never written to after this point.
        self._init_hr_buffer(batch["image"].detach()[order], self._lr_train_cameras)

    @property
    def train_cameras(self) -> Cameras:
        """The cameras training rays are generated from: LR before the first write, HR after."""
        return self.train_ray_generator.cameras

    def _on_switch_to_hr(self) -> None:
        # RayGenerator keeps its pixel grid in a parameter built on the CPU: move the module, not just the cameras
        # (the original one was moved by the pipeline's datamanager.to(device)).
        self.train_ray_generator = RayGenerator(self.hr_cameras().to(self.device)).to(self.device)

    # ------------------------------------------------------------------------------------------- sampling
    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        if self._hr is None:
            return super().next_train(step)
        self.train_count += 1
        assert self.train_pixel_sampler is not None
        image_batch = {"image": self._hr, "image_idx": self._image_idx.to(self._hr.device)}
        batch = self.train_pixel_sampler.sample(image_batch)
        batch["image"] = _to_float(batch["image"]).to(self.device)
        ray_indices = batch["indices"].to(self.device)
        batch["indices"] = ray_indices
        ray_bundle = self.train_ray_generator(ray_indices)
        return ray_bundle, batch


def _from_float(images: Float[Tensor, "*B 3"], dtype: torch.dtype) -> Tensor:
    if dtype == torch.uint8:
        return (images * 255.0).round().clamp(0, 255).to(torch.uint8)
    return images.to(dtype)


def _to_float(images: UInt8[Tensor, "*B 3"] | Tensor) -> Float[Tensor, "*B 3"]:
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()
