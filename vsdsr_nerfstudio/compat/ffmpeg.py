"""Make `ns-render` video output work from the pip install alone.

nerfstudio writes videos with mediapy, which runs the ``ffmpeg`` executable it finds on ``PATH``; a fresh machine
has none. The ``imageio-ffmpeg`` wheel (a dependency of this package) carries a static ffmpeg binary. When no
``ffmpeg`` is on ``PATH``, we link that binary as ``ffmpeg`` in a cache folder and put the folder at the end of
``PATH`` for this process (a system ffmpeg, if one appears, still wins). Nothing heavy is imported.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional


def bundled_ffmpeg_dir() -> Path:
    """Folder that holds our ``ffmpeg`` link (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "vsdsr_nerfstudio" / "bin"


def use_bundled_ffmpeg() -> Optional[Path]:
    """Expose imageio-ffmpeg's binary as ``ffmpeg`` on ``PATH`` if no ffmpeg is there. Returns its path, if used."""
    if shutil.which("ffmpeg") is not None:
        return None
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        exe = Path(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError:  # no binary in this wheel (e.g. an unsupported platform)
        return None
    folder = bundled_ffmpeg_dir()
    link = folder / "ffmpeg"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (link.exists() and link.resolve() == exe.resolve()):
            tmp = folder / f".ffmpeg.{os.getpid()}"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            tmp.symlink_to(exe)
            os.replace(tmp, link)
    except OSError:
        return None
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + str(folder)
    return link
