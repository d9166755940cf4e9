"""Side-by-side crops of held-out fern renders (e.g. from bench/gpu_fern_splat.sh): ground truth | bicubic of the
real LR view | each run, the same crops (the most detailed windows of the ground truth), labelled.

    python bench/fern_crop_grid.py --renders DIR --runs splat_nosr splat_sr --views 0 8 --out docs/images/x.png

``--renders`` holds ``<run>_view<i>.png`` (render i of eval view ``views[i]``), as bench/score_fern_renders.py reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from fern_sr_diagnose import DiagnoseConfig, load_views  # same folder (bench/)

from vsdsr_nerfstudio.tools.compare_report import choose_crops, crop_grid


@dataclass
class GridConfig:
    """Crop grid of held-out fern renders."""

    renders: Path
    """Folder of ``<run>_view<i>.png`` renders at 2016x1512."""
    runs: Tuple[str, ...]
    """Run names, one column each (labels in the grid)."""
    out: Path
    """PNG to write."""
    data: Path = Path("../shared/data/llff/fern")
    """The LLFF fern scene."""
    views: Tuple[int, ...] = (0, 8, 16)
    """The eval view index of render i."""
    crops: int = 4
    """Rows of the grid."""
    size: int = 256
    """Crop side in HR pixels."""


def main(cfg: GridConfig) -> None:
    from PIL import Image

    lr, gt, _, names = load_views(DiagnoseConfig(data=cfg.data, views=cfg.views))
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    columns = [("ground truth", gt), ("bicubic (oracle)", bicubic)]
    for run in cfg.runs:
        images = []
        for i in range(len(cfg.views)):
            with Image.open(cfg.renders / f"{run}_view{i}.png") as im:
                images.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255)
        columns.append((run, torch.stack(images)))
    grid = crop_grid(columns, choose_crops(gt, cfg.crops, cfg.size), cfg.size, names)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(cfg.out)
    print(f"wrote {cfg.out} ({grid.size[0]}x{grid.size[1]})")


if __name__ == "__main__":
    main(tyro.cli(GridConfig))
