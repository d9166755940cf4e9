"""``llff-data``: a nerfstudio dataparser for LLFF scenes (``poses_bounds.npy`` + ``images*/``), for x4 NeRF SR.

The train split is the low-resolution views (``images_{downscale_factor}/``, e.g. 504x378 on fern); the eval
splits ("val" and "test", the same views) are every ``llffhold``-th view at ``sr_scale`` x that resolution with
real high-resolution images (``images_{downscale_factor // sr_scale}/``, e.g. 2016x1512), so that a method trained
on low-resolution images is scored against true high-resolution ones. A missing folder is made by exact area
downsampling from the nearest larger one and cached (see :mod:`vsdsr_nerfstudio.data.image_io`).

Format (``poses_bounds.npy``, one row per view, the k-th row for the k-th file of every image folder in sorted
name order): ``row[:15].reshape(3, 5)`` = ``[down, right, back, centre, (H, W, f)]`` columns in world coordinates,
H, W, f for the full-resolution ``images/``; ``row[15:17]`` = near, far depth bounds. The camera-to-world in
nerfstudio's (OpenGL) convention is ``[right, -down, back, centre]``.

Poses are oriented, centred and scaled like nerfstudio's colmap dataparser, once from *all* views, so every split
shares one transform. See docs/data.md.

This module imports only nerfstudio, torch, numpy and PIL.
"""

from __future__ import annotations

import copy
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Literal, Tuple, Type

import numpy as np
import torch
from jaxtyping import Float, Int
from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from vsdsr_nerfstudio.data.image_io import (
    ImageFolder,
    ImageFolderError,
    check_image_decodes,
    describe_folders,
    folder_name,
    resolve_image_folder,
)

POSES_BOUNDS = "poses_bounds.npy"
"""File name of the LLFF pose array."""
SFM_FOLDER = "sparse"
"""Folder of the scene's COLMAP model (``sparse/0``), whose points seed the Gaussian backbone."""
SPLITS = ("train", "val", "test")
"""Splits the parser knows; "val" and "test" are the same held-out views."""


class LLFFDataError(ImageFolderError):
    """The LLFF scene is missing a file, or its files disagree. The message names the file or folder, says what
    was expected and what to do. A ``ValueError``."""


@contextmanager
def _llff_errors() -> Iterator[None]:
    """Re-raise image-folder errors as :class:`LLFFDataError` (same message)."""
    try:
        yield
    except LLFFDataError:
        raise
    except ImageFolderError as err:
        raise LLFFDataError(str(err)) from err


@dataclass
class LLFFDataParserConfig(DataParserConfig):
    """LLFF scene (poses_bounds.npy + images*/): train on low-resolution views, evaluate on real HR views."""

    _target: Type = field(default_factory=lambda: LLFFDataParser)
    """Target class to instantiate."""
    data: Path = Path("data/nerf_llff_data/fern")
    """Scene folder with poses_bounds.npy and images/ and/or images_{k}/ folders."""
    downscale_factor: int = 8
    """Train on images/ downscaled by this: images_{downscale_factor}/ (8: 504x378 on fern), built if missing."""
    sr_scale: int = 4
    """Eval at sr_scale x the train resolution on real images_{downscale_factor // sr_scale}/; 1: train size."""
    llffhold: int = 8
    """Hold out views 0, llffhold, 2*llffhold, ... for eval (val/test), not trained on; 0: all views in both."""
    scale_factor: float = 1.0
    """Extra scale of the camera positions (and of near/far) after the automatic scaling."""
    orientation_method: Literal["pca", "up", "vertical", "none"] = "up"
    """World rotation (auto_orient_and_center_poses); "up" turns the mean camera up vector to +z."""
    center_method: Literal["poses", "focus", "none"] = "poses"
    """World origin: "poses" = mean camera position, "focus" = focus of attention of the optical axes."""
    auto_scale_poses: bool = True
    """Scale the world so that the largest absolute camera coordinate is 1 (as nerfstudio's colmap parser)."""
    scene_scale: float = 1.0
    """Half-size of the scene box [-scene_scale, scene_scale]^3 in the transformed world."""
    load_3d_points: bool = True
    """Read the scene's SfM points (sparse/0/points3D.bin or .txt, COLMAP) into the outputs' metadata
    (points3D_xyz in the normalised world, points3D_rgb uint8), as nerfstudio's colmap parser: they seed
    Gaussian models (vsd-sr-splat). Skipped when the scene has no sparse/0."""


@dataclass
class _LLFFPoses:
    """Everything read from poses_bounds.npy, already transformed (for all views)."""

    camera_to_worlds: Float[Tensor, "n 3 4"]
    focal_full: Float[np.ndarray, " n"]
    full_hw: Tuple[int, int]
    bounds: Float[Tensor, "n 2"]
    transform: Float[Tensor, "3 4"]
    scale: float


def llff_to_opengl_c2w(poses: Float[np.ndarray, "n 3 4"]) -> Float[np.ndarray, "n 4 4"]:
    """LLFF ``[down, right, back, centre]`` columns -> nerfstudio/OpenGL camera-to-world ``[right, up, back, centre]``
    (homogeneous, float64)."""
    c2w = np.zeros((poses.shape[0], 4, 4), dtype=np.float64)
    c2w[:, :3, 0] = poses[:, :, 1]
    c2w[:, :3, 1] = -poses[:, :, 0]
    c2w[:, :3, 2] = poses[:, :, 2]
    c2w[:, :3, 3] = poses[:, :, 3]
    c2w[:, 3, 3] = 1.0
    return c2w


def split_indices(num_views: int, llffhold: int, split: str) -> Int[np.ndarray, " m"]:
    """View indices of ``split``: eval = every llffhold-th view, train = the others (llffhold 0: all views)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: expected one of {SPLITS}.")
    all_views = np.arange(num_views)
    if llffhold == 0:
        return all_views
    eval_views = all_views[::llffhold]
    if split == "train":
        return np.setdiff1d(all_views, eval_views)
    return eval_views


def sr_cameras(cameras: Cameras, sr_scale: int) -> Cameras:
    """A copy of ``cameras`` rendering at ``sr_scale`` x their resolution (focal lengths, principal points and sizes
    multiplied), e.g. the train cameras at the eval (HR) resolution. Exact for centred principal points."""
    out = copy.deepcopy(cameras)
    out.rescale_output_resolution(float(sr_scale))
    return out


class LLFFDataParser(DataParser):
    """Parser for LLFF scenes; see the module docstring and :class:`LLFFDataParserConfig`."""

    config: LLFFDataParserConfig

    def __init__(self, config: LLFFDataParserConfig):
        super().__init__(config=config)
        self.config = config

    # ------------------------------------------------------------------------------------------------------------
    def _check_config(self) -> Tuple[int, int, int, int]:
        """Validate the integer options; return downscale_factor, sr_scale, llffhold and the HR (eval) folder's
        factor as Python ints."""
        cfg = self.config
        for name, minimum, note in (("downscale_factor", 1, ""), ("sr_scale", 1, ""), ("llffhold", 0, " (0: none)")):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise LLFFDataError(f"{name} must be an integer >= {minimum}{note}, got {value!r}.")
        if int(cfg.downscale_factor) % int(cfg.sr_scale) != 0:
            hr = cfg.downscale_factor / cfg.sr_scale
            raise LLFFDataError(
                f"No high-resolution source for the eval scale: downscale_factor {cfg.downscale_factor} with sr_scale "
                f"{cfg.sr_scale} needs images at factor {hr:g} of the full resolution in {cfg.data}, which is "
                f"{'finer than the original images/' if hr < 1 else 'not an integer factor'}. Choose an sr_scale "
                f"that divides downscale_factor (e.g. downscale_factor 8 with sr_scale 4 or 2), or a larger "
                f"downscale_factor."
            )
        downscale, sr_scale, llffhold = int(cfg.downscale_factor), int(cfg.sr_scale), int(cfg.llffhold)
        return downscale, sr_scale, llffhold, downscale // sr_scale

    def _load_poses(self) -> _LLFFPoses:
        cfg = self.config
        data = Path(cfg.data)
        if not data.is_dir():
            raise LLFFDataError(
                f"Data folder {data} does not exist (or is not a folder). Expected an LLFF scene folder with "
                f"{POSES_BOUNDS} and images*/ folders; check --data."
            )
        path = data / POSES_BOUNDS
        if not path.is_file():
            raise LLFFDataError(
                f"{path} is missing. An LLFF scene needs {POSES_BOUNDS}, an (N, 17) array of poses and bounds (made by "
                f"LLFF's imgs2poses.py from a COLMAP reconstruction). Found in {data}: {describe_folders(data)}."
            )
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise LLFFDataError(f"Cannot read {path}: {err}. Expected a NumPy .npy file of shape (N, 17).") from err
        if array.ndim != 2 or array.shape[1] != 17 or array.shape[0] < 1:
            raise LLFFDataError(
                f"{path} has shape {tuple(array.shape)}, expected (N, 17): per view 15 pose values (a 3x5 matrix "
                f"[down, right, back, centre, (H, W, f)]) and the near/far bounds. Re-create it with LLFF's "
                f"imgs2poses.py."
            )
        if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
            raise LLFFDataError(f"{path} contains non-numeric or non-finite values; re-create it.")
        array = array.astype(np.float64)
        poses = array[:, :15].reshape(-1, 3, 5)
        hwf = poses[:, :, 4]
        heights, widths, focal = hwf[:, 0], hwf[:, 1], hwf[:, 2]
        full_h, full_w = int(round(heights[0])), int(round(widths[0]))
        if (
            full_h < 1
            or full_w < 1
            or np.any(np.abs(heights - full_h) > 1e-3)
            or np.any(np.abs(widths - full_w) > 1e-3)
            or np.any(focal <= 0)
        ):
            raise LLFFDataError(
                f"{path}: the (H, W, f) column must hold the same positive integer image size for every view and "
                f"positive focal lengths; found H in [{heights.min():g}, {heights.max():g}], W in "
                f"[{widths.min():g}, {widths.max():g}], f in [{focal.min():g}, {focal.max():g}]."
            )
        bounds = array[:, 15:17]
        if np.any(bounds[:, 0] <= 0) or np.any(bounds[:, 1] <= bounds[:, 0]):
            raise LLFFDataError(f"{path}: the near/far bounds (last two columns) must satisfy 0 < near < far.")

        c2w = torch.from_numpy(llff_to_opengl_c2w(poses[:, :, :4])).float()
        oriented, transform = camera_utils.auto_orient_and_center_poses(
            c2w, method=cfg.orientation_method, center_method=cfg.center_method
        )
        scale = 1.0
        if cfg.auto_scale_poses:
            max_abs = float(torch.max(torch.abs(oriented[:, :3, 3])))
            if max_abs > 0:  # a single view (or all views at one point) cannot be scaled this way
                scale /= max_abs
        scale *= float(cfg.scale_factor)
        oriented[:, :3, 3] *= scale
        return _LLFFPoses(
            camera_to_worlds=oriented[:, :3, :4].contiguous(),
            focal_full=focal,
            full_hw=(full_h, full_w),
            bounds=torch.from_numpy(bounds * scale).float(),
            transform=transform.float(),
            scale=scale,
        )

    def _folder(self, factor: int, poses: _LLFFPoses) -> ImageFolder:
        with _llff_errors():
            return resolve_image_folder(
                Path(self.config.data),
                factor,
                num_images=poses.camera_to_worlds.shape[0],
                full_hw=poses.full_hw,
                count_source=f"rows in {Path(self.config.data) / POSES_BOUNDS}",
            )

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        cfg = self.config
        if split not in SPLITS:
            raise ValueError(f"Unknown dataparser split {split!r}: expected one of {SPLITS}.")
        downscale, sr_scale, llffhold, hr_factor = self._check_config()
        poses = self._load_poses()
        num_views = poses.camera_to_worlds.shape[0]
        full_h, full_w = poses.full_hw
        for factor in (downscale, hr_factor):  # fail early, in every split, on an impossible size
            if full_h % factor or full_w % factor:
                raise LLFFDataError(
                    f"The full-resolution size {full_w}x{full_h} (W x H, from {Path(cfg.data) / POSES_BOUNDS}) is "
                    f"not divisible by the factor {factor} ({folder_name(factor)}/): its images cannot be an exact "
                    f"downsample. Choose a downscale_factor / sr_scale whose factors divide both sides."
                )
        train_hw = (full_h // downscale, full_w // downscale)
        hr_hw = (full_h // hr_factor, full_w // hr_factor)

        indices = split_indices(num_views, llffhold, split)
        if llffhold == 0:
            CONSOLE.log("[yellow]llffhold=0: every view is used for training and for eval.")
        if len(indices) == 0:
            raise LLFFDataError(
                f"The {split} split of {cfg.data} is empty: {num_views} views with llffhold={llffhold} hold out "
                f"every view. Use a larger llffhold (or 0 to train and evaluate on all views)."
            )

        factor = downscale if split == "train" else hr_factor
        folder = self._folder(factor, poses)
        image_filenames: List[Path] = [folder.files[i] for i in indices]
        with _llff_errors():
            for path in image_filenames:  # decode now so a corrupt file is named here, not deep in a data loader
                check_image_decodes(path)

        height, width = folder.size_hw
        idx = torch.from_numpy(indices).long()
        focal = torch.from_numpy(poses.focal_full[indices] * width / full_w).float()
        cameras = Cameras(
            camera_to_worlds=poses.camera_to_worlds[idx],
            fx=focal.clone(),
            fy=focal.clone(),
            cx=torch.full((len(indices),), width / 2.0),
            cy=torch.full((len(indices),), height / 2.0),
            width=torch.full((len(indices),), width, dtype=torch.int64),
            height=torch.full((len(indices),), height, dtype=torch.int64),
            camera_type=CameraType.PERSPECTIVE,
        )
        aabb = cfg.scene_scale
        scene_box = SceneBox(aabb=torch.tensor([[-aabb, -aabb, -aabb], [aabb, aabb, aabb]], dtype=torch.float32))

        metadata = {
            "near": float(poses.bounds[:, 0].min()),
            "far": float(poses.bounds[:, 1].max()),
            "bounds": poses.bounds[idx].clone(),
            "image_indices": idx.clone(),
            "downscale_factor": downscale,
            "sr_scale": sr_scale,
            "llffhold": llffhold,
            "image_factor": factor,
            "image_folder": folder.path,
            "full_image_size": (full_h, full_w),
            "train_image_size": train_hw,
            "hr_image_size": hr_hw,
        }
        if cfg.load_3d_points:
            metadata.update(load_sfm_points(Path(cfg.data), poses.transform, poses.scale))
        CONSOLE.log(
            f"llff-data {split}: {len(indices)} of {num_views} views from {folder.path} at {width}x{height}"
            f"{' (cache)' if folder.is_cache else ''}; train {train_hw[1]}x{train_hw[0]}, eval x{sr_scale} "
            f"{hr_hw[1]}x{hr_hw[0]}."
        )
        return DataparserOutputs(
            image_filenames=image_filenames,
            cameras=cameras,
            scene_box=scene_box,
            dataparser_transform=poses.transform,
            dataparser_scale=poses.scale,
            metadata=metadata,
        )


def load_sfm_points(data: Path, transform: Float[Tensor, "3 4"], scale: float) -> dict:
    """``{"points3D_xyz": (M, 3) float, "points3D_rgb": (M, 3) uint8}`` from ``data/sparse/0/points3D.bin`` (or
    ``.txt``), moved into the parser's normalised world (``scale * (transform @ [p, 1])``, what it applies to the
    camera centres); ``{}`` when there is no ``sparse/0``. LLFF's poses are in the COLMAP world of that model."""
    folder = data / SFM_FOLDER / "0"
    candidates = [folder / "points3D.bin", folder / "points3D.txt"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return {}
    from nerfstudio.data.utils import colmap_parsing_utils as colmap

    try:
        points = colmap.read_points3D_binary(path) if path.suffix == ".bin" else colmap.read_points3D_text(path)
    except Exception as err:  # struct.error, ValueError, OSError: a truncated or foreign file
        raise LLFFDataError(
            f"Cannot read the SfM points in {path}: {err}. Expected a COLMAP points3D file; remove sparse/0 or pass "
            f"--load-3d-points False to train without them."
        ) from err
    if not points:
        return {}
    xyz = torch.from_numpy(np.array([p.xyz for p in points.values()], dtype=np.float32))
    rgb = torch.from_numpy(np.array([p.rgb for p in points.values()], dtype=np.uint8))
    xyz = (xyz @ transform[:3, :3].T.float() + transform[:3, 3].float()) * float(scale)
    return {"points3D_xyz": xyz, "points3D_rgb": rgb}


llff_dataparser = DataParserSpecification(
    config=LLFFDataParserConfig(),
    description="LLFF scenes (poses_bounds.npy): train on images_{downscale_factor}, evaluate every llffhold-th view "
    "at sr_scale x with real HR images (x4 NeRF super-resolution).",
)
