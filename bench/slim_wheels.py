"""Rewrite two wheels of the GPU wheelhouse (.whl/, see bench/gpu_setup.sh) without files these benchmark runs never
use, so that fern data and the LPIPS weights fit in the 64 MiB a device call may carry:

- gsplat: ``gsplat/cuda/csrc/`` (6.0 MB of CUDA sources for its JIT build; the carried prebuilt kernels replace it,
  ``install_gsplat_prebuilt.sh``),
- viser: ``viser/client/`` (4.0 MB: the web viewer; benchmark runs use ``--vis tensorboard`` and start no server).

    python bench/slim_wheels.py .whl        # idempotent; prints the sizes before and after
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

DROP = {"gsplat-": ("gsplat/cuda/csrc/",), "viser-": ("viser/client/",)}


def slim(wheel: Path, prefixes: tuple) -> None:
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(prefixes):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):  # drop the removed files' lines too
                lines = [ln for ln in data.decode().splitlines() if not ln.startswith(prefixes)]
                data = ("\n".join(lines) + "\n").encode()
            dst.writestr(info, data)
    tmp.replace(wheel)
    print(f"{wheel.name}: {before / 1e6:.1f} MB -> {wheel.stat().st_size / 1e6:.1f} MB")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".whl")
    for wheel in sorted(folder.glob("*.whl")):
        for start, prefixes in DROP.items():
            if wheel.name.startswith(start):
                slim(wheel, prefixes)


if __name__ == "__main__":
    main()
