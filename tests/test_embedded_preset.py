"""The `vsd-sr-embedded` preset and the warning for VSD settings that wreck views on the pixel-space prior.

The numbers behind the settings come from bench/fern_sr_diagnose.py on the GPU (docs/embedded_prior.md, "On fern");
these tests pin the configuration logic, not the image quality.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vsdsr_nerfstudio.method_configs.vsd_sr import vsd_sr_config
from vsdsr_nerfstudio.method_configs.vsd_sr_embedded import vsd_sr_embedded_config
from vsdsr_nerfstudio.pipeline.i3ds import warn_unstable_stage_settings
from vsdsr_nerfstudio.sr.core.stage import (
    PIXEL_PRIOR_VSD_LATENT_LR,
    PIXEL_PRIOR_VSD_T_MIN,
    SRStageConfig,
    pixel_prior_stage_settings,
    pixel_prior_vsd_problem,
)
from vsdsr_nerfstudio.sr.priors.config import PIXEL_PRIOR_CONFIG_NAME, SRPriorConfig


def test_preset_uses_the_embedded_prior_with_the_measured_vsd_settings():
    config = vsd_sr_embedded_config()
    default = vsd_sr_config()
    assert config.method_name == "vsd-sr-embedded"
    assert config.pipeline.prior.prior == "embedded" and config.pipeline.prior.pixel_space
    stage = config.pipeline.stage
    assert stage.guidance == "vsd"
    assert stage.latent_lr == PIXEL_PRIOR_VSD_LATENT_LR == 1e-3
    assert stage.t_min == PIXEL_PRIOR_VSD_T_MIN == 0.02
    # everything else is the default preset's
    changed = {
        f.name
        for f in dataclasses.fields(SRStageConfig)
        if getattr(stage, f.name) != getattr(default.pipeline.stage, f.name)
    }
    assert changed == {"latent_lr", "t_min"}
    for name in ("pretrain_steps", "upscale_steps", "sync_steps", "num_cycles"):
        assert getattr(config.pipeline, name) == getattr(default.pipeline, name)
    assert config.max_num_iterations == default.max_num_iterations
    assert warn_unstable_stage_settings(config.pipeline) is None


def test_vsd_with_sd_settings_on_the_embedded_prior_warns_with_the_fix(capsys):
    config = vsd_sr_config().pipeline
    assert warn_unstable_stage_settings(config) is None  # SD x4 upscaler: its own settings
    config.prior.prior = "embedded"
    message = warn_unstable_stage_settings(config)
    assert message is not None
    for needle in (
        "vsd-sr-embedded",
        "--pipeline.stage.latent-lr 0.001",
        "--pipeline.stage.t-min 0.02",
        "latent-lr 0.01",
        "docs/embedded_prior.md",
    ):
        assert needle in message
    assert "vsd-sr-embedded" in capsys.readouterr().out  # printed on the shared console
    config.sr_enabled = False
    assert warn_unstable_stage_settings(config) is None


@pytest.mark.parametrize("guidance", ["rsd", "sds"])
def test_rsd_and_sds_are_left_alone(guidance):
    stage = SRStageConfig(guidance=guidance)
    assert pixel_prior_vsd_problem(stage) is None
    assert pixel_prior_stage_settings(stage) == stage


def test_threshold_is_inclusive_and_settings_fix_the_problem():
    assert pixel_prior_vsd_problem(SRStageConfig(latent_lr=1e-3)) is None
    assert pixel_prior_vsd_problem(SRStageConfig(latent_lr=3e-3)) is not None
    fixed = pixel_prior_stage_settings(SRStageConfig())
    assert pixel_prior_vsd_problem(fixed) is None
    assert SRStageConfig().latent_lr == 1e-2  # the SD default itself is untouched


def test_pixel_prior_detected_from_a_model_path_folder(tmp_path):
    assert not SRPriorConfig(model_path=str(tmp_path)).pixel_space
    (tmp_path / PIXEL_PRIOR_CONFIG_NAME).write_text("{}")
    assert SRPriorConfig(model_path=str(tmp_path)).pixel_space
    assert SRPriorConfig(prior="pixel-tiny").pixel_space
    assert not SRPriorConfig(prior="tiny").pixel_space


SHIPPED = Path(__file__).resolve().parents[1] / "vsdsr_nerfstudio" / "assets" / "embedded_prior"
FERN_LR = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff" / "fern" / "images_8"


@pytest.mark.skipif(not (SHIPPED / "pixel_prior.json").is_file(), reason="the embedded prior's weights are not shipped")
@pytest.mark.skipif(not FERN_LR.is_dir(), reason="needs ../shared/data/llff/fern/images_8 beside the checkout")
def test_on_a_fern_crop_sd_settings_drift_and_the_preset_settings_keep_the_lr_photo():
    """The finding behind the preset, at CPU size (one 32x32 LR crop of fern view 8, one 128 px patch per step):
    with the SD settings VSD on the shipped prior drifts away from the LR photo it is conditioned on; with
    ``pixel_prior_stage_settings`` it stays consistent with it (GPU numbers at full size: docs/embedded_prior.md)."""
    import torch

    from vsdsr_nerfstudio.data.images import load_rgb_uint8
    from vsdsr_nerfstudio.data.resample import area_downsample, bicubic_upscale
    from vsdsr_nerfstudio.metrics.psnr import psnr

    torch.manual_seed(0)
    image = load_rgb_uint8(sorted(FERN_LR.glob("*.png"))[8]).float() / 255.0
    y0, x0 = (image.shape[1] - 32) // 2, (image.shape[2] - 32) // 2
    lr = image[None, :, y0 : y0 + 32, x0 : x0 + 32].contiguous()
    render = bicubic_upscale(lr).clamp(0, 1)
    c2w = torch.eye(4)[None, :3]

    def lr_consistency(stage_config: SRStageConfig) -> float:
        prior = SRPriorConfig(prior="embedded").setup(device="cpu")  # fresh: one LoRA per prior
        out = stage_config.setup(prior=prior).run(render, lr, c2w, num_steps=150)
        assert out.shape == render.shape and torch.isfinite(out).all()
        return float(psnr(area_downsample(out), lr)[0])

    base = SRStageConfig(batch_size=1, patch_size=32)
    start = float(psnr(area_downsample(render), lr)[0])
    sd_settings = lr_consistency(base)
    preset_settings = lr_consistency(pixel_prior_stage_settings(base))
    assert sd_settings < start - 10.0, (sd_settings, start)  # measured: 15 dB vs 33 dB
    assert preset_settings > start - 2.0, (preset_settings, start)
