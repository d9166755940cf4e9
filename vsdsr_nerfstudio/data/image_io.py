"""Image folders at several resolutions: area downsampling and the cached ``images_{k}/`` folders.

An LLFF-style scene keeps the same views at several resolutions: ``images/`` (factor 1, full resolution) and
``images_{k}/`` (each side divided by ``k``). :func:`resolve_image_folder` returns the folder for a factor:

1. ``<data>/images_{k}`` when it exists. A folder we did not write (no manifest) is the user's data and is only
   validated (count and size; a mismatch is an error). A folder we wrote (a cache, with the manifest
   ``.vsdsr_cache.json``) is validated and rebuilt when stale.
2. ``<user cache>/images_{k}`` (see :func:`user_cache_dir`) when it is a valid cache.
3. Otherwise it is built by area downsampling (box filter, exact for integer factors) from the nearest
   higher-resolution folder that exists (largest ``j`` dividing ``k``), next to the data when the data folder is
   writable, else in the user cache. The folder is written under a temporary name and renamed into place, so a
   reader never sees a half-written cache. The originals are never modified.

Cached files keep the source file names (and so their sorted order); a source in a lossy format (JPEG) is
stored losslessly as PNG under the same stem: ``IMG_4026.JPG`` -> ``IMG_4026.png``.

This module is import-light (numpy, PIL, rich via nerfstudio's console).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from jaxtyping import Shaped
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
"""File extensions (case-insensitive) counted as images in a folder."""
LOSSLESS_EXTENSIONS = (".png",)
"""Source extensions whose file name is kept as is in a cache; other sources are cached as ``<stem>.png``."""
CACHE_MANIFEST = ".vsdsr_cache.json"
"""Name of the manifest that marks a folder as a cache written by this module."""
CACHE_FORMAT = 1
"""Version of the manifest; a different version makes a cache stale."""
_FOLDER_RE = re.compile(r"^images(?:_(\d+))?$")


class ImageFolderError(ValueError):
    """An image folder is missing, incomplete or inconsistent. The message names the file or folder."""


@dataclass(frozen=True)
class ImageFolder:
    """A resolved image folder."""

    path: Path
    """The folder."""
    factor: int
    """Downscale factor with respect to the full-resolution ``images/`` (1 for ``images/``)."""
    files: Tuple[Path, ...]
    """Image files in sorted file-name order."""
    size_hw: Tuple[int, int]
    """(height, width) of every image in the folder."""
    is_cache: bool
    """Whether the folder is a cache written by this module (else the user's own data)."""


# ----------------------------------------------------------------------------------------------------------------
# Small helpers


def folder_name(factor: int) -> str:
    """``images`` for factor 1, else ``images_{factor}``."""
    return "images" if factor == 1 else f"images_{factor}"


def folder_factor(name: str) -> Optional[int]:
    """The factor of a folder named ``images`` (1) or ``images_{k}`` (k), else None."""
    match = _FOLDER_RE.match(name)
    if match is None:
        return None
    factor = 1 if match.group(1) is None else int(match.group(1))
    return factor if factor >= 1 else None


def list_images(folder: Path, recursive: bool = False) -> List[Path]:
    """Image files of ``folder`` (extensions in :data:`IMAGE_EXTENSIONS`, hidden files skipped), sorted by name.
    The one listing rule of the package (data parser, prior trainer, bench scripts). ``recursive``: also in
    subfolders (hidden ones skipped), sorted by path relative to ``folder``; a missing folder raises
    ``FileNotFoundError`` naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    if not recursive:
        return sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
    found = (
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def find_image_folders(root: Path) -> Dict[int, Path]:
    """Folders ``images`` / ``images_{k}`` directly under ``root``, by factor."""
    if not root.is_dir():
        return {}
    found = {}
    for child in root.iterdir():
        factor = folder_factor(child.name)
        if factor is not None and child.is_dir():
            found[factor] = child
    return dict(sorted(found.items()))


def describe_folders(root: Path) -> str:
    """A human-readable list of the sub-folders of ``root`` (for error messages)."""
    if not root.is_dir():
        return f"{root} does not exist"
    names = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return ", ".join(names) if names else "no sub-folders"


def read_image_size(path: Path) -> Tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageFolderError(
            f"Cannot read image {path}: {err}. Expected a readable PNG or JPEG file; replace or re-export it."
        ) from err
    return int(height), int(width)


def check_image_decodes(path: Path) -> None:
    """Decode an image fully (catches truncated or corrupt files that have a valid header)."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageFolderError(
            f"Cannot decode image {path}: {err}. The file is truncated or corrupt; replace or re-export it."
        ) from err


def area_downsample(image: Image.Image, factor: int) -> Image.Image:
    """Box-filter downsampling by an integer factor (the mean of each ``factor x factor`` block, rounded).

    Exact area downsampling (OpenCV ``INTER_AREA`` for integer factors). Both sides must be divisible by factor.
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    width, height = image.size
    if width % factor or height % factor:
        raise ValueError(f"image size {width}x{height} is not divisible by {factor}")
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = image.mode in ("PA", "La", "RGBa") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    if factor == 1:
        return image.copy()
    return image.reduce(factor)


def area_downsample_array(
    array: Shaped[np.ndarray, "H W *C"], factor: int
) -> Shaped[np.ndarray, "H/factor W/factor *C"]:
    """Box-filter downsampling of an array in float64 (no rounding); sides must be divisible by factor."""
    height, width = array.shape[:2]
    if height % factor or width % factor:
        raise ValueError(f"array size {width}x{height} is not divisible by {factor}")
    blocks = array.reshape(height // factor, factor, width // factor, factor, *array.shape[2:])
    return blocks.astype(np.float64).mean(axis=(1, 3))


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/vsdsr_nerfstudio`` if set, else ``~/.cache/vsdsr_nerfstudio``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vsdsr_nerfstudio"


def user_cache_dir(data_dir: Path) -> Path:
    """Per-scene cache folder used when the data folder is not writable: ``<root>/<hash of the absolute path>``."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode("utf-8")).hexdigest()[:16]
    return user_cache_root() / digest


def dir_is_writable(path: Path) -> bool:
    """Whether files can be created in ``path``.

    A folder without any write permission bit counts as read-only even for root (who would be allowed to write):
    its owner marked it read-only, and a cache must not land in a shared read-only data set.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not mode & 0o222:
        return False
    if not os.access(path, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".vsdsr_probe_", dir=path)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def cached_file_name(source_name: str) -> str:
    """Name of the cached copy of ``source_name``: the same name for PNG, ``<stem>.png`` for lossy formats."""
    path = Path(source_name)
    return path.name if path.suffix.lower() in LOSSLESS_EXTENSIONS else path.stem + ".png"


def _source_signature(files: Sequence[Path]) -> List[List]:
    signature = []
    for path in files:
        stat = path.stat()
        signature.append([path.name, int(stat.st_size), int(stat.st_mtime_ns)])
    return signature


def _read_manifest(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / CACHE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _manifest_source(folder: Path, manifest: dict) -> Optional[Path]:
    """The source folder recorded in a manifest: a sibling of the cache by name (so a copied or moved scene checks
    its own source), or an absolute path (a user cache built from a read-only data folder)."""
    source = manifest.get("source")
    if not isinstance(source, str) or not source:
        return None
    return folder.parent / source if manifest.get("source_is_sibling") else Path(source)


def is_cache_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by this module (holds the manifest)."""
    return (folder / CACHE_MANIFEST).exists()


# ----------------------------------------------------------------------------------------------------------------
# Validation


def _check_divisible(full_hw: Tuple[int, int], factor: int) -> Tuple[int, int]:
    height, width = full_hw
    if height % factor or width % factor:
        raise ImageFolderError(
            f"The full-resolution image size {width}x{height} (W x H) is not divisible by the downscale factor "
            f"{factor}, so {folder_name(factor)}/ cannot be an exact area downsample. Choose a factor that divides "
            f"both sides."
        )
    return height // factor, width // factor


def validate_folder(
    folder: Path, *, num_images: int, expected_hw: Tuple[int, int], count_source: str = "expected"
) -> List[Path]:
    """Check that ``folder`` holds ``num_images`` images of size ``expected_hw`` (headers only); return the files.

    Raises:
        ImageFolderError: naming the folder or the first offending file.
    """
    files = list_images(folder)
    originals = folder.name == folder_name(1)  # the photos themselves: nothing can rebuild them
    if len(files) != num_images:
        rebuild = "" if originals else " (or delete the folder so it is rebuilt from a higher-resolution one)"
        raise ImageFolderError(
            f"Image folder {folder} holds {len(files)} images but there are {num_images} {count_source}. "
            f"Each view needs exactly one image (extensions {', '.join(IMAGE_EXTENSIONS)}, sorted by name); "
            f"add the missing images or remove the extra ones{rebuild}."
        )
    for path in files:
        hw = read_image_size(path)
        if hw != tuple(expected_hw):
            size = f"Image {path} is {hw[1]}x{hw[0]} (W x H) but {expected_hw[1]}x{expected_hw[0]} was expected for"
            if originals:
                raise ImageFolderError(
                    f"{size} the original photos in {folder.name}/ (the H, W that poses_bounds.npy records). "
                    f"Originals cannot be rebuilt: put the original photo of this view back (the one the poses were "
                    f"computed from), or re-create poses_bounds.npy from these photos."
                )
            raise ImageFolderError(
                f"{size} {folder.name}/ (the full-resolution size from poses_bounds.npy divided by the folder's "
                f"factor). Re-export the folder at that size, or delete it so it is rebuilt by area downsampling."
            )
    return files


def cache_problem(folder: Path, *, factor: int, num_images: int, expected_hw: Tuple[int, int]) -> Optional[str]:
    """Why the cache ``folder`` is stale, or None when it is valid."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return "no readable manifest"
    if manifest.get("format") != CACHE_FORMAT or manifest.get("factor") != factor:
        return "manifest from another version or factor"
    files = list_images(folder)
    if len(files) != num_images:
        return f"{len(files)} images instead of {num_images}"
    if [p.name for p in files] != [pair[1] for pair in manifest.get("files", [])]:
        return "file names differ from the manifest"
    for path in files:
        try:
            hw = read_image_size(path)
        except ImageFolderError:
            return f"unreadable file {path.name}"
        if hw != tuple(expected_hw):
            return f"{path.name} is {hw[1]}x{hw[0]} instead of {expected_hw[1]}x{expected_hw[0]}"
    source = _manifest_source(folder, manifest)
    if source is not None and source.is_dir():
        source_files = list_images(source)
        if [p.name for p in source_files] != [pair[0] for pair in manifest["files"]]:
            return f"the source folder {source} changed (file names)"
        if _source_signature(source_files) != manifest.get("source_signature"):
            return f"the source folder {source} changed (file sizes or times)"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Building


def _downsample_file(source: Path, target: Path, factor: int) -> None:
    try:
        with Image.open(source) as image:
            image.load()
            small = area_downsample(image, factor)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageFolderError(
            f"Cannot read image {source} while building {target.parent.name}/: {err}. Replace or re-export it."
        ) from err
    small.save(target, format="PNG", compress_level=1)


def build_downsampled_folder(
    source_files: Sequence[Path], reduce: int, target: Path, *, factor: int, description: str
) -> Path:
    """Area-downsample ``source_files`` by ``reduce`` into the folder ``target`` (replacing it atomically).

    ``factor`` is the target's factor with respect to the full-resolution images (recorded in the manifest).

    The files are written into a temporary sibling folder, the manifest last, and the folder is then renamed to
    ``target``. A stale ``target`` is swapped out and deleted. If another process finished the same folder first,
    its result is kept.
    """
    if not source_files:
        raise ImageFolderError(f"No source images to build {target} from.")
    source_dir = source_files[0].parent
    names = [cached_file_name(p.name) for p in source_files]
    if len(set(names)) != len(names) or names != sorted(names):
        raise ImageFolderError(
            f"The file names in {source_dir} cannot be cached as PNG without changing their sorted order "
            f"(e.g. two files with the same stem). Rename them, or provide {target.name}/ yourself."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    sibling = source_dir.parent.resolve() == target.parent.resolve()
    # mkdir (not tempfile.mkdtemp, which makes it 0700): the cache gets the user's umask like any other folder
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        workers = max(1, min(8, os.cpu_count() or 1))
        with Progress(
            TextColumn("[bold yellow]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=CONSOLE,
            transient=False,
        ) as progress:
            task = progress.add_task(description, total=len(source_files))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(_downsample_file, src, tmp / name, reduce)
                    for src, name in zip(source_files, names, strict=True)
                ]
                for future in as_completed(futures):
                    future.result()
                    progress.advance(task)
        manifest = {
            "format": CACHE_FORMAT,
            "factor": factor,
            "source": source_dir.name if sibling else str(source_dir.resolve()),
            "source_is_sibling": sibling,
            "reduce": reduce,
            "files": [[src.name, name] for src, name in zip(source_files, names, strict=True)],
            "source_signature": _source_signature(source_files),
        }
        (tmp / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    stale = None
    if target.exists():
        stale = target.parent / f".{target.name}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(target, stale)
        except FileNotFoundError:  # removed by a concurrent process
            stale = None
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.exists():
            raise
        # A concurrent process put its folder there first: keep that one.
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Resolution


def resolve_image_folder(
    data_dir: Path,
    factor: int,
    *,
    num_images: int,
    full_hw: Tuple[int, int],
    count_source: str = "views",
) -> ImageFolder:
    """The folder of ``data_dir`` at ``factor`` (1 = ``images/``), built and cached from a larger one if needed.

    Args:
        data_dir: the scene folder.
        factor: downscale factor with respect to the full-resolution images.
        num_images: how many images every folder must hold.
        full_hw: (height, width) of the full-resolution images; a folder at factor k must be exactly full / k.
        count_source: what ``num_images`` counts, for error messages (e.g. "rows in poses_bounds.npy").

    Raises:
        ImageFolderError: the folder is inconsistent, or it is missing and cannot be built.
    """
    data_dir = Path(data_dir)
    expected_hw = _check_divisible(full_hw, factor)
    name = folder_name(factor)
    local = data_dir / name
    user = user_cache_dir(data_dir) / name

    # 1. an existing folder: the user's own (validated strictly) or a cache (validated, rebuilt when stale)
    stale: Dict[Path, str] = {}
    for candidate in (local, user):
        if not candidate.is_dir():
            continue
        if candidate == local and not is_cache_folder(candidate):
            files = validate_folder(
                candidate, num_images=num_images, expected_hw=expected_hw, count_source=count_source
            )
            return ImageFolder(candidate, factor, tuple(files), expected_hw, is_cache=False)
        problem = cache_problem(candidate, factor=factor, num_images=num_images, expected_hw=expected_hw)
        if problem is None:
            return ImageFolder(candidate, factor, tuple(list_images(candidate)), expected_hw, is_cache=True)
        stale[candidate] = problem

    # 2. build it from the nearest higher-resolution folder
    source = None
    for source_factor in sorted((j for j in range(1, factor) if factor % j == 0), reverse=True):
        source_name = folder_name(source_factor)
        if (data_dir / source_name).is_dir() or (user_cache_dir(data_dir) / source_name).is_dir():
            source = resolve_image_folder(
                data_dir, source_factor, num_images=num_images, full_hw=full_hw, count_source=count_source
            )
            break
    if source is None:
        needed = ", ".join(folder_name(j) + "/" for j in range(1, factor + 1) if factor % j == 0)
        raise ImageFolderError(
            f"Image folder {local} does not exist and there is no higher-resolution folder to build it from by "
            f"area downsampling (any of: {needed}). Found in {data_dir}: {describe_folders(data_dir)}. "
            f"Check --data, or pick a downscale factor whose folder (or a divisor's folder) exists."
        )

    if dir_is_writable(data_dir):
        target = local
    else:
        target = user
        CONSOLE.log(f"[yellow]Data folder {data_dir} is not writable: caching {name}/ under {target.parent} instead.")
    if target in stale:
        CONSOLE.log(f"[yellow]Cached folder {target} is stale ({stale[target]}): rebuilding it.")
    reduce = factor // source.factor
    CONSOLE.log(f"Building {target} by area downsampling {source.path} by {reduce} (the originals are untouched).")
    build_downsampled_folder(
        source.files, reduce, target, factor=factor, description=f"{source.path.name}/ -> {name}/ (x1/{reduce})"
    )
    problem = cache_problem(target, factor=factor, num_images=num_images, expected_hw=expected_hw)
    if problem is not None:  # pragma: no cover - a concurrent writer produced something else
        raise ImageFolderError(f"The freshly built cache {target} is invalid ({problem}); delete it and retry.")
    return ImageFolder(target, factor, tuple(list_images(target)), expected_hw, is_cache=True)
