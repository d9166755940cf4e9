"""Fern for `vsdsr-compare` on the GPU machine, within the 64 MiB a device call carries (bench/gpu_fern_compare.sh).

The comparison scores held-out views 0/8/16 against the real 2016x1512 images (``images_2/``, which fern does not
ship: it is ``images/`` box-downsampled x2, as the parser would build it). Those three must be exact; the other 17
``images_2/`` files are never read by any run (LR training, SR stages render their own HR views, the 2D-SR baseline
writes its own scene), so grey stand-ins of the right size take their place. The three exact views are made on the
device from their 4032x3024 originals (8.4 MB instead of 15 MB of PNG), with the same function as the parser;
the pixel checksums printed on both sides show they are the images scored here before.

    python bench/fern_compare_data.py prepare ../shared/data/llff/fern .gpudata/fern_cmp   # here
    python bench/fern_compare_data.py hr .gpudata/fern_cmp /tmp/fern_cmp                   # device
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HELD_OUT = (0, 8, 16)  # llffhold 8 on fern's 20 views
SCENE, ORIGINALS = "scene", "hr_originals"


def _checksum(image: Image.Image) -> str:
    return hashlib.md5(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def prepare(fern: Path, target: Path) -> None:
    from vsdsr_nerfstudio.data.image_io import area_downsample, list_images

    if target.exists():
        shutil.rmtree(target)
    scene = target / SCENE
    (scene / "images_2").mkdir(parents=True)
    (target / ORIGINALS).mkdir()
    shutil.copy2(fern / "poses_bounds.npy", scene)
    shutil.copytree(fern / "images_8", scene / "images_8")
    shutil.copytree(fern / "sparse", scene / "sparse")
    lr = list_images(fern / "images_8")
    for index, path in enumerate(list_images(fern / "images")):
        name = lr[index].stem + ".png"
        if index in HELD_OUT:
            shutil.copy2(path, target / ORIGINALS / f"{index:03d}_{name}{path.suffix}")
            with Image.open(path) as im:
                print(f"view {index}: {name} md5 {_checksum(area_downsample(im.convert('RGB'), 2))}")
        else:
            Image.new("RGB", (2016, 1512), (128, 128, 128)).save(scene / "images_2" / name)


def build_hr(prepared: Path, target: Path) -> None:
    from vsdsr_nerfstudio.data.image_io import area_downsample

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(prepared / SCENE, target)
    for path in sorted((prepared / ORIGINALS).iterdir()):
        index, rest = path.name.split("_", 1)
        name = rest[: -len(path.suffix)]
        with Image.open(path) as im:
            hr = area_downsample(im.convert("RGB"), 2)
        hr.save(target / "images_2" / name)
        print(f"view {int(index)}: {name} md5 {_checksum(hr)}")


if __name__ == "__main__":
    command, source, destination = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"prepare": prepare, "hr": build_hr}[command](source, destination)
