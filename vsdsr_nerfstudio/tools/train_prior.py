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
from jaxtyping import Float, UInt8  # noqa: E402
from nerfstudio.utils.rich_utils import CONSOLE  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File extensions (case-insensitive) that count as images."""

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
    """Folder of training photos (searched recursively for png/jpg/jpeg/bmp/tif/webp)."""
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


def list_images(folder: Path) -> List[Path]:
    """Image files under ``folder`` (recursive), sorted."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_rgb_uint8(path: Path, min_side: int = 0) -> UInt8[Tensor, "3 H W"]:
    """An image file as a ``(3, H, W)`` uint8 tensor (RGB); upscaled (bicubic) so its short side is at least
    ``min_side``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if min_side and min(im.size) < min_side:
            s = min_side / min(im.size)
            im = im.resize((max(min_side, round(im.size[0] * s)), max(min_side, round(im.size[1] * s))), Image.BICUBIC)
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        return data.view(im.size[1], im.size[0], 3).permute(2, 0, 1).contiguous()


def save_rgb(image: Float[Tensor, "3 H W"], path: Path) -> None:
    """Save an image in [0, 1] as an 8-bit file (format from the extension)."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


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
        return item if isinstance(item, Tensor) else load_rgb_uint8(item, self.cfg.crop_size)

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
# Metrics (shared with bench/sr_prior_eval.py)
# ----------------------------------------------------------------------------------------------------------------


def psnr(a: Float[Tensor, "B 3 H W"], b: Float[Tensor, "B 3 H W"], border: int = 0) -> Float[Tensor, " B"]:
    """PSNR (dB) per image of images in [0, 1], ``border`` pixels removed on every side."""
    if border > 0:
        a = a[..., border:-border, border:-border]
        b = b[..., border:-border, border:-border]
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(1.0 / mse.clamp(min=1e-20))).float()


DEFAULT_LPIPS_WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "metrics" / "lpips_alex_features.npz"
"""LPIPS-alex weights used when none are given and this file exists (the workspace's shared copy, offline)."""


def try_build_lpips(weights: Optional[Path] = None) -> Optional[Callable[[Tensor, Tensor], float]]:
    """``(a, b) -> mean LPIPS`` of images in [0, 1] via ``vsdsr_nerfstudio.metrics.lpips.build_lpips`` if that
    module exists and builds (``weights``, else :data:`DEFAULT_LPIPS_WEIGHTS` if present, else torchmetrics'
    default download); ``None`` otherwise (the caller skips LPIPS)."""
    if weights is None and DEFAULT_LPIPS_WEIGHTS.is_file():
        weights = DEFAULT_LPIPS_WEIGHTS
    try:
        from vsdsr_nerfstudio.metrics.lpips import build_lpips  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        metric = build_lpips(weights)
    except Exception as err:  # noqa: BLE001 - optional metric
        CONSOLE.print(f"[yellow]LPIPS unavailable: {type(err).__name__}: {err}")
        return None
    if metric is None:
        return None

    def compute(a: Tensor, b: Tensor) -> float:
        nonlocal metric
        metric = metric.to(a.device)
        with torch.no_grad():
            value = metric(a.clamp(0, 1).float(), b.clamp(0, 1).float())
        if hasattr(metric, "reset"):
            metric.reset()
        return float(value)

    return compute


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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one (old moved aside, then deleted)."""
    old = final.with_name(final.name + f".old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


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
        from vsdsr_nerfstudio.sr.priors.pixel_prior import area_downsample, bicubic_upscale

        assert cfg.val_images is not None
        paths = list_images(cfg.val_images)[: cfg.val_count]
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
    _atomic_write_text(output / "val_log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    keys: List[str] = []
    for r in history:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in history:
        writer.writerow(r)
    _atomic_write_text(output / "val_log.csv", buf.getvalue())


def _config_dict(cfg: PriorTrainConfig) -> Dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


def train(cfg: PriorTrainConfig) -> TrainResult:
    """Run (or continue) a training run; see the module docstring. Returns a :class:`TrainResult`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vsdsr_nerfstudio.sr.core.objectives import schedule_coefficients
    from vsdsr_nerfstudio.sr.priors.pixel_prior import (
        PIXEL_UNET_PRESETS,
        PixelSpacePrior,
        _make_schedulers,
        build_pixel_unet,
        pixel_encode,
        save_pixel_prior,
    )

    t_start = time.monotonic()
    deadline = _PROCESS_T0 + cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else math.inf
    output = Path(cfg.output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
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
        init_meta = json.loads((Path(cfg.init_from).expanduser() / "pixel_prior.json").read_text())
        if init_meta.get("preset", cfg.preset) != cfg.preset:
            CONSOLE.print(
                f"[yellow]--init-from holds a {init_meta['preset']!r} prior (ignoring --preset {cfg.preset})."
            )
            cfg = replace(cfg, preset=init_meta["preset"])

    device = _resolve_device(cfg.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    multiple = 4 * 2 ** (len(PIXEL_UNET_PRESETS[cfg.preset]["block_out_channels"]) - 1)
    if cfg.crop_size % multiple:
        raise ValueError(f"crop_size {cfg.crop_size} must be a multiple of {multiple} for preset {cfg.preset!r}")

    # -- model, EMA, optimiser -------------------------------------------------------------------------------------
    unet = build_pixel_unet(cfg.preset, cfg.seed, "cpu").to(device)
    unet.train()
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
    )
    step, samples_seen, train_seconds = 0, 0, 0.0
    val_history: List[Dict[str, Any]] = []
    if state is not None:
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, samples_seen = int(state["step"]), int(state["samples_seen"])
        train_seconds = float(state.get("train_seconds", 0.0))
        val_history = list(state.get("val_history", []))
        CONSOLE.print(
            f"Resumed {str(ckpt_path)!r} at step {step} ({samples_seen} crops, "
            f"{train_seconds / 60:.1f} min of training so far)."
        )
    warmup_start = int(state.get("warmup_start", 0)) if state is not None else 0
    if state is None and cfg.init_from is not None:
        step, samples_seen, train_seconds = _warm_start(cfg, unet, ema)
        warmup_start = step
    start_step = step
    if cuda and cfg.channels_last:
        unet.to(memory_format=torch.channels_last)
    forward_unet = torch.compile(unet) if cfg.compile else unet
    scheduler, low_res_scheduler = _make_schedulers()
    alphas_cumprod = scheduler.alphas_cumprod.to(device, torch.float32)
    low_res_ac = low_res_scheduler.alphas_cumprod.to(device, torch.float32)
    T = int(alphas_cumprod.shape[0])
    n_params = sum(p.numel() for p in unet.parameters())

    def autocast() -> contextlib.AbstractContextManager:
        if cuda and cfg.mixed_precision:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- data ------------------------------------------------------------------------------------------------------
    workers = _default_workers(cfg.num_workers)
    paths = list_images(cfg.images)
    if not paths:
        raise FileNotFoundError(f"no images in {str(cfg.images)!r}")
    t0 = time.monotonic()
    images: Sequence[Any] = cache_images(paths, cfg.crop_size, workers) if cfg.cache_images else paths
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
    loader = DataLoader(
        CropDataset(images, cfg),
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed * 31 + step + 1)
    level_gen = torch.Generator().manual_seed(cfg.seed * 37 + step + 2)

    validator = _Validator(cfg, device, multiple) if cfg.val_images is not None else None
    val_prior = None
    if validator is not None:
        val_prior = PixelSpacePrior(
            ema, scheduler, low_res_scheduler, device=device, dtype=torch.float32, source="EMA", freeze=True
        )

    # -- save / validate ------------------------------------------------------------------------------------------
    save_seconds = [20.0]
    val_seconds = [30.0]

    def save(reason: str) -> None:
        t = time.monotonic()
        blob = {
            "version": CHECKPOINT_VERSION,
            "preset": cfg.preset,
            "step": step,
            "samples_seen": samples_seen,
            "train_seconds": train_seconds,
            "warmup_start": warmup_start,
            "unet": {k: v.detach().cpu() for k, v in unet.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "val_history": val_history,
            "config": _config_dict(cfg),
        }
        _atomic_torch_save(blob, ckpt_path)
        tmp = output / f"{MODEL_DIR_NAME}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        last_val = val_history[-1] if val_history else None
        meta = {
            "preset": cfg.preset,
            "terms": cfg.terms.replace("{images}", str(cfg.images)),
            "training": {
                "steps": step,
                "samples_seen": samples_seen,
                "train_minutes": round(train_seconds / 60.0, 2),
                "images": str(cfg.images),
                "num_images": len(paths),
                "crop_size": cfg.crop_size,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "ema_decay": cfg.ema_decay,
                "degrade": cfg.degrade,
                "noise_level_max": cfg.noise_level_max,
                "weights": "EMA",
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            "validation": last_val,
        }
        save_pixel_prior(tmp, ema, scheduler, low_res_scheduler, dtype=torch.float16, meta=meta)
        _replace_dir(tmp, output / MODEL_DIR_NAME)
        save_seconds[0] = time.monotonic() - t
        CONSOLE.print(
            f"Saved step {step} ({reason}) in {save_seconds[0]:.1f} s: {str(ckpt_path)!r}, "
            f"{str(output / MODEL_DIR_NAME)!r}"
        )

    def validate() -> None:
        assert validator is not None and val_prior is not None
        t = time.monotonic()
        metrics = validator.run(val_prior, autocast())
        val_seconds[0] = time.monotonic() - t
        record: Dict[str, Any] = {
            "step": step,
            "samples_seen": samples_seen,
            "train_minutes": round(train_seconds / 60.0, 3),
            "ddim_steps": cfg.val_steps,
            "noise_level": cfg.val_noise_level,
            "psnr": round(metrics["psnr"], 4),
            "psnr_bicubic": round(validator.baseline["psnr"], 4),
        }
        if "lpips" in metrics:
            record["lpips"] = round(metrics["lpips"], 5)
            record["lpips_bicubic"] = round(validator.baseline["lpips"], 5)
        val_history.append(record)
        _write_val_logs(output, val_history)
        CONSOLE.print(
            f"[bold]val[/bold] step {step}: PSNR {record['psnr']:.3f} dB (bicubic "
            f"{record['psnr_bicubic']:.3f})"
            + (f", LPIPS {record['lpips']:.4f} (bicubic {record['lpips_bicubic']:.4f})" if "lpips" in record else "")
            + f" [{val_seconds[0]:.1f} s]"
        )

    # -- loop ------------------------------------------------------------------------------------------------------
    log_path = output / "train_log.csv"
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="")
    log_writer = csv.writer(log_file)
    if new_log:
        log_writer.writerow(["step", "samples_seen", "loss", "lr", "steps_per_s", "train_minutes"])
    CONSOLE.print(
        f"Training the pixel prior ({cfg.preset}: {n_params / 1e6:.2f} M parameters) on {device} from "
        f"step {step}: {len(paths)} images, batch {cfg.batch_size} x {cfg.crop_size}^2 HR crops, "
        f"{workers} workers"
        + (f", budget {cfg.max_minutes:g} min" if cfg.max_minutes > 0 else "")
        + (f", until step {cfg.max_steps}" if cfg.max_steps > 0 else "")
    )
    result = TrainResult(start_step=start_step, step=step)
    window: List[float] = []
    last_save = time.monotonic()
    last_print = time.monotonic()
    step_time = 0.0  # EMA of one step's wall time
    run_train_seconds = 0.0
    stop_reason = ""
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=CONSOLE,
        transient=False,
    )
    total = (
        (deadline - time.monotonic()) if math.isfinite(deadline) else (cfg.max_steps - step if cfg.max_steps else None)
    )
    task = progress.add_task("training", total=total)
    data_iter = iter(loader)
    try:
        with progress:
            while True:
                now = time.monotonic()
                if cfg.max_steps > 0 and step >= cfg.max_steps:
                    stop_reason = "max_steps"
                    break
                if now + step_time * 2 + save_seconds[0] * 1.5 + 5.0 > deadline:
                    stop_reason = "time budget"
                    break
                t_step = time.monotonic()
                batch = next(data_iter)
                hr = batch["hr"].to(device, non_blocking=True).float() / 255.0
                lr = batch["lr"].to(device, non_blocking=True).float()
                b = hr.shape[0]
                z0 = pixel_encode(hr)
                t = torch.randint(0, T, (b,), device=device, generator=noise_gen)
                eps = torch.randn(z0.shape, device=device, generator=noise_gen)
                a_t, s_t = schedule_coefficients(alphas_cumprod, t)
                z_t = a_t * z0 + s_t * eps
                target = a_t * eps - s_t * z0
                levels = sample_noise_levels(b, cfg, level_gen).to(device)
                a_k = low_res_ac[levels].view(-1, 1, 1, 1)
                y = a_k.sqrt() * (lr * 2.0 - 1.0) + (1.0 - a_k).sqrt() * torch.randn(
                    lr.shape, device=device, generator=noise_gen
                )
                x = torch.cat([z_t, y], dim=1)
                if cuda and cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for g in optimizer.param_groups:
                    g["lr"] = _lr_at(cfg, step, warmup_start)
                with autocast():
                    pred = forward_unet(x, t, encoder_hidden_states=None, class_labels=levels, return_dict=False)[0]
                loss = F.mse_loss(pred.float(), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
                optimizer.step()
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    ema_p = list(ema.parameters())
                    torch._foreach_lerp_(ema_p, [p.detach() for p in unet.parameters()], 1.0 - decay)
                loss_value = float(loss.detach())  # syncs: the step time below is real
                step += 1
                samples_seen += b
                dt = time.monotonic() - t_step
                step_time = dt if step_time == 0.0 else 0.9 * step_time + 0.1 * dt
                train_seconds += dt
                run_train_seconds += dt
                result.losses.append(loss_value)
                window.append(loss_value)

                if step % cfg.log_every == 0:
                    log_writer.writerow(
                        [
                            step,
                            samples_seen,
                            f"{sum(window) / len(window):.6f}",
                            f"{_lr_at(cfg, step - 1, warmup_start):.3g}",
                            f"{1.0 / max(step_time, 1e-9):.2f}",
                            f"{train_seconds / 60:.3f}",
                        ]
                    )
                    log_file.flush()
                    window = []
                desc = (
                    f"step {step}  loss {loss_value:.4f}  {1.0 / max(step_time, 1e-9):.1f} it/s  {samples_seen} crops"
                )
                if math.isfinite(deadline):
                    progress.update(task, completed=time.monotonic() - t_start, description=desc)
                else:
                    progress.update(task, advance=1, description=desc)
                if time.monotonic() - last_print > cfg.print_every_seconds:
                    last_print = time.monotonic()
                    CONSOLE.print(desc, highlight=False)

                if validator is not None and cfg.val_every > 0 and step % cfg.val_every == 0:
                    if time.monotonic() + val_seconds[0] * 1.5 + save_seconds[0] * 1.5 + 10.0 < deadline:
                        validate()
                if time.monotonic() - last_save > cfg.save_every_minutes * 60.0:
                    save("periodic")
                    last_save = time.monotonic()
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        CONSOLE.print("[yellow]Interrupted: saving.")
    finally:
        log_file.close()
        result.step = step
        result.stop_reason = stop_reason
        result.steps_per_second = (step - start_step) / run_train_seconds if run_train_seconds > 0 else 0.0

    # final validation (if it fits and this step was not validated yet), then save
    if validator is not None and (not val_history or val_history[-1]["step"] != step) and step > 0:
        if time.monotonic() + val_seconds[0] * 1.5 + save_seconds[0] * 1.5 + 5.0 < deadline:
            validate()
        else:
            CONSOLE.print("[yellow]Skipping the final validation: it would not fit in the time budget.")
    save(stop_reason or "end")
    result.val_history = val_history
    result.model_dir = output / MODEL_DIR_NAME
    CONSOLE.print(
        f"Stopped at step {step} ({stop_reason}); {result.steps_per_second:.2f} steps/s "
        f"({result.steps_per_second * cfg.batch_size:.0f} crops/s) this run; "
        f"{time.monotonic() - _PROCESS_T0:.0f} s since process start."
    )
    return result


def main() -> None:
    """Console script ``vsdsr-train-prior``."""
    import tyro

    cfg = tyro.cli(PriorTrainConfig, description=__doc__.split("\n\n")[0] if __doc__ else None)
    train(cfg)


if __name__ == "__main__":
    main()
