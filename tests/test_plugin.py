"""The nerfstudio plugin: entry points, CLI help, light imports, documented config fields."""

import ast
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vsdsr_nerfstudio"
PRESETS = Path(__file__).resolve().parents[1] / "method_configs"
METHODS = {"vsd-sr", "vsd-sr-tiny", "vsd-sr-paper", "vsd-sr-disr", "vsd-sr-ngp", "vsd-sr-embedded"}
NERFACTO_METHODS = METHODS - {"vsd-sr-ngp"}
HEAVY = ("diffusers", "peft", "transformers")


def _run(args, timeout=300, columns=200):
    env = dict(os.environ, COLUMNS=str(columns))
    if args[0].startswith("ns-"):
        args = [str(Path(sys.executable).parent / args[0]), *args[1:]]  # the launchers of this environment
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def test_entry_points_registered():
    methods = {ep.name for ep in entry_points(group="nerfstudio.method_configs")}
    assert METHODS <= methods
    assert "llff-data" in {ep.name for ep in entry_points(group="nerfstudio.dataparser_configs")}


def test_entry_points_load_without_heavy_packages():
    """Every ns-* command imports our entry points: they must not pull in diffusers/peft/transformers, nor start
    nerfacc's CUDA build (``nerfacc.cuda._backend`` compiles its kernels when imported)."""
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "for group in ('nerfstudio.method_configs', 'nerfstudio.dataparser_configs'):\n"
        "    for ep in entry_points(group=group):\n"
        "        if ep.value.startswith('vsdsr_nerfstudio'):\n"
        "            ep.load()\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY', heavy)\n"
        "assert not heavy, heavy\n"
        "assert 'nerfacc.cuda._backend' not in sys.modules\n"
    )
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ns_train_help_lists_methods():
    result = _run(["ns-train", "--help"])
    assert result.returncode == 0, result.stderr
    for name in METHODS:
        assert name in result.stdout


@pytest.mark.parametrize("method", sorted(NERFACTO_METHODS))
def test_ns_train_method_help(method):
    result = _run(["ns-train", method, "--help"])
    assert result.returncode == 0, result.stderr
    assert "Camera pose optimiser" in result.stdout
    assert "lpips-weights" in result.stdout


def test_ns_train_ngp_help_lists_our_fields():
    result = _run(["ns-train", "vsd-sr-ngp", "--help"], columns=100)  # one column of help boxes
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())  # undo tyro's line wrapping
    assert "Instant-NGP" in text and "CUDA" in text  # the preset's description
    for option in (
        "lpips-weights",
        "niqe-channel",
        "max-res",
        "log2-hashmap-size",
        "use-appearance-embedding",
        "use-average-appearance-embedding",
        "eval-num-rays-per-chunk",
    ):
        assert f"--pipeline.model.{option}" in text, option
    assert "(default: 4096)" in text and "(default: 21)" in text
    assert "Finest hash-grid resolution" in text and "Local LPIPS-AlexNet weights" in text
    assert "reads this flag inverted" in text
    assert "camera-optimizer" not in text, "nerfstudio 1.1.5's Instant-NGP has no camera optimiser"


def _undocumented_fields(path: Path):
    """(class, field) pairs of dataclass-style annotated fields without a docstring right below them."""
    tree = ast.parse(path.read_text())
    missing = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef) or not node.name.endswith("Config"):
            continue  # config dataclasses are what tyro turns into --help
        is_dataclass = any(
            (isinstance(d, ast.Name) and d.id == "dataclass")
            or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "dataclass")
            for d in node.decorator_list
        )
        if not is_dataclass:
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                name = stmt.target.id
                if name.startswith("_"):
                    continue
                nxt = body[i + 1] if i + 1 < len(body) else None
                documented = isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                if not documented:
                    missing.append(f"{path.name}:{node.name}.{name}")
    return missing


def test_every_config_field_has_help_text():
    files = sorted(PACKAGE.rglob("*.py")) + sorted(PRESETS.rglob("*.py"))
    missing = [m for f in files for m in _undocumented_fields(f)]
    assert not missing, f"config fields without a docstring (their --help text): {missing}"
