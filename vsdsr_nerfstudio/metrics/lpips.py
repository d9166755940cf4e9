"""LPIPS (AlexNet, v0.1 heads) that works without network access.

torchmetrics' ``LearnedPerceptualImagePatchSimilarity(net_type='alex')`` takes its linear heads from a file shipped
with torchmetrics but its AlexNet backbone from torchvision, which downloads ``alexnet-owt-7be5be79.pth`` on first
use. :func:`build_lpips` builds the same metric from a local ``.npz`` instead (the format of
``shared/metrics/lpips_alex_features.npz``):

- ``features.{0,3,6,8,10}.{weight,bias}``: the AlexNet ImageNet conv layers in torchvision layout;
- ``lin{0..4}.model.1.weight``: the LPIPS v0.1 linear heads, ``(1, C, 1, 1)``.

The metric is created with a random backbone (no download, global RNG untouched), every conv layer and head is
overwritten from the file, and the result is checked to equal the file exactly. Inputs are RGB in ``[0, 1]``
(``normalize=True``), compared at full resolution, spatially averaged. torchmetrics / torchvision are imported only
inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

CONFIG_FIELD = "lpips_weights"
# AlexNet ``features`` index -> (out, in, k, k) of its conv layer; torchmetrics' Alexnet keeps ``features[i]`` as
# module ``str(i)`` of one of five slices.
ALEX_CONV_SHAPES: Mapping[int, Tuple[int, int, int, int]] = {
    0: (64, 3, 11, 11),
    3: (192, 64, 5, 5),
    6: (384, 192, 3, 3),
    8: (256, 384, 3, 3),
    10: (256, 256, 3, 3),
}
LIN_CHANNELS: Tuple[int, ...] = (64, 192, 384, 256, 256)
NPZ_FORMAT = (
    "an .npz with the AlexNet conv weights in torchvision layout (features.{0,3,6,8,10}.{weight,bias}) and the "
    "LPIPS v0.1 heads (lin{0..4}.model.1.weight), like shared/metrics/lpips_alex_features.npz"
)


class LpipsWeightsError(ValueError):
    """A local LPIPS weights file is missing, unreadable or not in the expected format."""


def expected_npz_shapes() -> Dict[str, Tuple[int, ...]]:
    """Every key a LPIPS-alex weights ``.npz`` must hold, with its shape."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    for i, shape in ALEX_CONV_SHAPES.items():
        shapes[f"features.{i}.weight"] = shape
        shapes[f"features.{i}.bias"] = (shape[0],)
    for k, c in enumerate(LIN_CHANNELS):
        shapes[f"lin{k}.model.1.weight"] = (1, c, 1, 1)
    return shapes


def _fix_hint(path: Path) -> str:
    return f"Set `{CONFIG_FIELD}` to {NPZ_FORMAT} (file: {path})."


def validate_lpips_npz(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Load and check a LPIPS-alex weights ``.npz``; returns its arrays as float32.

    Raises :class:`LpipsWeightsError` naming the file, the missing / malformed key and what to do.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LpipsWeightsError(f"LPIPS weights file not found: {path}. {_fix_hint(path)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: np.asarray(npz[key]) for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise LpipsWeightsError(f"LPIPS weights file {path} is not a readable .npz ({err}). {_fix_hint(path)}") from err
    for key, shape in expected_npz_shapes().items():
        if key not in arrays:
            raise LpipsWeightsError(
                f"LPIPS weights file {path} has no key '{key}' (expected shape {shape}). {_fix_hint(path)}"
            )
        if tuple(arrays[key].shape) != shape:
            raise LpipsWeightsError(
                f"LPIPS weights file {path}: key '{key}' has shape {tuple(arrays[key].shape)}, expected {shape}. "
                f"{_fix_hint(path)}"
            )
        if not np.issubdtype(arrays[key].dtype, np.floating) or not np.isfinite(arrays[key]).all():
            raise LpipsWeightsError(
                f"LPIPS weights file {path}: key '{key}' is not finite floating point. {_fix_hint(path)}"
            )
    return {key: arrays[key].astype(np.float32) for key in expected_npz_shapes()}


def npz_key_for(state_key: str) -> Optional[str]:
    """The ``.npz`` key holding a parameter of torchmetrics' ``_LPIPS`` (alex) module, or None.

    ``net.slice{s}.{i}.{weight,bias}`` -> ``features.{i}.{weight,bias}``; ``lin{k}.model.1.weight`` and its alias
    ``lins.{k}.model.1.weight`` -> ``lin{k}.model.1.weight``.
    """
    parts = state_key.split(".")
    if len(parts) == 4 and parts[0] == "net" and parts[1].startswith("slice"):
        return f"features.{parts[2]}.{parts[3]}"
    if len(parts) == 4 and parts[0].startswith("lin") and parts[1:] == ["model", "1", "weight"]:
        return state_key
    if len(parts) == 5 and parts[0] == "lins" and parts[2:] == ["model", "1", "weight"]:
        return f"lin{parts[1]}.model.1.weight"
    return None


@contextlib.contextmanager
def _random_backbone() -> Iterator[None]:
    """Make torchmetrics build its LPIPS net with a random backbone and no heads (nothing read or downloaded)."""
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module._NoTrainLpips
    lpip_module._NoTrainLpips = functools.partial(original, pretrained=False, pnet_rand=True)
    try:
        yield
    finally:
        lpip_module._NoTrainLpips = original


def build_lpips_from_npz(path: Union[str, Path]) -> "LearnedPerceptualImagePatchSimilarity":
    """torchmetrics LPIPS-alex (``normalize=True``, mean reduction) with every weight from a local ``.npz``, offline.

    Raises :class:`LpipsWeightsError` for a bad file and ``RuntimeError`` if the built metric does not hold exactly
    the file's weights (a torchmetrics layout this code does not know).
    """
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    arrays = validate_lpips_npz(path)
    with torch.random.fork_rng(devices=[]), _random_backbone():
        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    net = metric.net
    state = net.state_dict()
    unknown = [k for k in state if npz_key_for(k) is None]
    if unknown:
        raise RuntimeError(f"unexpected parameters in torchmetrics' LPIPS net: {unknown}")
    net.load_state_dict({k: torch.from_numpy(arrays[npz_key_for(k)]) for k in state}, strict=True)
    loaded = {npz_key_for(k) for k in net.state_dict()}
    if loaded != set(arrays):
        raise RuntimeError(f"torchmetrics' LPIPS net does not use the weights {sorted(set(arrays) - loaded)}")
    for key, value in net.state_dict().items():
        if not torch.equal(value.cpu(), torch.from_numpy(arrays[npz_key_for(key)])):
            raise RuntimeError(f"LPIPS parameter {key} differs from {npz_key_for(key)} of {path}")
    return metric


def build_lpips(weights: Optional[Union[str, Path]] = None) -> Optional["LearnedPerceptualImagePatchSimilarity"]:
    """LPIPS-alex for RGB images in ``[0, 1]`` (torchmetrics, ``net_type='alex'``, ``normalize=True``), on CPU.

    With ``weights`` (a local ``.npz``, see :func:`validate_lpips_npz`) it is built offline from that file; a bad
    file raises :class:`LpipsWeightsError`. With ``weights=None`` torchmetrics' default construction is tried
    (torchvision's cached or downloaded AlexNet); if that fails, one warning is printed and None is returned, so the
    caller skips LPIPS.
    """
    if weights is not None:
        return build_lpips_from_npz(weights)
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    except Exception as err:  # no network and no cached torchvision weights, missing torchvision, ...
        from nerfstudio.utils.rich_utils import CONSOLE

        reason = f"{type(err).__name__}: {err}".splitlines()[0][:120]
        CONSOLE.print(
            f"LPIPS skipped: torchvision's AlexNet weights could not be loaded ({reason}). "
            f"Set `{CONFIG_FIELD}` to {NPZ_FORMAT}.",
            style="yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return None


DEFAULT_LPIPS_WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "metrics" / "lpips_alex_features.npz"
"""LPIPS-alex weights used by :func:`try_build_lpips` when none are given and this file exists (the workspace's shared
copy beside the checkout, offline)."""


def try_build_lpips(weights: Optional[Union[str, Path]] = None):
    """``(a, b) -> mean LPIPS`` of images in [0, 1] via :func:`build_lpips` (``weights``, else
    :data:`DEFAULT_LPIPS_WEIGHTS` if present, else torchmetrics' default download); ``None`` if it cannot be built
    (the caller skips LPIPS; the reason is printed)."""
    from nerfstudio.utils.rich_utils import CONSOLE

    if weights is None and DEFAULT_LPIPS_WEIGHTS.is_file():
        weights = DEFAULT_LPIPS_WEIGHTS
    try:
        metric = build_lpips(weights)
    except Exception as err:  # noqa: BLE001 - optional metric
        CONSOLE.print(f"[yellow]LPIPS unavailable: {type(err).__name__}: {err}")
        return None
    if metric is None:
        return None

    def compute(a: torch.Tensor, b: torch.Tensor) -> float:
        nonlocal metric
        metric = metric.to(a.device)
        with torch.no_grad():
            value = metric(a.clamp(0, 1).float(), b.clamp(0, 1).float())
        if hasattr(metric, "reset"):
            metric.reset()
        return float(value)

    return compute
