"""The SR core alone on fern: how each guidance setting rewrites real fern views, without any NeRF.

    python bench/fern_sr_diagnose.py --data ../shared/data/llff/fern --steps 400 \
        --variants ddim vsd "vsd:t_min=0.02" rsd --json bench/results/fern_sr_diagnose.json

Why: on fern, a shortened ``vsd-sr`` run with the embedded prior scored below the plain NeRF (docs/benchmarks.md).
This separates the SR core from the 3D synchronisation. For each view in ``--views`` (default: the held-out views
0/8/16, whose 4x ground truth exists) the real LR image (``images_8``, 504x378) is upscaled to 2016x1512 by

- ``bicubic`` (the stage's starting point here: a proxy for the NeRF's 4x render of a view it fits well),
- ``ddim``: the prior's own sampler (DDIM, ``--ddim-steps``, LR noise level as the stage), and
- one :class:`~vsdsr_nerfstudio.sr.core.stage.SRStage` per stage variant (``guidance[:field=value,...]``, fields of
  :class:`~vsdsr_nerfstudio.sr.core.stage.SRStageConfig`), run for ``--steps`` steps on all the views together
  from the bicubic images, each view with its real camera, exactly as an upscaling stage does,

and scored against the ground truth (``images/`` box-downsampled x2, as ``ns-eval``): PSNR/SSIM (RGB, as
nerfstudio), LPIPS (AlexNet, offline weights), NIQE (Y), plus the LR consistency (PSNR of the result
area-downsampled x4 against the LR image) and the mean colour offset from the ground truth.

``--batch-size`` defaults to the number of views, one patch per view per step: the coverage a view gets in the
pipeline's stage (16 patches over fern's 17 training views). ``--crop`` takes a centred LR crop (h w) of every view
for quick CPU runs. ``--save-images DIR`` writes every result and a crop montage for eyeballing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import tyro
from jaxtyping import Float
from torch import Tensor

from vsdsr_nerfstudio.data.images import load_rgb_uint8, save_rgb
from vsdsr_nerfstudio.data.llff_dataparser import llff_to_opengl_c2w
from vsdsr_nerfstudio.metrics.lpips import try_build_lpips
from vsdsr_nerfstudio.metrics.psnr import psnr
from vsdsr_nerfstudio.sr.core.stage import SRStageConfig
from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig, is_pixel_prior_folder


@dataclass
class DiagnoseConfig:
    """Run the SR core on real fern views and score it against the 4x ground truth."""

    data: Path = Path("../shared/data/llff/fern")
    """LLFF scene with ``poses_bounds.npy``, ``images_8/`` (the LR inputs) and ``images/`` (or ``images_2/``)."""
    views: Tuple[int, ...] = (0, 8, 16)
    """View indices (sorted file order) to super-resolve; they need ground truth, so any view works."""
    variants: Tuple[str, ...] = ("ddim", "vsd", "rsd", "sds")
    """``ddim`` (the prior's sampler) and stage variants ``guidance[:field=value,...]``."""
    steps: int = 400
    """Stage steps K per variant."""
    ddim_steps: int = 20
    """DDIM steps of the ``ddim`` variant."""
    batch_size: int = 0
    """Patches per stage step (0: one per view)."""
    prior: str = "embedded"
    """``SRPriorConfig.prior``; ``--model-path`` with a pixel-prior folder overrides it."""
    model_path: Optional[str] = None
    """Prior weights folder (None: the prior's default)."""
    dtype: str = "bf16"
    """UNet dtype on a GPU (``SRPriorConfig.unet_dtype``: bf16, fp16 or fp32; always fp32 on a CPU)."""
    crop: Optional[Tuple[int, int]] = None
    """Centred LR crop (h, w) of every view, multiples of 8 (None: whole images)."""
    lpips_weights: Optional[Path] = None
    """LPIPS-AlexNet .npz (None: ../shared/metrics/lpips_alex_features.npz when present)."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cuda`` or ``cpu``."""
    seed: int = 0
    """Seed of the stage and the sampler."""
    json: Optional[Path] = None
    """Write every value here."""
    save_images: Optional[Path] = None
    """Write every result image here (PNG), plus a montage of 256 px crops."""
    extra: Dict[str, str] = field(default_factory=dict)
    """Stage fields applied to every variant (``--extra latent_lr 0.005``)."""


def parse_variant(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"vsd:t_min=0.02,latent_lr=0.005"`` -> ``("vsd", {"guidance": "vsd", "t_min": 0.02, "latent_lr": 0.005})``,
    values typed by the field defaults of :class:`SRStageConfig`."""
    guidance, _, rest = spec.partition(":")
    overrides: Dict[str, Any] = {"guidance": guidance}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = _typed(key, value)
    return guidance, overrides


def _typed(key: str, value: str) -> Any:
    if key not in {f.name for f in dataclasses.fields(SRStageConfig)}:
        raise ValueError(f"unknown SRStageConfig field {key!r}")
    default = getattr(SRStageConfig(), key)
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(default, int) and not isinstance(default, bool):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def load_views(cfg: DiagnoseConfig) -> Tuple[Tensor, Tensor, Tensor, List[str]]:
    """LR images (V, 3, h, w), ground truth (V, 3, 4h, 4w) in [0, 1], c2w (V, 4, 4), file names."""
    from PIL import Image

    from vsdsr_nerfstudio.data.image_io import area_downsample, list_images

    poses = np.load(cfg.data / "poses_bounds.npy")[:, :15].reshape(-1, 3, 5)
    c2w_all = torch.from_numpy(llff_to_opengl_c2w(poses[:, :, :4])).float()
    lr_files = list_images(cfg.data / "images_8")
    gt_dir, gt_factor = (cfg.data / "images_2", 1) if (cfg.data / "images_2").is_dir() else (cfg.data / "images", 2)
    gt_files = list_images(gt_dir)
    lrs, gts, names = [], [], []
    for v in cfg.views:
        lr = load_rgb_uint8(lr_files[v]).float() / 255.0
        with Image.open(gt_files[v]) as im:
            gt_im = area_downsample(im.convert("RGB"), gt_factor)
        gt = torch.from_numpy(np.asarray(gt_im).copy()).permute(2, 0, 1).float() / 255.0
        if tuple(gt.shape[-2:]) != (4 * lr.shape[-2], 4 * lr.shape[-1]):
            raise ValueError(
                f"ground truth {gt_files[v].name} is {tuple(gt.shape[-2:])}, expected 4x the LR {tuple(lr.shape[-2:])}"
            )
        if cfg.crop is not None:
            ch, cw = cfg.crop
            y0, x0 = (lr.shape[-2] - ch) // 2, (lr.shape[-1] - cw) // 2
            lr = lr[:, y0 : y0 + ch, x0 : x0 + cw]
            gt = gt[:, 4 * y0 : 4 * (y0 + ch), 4 * x0 : 4 * (x0 + cw)]
        lrs.append(lr)
        gts.append(gt)
        names.append(lr_files[v].stem)
    return torch.stack(lrs), torch.stack(gts), c2w_all[list(cfg.views)], names


def score(
    sr: Float[Tensor, "V 3 H W"], gt: Float[Tensor, "V 3 H W"], lr: Float[Tensor, "V 3 h w"], lpips: Any, niqe: Any
) -> List[Dict[str, float]]:
    """Per-view metrics of ``sr`` against the ground truth and the LR image."""
    from torchmetrics.functional import structural_similarity_index_measure

    from vsdsr_nerfstudio.data.resample import area_downsample

    rows = []
    for i in range(sr.shape[0]):
        a, b = sr[i : i + 1].clamp(0, 1), gt[i : i + 1]
        row = {
            "psnr": float(psnr(a, b)[0]),
            "ssim": float(structural_similarity_index_measure(a, b, data_range=1.0)),
            "lr_psnr": float(psnr(area_downsample(a), lr[i : i + 1])[0]),
            "color_offset": float((a.mean((-1, -2)) - b.mean((-1, -2))).abs().mean()),
        }
        if lpips is not None:
            row["lpips"] = float(lpips(a, b))
        if niqe is not None:
            with contextlib.suppress(ValueError):
                row["niqe"] = float(niqe(a[0], convert_to="y", crop_border=0))
        rows.append(row)
    return rows


def main(cfg: DiagnoseConfig) -> Dict[str, Any]:
    from nerfstudio.utils.rich_utils import CONSOLE
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from vsdsr_nerfstudio.data.resample import bicubic_upscale
    from vsdsr_nerfstudio.metrics.niqe import calculate_niqe
    from vsdsr_nerfstudio.sr.priors.pixel_prior import ddim_upscale

    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    torch.manual_seed(cfg.seed)
    lr, gt, c2w, names = load_views(cfg)
    bic = bicubic_upscale(lr).clamp(0, 1)
    lpips = try_build_lpips(cfg.lpips_weights)
    if lpips is None:
        CONSOLE.print("[yellow]LPIPS unavailable (no offline weights): skipped.")

    def make_prior():
        pc = SRPriorConfig(prior=cfg.prior, unet_dtype=cfg.dtype)  # type: ignore[arg-type]
        if cfg.model_path is not None:
            pc.model_path = cfg.model_path
            if is_pixel_prior_folder(cfg.model_path):
                pc.prior = "embedded"
        return pc.setup(device=device)

    results: Dict[str, Any] = {"views": names, "variants": {}}
    results["variants"]["bicubic"] = {"per_view": score(bic, gt, lr, lpips, calculate_niqe), "seconds": 0.0}
    if cfg.save_images:
        for i, name in enumerate(names):
            save_rgb(gt[i], cfg.save_images / f"{name}_gt.png")
            save_rgb(bic[i], cfg.save_images / f"{name}_bicubic.png")
    outputs: Dict[str, Tensor] = {"gt": gt, "bicubic": bic}
    for spec in cfg.variants:
        prior = make_prior()
        autocast: Any = (
            torch.autocast("cuda", dtype=prior.dtype)
            if device.type == "cuda" and prior.dtype != torch.float32
            else contextlib.nullcontext()
        )
        t0 = time.perf_counter()
        if spec == "ddim":
            generator = torch.Generator(device=device).manual_seed(cfg.seed)
            with autocast:
                sr = (
                    torch.cat(
                        [
                            ddim_upscale(
                                prior,
                                lr[i : i + 1].to(device),
                                steps=cfg.ddim_steps,
                                noise_level=SRStageConfig().noise_level,
                                generator=generator,
                            )
                            for i in range(lr.shape[0])
                        ]
                    )
                    .float()
                    .cpu()
                )
            settings: Dict[str, Any] = {"steps": cfg.ddim_steps}
        else:
            _, overrides = parse_variant(spec)
            for key, value in cfg.extra.items():
                overrides.setdefault(key, _typed(key, value))
            overrides.setdefault("batch_size", cfg.batch_size or lr.shape[0])
            overrides.setdefault("seed", cfg.seed)
            stage_cfg = dataclasses.replace(SRStageConfig(), **overrides)
            stage = stage_cfg.setup(prior=prior)
            losses: List[float] = []
            with Progress(
                TextColumn(f"{spec:<28}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=CONSOLE,
                transient=True,
            ) as progress:
                task = progress.add_task(spec, total=cfg.steps)
                stage.begin(bic, lr, c2w, num_steps=cfg.steps)
                while not stage.done:
                    losses.append(stage.step().loss)
                    progress.advance(task)
                sr = stage.finish().float().cpu()
            settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()}
            settings["loss_first_last"] = [losses[0], losses[-1]]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        rows = score(sr, gt, lr, lpips, calculate_niqe)
        results["variants"][spec] = {"per_view": rows, "seconds": seconds, "settings": settings}
        outputs[spec] = sr
        if cfg.save_images:
            for i, name in enumerate(names):
                save_rgb(sr[i], cfg.save_images / f"{name}_{spec.replace(':', '_').replace(',', '_')}.png")
        del prior
        CONSOLE.print(f"{spec}: {seconds:.1f} s", highlight=False)

    keys = ("psnr", "ssim", "lpips", "niqe", "lr_psnr", "color_offset")
    lines = ["| variant | PSNR ↑ | SSIM ↑ | LPIPS ↓ | NIQE ↓ | LR PSNR ↑ | colour offset | s |", "|---|" + "---|" * 7]
    for spec, res in results["variants"].items():
        mean = {
            k: float(np.mean([r[k] for r in res["per_view"] if k in r]))
            if any(k in r for r in res["per_view"])
            else math.nan
            for k in keys
        }
        res["mean"] = mean
        lines.append(
            f"| {spec} | {mean['psnr']:.2f} | {mean['ssim']:.3f} | {mean['lpips']:.3f} | {mean['niqe']:.2f} "
            f"| {mean['lr_psnr']:.2f} | {mean['color_offset']:.4f} | {res['seconds']:.0f} |"
        )
    table = "\n".join(lines)
    CONSOLE.print(table, highlight=False)
    if cfg.save_images:
        _montage(outputs, cfg.save_images / "montage.png")
    results.update(
        table=table,
        steps=cfg.steps,
        crop=cfg.crop,
        device=str(device),
        device_name=torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        date=time.strftime("%Y-%m-%d"),
        torch=torch.__version__,
    )
    if cfg.json:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(results, indent=1))
    return results


def _montage(outputs: Dict[str, Tensor], path: Path, size: int = 256) -> None:
    """Rows: views; columns: the methods; a centred ``size`` px crop of each."""
    tiles = []
    for i in range(next(iter(outputs.values())).shape[0]):
        row = []
        for img in outputs.values():
            h, w = img.shape[-2:]
            y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
            row.append(img[i, :, y0 : y0 + size, x0 : x0 + size])
        tiles.append(torch.cat(row, dim=-1))
    save_rgb(torch.cat(tiles, dim=-2), path)


def entrypoint() -> None:
    main(tyro.cli(DiagnoseConfig))


if __name__ == "__main__":
    entrypoint()
