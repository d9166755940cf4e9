"""The outputs of ``vsdsr-compare``: ``results.json``, the markdown table and the crop grid PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vsdsr_nerfstudio.data.files import atomic_write_json

LABEL_HEIGHT = 14
"""Height in pixels of the label strip above each column of the crop grid."""

_COLUMNS = (
    ("psnr", "PSNR ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.3f}"),
    ("lpips", "LPIPS ↓", "{:.3f}"),
    ("niqe", "NIQE ↓", "{:.2f}"),
    ("lr_psnr", "LR-PSNR ↑", "{:.2f}"),
)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (``data/files.py``)."""
    atomic_write_json(path, data)


def _fmt(value: Optional[float], pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def markdown_table(entries: Sequence[Dict[str, Any]]) -> str:
    """One row per entry of ``results.json``'s ``runs``: mean metrics, NeRF steps, wall time, peak GPU memory."""
    head = ["run", "kind", *(title for _, title, _ in _COLUMNS), "NeRF steps", "wall (s)", "peak GPU (GiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in entries:
        mean = entry["mean"]
        cells = [entry["name"], entry["kind"], *(_fmt(mean.get(key), pat) for key, _, pat in _COLUMNS)]
        cells += [
            "–" if entry.get("nerf_steps") is None else str(entry["nerf_steps"]),
            "–" if entry.get("wall_s") is None else f"{entry['wall_s']:.1f}",
            "–" if entry["kind"] == "oracle" else _fmt(entry.get("peak_gpu_gib"), "{:.2f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _detail(image: Float[Tensor, "3 H W"]) -> Float[Tensor, "H W"]:
    gray = image.mean(0)
    gy = torch.zeros_like(gray)
    gx = torch.zeros_like(gray)
    gy[1:] = (gray[1:] - gray[:-1]).abs()
    gx[:, 1:] = (gray[:, 1:] - gray[:, :-1]).abs()
    return gx + gy


def choose_crops(hr: Float[Tensor, "n 3 H W"], count: int, size: int) -> List[Tuple[int, int, int]]:
    """``count`` crops (view position, top, left) of ``size`` x ``size``: view ``r % n`` for row ``r``, at the
    window with the most detail (gradient energy of the ground truth) on a half-size stride grid, not reusing a
    window of the same view. Depends only on the ground truth, so the same for every run and invocation."""
    n, _, height, width = hr.shape
    stride = max(1, size // 2)
    crops: List[Tuple[int, int, int]] = []
    for row in range(count):
        view = row % n
        detail = _detail(hr[view])
        candidates = []
        for top in range(0, height - size + 1, stride):
            for left in range(0, width - size + 1, stride):
                if (view, top, left) not in crops:
                    candidates.append((float(detail[top : top + size, left : left + size].sum()), -top, -left))
        if not candidates:  # fewer windows than rows for this view: repeat the best one
            candidates = [(0.0, -crops[-1][1], -crops[-1][2])] if crops else [(0.0, 0, 0)]
        _, top, left = max(candidates)
        crops.append((view, -top, -left))
    return crops


def _to_pil(image: Float[Tensor, "3 h w"]):
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


def _fit(draw: Any, text: str, width: int) -> str:
    """``text`` cut (with a trailing "~") to fit ``width`` pixels in the default font."""
    if draw.textlength(text) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "~") > width:
        text = text[:-1]
    return text + "~"


def column_label(name: str, kind: str) -> str:
    """Short crop-grid label of a results entry: the baselines by what they are, methods by their name."""
    return {"oracle": "bicubic", "nosr-steps": "no SR, =steps", "nosr-time": "no SR, =time", "sr2d": "2D SR+NeRF"}.get(
        kind, name
    )


def crop_grid(
    columns: Sequence[Tuple[str, Float[Tensor, "n 3 H W"]]],
    crops: Sequence[Tuple[int, int, int]],
    size: int,
    view_names: Sequence[str],
):
    """A PIL image: one column per (label, images) pair, one row per crop, the same crop in every column, each
    column labelled in a strip on top; the ground-truth cell of each row names its view. Size:
    ``(len(columns) * size, LABEL_HEIGHT + len(crops) * size)``."""
    from PIL import Image, ImageDraw

    grid = Image.new("RGB", (len(columns) * size, LABEL_HEIGHT + len(crops) * size), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for col, (label, images) in enumerate(columns):
        draw.text((col * size + 2, 1), _fit(draw, label, size - 4), fill=(0, 0, 0))
        for row, (view, top, left) in enumerate(crops):
            cell = _to_pil(images[view, :, top : top + size, left : left + size])
            grid.paste(cell, (col * size, LABEL_HEIGHT + row * size))
            if col == 0:
                draw.text((col * size + 2, LABEL_HEIGHT + row * size + 1), view_names[view], fill=(255, 255, 0))
    return grid
