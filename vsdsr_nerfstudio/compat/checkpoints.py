"""Let torch >= 2.6 load nerfstudio 1.1.5 checkpoints with ``torch.load(weights_only=True)``.

nerfstudio 1.1.5 calls ``torch.load(path)`` without ``weights_only``; since torch 2.6 that means
``weights_only=True``, which refuses any global not on an allow-list. nerfstudio's exponential-decay learning-rate
lambda returns ``numpy.float64``, so every checkpoint holds numpy float scalars (optimizer ``param_groups[*].lr``
and scheduler ``_last_lr``), and ``ns-eval``, ``ns-render`` and ``--load-dir`` die with
"Unsupported global: numpy.core.multiarray.scalar".

We allow-list exactly what rebuilding a numpy float scalar needs: the scalar constructor, ``numpy.dtype`` and the
float dtype classes. Nothing else is allowed, and the weights-only check stays on for every file.
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch


def numpy_scalar_globals() -> List[object]:
    """The globals a pickled numpy float scalar refers to, for the installed numpy (1.x or 2.x)."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed: List[object] = [scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles the dtype class
    if dtypes is not None:
        allowed += [dtypes.Float64DType, dtypes.Float32DType]
    return allowed


def allow_nerfstudio_checkpoint_globals() -> None:
    """Add the numpy scalar globals to torch's weights-only allow-list (no-op on torch without one)."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:
        add_safe_globals(numpy_scalar_globals())
