"""The "2D SR then NeRF" baseline's scene: every LR training view upscaled once by the diffusion prior, written into
a derived LLFF scene that a NeRF then trains on at HR without SR (the naive pipeline 3DSR and DiSR compare against).

The derived folder ``OUTPUT/sr2d_scene/`` holds a copy of ``poses_bounds.npy`` (and of ``sparse/`` when the scene has
SfM points, which seed the Gaussian backbone as in the other runs) and one image folder,
``images_{downscale_factor // sr_scale}/`` (the HR size): the training views are the prior's x4 outputs, the
held-out views are copies of the real HR images (never trained on: ``llff-data`` holds them out the same way; the
scores are taken against the original scene's files anyway). Train on it with ``llff-data --downscale-factor
{downscale_factor // sr_scale} --sr-scale 1``.

The sampler is ``vsdsr-upscale``'s (:func:`~vsdsr_nerfstudio.sr.priors.pixel_prior.ddim_upscale`: deterministic DDIM,
tiled), with the prior of the reference SR run's config; it works for every prior (pixel priors and the SD x4
upscaler). ``sr_state``-free: nothing of the SR pipeline is used.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from nerfstudio.utils.rich_utils import CONSOLE

from vsdsr_nerfstudio.data.files import atomic_write_json
from vsdsr_nerfstudio.data.image_io import folder_name
from vsdsr_nerfstudio.data.llff_dataparser import POSES_BOUNDS, SFM_FOLDER
from vsdsr_nerfstudio.tools.upscale import resolve_device

MANIFEST = "compare_sr2d.json"
"""Record of how the derived scene was made; a scene with the same record is reused."""
PRIOR_SCALE = 4
"""The priors' fixed upscaling factor."""


@dataclass
class SR2DSettings:
    """DDIM sampling settings of the 2D SR baseline (as ``vsdsr-upscale``'s options)."""

    steps: int = 20
    """DDIM steps."""
    noise_level: int = 20
    """Noise level of the LR conditioning."""
    guidance_scale: float = 1.0
    """Text CFG scale (text priors only)."""
    tile: int = 256
    """LR pixels per denoiser window (0: whole image)."""
    tile_overlap: int = 32
    """Overlap of neighbouring windows in LR pixels."""
    seed: int = 0
    """Seed of the sampling noise (the generator is re-seeded for every view)."""


def build_sr2d_scene(
    target: Path,
    source: Path,
    train_files: Dict[int, Path],
    held_out_hr: Dict[int, Path],
    hr_factor: int,
    prior_config: Any,
    settings: SR2DSettings,
    device: str = "auto",
    on_view: Optional[Callable[[], None]] = None,
) -> Path:
    """Write (or reuse) the derived scene in ``target``; returns ``target``.

    Args:
        target: the derived scene folder (replaced when its manifest differs).
        source: the original scene (its ``poses_bounds.npy`` is copied).
        train_files: view index -> LR training image.
        held_out_hr: view index -> real HR image of a held-out view.
        hr_factor: the HR folder's factor (``downscale_factor // sr_scale``).
        prior_config: the ``SRPriorConfig`` to sample with (the reference run's ``pipeline.prior``).
        settings: DDIM sampling settings.
        device: torch device for the prior (``auto``: cuda if available).
        on_view: called after each view is written (progress).
    """
    from vsdsr_nerfstudio.data.images import load_rgb_uint8, save_rgb

    sfm = source / SFM_FOLDER
    manifest = {
        "source": str(source.resolve()),
        "sfm_points": sfm.is_dir(),
        "prior": {k: str(v) for k, v in vars(prior_config).items() if not k.startswith("_")},
        "settings": asdict(settings),
        "views": sorted(int(i) for i in train_files),
    }
    manifest_path = target / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        CONSOLE.log(f"Reusing the 2D-SR scene {target}.")
        return target
    if target.exists():
        shutil.rmtree(target)
    images = target / folder_name(hr_factor)
    images.mkdir(parents=True)
    shutil.copy2(source / POSES_BOUNDS, target / POSES_BOUNDS)
    if sfm.is_dir():  # the same SfM points as the scene: Gaussian backbones are seeded from them as in the other runs
        shutil.copytree(sfm, target / SFM_FOLDER)
    for index, path in held_out_hr.items():
        save_rgb(load_rgb_uint8(path).float() / 255.0, images / f"view_{index:04d}.png")
    upscale = _upscaler(prior_config, settings, resolve_device(device))
    for index, path in sorted(train_files.items()):
        hr = upscale(load_rgb_uint8(path).float()[None] / 255.0)
        save_rgb(hr[0], images / f"view_{index:04d}.png")
        if on_view is not None:
            on_view()
    atomic_write_json(manifest_path, manifest)  # last: a scene without its manifest is rebuilt
    return target


def _upscaler(prior_config: Any, settings: SR2DSettings, device: torch.device) -> Callable[[torch.Tensor], Any]:
    """x4 DDIM upscaling with the prior loaded once: ``vsdsr-upscale``'s sampler (``tools/upscale.sample_x4``)."""
    from vsdsr_nerfstudio.tools.upscale import sample_x4

    CONSOLE.log(f"Loading the prior for the 2D-SR baseline ({prior_config.prior}) on {device}.")
    prior = prior_config.setup(device=device)
    options = dict(steps=settings.steps, noise_level=settings.noise_level, guidance_scale=settings.guidance_scale)
    options.update(tile=settings.tile, tile_overlap=settings.tile_overlap, seed=settings.seed)
    return lambda lr: sample_x4(prior, lr.to(device), **options)
