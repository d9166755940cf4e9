"""Check, before anything is trained or rendered, that nerfacc's CUDA kernels can run (the Instant-NGP model).

nerfstudio's Instant-NGP ray-marches with nerfacc, whose kernels exist only for CUDA and are JIT-compiled with
nvcc the first time they are called (unless a prebuilt nerfacc wheel is installed). Left alone, a machine without
CUDA fails at the first training step with an ``AttributeError`` deep in nerfacc (or spends minutes in a doomed
compile), and a CUDA 13 toolkit fails to compile nerfacc 0.5.2: its ``csrc/scan.cu`` uses ``cub::Equality``,
which CUDA 13 removed from CUB. :func:`require_nerfacc_cuda` turns each case into one :class:`NerfaccCudaError`
that says which component, why and what to do, and loads (so builds, if needed) the kernels up front.

Import-light: nerfacc and torch's extension builder are imported only inside the check.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import torch

COMPONENT = "vsd-sr-ngp's Instant-NGP model (nerfacc ray marching)"
ALTERNATIVE = (
    "Or use `ns-train vsd-sr` (Nerfacto), which runs without CUDA and without nerfacc's kernels "
    "(on a CPU: --machine.device-type cpu; vsd-sr-tiny is the CPU-sized preset)."
)
SCAN_FIX = (
    "nerfacc 0.5.2's csrc/scan.cu uses cub::Equality, which CUDA 13 removed from CUB. Fix it in {scan}: replace "
    "both `cub::Equality()` with `cuda::std::equal_to<>()` and add `#include <cuda/std/functional>` next to its "
    "other #include lines; then delete the build folder {build_dir} and run again."
)

_checked = False


class NerfaccCudaError(RuntimeError):
    """nerfacc's CUDA kernels cannot run here (no CUDA device, no toolkit, or the kernels failed to build)."""


def require_nerfacc_cuda(device: Optional[Union[str, torch.device]] = None) -> None:
    """Raise :class:`NerfaccCudaError` unless nerfacc's CUDA kernels can run on ``device`` (None: the default CUDA
    device). Loads the kernels now (building them with nvcc the first time), so a failure comes before data loading
    and training, not at the first ray march. Cheap after the first success."""
    global _checked
    if device is not None and torch.device(device).type != "cuda":
        raise NerfaccCudaError(
            f"{COMPONENT} needs a CUDA GPU: nerfacc's ray-marching kernels are CUDA-only, and this run's device is "
            f"{str(device)!r} (--machine.device-type). Run it on an NVIDIA GPU with --machine.device-type cuda. "
            + ALTERNATIVE
        )
    if not torch.cuda.is_available():
        raise NerfaccCudaError(
            f"{COMPONENT} needs a CUDA GPU: nerfacc's ray-marching kernels are CUDA-only, and torch sees no CUDA "
            f"device here (torch {torch.__version__}, built for CUDA {torch.version.cuda}). Run it on a machine "
            "with an NVIDIA GPU and driver. " + ALTERNATIVE
        )
    if _checked:
        return
    scan, build_dir = _scan_source(), _build_dir()
    blocked, nvcc = _jit_build_blocked_by_cuda13(scan)
    if blocked:
        raise NerfaccCudaError(
            f"{COMPONENT}: nerfacc's CUDA kernels are not built yet and cannot be built with this CUDA toolkit "
            f"(nvcc {nvcc}). " + SCAN_FIX.format(scan=scan, build_dir=build_dir) + " " + ALTERNATIVE
        )
    try:
        kernels = _load_nerfacc_kernels()
    except Exception as error:  # torch's cpp_extension raises RuntimeError / CalledProcessError / OSError
        log = str(error)
        raise NerfaccCudaError(
            f"{COMPONENT}: nerfacc could not build or load its CUDA kernels (JIT compilation with nvcc {nvcc}). "
            + (
                "The compiler log below mentions cub::Equality: "
                if "Equality" in log
                else "If the compiler log mentions cub::Equality (CUDA >= 13): "
            )
            + SCAN_FIX.format(scan=scan, build_dir=build_dir)
            + " "
            + ALTERNATIVE
            + f"\nBuild error ({type(error).__name__}), last lines:\n{log[-3000:]}"
        ) from error
    if kernels is None:
        raise NerfaccCudaError(
            f"{COMPONENT}: nerfacc found no CUDA toolkit (nvcc on PATH) to compile its kernels, and no prebuilt "
            f"nerfacc kernels are installed. Install the CUDA toolkit matching torch (CUDA {torch.version.cuda}) "
            "so that `nvcc` is on PATH, or a nerfacc wheel with prebuilt kernels. " + ALTERNATIVE
        )
    _checked = True


def _load_nerfacc_kernels() -> Any:
    """nerfacc's compiled module (prebuilt, or JIT-built on this import); None when it found no nvcc."""
    from nerfacc.cuda._backend import _C

    return _C


def _nerfacc_dir() -> Optional[Path]:
    spec = importlib.util.find_spec("nerfacc")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _scan_source() -> Optional[Path]:
    """nerfacc's ``cuda/csrc/scan.cu`` (the file CUDA 13 cannot compile unpatched)."""
    root = _nerfacc_dir()
    return None if root is None else root / "cuda" / "csrc" / "scan.cu"


def _build_dir() -> str:
    """The folder torch JIT-builds nerfacc's kernels in (what nerfacc's ``_backend`` uses)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return str(_get_build_directory("nerfacc_cuda", verbose=False))
    except Exception:  # a private torch helper: never let the message fail
        return "~/.cache/torch_extensions/<python>_<cuda>/nerfacc_cuda"


def _has_prebuilt_kernels() -> bool:
    """A nerfacc wheel with compiled kernels (``nerfacc.csrc``), or an earlier JIT build (a ``.so`` to load)."""
    try:
        if importlib.util.find_spec("nerfacc.csrc") is not None:
            return True
    except (ImportError, ValueError):
        pass
    return any(Path(_build_dir()).glob("nerfacc_cuda*.so"))


def nvcc_version() -> Optional[Tuple[int, int]]:
    """(major, minor) of the nvcc torch's extension builder uses (CUDA_HOME/bin, else PATH); None if unknown."""
    candidates = []
    try:
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME:
            candidates.append(str(Path(CUDA_HOME) / "bin" / "nvcc"))
    except Exception:
        pass
    candidates.append(shutil.which("nvcc") or "")
    for nvcc in candidates:
        if not nvcc or not Path(nvcc).is_file():
            continue
        try:
            out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        match = re.search(r"release (\d+)\.(\d+)", out)
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


def _jit_build_blocked_by_cuda13(scan: Optional[Path]) -> Tuple[bool, str]:
    """Whether loading nerfacc would JIT-compile an unpatched ``scan.cu`` with nvcc >= 13 (a certain failure, after
    minutes of compiling); and the nvcc version as text for messages."""
    version = nvcc_version()
    text = "unknown" if version is None else f"{version[0]}.{version[1]}"
    if version is None or version[0] < 13 or scan is None or not scan.is_file() or _has_prebuilt_kernels():
        return False, text
    return "cub::Equality" in scan.read_text(errors="replace"), text
