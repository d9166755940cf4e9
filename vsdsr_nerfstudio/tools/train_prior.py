"""``vsdsr-train-prior``: train the pixel-space x4 SR diffusion prior (``sr/priors/pixel_prior.py``) on a folder of
photos.

One run::

    vsdsr-train-prior --images /data/sr/train --output /runs/prior --val-images /data/sr/test \\
        --max-minutes 9 --resume

- **Data**: every image under ``--images`` (recursive), decoded once into RAM (``--cache-images``, parallel), then
  random ``crop-size`` HR crops (random horizontal flip; ``--dihedral`` adds vertical flips and transposes) in
  DataLoader workers. LR = x4 **area** downsampling (mean of 4x4 blocks), quantised to 8 bits like an LR photo;
  optional mild degradations (``--degrade``: Gaussian blur before downsampling, Gaussian noise, JPEG), off by
  default.
- **Objective**: v-prediction MSE at ``t ~ U{0..999}`` on the pixel-unshuffle latent (scaled_linear 1e-4..0.02,
  the SD x4 upscaler's schedule); the LR conditioning is noised at a random level ``k`` (with probability
  ``noise-level-low-prob`` from ``U{0..noise-level-low-max}``, else ``U{0..noise-level-max}``) by the low-res
  schedule and ``k`` is the class label, as the SD x4 upscaler's noise-level augmentation.
- **Optimisation**: AdamW, linear warm-up then constant learning rate (so a run can be continued any number of
  times), grad-norm clipping, EMA of the weights (the EMA is what gets exported), bf16 autocast on CUDA.
- **Validation** (``--val-images``): the first ``val-count`` images, centre ``val-crop`` HR crops, DDIM
  ``val-steps`` steps (trailing spacing, eta 0, LR noise level ``val-noise-level``) with the EMA weights vs bicubic:
  PSNR (RGB, 4 px border removed) and LPIPS (if ``vsdsr_nerfstudio.metrics.lpips.build_lpips`` exists and can be
  built), appended to ``OUTPUT/val_log.jsonl`` and ``OUTPUT/val_log.csv``.
- **Time budget**: ``--max-minutes`` counts from process start; the loop stops early enough to save (the reserve
  is measured) and skips a validation that would not fit. Ctrl-C also saves.
- **Outputs** (every ``save-every-minutes`` and at the end, each written to a temporary name and renamed):
  ``OUTPUT/checkpoint.pt`` (weights, EMA, optimiser, step, RNG, validation history: ``--resume`` continues it),
  ``OUTPUT/model/`` (the EMA weights as an fp16 pixel-prior folder: ``SRPriorConfig(model_path=OUTPUT/model)``,
  ``vsdsr-upscale --model-path OUTPUT/model``; copy its content into ``vsdsr_nerfstudio/assets/embedded_prior/`` to
  ship it as ``prior="embedded"``), ``OUTPUT/train_log.csv``.

See ``docs/embedded_prior.md``.
"""

from __future__ import annotations

import time

_PROCESS_T0 = time.monotonic()  # the --max-minutes budget counts from here (before the heavy imports)

import contextlib  # noqa: E402
import copy  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
from dataclasses import asdict, dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from jaxtyping import Float  # noqa: E402
from nerfstudio.utils.rich_utils import CONSOLE  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

from vsdsr_nerfstudio.data.files import atomic_torch_save, atomic_write_text, replace_dir  # noqa: E402
from vsdsr_nerfstudio.data.images import IMAGE_EXTENSIONS, image_size, list_images, load_rgb_uint8  # noqa: E402
from vsdsr_nerfstudio.data.resample import area_downsample, bicubic_upscale  # noqa: E402
from vsdsr_nerfstudio.metrics.lpips import try_build_lpips  # noqa: E402
from vsdsr_nerfstudio.metrics.psnr import psnr  # noqa: E402

CHECKPOINT_NAME = "checkpoint.pt"
"""Training state inside the output folder."""
MODEL_DIR_NAME = "model"
"""The exported (EMA, fp16) pixel-prior folder inside the output folder."""
CHECKPOINT_VERSION = 1
"""Version of the checkpoint layout."""


@dataclass
class PriorTrainConfig:
    """Training of the pixel-space x4 prior (``vsdsr-train-prior``)."""

    images: Path
    """Folder of training photos (searched recursively for png/jpg/jpeg, as the data parser; hidden files skipped).
    Photos smaller than ``crop_size`` on their short side are refused (see ``enlarge_small_images``)."""
    output: Path
    """Output folder: checkpoint.pt, model/ (the exported prior), train_log.csv, val_log.{jsonl,csv}."""
    val_images: Optional[Path] = None
    """Folder of held-out photos for periodic validation (PSNR/LPIPS of DDIM samples vs bicubic); None: no
    validation."""
    resume: bool = False
    """Continue from OUTPUT/checkpoint.pt if it exists (else start fresh). Without it an existing checkpoint is an
    error, so a run is never overwritten by accident."""
    init_from: Optional[Path] = None
    """Warm start a NEW run (no checkpoint in ``output`` yet) from a pixel-prior folder, e.g. the ``model/`` folder
    a previous run exported (and a device run returned): its weights initialise both the trained and the EMA
    weights, the optimiser starts fresh with a new learning-rate warm-up, the step count continues from the
    folder's metadata. The way to continue on another machine when the full checkpoint cannot travel."""
    max_minutes: float = 0.0
    """Wall-clock budget of this process in minutes, counted from its start (0: none). The loop stops in time to
    validate (if it fits) and save; leave a minute for Python start-up and the machine's own overheads."""
    max_steps: int = 0
    """Stop at this total optimiser step count, counted across resumed runs (0: no step limit)."""
    preset: Literal["base", "tiny"] = "base"
    """UNet size: ``base`` (7.76 M parameters, the embedded prior) or ``tiny`` (tests). A resumed run keeps the
    checkpoint's preset."""
    seed: int = 0
    """Seed of the weights initialisation and of the data / noise draws (offset by the step on resume)."""
    device: str = "auto"
    """Torch device; ``auto``: cuda if available, else cpu."""

    # -- data ----------------------------------------------------------------------------------------------------
    crop_size: int = 256
    """Side of the random HR training crops (LR crops are a quarter of it); a multiple of 16."""
    enlarge_small_images: bool = False
    """Use photos smaller than ``crop_size`` anyway, enlarged by bicubic (their "HR" crops then hold no real
    detail); off: such photos are refused at start, named."""
    batch_size: int = 128
    """Crops per optimiser step (H100, bf16: 128 -> 66 ms/step, 1940 crops/s, 10.8 GB; 64 -> 45 ms, 1410 crops/s:
    smaller batches are launch-bound)."""
    num_workers: int = -1
    """DataLoader worker processes (-1: min(12, CPU cores - 2); 0: load in the main process)."""
    cache_images: bool = True
    """Decode every training image once into RAM (uint8, in parallel); workers then only crop. Without it every
    crop decodes its image file."""
    dihedral: bool = False
    """Also flip vertically and transpose (the 8 symmetries of the square); off keeps gravity (NeRF scenes)."""
    quantize_lr: bool = True
    """Round the LR crops to 8 bits, like the LR photos the prior will be conditioned on."""
    degrade: bool = False
    """Apply the mild LR degradations below (each with its probability); off: clean area downsampling only."""
    blur_prob: float = 0.3
    """With ``degrade``: probability of a Gaussian blur of the HR crop before downsampling."""
    blur_sigma: Tuple[float, float] = (0.2, 1.0)
    """With ``degrade``: range of the blur sigma in HR pixels."""
    noise_prob: float = 0.3
    """With ``degrade``: probability of additive Gaussian noise on the LR crop."""
    noise_sigma: Tuple[float, float] = (0.0, 0.02)
    """With ``degrade``: range of the LR noise std (images in [0, 1])."""
    jpeg_prob: float = 0.3
    """With ``degrade``: probability of JPEG-compressing the LR crop."""
    jpeg_quality: Tuple[int, int] = (70, 95)
    """With ``degrade``: range of the JPEG quality."""

    # -- noise-level augmentation of the LR conditioning ---------------------------------------------------------
    noise_level_max: int = 350
    """Largest LR noise level drawn (the prior's max_noise_level, 350)."""
    noise_level_low_prob: float = 0.5
    """Probability of drawing the level from ``U{0..noise_level_low_max}`` instead of ``U{0..noise_level_max}``
    (the SR stage and sampling use level 20)."""
    noise_level_low_max: int = 50
    """Upper end of the low range of LR noise levels."""

    # -- optimisation --------------------------------------------------------------------------------------------
    lr: float = 2e-4
    """AdamW learning rate after warm-up (constant afterwards)."""
    warmup_steps: int = 500
    """Linear learning-rate warm-up steps (counted from step 0 of the whole training, not per run)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    adam_betas: Tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Gradient-norm clip (<= 0: off)."""
    ema_decay: float = 0.999
    """EMA decay of the exported weights (warmed up as ``min(decay, (1 + step) / (10 + step))``)."""
    mixed_precision: bool = True
    """bf16 autocast of the UNet forward/backward on CUDA (fp32 master weights)."""
    channels_last: bool = False
    """channels_last memory format on CUDA (measured slower for this UNet on an H100 without compile: 97 vs 66 ms
    per step at batch 128)."""
    compile: bool = False
    """torch.compile the training UNet: about 63 s of compilation per run (every resumed run compiles again), then
    ~1.3x the throughput (batch 64: 35 vs 45 ms per step on an H100)."""

    # -- validation, logging, saving -----------------------------------------------------------------------------
    val_every: int = 2000
    """Validate every this many steps (and at the end, if it fits in the budget); 0: only at the end."""
    val_count: int = 16
    """Number of validation images (the first ones, sorted by path)."""
    val_crop: int = 256
    """Side of the centre HR crop of each validation image (smaller images: their largest multiple of 16)."""
    val_steps: int = 20
    """DDIM steps of the validation samples."""
    val_noise_level: int = 20
    """LR noise level of the validation samples."""
    lpips_weights: Optional[Path] = None
    """LPIPS-alex ``.npz`` for ``build_lpips`` (None: ``../shared/metrics/lpips_alex_features.npz`` beside the
    checkout if present, else torchvision's download); LPIPS is skipped if it cannot be built."""
    save_every_minutes: float = 3.0
    """Save the checkpoint and export the model this often (and at the end)."""
    log_every: int = 50
    """Append the mean loss to train_log.csv every this many steps."""
    print_every_seconds: float = 30.0
    """Print a plain progress line this often (for logs without a terminal)."""
    terms: str = (
        "Trained on the photos in {images}; the weights inherit the terms of those photos (see docs/embedded_prior.md)."
    )
    """Licence / terms note written into the exported pixel_prior.json ({images} is replaced by the folder)."""


# ----------------------------------------------------------------------------------------------------------------
# Images and data
# ----------------------------------------------------------------------------------------------------------------


class _FileDataset(Dataset):
    """Decodes image files (for the parallel RAM cache)."""

    def __init__(self, paths: Sequence[Path], min_side: int) -> None:
        self.paths = list(paths)
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return load_rgb_uint8(self.paths[index], self.min_side)


def cache_images(paths: Sequence[Path], min_side: int, num_workers: int) -> List[Tensor]:
    """Decode every image once (``num_workers`` processes) into a list of uint8 tensors."""
    loader = DataLoader(_FileDataset(paths, min_side), batch_size=None, shuffle=False, num_workers=num_workers)
    return [img for img in loader]


def gaussian_blur(image: Float[Tensor, "C H W"], sigma: float) -> Float[Tensor, "C H W"]:
    """Separable Gaussian blur (reflect padding), kernel radius ``ceil(3 sigma)``."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = image.shape[0]
    img = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    img = F.conv2d(img, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    img = F.conv2d(img, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return img[0]


def jpeg_roundtrip(image: Float[Tensor, "3 H W"], quality: int) -> Float[Tensor, "3 H W"]:
    """Compress and decode an image in [0, 1] as JPEG at ``quality``."""
    from PIL import Image

    arr = (image.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
    return out.view(image.shape[1], image.shape[2], 3).permute(2, 0, 1).float() / 255.0


def make_lr(
    hr: Float[Tensor, "3 H W"], cfg: PriorTrainConfig, generator: Optional[torch.Generator] = None
) -> Float[Tensor, "3 h w"]:
    """The LR crop of an HR crop in [0, 1]: (optional blur) -> x4 area downsampling -> (optional noise, JPEG)
    -> 8-bit quantisation (``quantize_lr``)."""

    def u() -> float:
        return float(torch.rand((), generator=generator))

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * u()

    if cfg.degrade and u() < cfg.blur_prob:
        hr = gaussian_blur(hr, uniform(*cfg.blur_sigma))
    lr = F.avg_pool2d(hr[None], 4)[0]
    if cfg.degrade and u() < cfg.noise_prob:
        lr = lr + uniform(*cfg.noise_sigma) * torch.randn(lr.shape, generator=generator)
    if cfg.degrade and u() < cfg.jpeg_prob:
        lr = jpeg_roundtrip(lr, int(round(uniform(*cfg.jpeg_quality))))
    lr = lr.clamp(0.0, 1.0)
    if cfg.quantize_lr:
        lr = (lr * 255.0).round() / 255.0
    return lr


class CropDataset(Dataset):
    """Random HR crops (and their LR crops) of image ``index`` (cached tensors or files). Randomness comes from the
    worker's torch RNG (seeded per worker by the DataLoader)."""

    def __init__(self, images: Sequence[Any], cfg: PriorTrainConfig) -> None:
        self.images = images
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.images)

    def _image(self, index: int) -> Tensor:
        item = self.images[index]
        if isinstance(item, Tensor):
            return item
        return load_rgb_uint8(item, self.cfg.crop_size if self.cfg.enlarge_small_images else 0)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        c = self.cfg.crop_size
        img = self._image(index)
        _, h, w = img.shape
        y = int(torch.randint(0, h - c + 1, ()))
        x = int(torch.randint(0, w - c + 1, ()))
        hr = img[:, y : y + c, x : x + c]
        if torch.rand(()) < 0.5:
            hr = hr.flip(-1)
        if self.cfg.dihedral:
            if torch.rand(()) < 0.5:
                hr = hr.flip(-2)
            if torch.rand(()) < 0.5:
                hr = hr.transpose(-1, -2)
        hr = hr.contiguous()
        lr = make_lr(hr.float() / 255.0, self.cfg)
        return {"hr": hr, "lr": lr}


def _default_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    return max(0, min(12, (os.cpu_count() or 1) - 2))


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` did (for callers and tests)."""

    start_step: int
    """Step the run started at (> 0 when resumed)."""
    step: int
    """Total optimiser steps after the run."""
    losses: List[float] = field(default_factory=list)
    """Training loss of every step of this run."""
    val_history: List[Dict[str, Any]] = field(default_factory=list)
    """Every validation record (all runs)."""
    stop_reason: str = ""
    """Why the run stopped: ``max_steps``, ``time budget`` or ``interrupted``."""
    model_dir: Optional[Path] = None
    """The exported pixel-prior folder."""
    steps_per_second: float = 0.0
    """Mean training throughput of this run (optimiser steps per second, excluding validation and saving)."""


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sample_noise_levels(batch: int, cfg: PriorTrainConfig, generator: Optional[torch.Generator] = None) -> Tensor:
    """LR noise levels of a batch (CPU long): ``U{0..low_max}`` with probability ``low_prob``, else
    ``U{0..max}``."""
    low = torch.randint(0, cfg.noise_level_low_max + 1, (batch,), generator=generator)
    full = torch.randint(0, cfg.noise_level_max + 1, (batch,), generator=generator)
    pick_low = torch.rand(batch, generator=generator) < cfg.noise_level_low_prob
    return torch.where(pick_low, low, full)


class _Validator:
    """Fixed validation crops, the bicubic baseline, and DDIM samples of the EMA model."""

    def __init__(self, cfg: PriorTrainConfig, device: torch.device, multiple: int) -> None:

        assert cfg.val_images is not None
        paths = list_images(Path(cfg.val_images).expanduser(), recursive=True)[: cfg.val_count]
        if not paths:
            raise FileNotFoundError(f"no images in {str(cfg.val_images)!r}")
        self.cfg = cfg
        self.device = device
        self.hr: List[Tensor] = []
        for p in paths:
            img = load_rgb_uint8(p).float() / 255.0
            _, h, w = img.shape
            side = min(cfg.val_crop, h - h % multiple, w - w % multiple)
            y, x = (h - side) // 2, (w - side) // 2
            self.hr.append(img[:, y : y + side, x : x + side])
        self.lr = [(area_downsample(hr[None]) * 255.0).round() / 255.0 for hr in self.hr]
        self.lpips = try_build_lpips(cfg.lpips_weights)
        bic = [bicubic_upscale(lr) for lr in self.lr]
        self.baseline = self._metrics(bic)
        CONSOLE.print(
            f"Validation: {len(self.hr)} crops of {str(cfg.val_images)!r}; bicubic PSNR "
            f"{self.baseline['psnr']:.3f} dB"
            + (f", LPIPS {self.baseline['lpips']:.4f}" if self.lpips else " (LPIPS unavailable)")
        )

    def _metrics(self, outputs: List[Tensor]) -> Dict[str, float]:
        ps = [float(psnr(o.cpu(), hr[None], border=4)) for o, hr in zip(outputs, self.hr, strict=True)]
        out = {"psnr": sum(ps) / len(ps)}
        if self.lpips is not None:
            vals = [
                self.lpips(o.to(self.device), hr[None].to(self.device)) for o, hr in zip(outputs, self.hr, strict=True)
            ]
            out["lpips"] = sum(vals) / len(vals)
        return out

    @torch.no_grad()
    def run(self, prior: Any, autocast: contextlib.AbstractContextManager) -> Dict[str, float]:
        from vsdsr_nerfstudio.sr.priors.pixel_prior import ddim_upscale

        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 12345)
        outputs = []
        # same-size crops go in one batch
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, lr in enumerate(self.lr):
            groups.setdefault(tuple(lr.shape[-2:]), []).append(i)
        results: Dict[int, Tensor] = {}
        with autocast:
            for idx in groups.values():
                batch = torch.cat([self.lr[i] for i in idx]).to(self.device)
                sr = ddim_upscale(
                    prior,
                    batch,
                    steps=self.cfg.val_steps,
                    noise_level=self.cfg.val_noise_level,
                    generator=generator,
                    tile=0,
                )
                for j, i in enumerate(idx):
                    results[i] = sr[j : j + 1].float()
        outputs = [results[i] for i in range(len(self.lr))]
        return self._metrics(outputs)


def _lr_at(cfg: PriorTrainConfig, step: int, warmup_start: int = 0) -> float:
    """Linear warm-up over ``warmup_steps`` from ``warmup_start`` (0, or the step of a warm start), then constant."""
    if cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step - warmup_start + 1) / cfg.warmup_steps)


def _warm_start(cfg: PriorTrainConfig, unet: torch.nn.Module, ema: torch.nn.Module) -> Tuple[int, int, float]:
    """Load the weights of the pixel-prior folder ``cfg.init_from`` into ``unet`` and ``ema``; returns the
    (step, samples seen, training seconds) recorded in its metadata."""
    from vsdsr_nerfstudio.sr.priors.pixel_prior import PixelSpacePrior

    folder = Path(cfg.init_from).expanduser()  # type: ignore[arg-type]
    source = PixelSpacePrior.from_pretrained(folder, device="cpu", dtype=torch.float32)
    weights = source.denoiser.state_dict()
    unet.load_state_dict(weights)
    ema.load_state_dict(weights)
    info = source.meta.get("training", {}) or {}
    step, seen = int(info.get("steps", 0)), int(info.get("samples_seen", 0))
    CONSOLE.print(
        f"Warm start from {str(folder)!r} (step {step}, {seen} crops): fresh optimiser, "
        f"{cfg.warmup_steps} warm-up steps."
    )
    return step, seen, float(info.get("train_minutes", 0.0)) * 60.0


def _write_val_logs(output: Path, history: List[Dict[str, Any]]) -> None:
    atomic_write_text(output / "val_log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    keys: List[str] = []
    for r in history:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in history:
        writer.writerow(r)
    atomic_write_text(output / "val_log.csv", buf.getvalue())


def _config_dict(cfg: PriorTrainConfig) -> Dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


@dataclass
class TrainState:
    """What a run changes as it goes: the weights, the optimiser, the counters (all saved in the checkpoint) and
    the measured durations of a save and a validation (the loop keeps time for them before the deadline)."""

    unet: torch.nn.Module
    """The trained UNet (fp32 master weights)."""
    ema: torch.nn.Module
    """EMA of the weights (what gets exported and validated)."""
    optimizer: torch.optim.Optimizer
    """AdamW over ``unet``."""
    step: int = 0
    """Optimiser steps so far (across resumed runs)."""
    samples_seen: int = 0
    """HR crops seen so far."""
    train_seconds: float = 0.0
    """Training wall time so far (excluding validation and saving)."""
    warmup_start: int = 0
    """Step the learning-rate warm-up counts from (0, or the step of a warm start)."""
    val_history: List[Dict[str, Any]] = field(default_factory=list)
    """Every validation record."""
    save_seconds: float = 20.0
    """Duration of the last save (a guess until measured)."""
    val_seconds: float = 30.0
    """Duration of the last validation (a guess until measured)."""


@dataclass
class TrainRun:
    """The fixed parts of a run."""

    cfg: PriorTrainConfig
    """The configuration (preset resolved from a checkpoint or ``--init-from``)."""
    device: torch.device
    """Where the UNet trains."""
    output: Path
    """The output folder."""
    paths: List[Path]
    """The training images."""
    scheduler: Any
    """Training-schedule ``DDPMScheduler``."""
    low_res_scheduler: Any
    """LR-noising ``DDPMScheduler``."""
    deadline: float
    """``time.monotonic()`` by which the process must have saved (``inf``: no budget)."""
    validator: Optional["_Validator"] = None
    """Validation crops and the bicubic baseline, if ``val_images``."""
    val_prior: Any = None
    """A ``PixelSpacePrior`` around the live EMA weights, for validation."""

    @property
    def ckpt_path(self) -> Path:
        return self.output / CHECKPOINT_NAME

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA with ``mixed_precision``, else nothing."""
        if self.device.type == "cuda" and self.cfg.mixed_precision:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def training_loss(
    forward: Callable[..., Any],
    hr: Float[Tensor, "B 3 H W"],
    lr: Float[Tensor, "B 3 h w"],
    levels: Tensor,
    scheduler: Any,
    low_res_scheduler: Any,
    generator: torch.Generator,
    autocast: contextlib.AbstractContextManager,
    channels_last: bool = False,
) -> Tensor:
    """The denoiser's training loss on a batch, built from ``sr/core/objectives`` and the priors' shared LR noising:
    ``t ~ U{0..T-1}``, ``z_t = q_sample(pixel_encode(hr))``, the LR conditioning noised at ``levels``
    (``noise_lr_images``), MSE to ``training_target`` (v for this schedule)."""
    from vsdsr_nerfstudio.sr.core.objectives import q_sample, schedule_coefficients, training_target
    from vsdsr_nerfstudio.sr.priors.pixel_prior import MAX_NOISE_LEVEL, pixel_encode
    from vsdsr_nerfstudio.sr.priors.utils import noise_lr_images

    device = hr.device
    alphas_cumprod = scheduler.alphas_cumprod.to(device, torch.float32)
    z0 = pixel_encode(hr)
    t = torch.randint(0, int(alphas_cumprod.shape[0]), (z0.shape[0],), device=device, generator=generator)
    eps = torch.randn(z0.shape, device=device, generator=generator)
    a_t, s_t = schedule_coefficients(alphas_cumprod, t)
    z_t = q_sample(z0, eps, a_t, s_t)
    target = training_target(z0, eps, a_t, s_t, scheduler.config.prediction_type)
    low_res_ac = low_res_scheduler.alphas_cumprod.to(device, torch.float32)
    y = noise_lr_images(lr, levels, low_res_ac, MAX_NOISE_LEVEL, generator)
    x = torch.cat([z_t, y], dim=1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast:
        pred = forward(x, t, encoder_hidden_states=None, class_labels=levels, return_dict=False)[0]
    return F.mse_loss(pred.float(), target)


# ----------------------------------------------------------------------------------------------------------------
# Start: inputs, checkpoint, state
# ----------------------------------------------------------------------------------------------------------------


def check_training_images(cfg: PriorTrainConfig) -> List[Path]:
    """The training images, checked before anything is written: the folder must hold images; images smaller than
    the HR crop are refused (named, with the minimum size) unless ``enlarge_small_images``."""
    paths = list_images(Path(cfg.images).expanduser(), recursive=True)
    if not paths:
        raise FileNotFoundError(
            f"no images in {str(cfg.images)!r} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    small = []
    for p in paths:
        w, h = image_size(p)
        if min(w, h) < cfg.crop_size:
            small.append((p, w, h))
    if small and not cfg.enlarge_small_images:
        shown = ", ".join(f"{p.name} ({w}x{h})" for p, w, h in small[:5]) + (", ..." if len(small) > 5 else "")
        raise ValueError(
            f"{len(small)} of {len(paths)} training images in {str(cfg.images)!r} are smaller than the "
            f"{cfg.crop_size}x{cfg.crop_size} HR crop (minimum size {cfg.crop_size} px on the short side): {shown}. "
            "They would be enlarged by bicubic and used as HR targets with no real detail. Remove them, lower "
            "--crop-size, or pass --enlarge-small-images to use them anyway."
        )
    if small:
        CONSOLE.print(f"[yellow]{len(small)} training images are enlarged (bicubic) to the {cfg.crop_size} px crop.")
    return paths


def _read_checkpoint(cfg: PriorTrainConfig, output: Path) -> Tuple[PriorTrainConfig, Optional[Dict[str, Any]]]:
    """The checkpoint to resume (None for a new run) and the config with the preset it (or ``--init-from``) holds."""
    ckpt_path = output / CHECKPOINT_NAME
    state: Optional[Dict[str, Any]] = None
    if ckpt_path.exists():
        if not cfg.resume:
            raise FileExistsError(f"{str(ckpt_path)!r} exists: pass --resume to continue it, or use another --output")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')} != {CHECKPOINT_VERSION}")
        if cfg.init_from is not None:
            CONSOLE.print(f"[yellow]--init-from is ignored: resuming {str(ckpt_path)!r}.")
        if state["preset"] != cfg.preset:
            CONSOLE.print(f"[yellow]Resuming a {state['preset']!r} checkpoint (ignoring --preset {cfg.preset}).")
            cfg = replace(cfg, preset=state["preset"])
    elif cfg.resume:
        CONSOLE.print(f"No checkpoint in {str(output)!r}: starting a new run.")
    if state is None and cfg.init_from is not None:
        from vsdsr_nerfstudio.sr.priors.loading import check_pixel_folder

        folder = check_pixel_folder(cfg.init_from)
        init_meta = json.loads((folder / "pixel_prior.json").read_text())
        if init_meta.get("preset", cfg.preset) != cfg.preset:
            CONSOLE.print(
                f"[yellow]--init-from holds a {init_meta['preset']!r} prior (ignoring --preset {cfg.preset})."
            )
            cfg = replace(cfg, preset=init_meta["preset"])
    return cfg, state


def _crop_multiple(preset: str) -> int:
    from vsdsr_nerfstudio.sr.priors.pixel_prior import PIXEL_UNET_PRESETS

    return 4 * 2 ** (len(PIXEL_UNET_PRESETS[preset]["block_out_channels"]) - 1)


def _new_state(cfg: PriorTrainConfig, device: torch.device, blob: Optional[Dict[str, Any]]) -> TrainState:
    """Fresh weights, or the checkpoint ``blob``'s, or a warm start from ``--init-from``."""
    from vsdsr_nerfstudio.sr.priors.pixel_prior import build_pixel_unet

    unet = build_pixel_unet(cfg.preset, cfg.seed, "cpu").to(device)
    if device.type == "cuda" and cfg.channels_last:  # the inputs follow in the step (x.contiguous(channels_last))
        unet.to(memory_format=torch.channels_last)
    unet.train()
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
    )
    state = TrainState(unet=unet, ema=ema, optimizer=optimizer)
    if blob is not None:
        unet.load_state_dict(blob["unet"])
        ema.load_state_dict(blob["ema"])
        optimizer.load_state_dict(blob["optimizer"])
        state.step, state.samples_seen = int(blob["step"]), int(blob["samples_seen"])
        state.train_seconds = float(blob.get("train_seconds", 0.0))
        state.val_history = list(blob.get("val_history", []))
        state.warmup_start = int(blob.get("warmup_start", 0))
        CONSOLE.print(
            f"Resumed at step {state.step} ({state.samples_seen} crops, "
            f"{state.train_seconds / 60:.1f} min of training so far)."
        )
    elif cfg.init_from is not None:
        state.step, state.samples_seen, state.train_seconds = _warm_start(cfg, unet, ema)
        state.warmup_start = state.step
    return state


def _make_loader(cfg: PriorTrainConfig, paths: List[Path], workers: int, step: int, cuda: bool) -> DataLoader:
    """Random crops of the (cached) images, with replacement, seeded by ``seed`` and ``step``."""
    t0 = time.monotonic()
    min_side = cfg.crop_size if cfg.enlarge_small_images else 0
    images: Sequence[Any] = cache_images(paths, min_side, workers) if cfg.cache_images else paths
    if cfg.cache_images:
        mb = sum(im.numel() for im in images) / 1e6  # type: ignore[union-attr]
        CONSOLE.print(
            f"Cached {len(paths)} images ({mb:.0f} MB) in {time.monotonic() - t0:.1f} s with {workers} workers."
        )
    torch.manual_seed(cfg.seed * 1000003 + step)
    sampler = RandomSampler(
        range(len(paths)),
        replacement=True,
        num_samples=10**9,
        generator=torch.Generator().manual_seed(cfg.seed * 7919 + step),
    )
    return DataLoader(
        CropDataset(images, cfg),
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def start_run(cfg: PriorTrainConfig) -> Tuple[TrainRun, TrainState, DataLoader]:
    """Everything before the first step. Inputs are checked before the output folder is created; a failure after
    that removes the folder again if this call created it and it is still empty."""
    from vsdsr_nerfstudio.sr.priors.pixel_prior import PixelSpacePrior, _make_schedulers

    output = Path(cfg.output).expanduser()
    cfg, blob = _read_checkpoint(cfg, output)
    multiple = _crop_multiple(cfg.preset)
    if cfg.crop_size % multiple:
        raise ValueError(f"crop_size {cfg.crop_size} must be a multiple of {multiple} for preset {cfg.preset!r}")
    paths = check_training_images(cfg)
    if cfg.val_images is not None and not list_images(Path(cfg.val_images).expanduser(), recursive=True):
        raise FileNotFoundError(f"no images in {str(cfg.val_images)!r} (--val-images)")
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        device = _resolve_device(cfg.device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        state = _new_state(cfg, device, blob)
        deadline = _PROCESS_T0 + cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else math.inf
        scheduler, low_res = _make_schedulers()
        run = TrainRun(cfg, device, output, paths, scheduler, low_res, deadline)
        loader = _make_loader(cfg, paths, _default_workers(cfg.num_workers), state.step, device.type == "cuda")
        if cfg.val_images is not None:
            run.validator = _Validator(cfg, device, multiple)
            run.val_prior = PixelSpacePrior(
                state.ema, scheduler, low_res, device=device, dtype=torch.float32, source="EMA", freeze=True
            )
    except BaseException:
        if created and output.is_dir() and not any(output.iterdir()):
            output.rmdir()
        raise
    return run, state, loader


# ----------------------------------------------------------------------------------------------------------------
# Save, validate
# ----------------------------------------------------------------------------------------------------------------


def _export_meta(run: TrainRun, state: TrainState) -> Dict[str, Any]:
    cfg = run.cfg
    return {
        "preset": cfg.preset,
        "terms": cfg.terms.replace("{images}", str(cfg.images)),
        "training": {
            "steps": state.step,
            "samples_seen": state.samples_seen,
            "train_minutes": round(state.train_seconds / 60.0, 2),
            "images": str(cfg.images),
            "num_images": len(run.paths),
            "crop_size": cfg.crop_size,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "ema_decay": cfg.ema_decay,
            "degrade": cfg.degrade,
            "noise_level_max": cfg.noise_level_max,
            "weights": "EMA",
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        "validation": state.val_history[-1] if state.val_history else None,
    }


def save_run(run: TrainRun, state: TrainState, reason: str) -> None:
    """Write ``checkpoint.pt`` (atomically) and export the EMA weights as ``model/`` (built beside it, swapped in);
    records how long it took in ``state.save_seconds``."""
    from vsdsr_nerfstudio.sr.priors.pixel_prior import save_pixel_prior

    t = time.monotonic()
    blob = {
        "version": CHECKPOINT_VERSION,
        "preset": run.cfg.preset,
        "step": state.step,
        "samples_seen": state.samples_seen,
        "train_seconds": state.train_seconds,
        "warmup_start": state.warmup_start,
        "unet": {k: v.detach().cpu() for k, v in state.unet.state_dict().items()},
        "ema": {k: v.detach().cpu() for k, v in state.ema.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "val_history": state.val_history,
        "config": _config_dict(run.cfg),
    }
    atomic_torch_save(blob, run.ckpt_path)
    tmp = run.output / f"{MODEL_DIR_NAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pixel_prior(
        tmp, state.ema, run.scheduler, run.low_res_scheduler, dtype=torch.float16, meta=_export_meta(run, state)
    )
    replace_dir(tmp, run.output / MODEL_DIR_NAME)
    state.save_seconds = time.monotonic() - t
    CONSOLE.print(
        f"Saved step {state.step} ({reason}) in {state.save_seconds:.1f} s: {str(run.ckpt_path)!r}, "
        f"{str(run.output / MODEL_DIR_NAME)!r}"
    )


def validate_run(run: TrainRun, state: TrainState) -> None:
    """DDIM samples of the EMA weights vs bicubic on the validation crops; appended to ``state.val_history`` and
    the val logs; records how long it took in ``state.val_seconds``."""
    assert run.validator is not None and run.val_prior is not None
    cfg, validator = run.cfg, run.validator
    t = time.monotonic()
    metrics = validator.run(run.val_prior, run.autocast())
    state.val_seconds = time.monotonic() - t
    record: Dict[str, Any] = {
        "step": state.step,
        "samples_seen": state.samples_seen,
        "train_minutes": round(state.train_seconds / 60.0, 3),
        "ddim_steps": cfg.val_steps,
        "noise_level": cfg.val_noise_level,
        "psnr": round(metrics["psnr"], 4),
        "psnr_bicubic": round(validator.baseline["psnr"], 4),
    }
    if "lpips" in metrics:
        record["lpips"] = round(metrics["lpips"], 5)
        record["lpips_bicubic"] = round(validator.baseline["lpips"], 5)
    state.val_history.append(record)
    _write_val_logs(run.output, state.val_history)
    CONSOLE.print(
        f"[bold]val[/bold] step {state.step}: PSNR {record['psnr']:.3f} dB (bicubic {record['psnr_bicubic']:.3f})"
        + (f", LPIPS {record['lpips']:.4f} (bicubic {record['lpips_bicubic']:.4f})" if "lpips" in record else "")
        + f" [{state.val_seconds:.1f} s]"
    )


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _LoopClock:
    """Timing of the loop: the step time (EMA), this run's training seconds, the last save and print."""

    step_time: float = 0.0
    run_seconds: float = 0.0
    last_save: float = field(default_factory=time.monotonic)
    last_print: float = field(default_factory=time.monotonic)


def _optimizer_step(run: TrainRun, state: TrainState, forward: Any, batch: Dict[str, Tensor], gens: Tuple) -> float:
    """One optimiser step (loss, backward, clip, AdamW, EMA); returns the loss."""
    cfg, device = run.cfg, run.device
    noise_gen, level_gen = gens
    hr = batch["hr"].to(device, non_blocking=True).float() / 255.0
    lr = batch["lr"].to(device, non_blocking=True).float()
    levels = sample_noise_levels(hr.shape[0], cfg, level_gen).to(device)
    for g in state.optimizer.param_groups:
        g["lr"] = _lr_at(cfg, state.step, state.warmup_start)
    channels_last = device.type == "cuda" and cfg.channels_last
    loss = training_loss(
        forward, hr, lr, levels, run.scheduler, run.low_res_scheduler, noise_gen, run.autocast(), channels_last
    )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.unet.parameters(), cfg.grad_clip)
    state.optimizer.step()
    decay = min(cfg.ema_decay, (1 + state.step) / (10 + state.step))
    with torch.no_grad():
        ema_p = list(state.ema.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in state.unet.parameters()], 1.0 - decay)
    return float(loss.detach())  # syncs: the step time is real


def _log_row(writer: Any, cfg: PriorTrainConfig, state: TrainState, window: List[float], step_time: float) -> None:
    writer.writerow(
        [
            state.step,
            state.samples_seen,
            f"{sum(window) / len(window):.6f}",
            f"{_lr_at(cfg, state.step - 1, state.warmup_start):.3g}",
            f"{1.0 / max(step_time, 1e-9):.2f}",
            f"{state.train_seconds / 60:.3f}",
        ]
    )


def _after_step(run: TrainRun, state: TrainState, clock: _LoopClock) -> None:
    """Periodic validation (if it fits in the budget) and periodic saving."""
    cfg = run.cfg
    if run.validator is not None and cfg.val_every > 0 and state.step % cfg.val_every == 0:
        if time.monotonic() + state.val_seconds * 1.5 + state.save_seconds * 1.5 + 10.0 < run.deadline:
            validate_run(run, state)
    if time.monotonic() - clock.last_save > cfg.save_every_minutes * 60.0:
        save_run(run, state, "periodic")
        clock.last_save = time.monotonic()


def _loop(run: TrainRun, state: TrainState, loader: DataLoader, result: TrainResult, log: Any) -> Tuple[str, float]:
    """Train until ``max_steps`` or the time budget; returns (stop reason, training seconds of this run)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    cfg, clock, window = run.cfg, _LoopClock(), []
    forward = torch.compile(state.unet) if cfg.compile else state.unet
    gens = (
        torch.Generator(device=run.device).manual_seed(cfg.seed * 31 + state.step + 1),
        torch.Generator().manual_seed(cfg.seed * 37 + state.step + 2),
    )
    t_start = time.monotonic()
    timed = math.isfinite(run.deadline)
    total = (run.deadline - t_start) if timed else (cfg.max_steps - state.step if cfg.max_steps else None)
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), TimeElapsedColumn(),
                        console=CONSOLE, transient=False)  # fmt: skip
    task = progress.add_task("training", total=total)
    data_iter = iter(loader)
    with progress:
        while True:
            if cfg.max_steps > 0 and state.step >= cfg.max_steps:
                return "max_steps", clock.run_seconds
            if time.monotonic() + clock.step_time * 2 + state.save_seconds * 1.5 + 5.0 > run.deadline:
                return "time budget", clock.run_seconds
            t_step = time.monotonic()
            loss = _optimizer_step(run, state, forward, next(data_iter), gens)
            state.step += 1
            state.samples_seen += cfg.batch_size
            dt = time.monotonic() - t_step
            clock.step_time = dt if clock.step_time == 0.0 else 0.9 * clock.step_time + 0.1 * dt
            state.train_seconds += dt
            clock.run_seconds += dt
            result.losses.append(loss)
            window.append(loss)
            if state.step % cfg.log_every == 0:
                _log_row(log[0], cfg, state, window, clock.step_time)
                log[1].flush()
                window = []
            speed = 1.0 / max(clock.step_time, 1e-9)
            desc = f"step {state.step}  loss {loss:.4f}  {speed:.1f} it/s  {state.samples_seen} crops"
            if timed:
                progress.update(task, completed=time.monotonic() - t_start, description=desc)
            else:
                progress.update(task, advance=1, description=desc)
            if time.monotonic() - clock.last_print > cfg.print_every_seconds:
                clock.last_print = time.monotonic()
                CONSOLE.print(desc, highlight=False)
            _after_step(run, state, clock)


def train(cfg: PriorTrainConfig) -> TrainResult:
    """Run (or continue) a training run; see the module docstring. Returns a :class:`TrainResult`."""
    run, state, loader = start_run(cfg)
    cfg = run.cfg
    log_path = run.output / "train_log.csv"
    new_log = not log_path.exists()
    n_params = sum(p.numel() for p in state.unet.parameters())
    CONSOLE.print(
        f"Training the pixel prior ({cfg.preset}: {n_params / 1e6:.2f} M parameters) on {run.device} from "
        f"step {state.step}: {len(run.paths)} images, batch {cfg.batch_size} x {cfg.crop_size}^2 HR crops, "
        f"{_default_workers(cfg.num_workers)} workers"
        + (f", budget {cfg.max_minutes:g} min" if cfg.max_minutes > 0 else "")
        + (f", until step {cfg.max_steps}" if cfg.max_steps > 0 else "")
    )
    result = TrainResult(start_step=state.step, step=state.step)
    stop_reason, run_seconds = "", 0.0
    with open(log_path, "a", newline="") as log_file:
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(["step", "samples_seen", "loss", "lr", "steps_per_s", "train_minutes"])
        try:
            stop_reason, run_seconds = _loop(run, state, loader, result, (writer, log_file))
        except KeyboardInterrupt:
            stop_reason = "interrupted"
            CONSOLE.print("[yellow]Interrupted: saving.")
    result.step, result.stop_reason = state.step, stop_reason
    result.steps_per_second = (state.step - result.start_step) / run_seconds if run_seconds > 0 else 0.0
    _finish(run, state, stop_reason)
    result.val_history = state.val_history
    result.model_dir = run.output / MODEL_DIR_NAME
    CONSOLE.print(
        f"Stopped at step {state.step} ({stop_reason}); {result.steps_per_second:.2f} steps/s "
        f"({result.steps_per_second * cfg.batch_size:.0f} crops/s) this run; "
        f"{time.monotonic() - _PROCESS_T0:.0f} s since process start."
    )
    return result


def _finish(run: TrainRun, state: TrainState, stop_reason: str) -> None:
    """Final validation (if it fits and this step was not validated yet), then save."""
    history = state.val_history
    if run.validator is not None and (not history or history[-1]["step"] != state.step) and state.step > 0:
        if time.monotonic() + state.val_seconds * 1.5 + state.save_seconds * 1.5 + 5.0 < run.deadline:
            validate_run(run, state)
        else:
            CONSOLE.print("[yellow]Skipping the final validation: it would not fit in the time budget.")
    save_run(run, state, stop_reason or "end")


def main() -> None:
    """Console script ``vsdsr-train-prior``: bad inputs end with one line on stderr (exit status 1)."""
    import sys

    import tyro

    from vsdsr_nerfstudio.data.images import ImageReadError
    from vsdsr_nerfstudio.sr.priors.loading import PriorLoadError

    cfg = tyro.cli(PriorTrainConfig, description=__doc__.split("\n\n")[0] if __doc__ else None)
    try:
        train(cfg)
    except (ImageReadError, FileExistsError, FileNotFoundError, PriorLoadError, ValueError) as err:
        sys.exit(f"vsdsr-train-prior: error: {err}")


if __name__ == "__main__":
    main()
