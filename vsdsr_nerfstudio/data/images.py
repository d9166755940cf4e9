"""Reading and writing single image files as tensors (the CLIs, the prior trainer and the bench scripts share them).

:func:`read_image` decodes any Pillow-readable file into float RGB in [0, 1] and says what it was: grey inputs are
replicated to three channels (``grey=True``), 16-bit inputs are scaled by 65535 (Pillow's own ``convert("RGB")``
clips them at 255: almost white), an alpha channel is returned separately. Every failure is an
:class:`ImageReadError` whose message names the file. :func:`save_image` writes 8-bit files; call
:func:`output_format` before long work so that an unknown extension is refused first.

Listing image files has one rule, the data parser's: :func:`list_images` (``data/image_io.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from vsdsr_nerfstudio.data.image_io import IMAGE_EXTENSIONS, list_images  # noqa: F401 - the one listing rule

ALPHA_FORMATS = ("PNG", "WEBP", "TIFF", "GIF", "TGA")
"""Pillow formats that keep an alpha channel."""


class ImageReadError(ValueError):
    """An image file could not be read (missing, a folder, not an image, truncated); the message names it."""


@dataclass
class LoadedImage:
    """A decoded image file."""

    rgb: Float[Tensor, "3 H W"]
    """Colour in [0, 1], float32 (a grey image replicated to three channels)."""
    alpha: Optional[Float[Tensor, "1 H W"]]
    """Alpha in [0, 1], or None."""
    grey: bool
    """The file had one colour channel."""
    bit_depth: int
    """Bits per channel of the file (8 or 16)."""


def _open_checked(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise ImageReadError(f"{str(path)!r}: no such file.")
    if path.is_dir():
        raise ImageReadError(f"{str(path)!r} is a folder, not an image file.")
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError(f"{str(path)!r} is not an image file that Pillow can read.") from None
    except OSError as err:
        raise ImageReadError(f"{str(path)!r} could not be opened: {err}.") from None
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as err:
        im.close()
        raise ImageReadError(f"{str(path)!r} is truncated or corrupt ({err}); re-export or remove it.") from None
    return im


def _to_float(arr: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(arr, copy=True)).float()


def read_image(path: Union[str, Path]) -> LoadedImage:
    """Decode ``path`` (see the module docstring); raises :class:`ImageReadError` naming the file."""
    path = Path(path).expanduser()
    with _open_checked(path) as im:
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grey (PNG loads as "I" or "I;16")
            arr = np.asarray(im).astype(np.float64)
            grey = _to_float(np.clip(arr / 65535.0, 0.0, 1.0))
            return LoadedImage(grey[None].expand(3, -1, -1).contiguous(), None, True, 16)
        if mode == "F":
            grey = _to_float(np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0))
            return LoadedImage(grey[None].expand(3, -1, -1).contiguous(), None, True, 32)
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "1":
            im = im.convert("L")
        elif mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in mode else "RGB")
        arr = np.asarray(im)
    arr = arr[..., None] if arr.ndim == 2 else arr
    data = _to_float(arr).permute(2, 0, 1) / 255.0
    colour, alpha = (data[:-1], data[-1:]) if im.mode in ("LA", "RGBA") else (data, None)
    grey = colour.shape[0] == 1
    rgb = colour.expand(3, -1, -1).contiguous() if grey else colour.contiguous()
    return LoadedImage(rgb, alpha, grey, 8)


def load_rgb_uint8(path: Union[str, Path], min_side: int = 0) -> UInt8[Tensor, "3 H W"]:
    """An image file as a ``(3, H, W)`` uint8 RGB tensor (16-bit and grey inputs converted as :func:`read_image`;
    alpha dropped). ``min_side > 0`` enlarges it (bicubic) so its short side is at least ``min_side``.
    Raises :class:`ImageReadError` naming the file."""
    from PIL import Image

    path = Path(path).expanduser()
    with _open_checked(path) as im:
        if im.mode in ("RGB", "RGBA", "L", "LA", "P", "1"):
            im = im.convert("RGB")
            arr = np.asarray(im)
            data = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
        else:
            data = None
    if data is None:
        data = (read_image(path).rgb * 255.0).round().to(torch.uint8)
    if min_side and min(data.shape[-2:]) < min_side:
        h, w = data.shape[-2:]
        s = min_side / min(h, w)
        pil = Image.fromarray(data.permute(1, 2, 0).numpy())
        pil = pil.resize((max(min_side, round(w * s)), max(min_side, round(h * s))), Image.BICUBIC)
        data = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).contiguous()
    return data


def image_size(path: Union[str, Path]) -> tuple:
    """``(width, height)`` from the file header, without decoding; :class:`ImageReadError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise ImageReadError(f"{str(path)!r} is not a readable image file ({err}).") from None


def output_format(path: Union[str, Path]) -> str:
    """The Pillow format that :func:`save_image` will write for ``path``'s extension; ``ValueError`` naming the
    extension and the supported ones if there is none (call it before long work)."""
    from PIL import Image

    ext = Path(path).suffix.lower()
    formats = Image.registered_extensions()
    fmt = formats.get(ext)
    if fmt is None or fmt not in Image.SAVE:
        known = sorted(e for e, f in formats.items() if f in Image.SAVE and f in ("PNG", "JPEG", "WEBP", "TIFF", "BMP"))
        raise ValueError(
            f"Cannot write {str(path)!r}: unknown image extension {ext or '(none)'!r}; use one of {', '.join(known)}."
        )
    return fmt


def to_uint8(image: Float[Tensor, "C H W"]) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(H, W, C)`` uint8 array."""
    return (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_image(
    rgb: Float[Tensor, "3 H W"],
    path: Union[str, Path],
    alpha: Optional[Float[Tensor, "1 H W"]] = None,
    grey: bool = False,
) -> Optional[str]:
    """Write an 8-bit image (format from the extension): RGB, or grey (``grey``: the mean of the channels), with
    ``alpha`` when the format keeps one. Returns a note when the alpha channel had to be dropped, else None."""
    from PIL import Image

    fmt = output_format(path)
    colour = rgb.float().mean(0, keepdim=True) if grey else rgb
    note = None
    if alpha is not None and fmt not in ALPHA_FORMATS:
        note = f"{fmt} has no alpha channel: the alpha of the input was dropped (use .png to keep it)."
        alpha = None
    data = colour if alpha is None else torch.cat([colour.float(), alpha.float().to(colour.device)])
    arr = to_uint8(data)
    arr = arr[..., 0] if arr.shape[-1] == 1 else arr
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return note


def save_rgb(image: Float[Tensor, "3 H W"], path: Union[str, Path]) -> None:
    """Save an RGB image in [0, 1] as an 8-bit file (format from the extension)."""
    save_image(image, path)
