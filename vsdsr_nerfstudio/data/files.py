"""Atomic file writes (the one helper): write to a temporary name in the same folder, flush, fsync, rename. A kill
leaves either the old file or the new one, never a torn one. Also :func:`replace_dir` for whole folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union


def atomic_write(path: Union[str, Path], write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path`` (parents created), fsync it, rename it over
    ``path``; the temporary file is removed on any error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: Union[str, Path], data: Any) -> None:
    """:func:`atomic_write` of ``data`` as indented JSON; creates the parent folders."""
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2))


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    """:func:`atomic_write` of ``torch.save(obj)``."""
    import torch

    atomic_write(path, lambda handle: torch.save(obj, handle))


def replace_dir(tmp: Union[str, Path], final: Union[str, Path]) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one (old moved aside, then deleted)."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + f".old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
