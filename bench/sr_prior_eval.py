"""Evaluate an x4 diffusion prior as a single-image super-resolver against bicubic, on Set5 / Set14 / BSD100.

    python bench/sr_prior_eval.py --prior embedded --json bench/results/sr_prior_embedded.json
    python bench/sr_prior_eval.py --model-path runs/prior/model --steps 50 --limit 10

Protocol: every image of ``--data`` (``set5_*``, ``set14_*``, ``bsd100_*``) is cropped at the bottom/right to a
multiple of 4 (HR), area-downsampled x4 (the mean of each 4x4 block) and rounded to 8 bits (LR). The LR image is
upscaled by (a) bicubic (``F.interpolate``, align_corners False) and (b) the prior: deterministic DDIM (eta 0,
trailing timestep spacing from t = 999, ``--steps`` steps, LR conditioning noised at ``--noise-level``, x0 clamped
to the latent range for the pixel prior, sampling noise seeded per image). Metrics against the HR image:

- PSNR-Y and SSIM-Y: BT.601 luma in [16, 235] (BasicSR's ``rgb2ycbcr``), ``4`` px border removed, SSIM with an
  11x11 Gaussian window (sigma 1.5) as BasicSR's ``calculate_ssim``;
- PSNR-RGB: RGB in [0, 1], 4 px border removed;
- LPIPS (AlexNet, [0, 1] inputs) via ``vsdsr_nerfstudio.metrics.lpips.build_lpips`` when it can be built offline;
- NIQE (no reference, lower is better) via ``vsdsr_nerfstudio.metrics.niqe.calculate_niqe`` (Y channel,
  crop_border 0 as DiSR), also reported for the HR images themselves.

Prints a markdown table (means per subset and over all images) and writes every per-image value to ``--json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import tyro
from jaxtyping import Float
from torch import Tensor

from vsdsr_nerfstudio.data.images import list_images, load_rgb_uint8, save_rgb
from vsdsr_nerfstudio.metrics.lpips import try_build_lpips
from vsdsr_nerfstudio.metrics.psnr import psnr
from vsdsr_nerfstudio.sr.priors.config import DtypeName, PriorName, SRPriorConfig, is_pixel_prior_folder

SUBSETS = ("set5", "set14", "bsd100")
"""Test subsets, by file-name prefix."""
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "lpips", "niqe")
"""Metric keys of a result row."""


@dataclass
class EvalConfig:
    """Evaluate an x4 prior against bicubic on Set5 / Set14 / BSD100."""

    prior: PriorName = "embedded"
    """``SRPriorConfig.prior``; a ``model-path`` pixel-prior folder overrides it."""
    model_path: Optional[str] = None
    """Pixel-prior folder (e.g. ``vsdsr-train-prior``'s ``OUTPUT/model``) or SD x4 upscaler folder / hub id."""
    data: Path = Path("/work/shared/data/sr/test")
    """Folder of test images named ``set5_*``, ``set14_*``, ``bsd100_*``."""
    subsets: Tuple[str, ...] = SUBSETS
    """Subsets to evaluate (file-name prefixes)."""
    limit: int = 0
    """At most this many images per subset (0: all)."""
    steps: int = 20
    """DDIM steps."""
    noise_level: int = 20
    """LR-conditioning noise level."""
    guidance_scale: float = 1.0
    """Text CFG scale (text priors only)."""
    tile: int = 256
    """LR pixels per denoiser window (0: whole image)."""
    seed: int = 0
    """Sampling seed (image ``i`` uses ``seed + i``)."""
    device: str = "auto"
    """Torch device (``auto``: cuda if available)."""
    dtype: DtypeName = "bf16"
    """Denoiser dtype on a GPU."""
    lpips: bool = True
    """Compute LPIPS (skipped automatically if it cannot be built)."""
    lpips_weights: Optional[Path] = None
    """LPIPS-alex ``.npz`` for ``build_lpips`` (None: ``../shared/metrics/lpips_alex_features.npz`` beside the
    checkout if present, else torchvision's download)."""
    niqe: bool = True
    """Compute NIQE (skipped automatically if the module is missing)."""
    json: Optional[Path] = None
    """Write all results here (default: ``bench/results/sr_prior_eval_<prior>.json``)."""
    save_images: Optional[Path] = None
    """Also save the SR outputs (PNG) here."""


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


def rgb_to_y(image: Float[Tensor, "3 H W"]) -> Float[Tensor, "H W"]:
    """BT.601 luma in [16, 235] of an RGB image in [0, 1] (BasicSR ``rgb2ycbcr(y_only=True)``), float64."""
    r, g, b = image.double()
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def psnr_y(a: Float[Tensor, "3 H W"], b: Float[Tensor, "3 H W"], border: int = 4) -> float:
    """PSNR of the Y channels (peak 255), ``border`` pixels removed."""
    return float(psnr(rgb_to_y(a), rgb_to_y(b), border=border, data_range=255.0))


def ssim_y(a: Float[Tensor, "3 H W"], b: Float[Tensor, "3 H W"], border: int = 4) -> float:
    """SSIM of the Y channels in [0, 255] (BasicSR ``calculate_ssim``: 11x11 Gaussian sigma 1.5, valid window)."""
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    if border:
        ya, yb = ya[border:-border, border:-border], yb[border:-border, border:-border]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :])[None, None]
    ya, yb = ya[None, None], yb[None, None]
    mu_a, mu_b = F.conv2d(ya, win), F.conv2d(yb, win)
    s_aa = F.conv2d(ya * ya, win) - mu_a**2
    s_bb = F.conv2d(yb * yb, win) - mu_b**2
    s_ab = F.conv2d(ya * yb, win) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return float(ssim_map.mean())


def load_niqe() -> Optional[Callable[[Tensor], float]]:
    """``calculate_niqe`` (RGB in [0, 1] -> NIQE) if ``vsdsr_nerfstudio.metrics.niqe`` exists, else None."""
    try:
        from vsdsr_nerfstudio.metrics.niqe import calculate_niqe  # type: ignore[import-not-found]
    except ImportError:
        return None

    def niqe(image: Tensor) -> float:
        try:
            return float(calculate_niqe(image.float().cpu(), convert_to="y", crop_border=0))
        except ValueError:  # image too small for two 96x96 blocks
            return float("nan")

    return niqe


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def _mean(values: List[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def evaluate(cfg: EvalConfig) -> Dict[str, Any]:
    """Run the evaluation; returns the JSON-ready result (also printed as a markdown table)."""
    from nerfstudio.utils.rich_utils import CONSOLE

    from vsdsr_nerfstudio.data.resample import area_downsample, bicubic_upscale, mod_crop
    from vsdsr_nerfstudio.sr.priors.pixel_prior import ddim_upscale

    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    pc = SRPriorConfig(prior=cfg.prior, unet_dtype=cfg.dtype)
    if cfg.model_path is not None:
        pc.model_path = cfg.model_path
        pc.prior = "embedded" if is_pixel_prior_folder(cfg.model_path) else "sd-x4-upscaler"
    prior = pc.setup(device=device)
    lpips = try_build_lpips(cfg.lpips_weights) if cfg.lpips else None
    niqe = load_niqe() if cfg.niqe else None
    if cfg.lpips and lpips is None:
        CONSOLE.print("[yellow]LPIPS unavailable: skipped.")
    if cfg.niqe and niqe is None:
        CONSOLE.print("[yellow]NIQE unavailable (vsdsr_nerfstudio.metrics.niqe missing): skipped.")

    files: List[Tuple[str, Path]] = []
    for subset in cfg.subsets:
        paths = [p for p in list_images(cfg.data, recursive=True) if p.name.startswith(subset + "_")]
        if cfg.limit > 0:
            paths = paths[: cfg.limit]
        files += [(subset, p) for p in paths]
    if not files:
        raise FileNotFoundError(f"no {'/'.join(cfg.subsets)} images in {str(cfg.data)!r}")

    autocast: Any = (
        torch.autocast("cuda", dtype=prior.dtype)
        if device.type == "cuda" and prior.dtype != torch.float32
        else contextlib.nullcontext()
    )
    rows: List[Dict[str, Any]] = []
    sr_seconds = 0.0
    for i, (subset, path) in enumerate(files):
        hr = mod_crop(load_rgb_uint8(path).float() / 255.0, 4)
        lr = (area_downsample(hr[None]) * 255.0).round() / 255.0
        bic = bicubic_upscale(lr)[0]
        generator = torch.Generator(device=device).manual_seed(cfg.seed + i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            sr = ddim_upscale(
                prior,
                lr.to(device),
                steps=cfg.steps,
                noise_level=cfg.noise_level,
                generator=generator,
                guidance_scale=cfg.guidance_scale,
                tile=cfg.tile,
            )[0].float()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        sr_seconds += dt
        sr = sr.cpu()
        if cfg.save_images is not None:
            save_rgb(sr, Path(cfg.save_images) / f"{path.stem}_x4.png")
        for method, out in (("bicubic", bic), ("prior", sr), ("hr", None)):
            row: Dict[str, Any] = {
                "image": path.name,
                "subset": subset,
                "method": method,
                "hr_size": list(hr.shape[-2:]),
            }
            if out is not None:
                row.update(
                    psnr_y=psnr_y(out, hr), ssim_y=ssim_y(out, hr), psnr_rgb=float(psnr(out[None], hr[None], border=4))
                )
                if lpips is not None:
                    row["lpips"] = lpips(out[None].to(device), hr[None].to(device))
            if niqe is not None:
                row["niqe"] = niqe(hr if out is None else out)
            if method == "prior":
                row["seconds"] = dt
            rows.append(row)
        last = rows[-2]
        CONSOLE.print(
            f"[{i + 1}/{len(files)}] {path.name}: prior PSNR-Y {last['psnr_y']:.2f} "
            f"(bicubic {rows[-3]['psnr_y']:.2f}) in {dt:.1f} s",
            highlight=False,
        )

    # -- summary ---------------------------------------------------------------------------------------------------
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["subset"], r["method"])].append(r)
        groups[("all", r["method"])].append(r)
    summary: Dict[str, Dict[str, Dict[str, float]]] = defaultdict(dict)
    for (subset, method), rs in groups.items():
        summary[subset][method] = {m: _mean([r.get(m, float("nan")) for r in rs]) for m in METRICS}
        summary[subset][method]["images"] = len(rs)
    sampler = (
        f"DDIM eta=0, trailing spacing, {cfg.steps} steps, LR noise level {cfg.noise_level}"
        + (f", CFG {cfg.guidance_scale}" if prior.uses_text else "")
        + (", x0 clamp [-1, 1]" if getattr(prior, "latent_clip", None) else "")
    )
    lines = [
        f"Prior: {getattr(prior, 'source', cfg.prior)}; sampler: {sampler}; x4 from area-downsampled, 8-bit LR; "
        f"PSNR/SSIM on Y (4 px border), NIQE on Y (no crop); device {device}.",
        "",
        "| subset | method | images | PSNR-Y ↑ | SSIM-Y ↑ | PSNR-RGB ↑ | LPIPS ↓ | NIQE ↓ |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: float, nd: int) -> str:
        return "–" if v is None or math.isnan(v) else f"{v:.{nd}f}"

    for subset in list(cfg.subsets) + ["all"]:
        for method in ("bicubic", "prior", "hr"):
            s = summary.get(subset, {}).get(method)
            if s is None:
                continue
            lines.append(
                f"| {subset} | {method} | {s['images']} | {fmt(s['psnr_y'], 2)} | {fmt(s['ssim_y'], 4)} | "
                f"{fmt(s['psnr_rgb'], 2)} | {fmt(s['lpips'], 4)} | {fmt(s['niqe'], 3)} |"
            )
    table = "\n".join(lines)
    print(table)
    print(f"\nSR time: {sr_seconds:.1f} s for {len(files)} images ({sr_seconds / len(files):.2f} s/image).")
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "prior": {
            "source": getattr(prior, "source", None),
            "meta": getattr(prior, "meta", None),
            "num_parameters": getattr(prior, "num_parameters", None),
        },
        "sampler": sampler,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "sr_seconds_total": sr_seconds,
        "summary": summary,
        "rows": rows,
        "table": table,
    }
    out = cfg.json or Path(__file__).resolve().parent / "results" / f"sr_prior_eval_{cfg.prior}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"Wrote {out}")
    return result


def main() -> None:
    """Entry point."""
    evaluate(tyro.cli(EvalConfig, description=__doc__.split("\n\n")[0] if __doc__ else None))


if __name__ == "__main__":
    main()
