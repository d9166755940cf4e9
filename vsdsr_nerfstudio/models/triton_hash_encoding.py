"""A fused multiresolution hash-grid encoding in Triton, interchangeable with nerfstudio's torch ``HashEncoding``.

Why: without tinycudann, nerfstudio falls back to its pure-torch hash grid (8 gathers and a lerp tree per level as
separate kernels, 16 levels, with all intermediates kept for autograd); Nerfacto then spends most of a training step
there. Triton ships with every CUDA build of torch, so a fused kernel works wherever torch does, with no build step.

What:

- :class:`TritonHashEncoding` subclasses nerfstudio's ``HashEncoding`` (built with ``implementation="torch"``): the
  same ``hash_table`` parameter (shape ``[num_levels * 2**log2_hashmap_size, features_per_level]``, same random
  init), the same hashing (nerfstudio's primes, every level hashed, no dense coarse levels), the same ``floor``/``ceil``
  corners and lerp order, no clamping outside the unit cube. A state_dict of one loads into the other and encodes the
  same: the forward is bit-identical to torch's (seen on an H200 at Nerfacto's sizes, and in Triton's interpreter);
  gradients agree to float32 rounding (another summation order; atomic adds, so not bitwise reproducible run to run).
  On CUDA inputs it runs the Triton kernels (forward: one launch for all levels;
  backward: table gradients by atomic adds, position gradients as torch's autograd gives them); on CPU it is
  nerfstudio's torch path, unchanged (with ``TRITON_INTERPRET=1`` set, CPU inputs run the kernels in Triton's
  interpreter: that is how the CI tests check them).
- :func:`resolve_hash_backend` and :func:`swap_hash_encodings`: what a model calls to choose a backend and to swap the
  torch hash encodings of its built fields for this one (keeping their table parameters, so optimisers and
  checkpoints are unaffected).

This module is import-light: triton is imported only when a kernel runs or a backend is resolved on CUDA (every
``ns-*`` command imports the plugin, and an import error there would break nerfstudio).
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Dict, Literal, Optional, Tuple, Union, get_args

import torch
from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

HashGridBackend = Literal["auto", "tcnn", "triton", "torch"]
"""Hash-grid implementation to use. ``auto``: tinycudann if importable, else Triton on CUDA, else torch."""

_BACKENDS: Tuple[str, ...] = get_args(HashGridBackend)


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    """None if triton imports, else why not (cached: it is asked on every forward)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # an ImportError, or a broken install raising anything else
        return f"{type(exc).__name__}: {exc}"
    return None


def _triton_available() -> bool:
    return _triton_import_error() is None


def _tcnn_import_error() -> Optional[str]:
    """None if nerfstudio could import tinycudann, else why not."""
    from nerfstudio.utils import external

    if external.TCNN_EXISTS:
        return None
    return str(external.tcnn_import_exception or "tinycudann is not installed")


def _tcnn_available() -> bool:
    return _tcnn_import_error() is None


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels():
    """The kernel module (imports triton). Imported on first use only."""
    from vsdsr_nerfstudio.models import _triton_hash_kernels

    return _triton_hash_kernels


class _TritonHashGridFunction(torch.autograd.Function):
    """Autograd wrapper of the fused kernels: positions [N, 3] and table -> encoding [N, L * F]."""

    @staticmethod
    def forward(
        ctx,
        positions: Float[Tensor, "num_points 3"],
        table: Float[Tensor, "num_rows features"],
        scalings: Float[Tensor, " num_levels"],
        log2_hashmap_size: int,
        num_levels: int,
        features_per_level: int,
    ) -> Float[Tensor, "num_points out_dim"]:
        out = _kernels().hash_grid_forward(
            positions, table, scalings, log2_hashmap_size, num_levels, features_per_level
        )
        ctx.save_for_backward(positions, table, scalings)
        ctx.config = (log2_hashmap_size, num_levels, features_per_level)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Float[Tensor, "num_points out_dim"]):
        positions, table, scalings = ctx.saved_tensors
        need_positions, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_positions, grad_table = _kernels().hash_grid_backward(
            grad_out,
            positions,
            table,
            scalings,
            *ctx.config,
            need_table_grad=need_table,
            need_positions_grad=need_positions,
        )
        return grad_positions, grad_table, None, None, None, None


def triton_hash_encode(
    positions: Float[Tensor, "*bs 3"],
    hash_table: Float[Tensor, "num_rows features"],
    scalings: Float[Tensor, " num_levels"],
    log2_hashmap_size: int,
) -> Float[Tensor, "*bs out_dim"]:
    """Differentiable fused hash-grid encoding (w.r.t. ``positions`` and ``hash_table``).

    Args:
        positions: points, nerfstudio's normalised coordinates ([0, 1] inside the scene; others are not clamped).
            Any float dtype; computed in float32, as torch's path promotes them.
        hash_table: float32 ``[num_levels * 2**log2_hashmap_size, features_per_level]`` (``HashEncoding.hash_table``).
        scalings: per-level resolutions (``HashEncoding.scalings``), on the device of ``positions``.
        log2_hashmap_size: log2 of the entries per level.

    Returns:
        ``[*bs, num_levels * features_per_level]`` float32, laid out as nerfstudio's (level-major per point).
    """
    num_levels = scalings.numel()
    features = hash_table.shape[-1]
    batch_shape = positions.shape[:-1]
    flat = positions.reshape(-1, 3).to(torch.float32).contiguous()
    out = _TritonHashGridFunction.apply(
        flat, hash_table, scalings.to(torch.float32).contiguous(), log2_hashmap_size, num_levels, features
    )
    return out.view(*batch_shape, num_levels * features)


class TritonHashEncoding(HashEncoding):
    """nerfstudio's torch ``HashEncoding`` whose forward runs fused Triton kernels on CUDA.

    Same constructor arguments (no ``implementation``: it is always the torch layout), same ``hash_table`` parameter
    and init, so checkpoints are interchangeable with ``HashEncoding(implementation="torch")`` by construction. CPU
    inputs take nerfstudio's torch path (or the Triton interpreter when ``TRITON_INTERPRET=1``). A float32 table is
    required for the Triton path; another dtype falls back to torch.
    """

    def __init__(
        self,
        num_levels: int = 16,
        min_res: int = 16,
        max_res: int = 1024,
        log2_hashmap_size: int = 19,
        features_per_level: int = 2,
        hash_init_scale: float = 0.001,
        interpolation: Optional[Literal["Nearest", "Linear", "Smoothstep"]] = None,
    ) -> None:
        super().__init__(
            num_levels=num_levels,
            min_res=min_res,
            max_res=max_res,
            log2_hashmap_size=log2_hashmap_size,
            features_per_level=features_per_level,
            hash_init_scale=hash_init_scale,
            implementation="torch",
            interpolation=interpolation,
        )
        self._scalings_on: Dict[torch.device, Tensor] = {}

    @classmethod
    def from_hash_encoding(cls, encoding: HashEncoding) -> "TritonHashEncoding":
        """A Triton encoding that shares ``encoding``'s table parameter (the same ``nn.Parameter`` object, so an
        optimiser built before the swap still updates it) and its settings. Draws no random numbers.

        Raises:
            ValueError: ``encoding`` runs on tinycudann (its table layout differs; build it with
                ``implementation="torch"``).
        """
        if encoding.tcnn_encoding is not None:
            raise ValueError(
                "This HashEncoding runs on tinycudann, whose parameter layout differs from the torch/Triton one; "
                "build the field with implementation='torch' to use the Triton encoding."
            )
        new = cls.__new__(cls)
        for key, value in encoding.__dict__.items():
            # nn.Module's own containers (_parameters, _buffers, _modules, hook dicts) are copied, not shared, so the
            # two modules stay independent; their contents (the Parameter itself) are shared.
            new.__dict__[key] = value.copy() if isinstance(value, (dict, set)) else value
        new._scalings_on = {}
        return new

    def _scalings_for(self, device: torch.device) -> Tensor:
        cached = self._scalings_on.get(device)
        if cached is None:
            cached = self.scalings.to(device=device, dtype=torch.float32).contiguous()
            self._scalings_on[device] = cached
        return cached

    def uses_triton(self, in_tensor: Tensor) -> bool:
        """Whether :meth:`forward` takes the Triton path for this input (else nerfstudio's torch path)."""
        table = self.hash_table
        if self.tcnn_encoding is not None or not isinstance(table, Tensor) or table.dtype != torch.float32:
            return False
        if in_tensor.device != table.device:
            return False
        if in_tensor.is_cuda:
            if _triton_available():
                return True
            _warn_no_triton_once()
            return False
        return in_tensor.device.type == "cpu" and _interpreter_on() and _triton_available()

    def forward(self, in_tensor: Float[Tensor, "*bs input_dim"]) -> Float[Tensor, "*bs output_dim"]:
        if self.uses_triton(in_tensor):
            return triton_hash_encode(
                in_tensor, self.hash_table, self._scalings_for(in_tensor.device), self.log2_hashmap_size
            )
        return super().forward(in_tensor)

    def extra_repr(self) -> str:
        return (
            f"num_levels={self.num_levels}, min_res={self.min_res}, log2_hashmap_size={self.log2_hashmap_size}, "
            f"features_per_level={self.features_per_level}, backend=triton on CUDA / torch on CPU"
        )


@functools.lru_cache(maxsize=1)
def _warn_no_triton_once() -> None:
    warnings.warn(
        f"TritonHashEncoding got CUDA inputs but triton cannot be imported ({_triton_import_error()}); "
        "using nerfstudio's (slow) torch hash grid.",
        stacklevel=3,
    )


def resolve_hash_backend(requested: HashGridBackend, device_is_cuda: bool) -> str:
    """The hash-grid backend to build a model with: ``"tcnn"``, ``"triton"`` or ``"torch"``.

    ``"auto"``: tinycudann if nerfstudio can import it, else Triton if ``device_is_cuda`` and triton imports, else
    torch. An explicit choice is checked and raises if it cannot work here.

    Args:
        requested: the configured backend.
        device_is_cuda: whether the model will run on a CUDA device (e.g. ``torch.cuda.is_available()`` or the
            pipeline's device type).

    Raises:
        ValueError: unknown ``requested``.
        RuntimeError: ``"triton"`` without CUDA or without an importable triton; ``"tcnn"`` without tinycudann.
    """
    if requested not in _BACKENDS:
        raise ValueError(f"hash_backend must be one of {_BACKENDS}, got {requested!r}")
    if requested == "torch":
        return "torch"
    if requested == "tcnn":
        err = _tcnn_import_error()
        if err is not None:
            raise RuntimeError(
                f"hash_backend='tcnn' but tinycudann cannot be imported ({err}). Install tinycudann, or set "
                "hash_backend='auto' (Triton on CUDA, torch elsewhere), 'triton' or 'torch'."
            )
        return "tcnn"
    if requested == "triton":
        if not device_is_cuda:
            raise RuntimeError(
                "hash_backend='triton' needs a CUDA device: the Triton hash-grid kernels run on the GPU, and this "
                "model runs on CPU (no CUDA device available). Set hash_backend='auto' or 'torch' here."
            )
        err = _triton_import_error()
        if err is not None:
            raise RuntimeError(
                f"hash_backend='triton' but triton cannot be imported ({err}). Install the triton that matches "
                "your torch (CUDA builds of torch ship it: pip install triton), or set hash_backend='auto' or 'torch'."
            )
        return "triton"
    # auto
    if _tcnn_available():
        return "tcnn"
    if device_is_cuda and _triton_available():
        return "triton"
    return "torch"


def hash_backend_for_device(requested: HashGridBackend, device: Optional[Union[str, torch.device]]) -> str:
    """:func:`resolve_hash_backend` for a model built for ``device`` (the pipeline passes it to the model as
    ``device=``; ``None``: CUDA if available)."""
    is_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return resolve_hash_backend(requested, device_is_cuda=is_cuda)


def swap_hash_encodings(module: nn.Module, backend: str) -> int:
    """Replace every nerfstudio torch ``HashEncoding`` inside ``module`` by a :class:`TritonHashEncoding` sharing its
    table parameter, when ``backend`` is ``"triton"``; a no-op (0) for ``"torch"`` and ``"tcnn"``.

    Covers every reference in the module tree (e.g. a density field's ``encoding`` and its ``mlp_base[0]`` become
    the same new module), so Nerfacto's ``field.mlp_base.model[0]``, the proposal networks' ``encoding`` and the
    Instant-NGP field are all swapped. Encodings built on tinycudann are left alone (their layout differs). The
    state_dict keys and tensors are unchanged. Call it after the fields are built (``populate_modules``), before
    or after moving the model to its device; it draws no random numbers.

    Args:
        module: a model or field.
        backend: a resolved backend (see :func:`resolve_hash_backend`); ``"auto"`` is refused.

    Returns:
        How many distinct encodings were swapped.
    """
    if backend not in ("tcnn", "triton", "torch"):
        raise ValueError(f"swap_hash_encodings needs a resolved backend ('tcnn', 'triton' or 'torch'), got {backend!r}")
    if backend != "triton":
        return 0
    if type(module) is HashEncoding:
        raise ValueError("module is itself a HashEncoding: use TritonHashEncoding.from_hash_encoding(module)")
    swapped: Dict[int, TritonHashEncoding] = {}
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            # Exact type: a subclass of HashEncoding may change its forward, which the swap would silently drop.
            if type(child) is not HashEncoding or child.tcnn_encoding is not None:
                continue
            new = swapped.get(id(child))
            if new is None:
                new = swapped[id(child)] = TritonHashEncoding.from_hash_encoding(child)
            setattr(parent, name, new)
    return len(swapped)
