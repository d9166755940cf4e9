"""Paths the package computes from its own location (they moved with the layout change once and silently pointed
into the wrong folder: the shipped prior's tests skip when its weights are absent, so nothing failed)."""

from __future__ import annotations

from pathlib import Path

import vsdsr_nerfstudio
from vsdsr_nerfstudio.metrics.lpips import DEFAULT_LPIPS_WEIGHTS
from vsdsr_nerfstudio.sr.priors.loading import EMBEDDED_PRIOR_DIR, PIXEL_PRIOR_CONFIG_NAME

PACKAGE = Path(vsdsr_nerfstudio.__file__).resolve().parent


def test_the_embedded_prior_folder_is_the_packaged_one_and_holds_the_weights():
    assert EMBEDDED_PRIOR_DIR == PACKAGE / "assets" / "embedded_prior"
    assert (EMBEDDED_PRIOR_DIR / PIXEL_PRIOR_CONFIG_NAME).is_file()  # tracked in the repository, shipped in the wheel
    assert any((EMBEDDED_PRIOR_DIR / "unet").glob("*.safetensors"))


def test_the_default_lpips_weights_are_looked_up_beside_the_checkout():
    assert DEFAULT_LPIPS_WEIGHTS == PACKAGE.parents[1] / "shared" / "metrics" / "lpips_alex_features.npz"
