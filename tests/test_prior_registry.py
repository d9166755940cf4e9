"""One way to choose a prior (issue #10) and the start-of-training checks of the prior options (issue #11, item 4):
the registry maps every ``SRPriorConfig.prior`` name to one kind config; options the chosen prior does not use,
incomplete or wrong local folders are refused by ``check_prior_source`` (the one function the pipeline calls at the
start of training), before any weights are read."""

from __future__ import annotations

import pytest
import torch

from vsdsr_nerfstudio.sr.priors import config as prior_config
from vsdsr_nerfstudio.sr.priors.config import PRIOR_KINDS, PriorLoadError, SRPriorConfig, check_prior_source
from vsdsr_nerfstudio.sr.priors.kinds import (
    PixelFolderConfig,
    PixelRandomConfig,
    PriorKindConfig,
    SDX4PretrainedConfig,
    SDX4RandomConfig,
)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from vsdsr_nerfstudio.sr.priors.sd_upscaler import save_tiny_prior

    return save_tiny_prior(tmp_path_factory.mktemp("tiny") / "sd")


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    from vsdsr_nerfstudio.sr.priors.pixel_prior import PixelSpacePrior

    folder = tmp_path_factory.mktemp("pixel") / "model"
    PixelSpacePrior.random("tiny", seed=0).save_pretrained(folder, dtype=torch.float32)
    return folder


def test_every_name_resolves_to_one_kind(tiny_folder, pixel_folder):
    expected = {
        "sd-x4-upscaler": SDX4PretrainedConfig,
        "sd-x4-random": SDX4RandomConfig,
        "tiny": SDX4RandomConfig,
        "embedded": PixelFolderConfig,
        "pixel-tiny": PixelRandomConfig,
    }
    assert set(PRIOR_KINDS) == set(expected)
    for name, cls in expected.items():
        assert type(SRPriorConfig(prior=name).kind()) is cls, name
    assert SRPriorConfig(prior="tiny", seed=3).kind() == SDX4RandomConfig(architecture="tiny", seed=3)
    # a pixel-prior folder given as model_path loads that prior, with the default prior name or "embedded"
    for name in ("sd-x4-upscaler", "embedded"):
        kind = SRPriorConfig(prior=name, model_path=str(pixel_folder)).kind()
        assert isinstance(kind, PixelFolderConfig) and kind.folder == str(pixel_folder) and not kind.embedded
    assert isinstance(SRPriorConfig(model_path=str(tiny_folder)).kind(), SDX4PretrainedConfig)


def test_adding_a_prior_is_one_config_and_one_registration(monkeypatch):
    from dataclasses import dataclass

    @dataclass
    class Marker(PriorKindConfig):
        def setup(self, device="cpu"):
            return ("built", str(device), self.unet_dtype)

        def describe(self):
            return "marker"

    monkeypatch.setitem(PRIOR_KINDS, "marker", lambda config, strict: Marker(unet_dtype=config.unet_dtype))
    config = SRPriorConfig(prior="marker", unet_dtype="fp16")  # type: ignore[arg-type]
    assert config.setup(device="cpu") == ("built", "cpu", "fp16")
    assert check_prior_source(config) is None


def test_setup_dispatches_through_the_registry_whatever_target_holds():
    """Configs written by older releases hold an older factory in ``_target``; setup goes through the registry."""
    config = SRPriorConfig(prior="pixel-tiny")
    config._target = object  # what a config.yml of an older release may resolve to
    prior = config.setup(device="cpu")
    assert prior.latent_channels == 48 and not prior.uses_text
    assert SRPriorConfig()._target is prior_config.PriorFactory
    assert prior_config.PriorFactory(SRPriorConfig(prior="pixel-tiny"), device="cpu").latent_channels == 48


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(prior="tiny", model_path="/nonexistent"), "--pipeline.prior.model-path '/nonexistent'"),
        (dict(prior="sd-x4-random", local_files_only=True), "--pipeline.prior.local-files-only True"),
        (dict(prior="sd-x4-upscaler", seed=3), "--pipeline.prior.seed 3"),
        (dict(prior="embedded", prompt="a photo"), "--pipeline.prior.prompt 'a photo'"),
        (dict(prior="pixel-tiny", vae_tile_size=64), "--pipeline.prior.vae-tile-size 64"),
        (dict(prior="pixel-tiny", model_path="/some/folder"), "--pipeline.prior.model-path '/some/folder'"),
    ],
)
def test_an_option_the_prior_does_not_use_is_an_error_at_start(kwargs, option):
    config = SRPriorConfig(**kwargs)
    with pytest.raises(ValueError) as info:
        check_prior_source(config)
    msg = str(info.value)
    assert option in msg and repr(kwargs["prior"]) in msg and "does not use" in msg


def test_options_the_prior_uses_pass_the_check(pixel_folder, tiny_folder):
    assert check_prior_source(SRPriorConfig(prior="tiny", seed=2, prompt="fern", vae_tile_size=64)) is None
    assert check_prior_source(SRPriorConfig(prior="pixel-tiny", seed=1, unet_dtype="fp32")) is None
    assert check_prior_source(SRPriorConfig(prior="embedded", model_path=str(pixel_folder))) is None
    assert check_prior_source(SRPriorConfig(model_path=str(tiny_folder), prompt="fern", negative_prompt="x")) is None


def test_a_model_path_that_is_a_file_says_so(tmp_path):
    file = tmp_path / "weights.safetensors"
    file.write_bytes(b"0")
    with pytest.raises(PriorLoadError) as info:
        check_prior_source(SRPriorConfig(model_path=str(file)))
    msg = str(info.value)
    assert "is a file, not a diffusers folder" in msg and str(file) in msg and "does not exist" not in msg
    with pytest.raises(PriorLoadError, match="is a file"):
        SRPriorConfig(model_path=str(file)).setup(device="cpu")


@pytest.mark.parametrize(
    "remove, named",
    [
        ("unet/diffusion_pytorch_model.safetensors", "unet/(diffusion_pytorch_model.safetensors|"),
        ("text_encoder/model.safetensors", "text_encoder/(model.safetensors|"),
        ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
        ("tokenizer/byte_tokenizer.json", "tokenizer/(vocab.json|byte_tokenizer.json)"),
        ("vae", "vae"),
    ],
)
def test_an_incomplete_diffusers_folder_is_found_at_start(tiny_folder, tmp_path, remove, named):
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(tiny_folder, folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(PriorLoadError) as info:
        check_prior_source(SRPriorConfig(model_path=str(folder)))
    msg = str(info.value)
    assert named in msg and str(folder) in msg and "prior.model_path" in msg
    with pytest.raises(PriorLoadError, match="incomplete|no subfolder"):  # loading reports the same, before reading
        SRPriorConfig(model_path=str(folder)).setup(device="cpu")


def test_an_incomplete_pixel_folder_is_found_at_start(pixel_folder, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(pixel_folder, folder)
    assert check_prior_source(SRPriorConfig(prior="embedded", model_path=str(folder))) is None
    (folder / "low_res_scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(PriorLoadError) as info:
        check_prior_source(SRPriorConfig(prior="embedded", model_path=str(folder)))
    assert "pixel-space x4 prior" in str(info.value) and "low_res_scheduler/scheduler_config.json" in str(info.value)


def test_missing_embedded_weights_are_found_at_start(monkeypatch, tmp_path):
    monkeypatch.setattr(prior_config, "EMBEDDED_PRIOR_DIR", tmp_path / "embedded_prior")
    with pytest.raises(PriorLoadError, match="weights are missing"):
        check_prior_source(SRPriorConfig(prior="embedded"))
