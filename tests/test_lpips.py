"""LPIPS-alex built offline from a local .npz, the documented skip when torchvision's weights are unavailable, and the
errors for a bad weights file."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsdsr_nerfstudio.metrics import lpips as lp

SHARED = Path(__file__).resolve().parents[2] / "shared"
NPZ = SHARED / "metrics" / "lpips_alex_features.npz"
IMAGE = SHARED / "data" / "llff" / "fern" / "images_4" / "image000.png"
REFERENCE_LPIPS_BIC = 0.5416  # shared/metrics/REFERENCE.md, LPIPS-alex of BIC vs A


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared test file {path} not found")
    return path


def _random_npz(path: Path, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in lp.expected_npz_shapes().items()}
    for k in arrays:
        if k.startswith("lin"):
            arrays[k] = np.abs(arrays[k])  # LPIPS heads are non-negative
    np.savez(path, **arrays)
    return arrays


def _assert_net_equals(metric: torch.nn.Module, arrays: Dict[str, np.ndarray]) -> None:
    state = metric.net.state_dict()
    assert {lp.npz_key_for(k) for k in state} == set(arrays)
    for key, value in state.items():
        assert torch.equal(value, torch.from_numpy(arrays[lp.npz_key_for(key)])), key


def test_lpips_bic_vs_a_matches_reference() -> None:
    metric = lp.build_lpips(_require(NPZ))
    assert metric is not None
    with np.load(NPZ) as npz:
        _assert_net_equals(metric, {k: npz[k] for k in npz.files})
    from PIL import Image

    with Image.open(_require(IMAGE)) as image:
        a = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255.0
    bic = F.interpolate(F.avg_pool2d(a, 4), scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        value = float(metric(bic, a))
    assert round(value, 4) == REFERENCE_LPIPS_BIC, value


def test_build_from_npz_is_offline_and_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("no download expected when building from a local npz")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    arrays = _random_npz(tmp_path / "w.npz")
    rng_before = torch.random.get_rng_state()
    metric = lp.build_lpips(tmp_path / "w.npz")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the random backbone did not consume the RNG
    _assert_net_equals(metric, arrays)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 3, 64, 64, generator=gen), torch.rand(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        assert float(metric(x, x)) == 0.0
        assert float(metric(x, y)) > 0.0


def test_build_lpips_without_weights_offline_warns_and_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network access disabled in this test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    from nerfstudio.utils.rich_utils import CONSOLE

    with CONSOLE.capture() as captured:
        metric = lp.build_lpips(None)
    assert metric is None
    lines = [line for line in captured.get().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "LPIPS skipped" in lines[0] and "`lpips_weights`" in lines[0] and "features.{0,3,6,8,10}" in lines[0]


def test_bad_npz_errors(tmp_path: Path) -> None:
    arrays = _random_npz(tmp_path / "good.npz")
    missing = {k: v for k, v in arrays.items() if k != "features.6.weight"}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(lp.LpipsWeightsError, match=r"missing\.npz has no key 'features\.6\.weight'.*lpips_weights"):
        lp.validate_lpips_npz(tmp_path / "missing.npz")
    with pytest.raises(lp.LpipsWeightsError, match="features.6.weight"):
        lp.build_lpips(tmp_path / "missing.npz")

    np.savez(tmp_path / "shape.npz", **{**arrays, "lin2.model.1.weight": np.zeros((1, 64, 1, 1), np.float32)})
    with pytest.raises(lp.LpipsWeightsError, match=r"'lin2\.model\.1\.weight' has shape \(1, 64, 1, 1\)"):
        lp.validate_lpips_npz(tmp_path / "shape.npz")

    (tmp_path / "text.npz").write_text("not a zip archive")
    with pytest.raises(lp.LpipsWeightsError, match="not a readable .npz"):
        lp.validate_lpips_npz(tmp_path / "text.npz")
    with pytest.raises(lp.LpipsWeightsError, match="not found"):
        lp.build_lpips(tmp_path / "absent.npz")
    assert set(lp.validate_lpips_npz(tmp_path / "good.npz")) == set(arrays)
