"""Held-out alignment: does a NeRF trained on LR views render its held-out views where the real HR images are?

Trains Nerfacto (``VsdSrModelConfig``, a plain ``VanillaPipeline``, no diffusion) on the LR train split of an
``llff-data`` scene, renders every held-out view at HR from the *dataset* pose and compares it with the real HR
image. Besides PSNR it measures what could misalign the render:

- **camera optimiser drift**: translation / rotation of the learned train-pose corrections (per view and their
  common part), in scene units, degrees and equivalent HR pixels; and the PSNR after applying the mean (or the
  nearest train views') correction to the eval camera;
- **global shift**: PSNR at the best integer-pixel shift of the render (coarse-to-fine search) and a sub-pixel
  estimate of that shift;
- **principal point / pixel-centre convention**: PSNR with the eval principal point moved by +-0.5 / +-1 HR px;
- **appearance embedding** for eval views: average (nerfstudio's default), zeros, or a nearest train view's;
- **near/far collider**: train with nerfacto's (0.05, 1000) or the dataset's near/far bounds (``--collider``).

A bicubic upsampling of the real LR held-out view is the reference. Default data: a generated synthetic scene
(``tests/synthetic_llff.py``) at LR 32x24 / HR 128x96 with the CPU-sized model; a few minutes on 2 CPU cores::

    python bench/heldout_alignment.py --camera-opt off
    python bench/heldout_alignment.py --camera-opt SO3xR3
    # the issue's setting, on a GPU:
    python bench/heldout_alignment.py --data /path/fern --downscale 8 --sr-scale 4 --steps 4000 \\
        --camera-opt SO3xR3 --model default --device cuda --rays 4096 --save-images out/fern_so3

Everything is printed; ``--json PATH`` also writes the numbers. ``tests/test_heldout_alignment.py`` imports the
helpers from this file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch

from vsdsr_nerfstudio.data.resample import area_downsample, bicubic_resize
from vsdsr_nerfstudio.metrics.psnr import psnr_from_mse

REPO = Path(__file__).resolve().parents[1]

CameraOptMode = Literal["off", "SO3xR3", "SE3"]


# ----------------------------------------------------------------------------------------------------------------
# configuration


def tiny_model_kwargs() -> Dict[str, object]:
    """The CPU-sized model of ``method_configs/vsd_sr_tiny.py`` (copied, so that this file does not import the I3DS
    pipeline and the diffusion prior)."""
    return dict(
        implementation="torch",
        num_levels=8,
        max_res=512,
        log2_hashmap_size=14,
        hidden_dim=32,
        hidden_dim_color=32,
        appearance_embed_dim=8,
        num_proposal_samples_per_ray=(32, 16),
        num_nerf_samples_per_ray=16,
        proposal_net_args_list=[
            {"hidden_dim": 16, "log2_hashmap_size": 12, "num_levels": 4, "max_res": 64, "use_linear": False},
            {"hidden_dim": 16, "log2_hashmap_size": 12, "num_levels": 4, "max_res": 128, "use_linear": False},
        ],
        eval_num_rays_per_chunk=1 << 12,
    )


@dataclass
class RunConfig:
    """One training run of the experiment."""

    data: Path
    downscale: int = 4
    sr_scale: int = 4
    llffhold: int = 8
    steps: int = 300
    camera_opt: CameraOptMode = "off"
    camera_lr: float = 1e-3
    """Initial lr of the camera optimiser (nerfstudio's nerfacto: 1e-3 decaying to 1e-4 over 5000 steps)."""
    camera_lr_final: float = 1e-4
    camera_lr_steps: int = 5000
    model: Literal["tiny", "default"] = "tiny"
    max_res: Optional[int] = None
    """Override the finest hash-grid resolution (nerfstudio's nerfacto: 2048; ours: 4096; tiny: 512)."""
    collider: Literal["default", "bounds"] = "default"
    """default: nerfacto's near/far planes (0.05, 1000); bounds: the dataset's near/far bounds (x0.9, x1.1)."""
    rays: int = 256
    device: str = "cpu"
    mixed_precision: bool = False
    seed: int = 0
    model_overrides: Dict[str, object] = field(default_factory=dict)


def pipeline_config(run: RunConfig):
    """A plain ``VanillaPipelineConfig``: ``llff-data`` + ``VsdSrModelConfig`` (our defaults, camera_opt set)."""
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    from vsdsr_nerfstudio.data.llff_dataparser import LLFFDataParserConfig
    from vsdsr_nerfstudio.models.nerfacto import VsdSrModelConfig

    dataparser = LLFFDataParserConfig(
        data=Path(run.data), downscale_factor=run.downscale, sr_scale=run.sr_scale, llffhold=run.llffhold
    )
    datamanager = VanillaDataManagerConfig(
        dataparser=dataparser, train_num_rays_per_batch=run.rays, eval_num_rays_per_batch=run.rays
    )
    kwargs: Dict[str, object] = tiny_model_kwargs() if run.model == "tiny" else {}
    if run.model == "default" and run.device == "cpu":
        kwargs["implementation"] = "torch"
    if run.max_res is not None:
        kwargs["max_res"] = run.max_res
    kwargs.update(run.model_overrides)
    model = VsdSrModelConfig(**kwargs)  # type: ignore[arg-type]
    if run.camera_opt != "off":
        model.camera_optimizer = CameraOptimizerConfig(mode=run.camera_opt)
    return VanillaPipelineConfig(datamanager=datamanager, model=model)


def optimizers_config(run: RunConfig) -> dict:
    """nerfstudio's nerfacto optimisers (Adam, exponential decay), with the camera group's lr from ``run``."""
    from nerfstudio.engine.optimizers import AdamOptimizerConfig
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig

    groups = {
        name: {
            "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=200_000),
        }
        for name in ("proposal_networks", "fields")
    }
    groups["camera_opt"] = {
        "optimizer": AdamOptimizerConfig(lr=run.camera_lr, eps=1e-15),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=run.camera_lr_final, max_steps=run.camera_lr_steps),
    }
    return groups


# ----------------------------------------------------------------------------------------------------------------
# training


def setup_pipeline(run: RunConfig):
    """Seed, build the pipeline (test_mode "val": eval split loaded) and set the collider.

    Seeds Python's ``random`` too, as ``ns-train`` does: nerfstudio's CacheDataloader orders the cached images with
    ``random.sample``, so with torch's seed alone two runs sample different rays."""
    from nerfstudio.model_components.scene_colliders import NearFarCollider

    random.seed(run.seed)
    torch.manual_seed(run.seed)
    np.random.seed(run.seed)
    pipeline = pipeline_config(run).setup(device=run.device, test_mode="val")
    if run.collider == "bounds":
        near, far = dataset_near_far(pipeline)
        pipeline.model.collider = NearFarCollider(near_plane=0.9 * near, far_plane=1.1 * far)
    return pipeline


def dataset_near_far(pipeline) -> Tuple[float, float]:
    metadata = pipeline.datamanager.train_dataparser_outputs.metadata
    return float(metadata["near"]), float(metadata["far"])


def train(pipeline, run: RunConfig, log_every: int = 0) -> float:
    """Train ``run.steps`` steps the way nerfstudio's Trainer does (callbacks, grad scaler, schedulers).
    Returns the wall time in seconds."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    optimizers = Optimizers(optimizers_config(run), pipeline.get_param_groups())
    device_type = "cuda" if str(run.device).startswith("cuda") else "cpu"
    scaler = torch.amp.GradScaler(device_type, enabled=run.mixed_precision and device_type == "cuda")
    callbacks = pipeline.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=scaler, pipeline=pipeline, trainer=None)
    )
    pipeline.train()
    start = time.perf_counter()
    for step in range(run.steps):
        for callback in callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()
        with torch.autocast(device_type=device_type, enabled=run.mixed_precision and device_type == "cuda"):
            _, loss_dict, _ = pipeline.get_train_loss_dict(step=step)
            loss = sum(loss_dict.values())
        scaler.scale(loss).backward()
        optimizers.optimizer_scaler_step_all(scaler)
        scale = scaler.get_scale()
        scaler.update()
        if scale <= scaler.get_scale():
            optimizers.scheduler_step_all(step)
        for callback in callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        if log_every and (step % log_every == 0 or step == run.steps - 1):
            line = f"  step {step:5d}  loss {loss.detach().item():.4f}"
            optimiser = pipeline.model.camera_optimizer
            if optimiser.config.mode != "off":
                rotation = torch.rad2deg(optimiser.pose_adjustment.detach()[:, 3:].norm(dim=-1))
                line += f"  pose rotation mean {float(rotation.mean()):.3f} max {float(rotation.max()):.3f} deg"
            print(f"{line}  ({time.perf_counter() - start:.0f} s)", flush=True)
    pipeline.eval()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# rendering and image comparison


def eval_camera(pipeline, index: int):
    return pipeline.datamanager.eval_dataset.cameras[index : index + 1].to(pipeline.device)


def render(pipeline, camera) -> Dict[str, torch.Tensor]:
    """Render one camera in eval mode: rgb (H, W, 3) and depth (H, W, 1) on the CPU."""
    pipeline.eval()
    outputs = pipeline.model.get_outputs_for_camera(camera)
    return {"rgb": outputs["rgb"].float().clamp(0, 1).cpu(), "depth": outputs["depth"].float().cpu()}


def gt_image(pipeline, index: int) -> torch.Tensor:
    return pipeline.datamanager.eval_dataset[index]["image"][..., :3].float().cpu()


def mse_at_shift(image: torch.Tensor, gt: torch.Tensor, dy: int, dx: int, margin: int) -> float:
    """MSE between ``image`` displaced by (dy, dx) and ``gt`` on gt's central crop (``margin`` px each side):
    compares image[p + d] with gt[p], i.e. (dy, dx) > 0 means the image content lies down/right of gt's."""
    h, w = gt.shape[:2]
    target = gt[margin : h - margin, margin : w - margin]
    moved = image[margin + dy : h - margin + dy, margin + dx : w - margin + dx]
    return float(((moved - target) ** 2).mean())


def psnr(image: torch.Tensor, gt: torch.Tensor, margin: int = 0) -> float:
    return psnr_from_mse(mse_at_shift(image, gt, 0, 0, margin))


def _downsample2(image: torch.Tensor) -> torch.Tensor:
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return area_downsample(image[:h, :w].permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)


def _search(image, gt, margin, ys: Sequence[int], xs: Sequence[int]) -> Tuple[int, int]:
    best = min(((mse_at_shift(image, gt, dy, dx, margin), dy, dx) for dy in ys for dx in xs))
    return best[1], best[2]


def best_integer_shift(image: torch.Tensor, gt: torch.Tensor, max_shift: int) -> Tuple[int, int]:
    """The integer (dy, dx) in [-max_shift, max_shift]^2 minimising :func:`mse_at_shift` (margin max_shift):
    exhaustive for small searches, else coarse-to-fine on a 2x pyramid (refined +-2 px per level)."""
    if max_shift <= 6 or min(gt.shape[:2]) < 8 * max_shift:
        r = range(-max_shift, max_shift + 1)
        return _search(image, gt, max_shift, r, r)
    coarse_y, coarse_x = best_integer_shift(_downsample2(image), _downsample2(gt), (max_shift + 1) // 2)

    def window(c: int) -> range:
        return range(max(-max_shift, 2 * c - 2), min(max_shift, 2 * c + 2) + 1)

    return _search(image, gt, max_shift, window(coarse_y), window(coarse_x))


def subpixel_shift(image: torch.Tensor, gt: torch.Tensor, max_shift: int) -> Tuple[float, float]:
    """Best integer shift refined by a parabola through the MSE at +-1 px along each axis."""
    dy, dx = best_integer_shift(image, gt, max_shift)
    margin = max_shift + 1
    centre = mse_at_shift(image, gt, dy, dx, margin)
    out = []
    for axis, d in (("y", dy), ("x", dx)):
        lo = mse_at_shift(image, gt, dy - (axis == "y"), dx - (axis == "x"), margin)
        hi = mse_at_shift(image, gt, dy + (axis == "y"), dx + (axis == "x"), margin)
        curvature = lo - 2 * centre + hi
        out.append(d + (0.5 * (lo - hi) / curvature if curvature > 0 else 0.0))
    return out[0], out[1]


def bicubic_baseline(run: RunConfig, pipeline) -> List[torch.Tensor]:
    """Bicubic x sr_scale of the real LR images of the held-out views (the issue's reference)."""
    from PIL import Image

    from vsdsr_nerfstudio.data.llff_dataparser import LLFFDataParserConfig

    lr_split = (
        LLFFDataParserConfig(data=Path(run.data), downscale_factor=run.downscale, sr_scale=1, llffhold=run.llffhold)
        .setup()
        .get_dataparser_outputs("test")
    )
    out = []
    for index, path in enumerate(lr_split.image_filenames):
        lr = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
        hr_h, hr_w = gt_image(pipeline, index).shape[:2]
        out.append(bicubic_resize(lr.permute(2, 0, 1)[None], (hr_h, hr_w))[0].permute(1, 2, 0))
    return out


# ----------------------------------------------------------------------------------------------------------------
# camera perturbations for the checks


def shifted_principal_point(camera, dx: float, dy: float):
    """A copy of ``camera`` with its principal point moved by (dx, dy) pixels."""
    out = copy.deepcopy(camera)
    out.cx = out.cx + dx
    out.cy = out.cy + dy
    return out


def corrected_camera(camera, correction: torch.Tensor):
    """``camera`` moved by a camera-optimiser correction (3x4, as applied to train rays: directions rotated by
    R, origins translated by t, both in world coordinates)."""
    out = copy.deepcopy(camera)
    c2w = out.camera_to_worlds
    corr = correction.to(c2w)
    rotation = corr[:3, :3] @ c2w[..., :3, :3]
    out.camera_to_worlds = torch.cat([rotation, c2w[..., :3, 3:] + corr[:3, 3:]], dim=-1)
    return out


@contextlib.contextmanager
def appearance_embedding(pipeline, mode: str) -> Iterator[None]:
    """Eval appearance: "average" (nerfstudio's default: the mean train embedding), "zeros", or "view:<i>"
    (train view i's embedding)."""
    field_ = pipeline.model.field
    embedding = getattr(field_, "embedding_appearance", None)
    saved_flag = field_.use_average_appearance_embedding
    saved_weight = None
    try:
        if mode == "zeros":
            field_.use_average_appearance_embedding = False
        elif mode.startswith("view:") and embedding is not None:
            view = int(mode.split(":")[1])
            weight = embedding.embedding.weight
            saved_weight = weight.detach().clone()
            with torch.no_grad():
                weight.copy_(saved_weight[view].expand_as(weight))
            field_.use_average_appearance_embedding = True
        yield
    finally:
        field_.use_average_appearance_embedding = saved_flag
        if saved_weight is not None:
            with torch.no_grad():
                embedding.embedding.weight.copy_(saved_weight)


def camera_drift(pipeline) -> Optional[Dict[str, object]]:
    """The camera optimiser's train-pose corrections: per-view translation (scene units; relative to the mean
    spacing of neighbouring train cameras) and rotation (deg), and their common (mean) part."""
    optimiser = pipeline.model.camera_optimizer
    if optimiser.config.mode == "off":
        return None
    adjust = optimiser.pose_adjustment.detach().cpu().double()
    trans, rot = adjust[:, :3], adjust[:, 3:]
    c2w = pipeline.datamanager.train_dataset.cameras.camera_to_worlds.double()
    positions = c2w[:, :3, 3]
    spacing = float((positions[1:] - positions[:-1]).norm(dim=-1).mean()) if len(positions) > 1 else float("nan")
    # rotation corrections in each camera's own axes (x right: pitch, y up: yaw, z back: roll) against the camera's
    # offset along the mean right axis: yaw proportional to that offset = the cameras toe in/out together, which
    # (with a change of scene depth) is nearly invisible in a forward-facing capture.
    rot_cam = torch.einsum("nji,nj->ni", c2w[:, :3, :3], rot)
    right = c2w[:, :3, 0].mean(0)
    offset = (positions - positions.mean(0)) @ (right / right.norm())
    yaw = torch.rad2deg(rot_cam[:, 1])
    corr = float(torch.corrcoef(torch.stack([offset, yaw]))[0, 1]) if len(offset) > 2 else float("nan")
    return {
        "translation_mean": float(trans.norm(dim=-1).mean()),
        "translation_max": float(trans.norm(dim=-1).max()),
        "translation_common": float(trans.mean(0).norm()),
        "translation_over_camera_spacing": float(trans.norm(dim=-1).mean()) / spacing,
        "camera_spacing": spacing,
        "rotation_mean_deg": math.degrees(float(rot.norm(dim=-1).mean())),
        "rotation_max_deg": math.degrees(float(rot.norm(dim=-1).max())),
        "rotation_common_deg": math.degrees(float(rot.mean(0).norm())),
        "yaw_vs_offset_correlation": corr,
        "per_view": [
            {
                "offset": round(float(o), 4),
                "pitch_deg": round(float(torch.rad2deg(r[0])), 3),
                "yaw_deg": round(float(torch.rad2deg(r[1])), 3),
                "roll_deg": round(float(torch.rad2deg(r[2])), 3),
                "translation": round(float(t.norm()), 5),
            }
            for o, r, t in zip(offset, rot_cam, trans, strict=True)
        ],
    }


def corrections_for_eval_view(pipeline, eval_index: int) -> Dict[str, torch.Tensor]:
    """Correction matrices to try on an eval camera: the mean of all train corrections, and the inverse-distance
    blend of the two nearest train views' corrections."""
    from nerfstudio.cameras.lie_groups import exp_map_SE3, exp_map_SO3xR3

    optimiser = pipeline.model.camera_optimizer
    exp_map = exp_map_SO3xR3 if optimiser.config.mode == "SO3xR3" else exp_map_SE3
    adjust = optimiser.pose_adjustment.detach()
    positions = pipeline.datamanager.train_dataset.cameras.camera_to_worlds[:, :3, 3].to(adjust)
    eval_position = pipeline.datamanager.eval_dataset.cameras.camera_to_worlds[eval_index, :3, 3].to(adjust)
    distance = (positions - eval_position).norm(dim=-1)
    nearest = torch.argsort(distance)[:2]
    weights = 1.0 / distance[nearest].clamp_min(1e-6)
    blended = (adjust[nearest] * weights[:, None]).sum(0) / weights.sum()
    return {
        "mean": exp_map(adjust.mean(0, keepdim=True))[0],
        "nearest2": exp_map(blended[None])[0],
    }


# ----------------------------------------------------------------------------------------------------------------
# the experiment


CHECKS = ("principal_point", "appearance", "correction")
"""Extra renders per held-out view: principal point moved (8 renders), appearance embedding (2), camera-optimiser
correction applied to the eval camera (2, only with the optimiser on)."""


def evaluate(
    pipeline, run: RunConfig, max_shift: Optional[int] = None, checks: Sequence[str] = CHECKS
) -> Dict[str, object]:
    """Render every held-out view and measure alignment (see the module docstring)."""
    eval_dataset = pipeline.datamanager.eval_dataset
    indices = [int(i) for i in eval_dataset.metadata.get("image_indices", torch.arange(len(eval_dataset)))]
    bicubic = bicubic_baseline(run, pipeline)
    views = []
    for index in range(len(eval_dataset)):
        camera = eval_camera(pipeline, index)
        gt = gt_image(pipeline, index)
        h, w = gt.shape[:2]
        shift_range = max_shift if max_shift is not None else max(4, min(h, w) // 12)
        outputs = render(pipeline, camera)
        rgb = outputs["rgb"]
        best = best_integer_shift(rgb, gt, shift_range)
        sub = subpixel_shift(rgb, gt, shift_range)
        view: Dict[str, object] = {
            "view": indices[index],
            "hr_size": [w, h],
            "psnr": psnr(rgb, gt),
            "psnr_bicubic": psnr(bicubic[index], gt),
            "psnr_crop": psnr_from_mse(mse_at_shift(rgb, gt, 0, 0, shift_range)),
            "best_shift_yx": list(best),
            "psnr_crop_best_shift": psnr_from_mse(mse_at_shift(rgb, gt, best[0], best[1], shift_range)),
            "subpixel_shift_yx": [round(sub[0], 3), round(sub[1], 3)],
            "bicubic_subpixel_shift_yx": [round(s, 3) for s in subpixel_shift(bicubic[index], gt, shift_range)],
            "median_depth": float(outputs["depth"].median()),
            "_rgb": rgb,
            "_gt": gt,
            "_bicubic": bicubic[index],
        }
        if "principal_point" in checks:
            pp = {}
            for d in (-1.0, -0.5, 0.5, 1.0):
                for axis in ("x", "y"):
                    cam = shifted_principal_point(camera, d if axis == "x" else 0.0, d if axis == "y" else 0.0)
                    pp[f"c{axis}{d:+g}"] = psnr(render(pipeline, cam)["rgb"], gt)
            view["psnr_principal_point_moved"] = pp
        if "appearance" in checks:
            appearance = {}
            train_positions = pipeline.datamanager.train_dataset.cameras.camera_to_worlds[:, :3, 3]
            nearest = int((train_positions - camera.camera_to_worlds[0, :3, 3].cpu()).norm(dim=-1).argmin())
            for mode in ("zeros", f"view:{nearest}"):
                with appearance_embedding(pipeline, mode):
                    appearance[mode] = psnr(render(pipeline, camera)["rgb"], gt)
            view["psnr_appearance"] = appearance
        if "correction" in checks and pipeline.model.camera_optimizer.config.mode != "off":
            view["psnr_with_train_correction"] = {
                name: psnr(render(pipeline, corrected_camera(camera, corr))["rgb"], gt)
                for name, corr in corrections_for_eval_view(pipeline, index).items()
            }
        views.append(view)
    return {"views": views, "camera_drift": camera_drift(pipeline)}


def synthetic_gt_distance(pipeline, data: Path) -> Optional[List[float]]:
    """For a scene made by ``tests/synthetic_llff.py``: the true median ray distance of each held-out view (HR pixel
    centres), in the dataparser's units, to compare with the rendered median depth. None for other scenes."""
    if not (Path(data) / "synthetic_gt.npz").is_file():
        return None
    sys.path.insert(0, str(REPO / "tests"))
    from synthetic_llff import _cast, _scene_planes, load_scene

    scene = load_scene(Path(data))
    rotation = scene.world_from_render[:3, :3] / scene.world_scale
    translation = scene.world_from_render[:3, 3]
    scale = float(pipeline.datamanager.train_dataparser_outputs.dataparser_scale)
    eval_dataset = pipeline.datamanager.eval_dataset
    out = []
    for index, view in enumerate(eval_dataset.metadata["image_indices"].tolist()):
        w, h = int(eval_dataset.cameras.width[index]), int(eval_dataset.cameras.height[index])
        focal = scene.focal * w / scene.width
        v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        dirs = np.stack([(u - w / 2) / focal, -(v - h / 2) / focal, -np.ones_like(u)], -1).reshape(-1, 3)
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        c2w = scene.c2w[view]
        origin = rotation.T @ (c2w[:3, 3] - translation) / scene.world_scale
        distance, _, _ = _cast(_scene_planes(), origin, dirs @ c2w[:3, :3].T @ rotation)
        out.append(float(np.median(distance)) * scene.world_scale * scale)
    return out


def drift_in_hr_pixels(result: Dict[str, object], pipeline) -> Optional[Dict[str, float]]:
    """Rough image-space size of the drift at HR: rotation x focal, translation x focal / median depth."""
    drift = result["camera_drift"]
    if drift is None:
        return None
    fx = float(pipeline.datamanager.eval_dataset.cameras.fx[0])
    depth = float(np.median([v["median_depth"] for v in result["views"]]))
    return {
        "rotation_mean_px": math.radians(drift["rotation_mean_deg"]) * fx,
        "rotation_common_px": math.radians(drift["rotation_common_deg"]) * fx,
        "translation_mean_px": drift["translation_mean"] * fx / depth,
        "translation_common_px": drift["translation_common"] * fx / depth,
    }


def run_experiment(run: RunConfig, checks: Sequence[str] = CHECKS, log_every: int = 0, max_shift: Optional[int] = None):
    pipeline = setup_pipeline(run)
    seconds = train(pipeline, run, log_every=log_every)
    result = evaluate(pipeline, run, max_shift=max_shift, checks=checks)
    result["train_seconds"] = seconds
    result["drift_hr_px"] = drift_in_hr_pixels(result, pipeline)
    result["gt_median_distance"] = synthetic_gt_distance(pipeline, run.data)
    result["near_far_dataset"] = list(dataset_near_far(pipeline))
    result["collider"] = [float(pipeline.model.collider.near_plane), float(pipeline.model.collider.far_plane)]
    return pipeline, result


def _save_images(result: Dict[str, object], folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for view in result["views"]:
        for key in ("_rgb", "_gt", "_bicubic"):
            array = (view[key].numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
            Image.fromarray(array).save(folder / f"view{view['view']:03d}{key}.png")
        diff = ((view["_rgb"] - view["_gt"]).abs().mean(-1).numpy() * 4 * 255).clip(0, 255).astype(np.uint8)
        Image.fromarray(diff).save(folder / f"view{view['view']:03d}_absdiff_x4.png")


def _printable(result: Dict[str, object]) -> Dict[str, object]:
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not str(k).startswith("_")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, float):
            return round(value, 4)
        return value

    return clean(result)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="LLFF scene; default: generate a synthetic scene")
    parser.add_argument("--scene-dir", type=Path, default=None, help="where to generate the synthetic scene")
    parser.add_argument("--views", type=int, default=10, help="synthetic scene: number of views")
    parser.add_argument("--hr-size", default="128x96", help="synthetic scene: WxH of images/ (the HR eval size)")
    parser.add_argument("--scene-seed", type=int, default=0)
    parser.add_argument("--downscale", type=int, default=None, help="train factor (default 4 synthetic, 8 data)")
    parser.add_argument("--sr-scale", type=int, default=4)
    parser.add_argument("--llffhold", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--camera-opt", choices=["off", "SO3xR3", "SE3"], default="off")
    parser.add_argument("--camera-lr", type=float, default=1e-3)
    parser.add_argument("--camera-lr-final", type=float, default=1e-4)
    parser.add_argument("--camera-lr-steps", type=int, default=5000)
    parser.add_argument("--model", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--max-res", type=int, default=None)
    parser.add_argument("--collider", choices=["default", "bounds"], default="default")
    parser.add_argument("--rays", type=int, default=256, help="train rays per batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--max-shift", type=int, default=None, help="shift search range in HR px")
    parser.add_argument(
        "--checks",
        default=",".join(CHECKS),
        help=f"comma-separated extra renders per held-out view, from {','.join(CHECKS)}; 'none' for none",
    )
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--save-images", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = args.data
    tmp = None
    if data is None:
        sys.path.insert(0, str(REPO / "tests"))
        from synthetic_llff import make_llff_scene

        width, height = (int(v) for v in args.hr_size.lower().split("x"))
        if args.scene_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="heldout_alignment_")
            scene_dir = Path(tmp.name) / "scene"
        else:
            scene_dir = args.scene_dir
        if not (scene_dir / "poses_bounds.npy").is_file():
            make_llff_scene(scene_dir, n_views=args.views, hr_size=(width, height), factors=(4,), seed=args.scene_seed)
        data = scene_dir
    downscale = args.downscale if args.downscale is not None else (8 if args.data is not None else 4)
    run = RunConfig(
        data=data,
        downscale=downscale,
        sr_scale=args.sr_scale,
        llffhold=args.llffhold,
        steps=args.steps,
        camera_opt=args.camera_opt,
        camera_lr=args.camera_lr,
        camera_lr_final=args.camera_lr_final,
        camera_lr_steps=args.camera_lr_steps,
        model=args.model,
        max_res=args.max_res,
        collider=args.collider,
        rays=args.rays,
        device=args.device,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
    )
    print(f"run: {run}", flush=True)
    checks = [c for c in args.checks.split(",") if c and c != "none"]
    unknown = set(checks) - set(CHECKS)
    if unknown:
        parser.error(f"unknown --checks {sorted(unknown)}; choose from {CHECKS}")
    _, result = run_experiment(run, checks=checks, log_every=args.log_every, max_shift=args.max_shift)
    if args.save_images is not None:
        _save_images(result, args.save_images)
    printable = _printable(result)
    printable["run"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in run.__dict__.items()}
    print(json.dumps(printable, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(printable, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return printable


if __name__ == "__main__":
    main()
