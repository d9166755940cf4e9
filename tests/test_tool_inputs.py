"""What a newcomer feeds the two console tools (issue #11, items 2 and 3): bad inputs end with one line naming
the file or option, before any work; 16-bit, grey and RGBA images come out right; the prior trainer refuses
photos smaller than its crop and truncated files, and leaves no empty output folder behind."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsdsr_nerfstudio.data.images import ImageReadError, load_rgb_uint8, read_image
from vsdsr_nerfstudio.data.resample import bicubic_upscale
from vsdsr_nerfstudio.tools import upscale as upscale_tool
from vsdsr_nerfstudio.tools.upscale import UpscaleConfig, UpscaleInputError, upscale


def _bicubic_sample(cfg, prior, rgb, device):
    """Stand-in for the DDIM sampler: the bicubic x4 of what the CLI hands it (so outputs are predictable)."""
    return bicubic_upscale(rgb[None], 4)[0]


def _cfg(image: Path, output: Path, **kw) -> UpscaleConfig:
    return UpscaleConfig(image=image, output=output, prior="pixel-tiny", steps=1, tile=0, device="cpu", **kw)


def _run_main(monkeypatch, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["vsdsr-upscale", *args])
    with pytest.raises(SystemExit) as info:
        upscale_tool.main()
    return str(info.value.code)


# ---- vsdsr-upscale ---------------------------------------------------------------------------------------------


def test_upscale_non_image_and_missing_input_are_one_line_errors(tmp_path, monkeypatch):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    for path, words in (
        (text, "not an image file"),
        (tmp_path / "missing.png", "no such file"),
        (folder, "is a folder"),
    ):
        msg = _run_main(monkeypatch, str(path), "-o", str(tmp_path / "out.png"), "--prior", "pixel-tiny")
        assert msg.startswith("vsdsr-upscale: error:") and str(path) in msg and words in msg, msg
        assert "\n" not in msg and "Traceback" not in msg
        assert not (tmp_path / "out.png").exists()


def test_upscale_unknown_output_extension_is_refused_before_the_work(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in.png")

    def no_work(*args, **kwargs):
        raise AssertionError("the prior was loaded / the upscale ran")

    monkeypatch.setattr(upscale_tool.SRPriorConfig, "setup", no_work)
    monkeypatch.setattr(upscale_tool, "_sample", no_work)
    with pytest.raises(UpscaleInputError) as info:
        upscale(_cfg(tmp_path / "in.png", tmp_path / "out.xyz"))
    assert "'.xyz'" in str(info.value) and "out.xyz" in str(info.value) and ".png" in str(info.value)
    msg = _run_main(monkeypatch, str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--prior", "pixel-tiny")
    assert "unknown image extension" in msg and "\n" not in msg


def test_upscale_option_the_prior_does_not_use_is_refused(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in.png")
    msg = _run_main(
        monkeypatch, str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--prior", "pixel-tiny", "--prompt", "x"
    )
    # named as this command's options (the ns-train paths do not exist in vsdsr-upscale)
    assert "--prompt 'x'" in msg and "does not use" in msg and "--pipeline" not in msg and "--prior " in msg
    assert not (tmp_path / "o.png").exists()


def test_16bit_grey_png_is_read_and_upscaled_correctly(tmp_path, monkeypatch):
    ramp = np.linspace(0, 65535, 16 * 12).reshape(12, 16).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    image = read_image(path)
    assert image.grey and image.bit_depth == 16 and image.alpha is None
    torch.testing.assert_close(image.rgb[0], torch.from_numpy(ramp / 65535.0).float())
    assert torch.equal(image.rgb[0], image.rgb[2])
    assert abs(float(load_rgb_uint8(path).float().mean()) - 127.5) < 1.0  # Pillow's convert("RGB") gave ~255
    monkeypatch.setattr(upscale_tool, "_sample", _bicubic_sample)
    out = upscale(_cfg(path, tmp_path / "out.png"))
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (64, 48)
        got = np.asarray(im).astype(np.float64)
    expected = (bicubic_upscale(image.rgb[None])[0, 0].numpy() * 255).round()
    assert np.abs(got - expected).max() <= 1 and 120 < got.mean() < 135


def test_grey_input_gives_grey_output_with_the_real_sampler(tmp_path):
    g = np.random.default_rng(0).integers(0, 256, (8, 10), dtype=np.uint8)
    Image.fromarray(g, mode="L").save(tmp_path / "grey.png")
    out = upscale(_cfg(tmp_path / "grey.png", tmp_path / "grey_x4.png"))
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (40, 32)  # one channel: no colour noise can appear


def test_rgba_keeps_its_alpha_or_says_it_dropped_it(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 8, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "in.png")
    monkeypatch.setattr(upscale_tool, "_sample", _bicubic_sample)
    out = upscale(_cfg(tmp_path / "in.png", tmp_path / "out.png"))
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.size == (32, 32)
        alpha = np.asarray(im)[..., 3].astype(np.float64)
    expected = bicubic_upscale(torch.from_numpy(rgba[..., 3] / 255.0).float()[None, None])[0, 0].numpy() * 255
    assert np.abs(alpha - expected.round()).max() <= 1 and alpha[:, 0].mean() < 40 and alpha[:, -1].mean() > 215
    capsys.readouterr()
    out = upscale(_cfg(tmp_path / "in.png", tmp_path / "out.jpg"))
    with Image.open(out) as im:
        assert im.mode == "RGB"
    printed = capsys.readouterr().out
    assert "alpha" in printed and "dropped" in printed


# ---- vsdsr-train-prior -----------------------------------------------------------------------------------------


def _images(folder: Path, sizes, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
    return folder


def _train_cfg(images: Path, output: Path, **kw):
    from vsdsr_nerfstudio.tools.train_prior import PriorTrainConfig

    return PriorTrainConfig(
        images=images, output=output, preset="tiny", crop_size=32, batch_size=2, num_workers=0, max_steps=1,
        warmup_steps=0, log_every=1, print_every_seconds=1e9, save_every_minutes=1e9, **kw,
    )  # fmt: skip


def test_train_prior_refuses_photos_smaller_than_the_crop(tmp_path):
    from vsdsr_nerfstudio.tools.train_prior import train

    images = _images(tmp_path / "photos", [(40, 36), (24, 40), (16, 16)])
    out = tmp_path / "run"
    with pytest.raises(ValueError) as info:
        train(_train_cfg(images, out))
    msg = str(info.value)
    assert "2 of 3 training images" in msg and "32 px" in msg and "img_01.png (24x40)" in msg
    assert "img_02.png (16x16)" in msg and "--enlarge-small-images" in msg
    assert not out.exists()  # a failed start leaves no output folder
    result = train(_train_cfg(images, out, enlarge_small_images=True))  # the explicit option allows it
    assert result.step == 1 and (out / "model" / "pixel_prior.json").is_file()


def test_train_prior_names_a_truncated_image_and_leaves_no_empty_folder(tmp_path):
    from vsdsr_nerfstudio.tools.train_prior import train

    images = _images(tmp_path / "photos", [(64, 64), (64, 64)])
    bad = images / "img_01.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "run"
    with pytest.raises(ImageReadError) as info:
        train(_train_cfg(images, out))
    assert "img_01.png" in str(info.value) and "truncated" in str(info.value)
    assert not out.exists()  # decoded at start (the RAM cache), before anything was written


def test_train_prior_failed_start_keeps_an_existing_folder(tmp_path):
    from vsdsr_nerfstudio.tools.train_prior import train

    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="no images"):
        train(_train_cfg(_images(tmp_path / "empty", []), out))
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="no images"):
        train(_train_cfg(tmp_path / "empty", tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageReadError, match="x.jpg"):
        load_rgb_uint8(tmp_path / "x.jpg")
