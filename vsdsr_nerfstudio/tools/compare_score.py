"""The scoring half of ``vsdsr-compare``: the held-out views of the protocol, renders of a trained run, the bicubic
oracle, and the per-view metrics (PSNR, SSIM, LPIPS, NIQE, LR consistency).

Every image is scored here, the same way for every run and baseline, against the real HR held-out images of the
original scene (never against a derived scene's copy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from jaxtyping import Float
from torch import Tensor

METRICS = ("psnr", "ssim", "lpips", "niqe", "lr_psnr")
"""Per-view metric keys, in table order."""


@dataclass
class HeldOut:
    """The held-out views of one scene under the protocol."""

    indices: List[int]
    """View indices (rows of poses_bounds.npy)."""
    hr: Float[Tensor, "n 3 H W"]
    """Real HR images (the ground truth), in [0, 1]."""
    lr: Float[Tensor, "n 3 h w"]
    """Real LR images of the same views (what a trained NeRF never saw; the bicubic oracle's input)."""
    hr_files: List[Path]
    """The HR image files."""
    lr_files: List[Path]
    """The LR image files."""


def _split_files(data: Path, downscale_factor: int, sr_scale: int, llffhold: int, split: str):
    from vsdsr_nerfstudio.data.llff_dataparser import LLFFDataParserConfig

    parser = LLFFDataParserConfig(
        data=data, downscale_factor=downscale_factor, sr_scale=sr_scale, llffhold=llffhold
    ).setup()
    outputs = parser.get_dataparser_outputs(split)
    return list(outputs.image_filenames), [int(i) for i in outputs.metadata["image_indices"]]


def _load_stack(files: List[Path]) -> Tensor:
    from vsdsr_nerfstudio.data.images import load_rgb_uint8

    return torch.stack([load_rgb_uint8(path).float() / 255.0 for path in files])


def load_held_out(data: Path, downscale_factor: int, sr_scale: int, llffhold: int) -> HeldOut:
    """The held-out views' real HR images (at ``sr_scale`` x the train size) and real LR images, via ``llff-data``
    (so the same files, caches and checks as training)."""
    hr_files, indices = _split_files(data, downscale_factor, sr_scale, llffhold, "test")
    lr_files, lr_indices = _split_files(data, downscale_factor, 1, llffhold, "test")
    assert lr_indices == indices, (lr_indices, indices)
    return HeldOut(indices, _load_stack(hr_files), _load_stack(lr_files), hr_files, lr_files)


def train_views(data: Path, downscale_factor: int, llffhold: int) -> Dict[int, Path]:
    """View index -> LR training image file, as ``llff-data`` trains on them."""
    files, indices = _split_files(data, downscale_factor, 1, llffhold, "train")
    return dict(zip(indices, files, strict=True))


class Scorer:
    """Per-view metrics of a render against the real HR image and the real LR image."""

    def __init__(self, sr_scale: int, lpips_weights: Optional[Path], niqe_channel: str = "y") -> None:
        from vsdsr_nerfstudio.metrics.lazy_lpips import LazyLPIPS

        self.sr_scale = sr_scale
        self.lpips = LazyLPIPS(lpips_weights)
        self.niqe_channel = niqe_channel

    def __call__(
        self, render: Float[Tensor, "3 H W"], hr: Float[Tensor, "3 H W"], lr: Float[Tensor, "3 h w"]
    ) -> Dict[str, Optional[float]]:
        from torchmetrics.functional import structural_similarity_index_measure

        from vsdsr_nerfstudio.data.resample import area_downsample
        from vsdsr_nerfstudio.metrics.niqe import calculate_niqe
        from vsdsr_nerfstudio.metrics.psnr import psnr

        if render.shape != hr.shape:
            raise ValueError(f"render {tuple(render.shape)} and HR image {tuple(hr.shape)} differ in size")
        a, b = render.clamp(0, 1)[None].float().cpu(), hr[None].float().cpu()
        values = {
            "psnr": float(psnr(a, b)[0]),
            "ssim": float(structural_similarity_index_measure(a, b, data_range=1.0)),
            "lpips": float(self.lpips(a, b)),  # NaN when LPIPS could not be built
            "niqe": float(calculate_niqe(a[0], convert_to=self.niqe_channel)),  # type: ignore[arg-type]
            "lr_psnr": float(psnr(area_downsample(a, self.sr_scale), lr[None].float())[0]),
        }
        # Undefined values (no LPIPS weights; NIQE of a featureless render, whose block statistics are degenerate)
        # are reported as None ("n/a"), not as NaN (which is not JSON).
        return {key: (value if math.isfinite(value) else None) for key, value in values.items()}


def mean_metrics(views: List[Dict[str, Optional[float]]]) -> Dict[str, Optional[float]]:
    """Mean of each metric over the views (None where a metric is missing, e.g. LPIPS without weights)."""
    out: Dict[str, Optional[float]] = {}
    for key in METRICS:
        values = [v[key] for v in views if v.get(key) is not None]
        out[key] = float(sum(values) / len(values)) if values and len(values) == len(views) else None
    return out


def bicubic_oracle(held_out: HeldOut, sr_scale: int) -> Float[Tensor, "n 3 H W"]:
    """Bicubic x ``sr_scale`` of the real LR held-out views (an oracle: it sees the test view's LR image)."""
    from vsdsr_nerfstudio.data.resample import bicubic_upscale

    return bicubic_upscale(held_out.lr, sr_scale)


@torch.no_grad()
def render_run(
    run_dir: Path, held_out: HeldOut, on_view: Optional[Callable[[], None]] = None
) -> Float[Tensor, "n 3 H W"]:
    """Load a finished ``ns-train`` run (nerfstudio's ``eval_setup``, latest checkpoint) and render every held-out
    camera at the HR size, in [0, 1] on the CPU."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
    dataset = pipeline.datamanager.eval_dataset
    indices = [int(i) for i in dataset.metadata.get("image_indices", [])] or list(held_out.indices)
    if indices != held_out.indices:
        raise ValueError(f"{run_dir}: held-out views {indices} differ from the protocol's {held_out.indices}")
    renders = []
    for i in range(len(dataset)):
        camera = dataset.cameras[i : i + 1].to(pipeline.device)
        rgb = pipeline.model.get_outputs_for_camera(camera)["rgb"]
        renders.append(torch.moveaxis(rgb.float().clamp(0, 1).cpu(), -1, 0))
        if on_view is not None:
            on_view()
    del pipeline
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return torch.stack(renders)


def _checkpoint_signature(run_dir: Path) -> List[Any]:
    """Name, size and mtime of the latest checkpoint: changes whenever the run is retrained."""
    ckpts = sorted((run_dir / "nerfstudio_models").glob("*.ckpt"))
    if not ckpts:
        raise ValueError(f"{run_dir}/nerfstudio_models has no checkpoint: the run did not save one (steps_per_save?).")
    stat = ckpts[-1].stat()
    return [ckpts[-1].name, stat.st_size, stat.st_mtime_ns]


def _load_renders(folder: Path, indices: List[int]) -> Optional[Tensor]:
    files = [folder / f"view_{i:04d}.png" for i in indices]
    return _load_stack(files) if all(path.is_file() for path in files) else None


def _save_renders(folder: Path, indices: List[int], renders: Tensor) -> None:
    from vsdsr_nerfstudio.data.images import save_rgb

    for i, image in zip(indices, renders, strict=True):
        save_rgb(image, folder / f"view_{i:04d}.png")


def score_images(
    scorer: Scorer, renders: Tensor, held_out: HeldOut, on_view: Optional[Callable[[], None]] = None
) -> List[Dict[str, Any]]:
    """Per-view metrics of ``renders`` (n, 3, H, W) against the held-out views."""
    views = []
    for k, index in enumerate(held_out.indices):
        views.append({"view": index, **scorer(renders[k], held_out.hr[k], held_out.lr[k])})
        if on_view is not None:
            on_view()
    return views


def score_run(
    run_dir: Path,
    name: str,
    output: Path,
    held_out: HeldOut,
    scorer: Scorer,
    rescore: bool,
    on_view: Optional[Callable[[], None]] = None,
) -> List[Dict[str, Any]]:
    """Per-view metrics of a trained run: from ``OUTPUT/scores/NAME.json`` when the run's checkpoint is the one
    scored then (and ``rescore`` is off), else rendered (saved to ``OUTPUT/renders/NAME/``) and scored now."""
    import json

    from vsdsr_nerfstudio.tools.compare_report import write_json

    cache = output / "scores" / f"{name}.json"
    key = {"run_dir": str(run_dir), "checkpoint": _checkpoint_signature(run_dir), "views": held_out.indices}
    renders_dir = output / "renders" / name
    if not rescore and cache.is_file() and _load_renders(renders_dir, held_out.indices) is not None:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            for _ in held_out.indices:
                if on_view is not None:
                    on_view()
            return saved["views"]
    renders = render_run(run_dir, held_out)
    _save_renders(renders_dir, held_out.indices, renders)
    views = score_images(scorer, renders, held_out, on_view)
    write_json(cache, {"key": key, "views": views})
    return views


def saved_renders(output: Path, name: str, held_out: HeldOut) -> Tensor:
    """The 8-bit renders of an entry saved by :func:`score_run` (or the oracle), as floats in [0, 1]."""
    renders = _load_renders(output / "renders" / name, held_out.indices)
    if renders is None:
        raise FileNotFoundError(f"renders of {name} missing under {output / 'renders' / name}")
    return renders


def save_oracle_renders(output: Path, name: str, held_out: HeldOut, renders: Tensor) -> None:
    """Save the oracle's images next to the runs' renders (for the crop grid)."""
    _save_renders(output / "renders" / name, held_out.indices, renders)
