"""Score held-out fern renders (e.g. from bench/gpu_fern_e2e.sh) against the exact 4x ground truth, here.

    python bench/score_fern_renders.py --renders /work/.device/N --json bench/results/fern_e2e.json

``--renders`` holds ``<run>_view<i>.png`` for each run (``sr``, ``nosr``, ...) and eval view i of ``--views``
(default 0/8/16, fern's held-out views at llffhold 8). The ground truth is ``images/`` box-downsampled x2 (as
``ns-eval`` builds it); the metrics are bench/fern_sr_diagnose.py's: PSNR and SSIM on RGB in [0, 1] (as nerfstudio),
LPIPS-AlexNet from the offline weights, NIQE on Y, plus the LR consistency against ``images_8``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import tyro
from fern_sr_diagnose import DiagnoseConfig, load_views, score  # same folder (bench/)

from vsdsr_nerfstudio.data.images import load_rgb_uint8
from vsdsr_nerfstudio.metrics.lpips import try_build_lpips


@dataclass
class ScoreConfig:
    """Score renders of held-out fern views against the exact ground truth."""

    renders: Path
    """Folder of ``<run>_view<i>.png`` renders at 2016x1512."""
    data: Path = Path("../shared/data/llff/fern")
    """The LLFF fern scene (``images/`` for the ground truth, ``images_8/`` for the LR consistency)."""
    views: Tuple[int, ...] = (0, 8, 16)
    """The view index of render i."""
    lpips_weights: Optional[Path] = None
    """LPIPS-AlexNet .npz (None: ../shared/metrics/lpips_alex_features.npz when present)."""
    json: Optional[Path] = None
    """Write the per-view values and means here."""


def main(cfg: ScoreConfig) -> Dict[str, Dict[str, float]]:
    from vsdsr_nerfstudio.metrics.niqe import calculate_niqe

    lr, gt, _, names = load_views(DiagnoseConfig(data=cfg.data, views=cfg.views))
    runs: Dict[str, Dict[int, Path]] = defaultdict(dict)
    for path in sorted(cfg.renders.glob("*_view*.png")):
        match = re.fullmatch(r"(.+)_view(\d+)\.png", path.name)
        if match:
            runs[match.group(1)][int(match.group(2))] = path
    if not runs:
        raise FileNotFoundError(f"no <run>_view<i>.png files in {cfg.renders}")
    lpips = try_build_lpips(cfg.lpips_weights)
    out: Dict[str, Dict] = {}
    for run, files in sorted(runs.items()):
        if sorted(files) != list(range(len(cfg.views))):
            raise ValueError(f"{run}: renders {sorted(files)} do not match the {len(cfg.views)} views {cfg.views}")
        images = torch.stack([load_rgb_uint8(files[i]).float() / 255.0 for i in range(len(cfg.views))])
        if images.shape != gt.shape:
            raise ValueError(f"{run}: renders are {tuple(images.shape[-2:])}, the ground truth {tuple(gt.shape[-2:])}")
        rows: List[Dict[str, float]] = score(images, gt, lr, lpips, calculate_niqe)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        out[run] = {"per_view": dict(zip(names, rows, strict=True)), "mean": mean}
    keys = [k for k in ("psnr", "ssim", "lpips", "niqe", "lr_psnr") if k in next(iter(out.values()))["mean"]]
    print("| run | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for run, res in out.items():
        print(f"| {run} | " + " | ".join(f"{res['mean'][k]:.4f}" for k in keys) + " |")
    if cfg.json:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps({"views": list(cfg.views), "runs": out}, indent=1))
    return out


if __name__ == "__main__":
    main(tyro.cli(ScoreConfig))
