"""Every ``--pipeline.…`` option written in a message, a docstring, a preset or the docs exists in ``ns-train --help``.

Error messages and docs tell users what to type; an option that does not exist (``--pipeline.sr.prior…`` once did)
sends them into tyro's "unrecognized arguments". The help of the real ``ns-train`` command is the reference: the
default preset's, and for an option that only a specific preset has, that preset's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"--pipeline((?:\.[A-Za-z0-9_-]+)+)(\.\*|…|\.\.\.)?")
SOURCES = ("vsdsr_nerfstudio", "method_configs", "docs", "README.md", "bench")


def written_options() -> Dict[str, Set[str]]:
    """Option path (a trailing ``.*`` or ``…`` kept) -> files that write it."""
    found: Dict[str, Set[str]] = {}
    for source in SOURCES:
        path = ROOT / source
        files = [path] if path.is_file() else [*path.rglob("*.py"), *path.rglob("*.md"), *path.rglob("*.sh")]
        for file in files:
            text = file.read_text(errors="replace")
            for match in OPTION.finditer(text):
                # a dot right after the path is a sentence's full stop or a prefix constant ("--pipeline.prior."):
                # check it as a prefix, which still fails for a wrong path
                dot = match.group(2) is None and text[match.end() : match.end() + 1] == "."
                option = "--pipeline" + match.group(1) + (match.group(2) or (".*" if dot else ""))
                found.setdefault(option, set()).add(str(file.relative_to(ROOT)))
    return found


def presets() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split('[project.entry-points."nerfstudio.method_configs"]', 1)[1].split("\n[", 1)[0]
    return re.findall(r"^([a-z0-9-]+)\s*=", block, re.M)


@lru_cache(maxsize=None)
def help_options(preset: str) -> frozenset:
    env = dict(os.environ, COLUMNS="400")
    launcher = Path(sys.executable).parent / "ns-train"
    result = subprocess.run([str(launcher), preset, "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return frozenset(re.findall(r"--pipeline(?:\.[a-z0-9_-]+)+", result.stdout))


def exists(option: str, options: frozenset) -> bool:
    """An exact option, or for a written prefix (``--pipeline.stage.lora.*``, ``--pipeline.prior…``) any option
    under it."""
    base = option.removesuffix(".*").removesuffix("…").removesuffix("...")
    if base == option:
        return option in options
    return any(o.startswith(base) for o in options)


def test_the_scan_finds_the_options_users_are_told_about():
    options = written_options()
    assert "--pipeline.prior.model-path" in options  # README, docs/prior.md, error messages
    assert "--pipeline.stage.latent-lr" in options  # the pixel-prior VSD warning


@pytest.mark.slow
def test_every_written_option_exists_in_ns_train_help():
    default = help_options("vsd-sr")
    assert "--pipeline.prior.model-path" in default and "--pipeline.stage.lora.every" in default
    missing = []
    for option, files in sorted(written_options().items()):
        if exists(option, default):
            continue
        # an option of one preset only (e.g. a model field of the Gaussian or NGP preset): look in the others
        if not any(exists(option, help_options(p)) for p in presets() if p != "vsd-sr"):
            missing.append(f"{option} (in {', '.join(sorted(files))})")
    assert not missing, "options written in messages/docs that ns-train --help does not know:\n" + "\n".join(missing)


def test_exists_rejects_a_wrong_path():
    options = frozenset({"--pipeline.prior.model-path", "--pipeline.stage.lora.every"})
    assert exists("--pipeline.prior.model-path", options)
    assert exists("--pipeline.stage.lora.*", options) and exists("--pipeline.prior…", options)
    assert not exists("--pipeline.sr.prior.model-path", options)
    assert not exists("--pipeline.stage.lora-every", options)
    assert not exists("--pipeline.stage.lora", options)  # a group, not an option
