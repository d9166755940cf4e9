"""A synthetic forward-facing LLFF scene with known cameras, for tests.

:func:`make_llff_scene` writes a folder in the LLFF layout::

    root/
      poses_bounds.npy     (n_views, 17): [down, right, back, centre, (H, W, f)] + [near, far], hwf of images/
      images/img_000.png   full resolution (hr_size)
      images_{f}/image000.png   area downsample by f, for every f in factors (named differently on purpose)
      synthetic_gt.npz     ground truth (cameras, marker points), read back with :func:`load_scene`

The images are ray-cast analytically: three textured planes at different depths (a background plane and two
smaller tilted ones in front of it, for parallax), each with a smooth multi-frequency colour texture (sums of
sinusoids plus a soft colour checker, periods of 5 to 48 full-resolution pixels, anti-aliased by supersampling).
Markers are red Gaussian dots at known world points, each on a flat grey disc so that its centroid can be
measured in an image (:func:`measure_marker`) and compared with a projection.

The cameras sit on a small forward-facing arc looking at the scene; the whole rig is then moved by a random
similarity transform (rotation, translation, scale), so the LLFF world frame is arbitrary, as it is for COLMAP.

Pixel convention (nerfstudio's): continuous image coordinates (u right, v down) with pixel (row i, column j)
covering [j, j+1) x [i, i+1), its centre at (j + 0.5, i + 0.5); principal point at (W/2, H/2). A point at
(u, v) in images/ is at (u/f, v/f) in images_f/, exactly, because images_f/ is a box-filter downsample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

GT_FILE = "synthetic_gt.npz"


@dataclass
class SyntheticLLFFScene:
    """Ground truth of a scene written by :func:`make_llff_scene`."""

    root: Path
    """The scene folder."""
    c2w: np.ndarray
    """(n, 4, 4) camera-to-world in the LLFF world frame, OpenGL axes (x right, y up, z back)."""
    focal: float
    """Focal length in pixels of the full-resolution images/."""
    width: int
    """Width of images/."""
    height: int
    """Height of images/."""
    bounds: np.ndarray
    """(n, 2) near/far depth bounds in world units (as in poses_bounds.npy)."""
    markers: np.ndarray
    """(m, 3) world points at the centre of the marker dots."""
    marker_sigma: np.ndarray
    """(m,) standard deviation of each dot on its plane, in world units."""
    marker_plane: np.ndarray
    """(m,) index of the plane each marker lies on."""
    factors: Tuple[int, ...]
    """The factors of the images_{f}/ folders written."""
    world_scale: float
    """Scale of the random similarity transform from the rendering frame to the world frame."""
    world_from_render: np.ndarray
    """(4, 4) the similarity transform from the rendering frame to the world frame."""

    @property
    def n_views(self) -> int:
        return int(self.c2w.shape[0])

    def camera_points(self, points: np.ndarray, view: int) -> np.ndarray:
        """(m, 3) points in the camera frame of ``view`` (OpenGL axes: visible points have z < 0)."""
        c2w = self.c2w[view]
        return (np.asarray(points, dtype=np.float64) - c2w[:3, 3]) @ c2w[:3, :3]

    def project(self, points: np.ndarray, view: int, factor: int = 1) -> np.ndarray:
        """(m, 2) continuous pixel coordinates (u, v) of world ``points`` in ``view`` at images_{factor}/."""
        cam = self.camera_points(points, view)
        depth = -cam[:, 2]
        u = self.width / 2 + self.focal * cam[:, 0] / depth
        v = self.height / 2 - self.focal * cam[:, 1] / depth
        return np.stack([u, v], axis=-1) / factor

    def marker_sigma_px(self, view: int, factor: int = 1) -> np.ndarray:
        """(m,) approximate size (standard deviation, pixels) of each marker dot in ``view`` at ``factor``."""
        depth = -self.camera_points(self.markers, view)[:, 2]
        return self.marker_sigma * self.focal / depth / factor

    def marker_visible(self, view: int, margin_sigmas: float = 4.0) -> np.ndarray:
        """(m,) whether each marker is in front, unoccluded and ``margin_sigmas`` dots away from the border."""
        uv = self.project(self.markers, view)
        sigma = self.marker_sigma_px(view)
        depth = -self.camera_points(self.markers, view)[:, 2]
        margin = margin_sigmas * sigma
        inside = (
            (depth > 0)
            & (uv[:, 0] > margin)
            & (uv[:, 0] < self.width - margin)
            & (uv[:, 1] > margin)
            & (uv[:, 1] < self.height - margin)
        )
        # occlusion: cast the ray through the marker in the rendering frame (camera-frame directions are the same)
        rotation = self.world_from_render[:3, :3] / self.world_scale
        translation = self.world_from_render[:3, 3]
        c2w = self.c2w[view]
        origin_render = rotation.T @ (c2w[:3, 3] - translation) / self.world_scale
        cam = self.camera_points(self.markers, view)
        dirs = cam / np.linalg.norm(cam, axis=-1, keepdims=True)
        _, hit_plane, _ = _cast(_scene_planes(), origin_render, dirs @ (rotation.T @ c2w[:3, :3]).T)
        return inside & (hit_plane == self.marker_plane)


# ----------------------------------------------------------------------------------------------------------------
# Scene geometry (in the rendering frame: cameras near the origin looking down -z)


@dataclass
class _Plane:
    origin: np.ndarray
    axis_s: np.ndarray
    axis_t: np.ndarray
    half_extent: Tuple[float, float]  # inf for an unbounded plane
    depth: float  # nominal depth, sets the texture frequencies in pixels


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _scene_planes() -> Tuple[_Plane, ...]:
    background = _Plane(np.array([0.0, 0.0, -6.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (np.inf, np.inf), 6)
    rot_mid = _rotation("y", 25.0)
    mid = _Plane(np.array([-0.9, -0.3, -3.8]), rot_mid[:, 0], rot_mid[:, 1], (0.9, 0.8), 3.8)
    rot_near = _rotation("x", -20.0)
    near = _Plane(np.array([0.7, -0.5, -2.6]), rot_near[:, 0], rot_near[:, 1], (0.6, 0.45), 2.6)
    return background, mid, near


def _cast(planes: Sequence[_Plane], origin: np.ndarray, dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of rays ``origin + lam * dirs`` (dirs (r, 3)): distance lam, plane index, plane coords (s, t)."""
    best = np.full(dirs.shape[0], np.inf)
    best_plane = np.full(dirs.shape[0], -1, dtype=np.int64)
    best_st = np.zeros((dirs.shape[0], 2))
    for index, plane in enumerate(planes):
        normal = np.cross(plane.axis_s, plane.axis_t)
        denom = dirs @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = ((plane.origin - origin) @ normal) / denom
        hit = origin + lam[:, None] * dirs
        s = (hit - plane.origin) @ plane.axis_s
        t = (hit - plane.origin) @ plane.axis_t
        ok = (lam > 1e-9) & (np.abs(s) <= plane.half_extent[0]) & (np.abs(t) <= plane.half_extent[1]) & (lam < best)
        best = np.where(ok, lam, best)
        best_plane = np.where(ok, index, best_plane)
        best_st = np.where(ok[:, None], np.stack([s, t], axis=-1), best_st)
    return best, best_plane, best_st


def _texture_params(rng: np.random.Generator, n_planes: int, focal: float, planes: Sequence[_Plane]):
    params = []
    for index in range(n_planes):
        px_to_world = planes[index].depth / focal  # world units per full-resolution pixel at the plane's depth
        waves = []
        for _channel in range(3):
            periods = rng.uniform(5.0, 48.0, size=5) * px_to_world
            angles = rng.uniform(0, np.pi, size=5)
            freqs = np.stack([np.cos(angles), np.sin(angles)], -1) / periods[:, None]
            phases = rng.uniform(0, 2 * np.pi, size=5)
            amps = rng.uniform(0.04, 0.09, size=5)
            waves.append((freqs, phases, amps))
        base = rng.uniform(0.3, 0.7, size=3)
        checker_colour = rng.uniform(-0.18, 0.18, size=3)
        checker_period = rng.uniform(20.0, 40.0) * px_to_world
        params.append((waves, base, checker_colour, checker_period))
    return params


def _shade(st: np.ndarray, plane_index: np.ndarray, tex, markers_st, marker_sigma, marker_plane) -> np.ndarray:
    colour = np.zeros(st.shape[:-1] + (3,))
    for index, (waves, base, checker_colour, checker_period) in enumerate(tex):
        sel = plane_index == index
        if not sel.any():
            continue
        p = st[sel]
        c = np.tile(base, (p.shape[0], 1))
        for channel, (freqs, phases, amps) in enumerate(waves):
            c[:, channel] += (amps * np.sin(2 * np.pi * p @ freqs.T + phases)).sum(-1)
        wave_s, wave_t = np.sin(2 * np.pi * p[:, 0] / checker_period), np.sin(2 * np.pi * p[:, 1] / checker_period)
        checker = np.tanh(3 * wave_s * wave_t)
        c += checker[:, None] * checker_colour
        for m in np.nonzero(marker_plane == index)[0]:
            r = np.linalg.norm(p - markers_st[m], axis=-1) / marker_sigma[m]
            flat = np.clip(4.5 - r, 0.0, 1.0)  # grey disc of radius 3.5 sigma, blended out by 4.5 sigma
            c = c * (1 - flat[:, None]) + 0.5 * flat[:, None]
            dot = np.exp(-0.5 * r**2)
            c += dot[:, None] * np.array([0.4, -0.2, -0.2])
        colour[sel] = c
    return np.clip(colour, 0.0, 1.0)


def _look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, position
    return c2w


def _random_similarity(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    scale = float(rng.uniform(0.5, 2.0))
    out = np.eye(4)
    out[:3, :3] = scale * q
    out[:3, 3] = rng.normal(size=3) * 2.0
    return out


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def make_llff_scene(
    root: Path,
    n_views: int = 10,
    hr_size: Tuple[int, int] = (128, 96),
    factors: Sequence[int] = (4,),
    seed: int = 0,
    *,
    focal_ratio: float = 1.1,
    supersample: int = 2,
    marker_sigma_px: Optional[float] = None,
    write_full: bool = True,
) -> Path:
    """Write a synthetic forward-facing LLFF scene into ``root`` (created if needed) and return ``root``.

    Args:
        root: output folder.
        n_views: number of cameras (on a forward-facing arc).
        hr_size: (width, height) of the full-resolution images/ (divisible by every factor).
        factors: write images_{f}/ (area downsample of images/) for each f.
        seed: seeds the textures, the camera jitter and the world transform.
        focal_ratio: focal length / width.
        supersample: s x s samples per full-resolution pixel (anti-aliasing).
        marker_sigma_px: size of the marker dots in full-resolution pixels (default 1.5 x the largest factor).
        write_full: write images/ (set False to get a scene with only the downsampled folders).

    The ground truth is saved in ``root / "synthetic_gt.npz"``; read it with :func:`load_scene`.
    """
    root = Path(root)
    width, height = int(hr_size[0]), int(hr_size[1])
    factors = tuple(int(f) for f in factors)
    for factor in factors:
        if width % factor or height % factor:
            raise ValueError(f"hr_size {hr_size} is not divisible by factor {factor}")
    rng = np.random.default_rng(seed)
    focal = focal_ratio * width
    planes = _scene_planes()
    sigma_px = marker_sigma_px if marker_sigma_px is not None else max(2.0, 1.5 * max(factors, default=1))

    # cameras on a small arc, looking at the middle of the scene
    t = np.linspace(-1.0, 1.0, n_views)
    positions = np.stack([0.5 * t, 0.12 * np.sin(2.5 * t + 0.3), 0.08 * (1 - t**2)], axis=-1)
    positions += rng.normal(scale=0.01, size=positions.shape)
    target = np.array([0.0, 0.0, -4.0])
    c2w_render = np.stack([_look_at(p, target + rng.normal(scale=0.05, size=3)) for p in positions])

    # markers: (plane, s, t); sigma in world units from the size in pixels at the plane's depth
    marker_spec = [(0, 1.2, 1.0), (0, -0.3, 1.3), (1, 0.25, -0.1), (2, -0.2, 0.05)]
    marker_plane = np.array([m[0] for m in marker_spec])
    markers_st = np.array([[m[1], m[2]] for m in marker_spec], dtype=np.float64)
    marker_sigma = np.array([sigma_px * planes[m[0]].depth / focal for m in marker_spec])
    markers_render = np.stack(
        [planes[p].origin + s * planes[p].axis_s + tt * planes[p].axis_t for p, s, tt in marker_spec]
    )
    tex = _texture_params(rng, len(planes), focal, planes)

    # render every view at full resolution
    offsets = (np.arange(supersample) + 0.5) / supersample
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    images, bounds = [], []
    for view in range(n_views):
        colour = np.zeros((height, width, 3))
        depths = []
        for oy in offsets:
            for ox in offsets:
                u, v = jj + ox, ii + oy
                dirs_cam = np.stack([(u - width / 2) / focal, -(v - height / 2) / focal, -np.ones_like(u)], -1)
                dirs = dirs_cam.reshape(-1, 3) @ c2w_render[view, :3, :3].T
                lam, plane_index, st = _cast(planes, c2w_render[view, :3, 3], dirs)
                colour += _shade(st, plane_index, tex, markers_st, marker_sigma, marker_plane).reshape(height, width, 3)
                depths.append(lam)  # |dirs_cam.z| = 1, so lam is the depth along the viewing axis
        images.append(np.round(colour / supersample**2 * 255.0).astype(np.uint8))
        all_depths = np.concatenate(depths)
        bounds.append([0.9 * all_depths.min(), 1.1 * all_depths.max()])

    # move everything into a random world frame
    world = _random_similarity(rng)
    scale = float(np.linalg.norm(world[:3, 0]))
    c2w = world @ c2w_render
    c2w[:, :3, :3] /= scale
    markers = markers_render @ world[:3, :3].T + world[:3, 3]
    bounds_world = np.asarray(bounds) * scale

    # poses_bounds.npy in LLFF order: [down, right, back, centre, hwf]
    llff = np.stack([-c2w[:, :3, 1], c2w[:, :3, 0], c2w[:, :3, 2], c2w[:, :3, 3]], axis=-1)
    hwf = np.tile(np.array([height, width, focal], dtype=np.float64)[None, :, None], (n_views, 1, 1))
    poses_bounds = np.concatenate([np.concatenate([llff, hwf], -1).reshape(n_views, 15), bounds_world], -1)

    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "poses_bounds.npy", poses_bounds)
    if write_full:
        (root / "images").mkdir(exist_ok=True)
        for view, image in enumerate(images):
            _save_png(image, root / "images" / f"img_{view:03d}.png")
    for factor in factors:
        folder = root / f"images_{factor}"
        folder.mkdir(exist_ok=True)
        for view, image in enumerate(images):
            small = image.reshape(height // factor, factor, width // factor, factor, 3).mean(axis=(1, 3))
            _save_png(np.round(small).astype(np.uint8), folder / f"image{view:03d}.png")
    np.savez(
        root / GT_FILE,
        c2w=c2w,
        focal=focal,
        width=width,
        height=height,
        bounds=bounds_world,
        markers=markers,
        marker_sigma=marker_sigma * scale,
        marker_plane=marker_plane,
        factors=np.array(factors, dtype=np.int64),
        world_from_render=world,
    )
    return root


def load_scene(root: Path) -> SyntheticLLFFScene:
    """The ground truth of a scene written by :func:`make_llff_scene`."""
    with np.load(Path(root) / GT_FILE) as gt:
        world = gt["world_from_render"]
        scene = SyntheticLLFFScene(
            root=Path(root),
            c2w=gt["c2w"],
            focal=float(gt["focal"]),
            width=int(gt["width"]),
            height=int(gt["height"]),
            bounds=gt["bounds"],
            markers=gt["markers"],
            marker_sigma=gt["marker_sigma"],
            marker_plane=gt["marker_plane"],
            factors=tuple(int(f) for f in gt["factors"]),
            world_scale=float(np.linalg.norm(world[:3, 0])),
            world_from_render=world,
        )
    return scene


def measure_marker(image: np.ndarray, uv: np.ndarray, radius: float, iterations: int = 3) -> np.ndarray:
    """Centroid (u, v) of a marker dot near ``uv`` in an (H, W, 3) image, in the continuous pixel convention.

    The weight of a pixel is its redness ``r - (g + b) / 2`` (zero on the grey disc around a dot), within
    ``radius`` pixels of the current estimate; the window is re-centred ``iterations`` times.
    """
    rgb = np.asarray(image, dtype=np.float64)
    redness = np.clip(rgb[..., 0] - 0.5 * (rgb[..., 1] + rgb[..., 2]), 0.0, None)
    height, width = redness.shape
    centre = np.asarray(uv, dtype=np.float64)
    vv, uu = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    for _ in range(iterations):
        window = (uu - centre[0]) ** 2 + (vv - centre[1]) ** 2 <= radius**2
        weights = redness * window
        total = weights.sum()
        if total <= 0:
            raise ValueError(f"no marker found near {uv}")
        centre = np.array([(weights * uu).sum() / total, (weights * vv).sum() / total])
    return centre
