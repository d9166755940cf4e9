"""The SR datamanager: immutable LR originals, HR writes, the 4x camera switch and HR ray sampling."""

import pytest
import torch
from synthetic_llff import make_llff_scene

from vsdsr_nerfstudio.data.llff_dataparser import LLFFDataParserConfig
from vsdsr_nerfstudio.pipeline.datamanager import DataScaleError, SRDataManagerConfig


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_llff_scene(tmp_path_factory.mktemp("dm_scene"), n_views=6, hr_size=(64, 48), factors=(4,), seed=3)


def _datamanager(scene, sr_scale=4, data_sr_scale=4):
    config = SRDataManagerConfig(
        dataparser=LLFFDataParserConfig(data=scene, downscale_factor=4, sr_scale=data_sr_scale, llffhold=3),
        sr_scale=sr_scale,
        train_num_rays_per_batch=64,
        eval_num_rays_per_batch=64,
    )
    return config.setup(device="cpu")


def test_lr_then_hr_training(scene):
    torch.manual_seed(0)
    dm = _datamanager(scene)
    n = dm.num_train_views
    assert dm.lr_size == (12, 16) and dm.hr_size == (48, 64)
    assert not dm.is_hr
    assert int(dm.train_cameras.width[0]) == 16 and int(dm.train_cameras.height[0]) == 12
    lr_before = dm.lr_images_chw().clone()

    _, batch = dm.next_train(0)
    assert batch["indices"][:, 1].max() < 12 and batch["indices"][:, 2].max() < 16

    hr = torch.rand(n, 48, 64, 3, generator=torch.Generator().manual_seed(1))
    dm.write_views(hr)
    assert dm.is_hr
    cams = dm.train_cameras
    assert int(cams.width[0]) == 64 and int(cams.height[0]) == 48
    lr_cams = dm.train_dataset.cameras
    assert torch.allclose(cams.fx, lr_cams.fx * 4) and torch.allclose(cams.cx, lr_cams.cx * 4)
    assert torch.equal(dm.lr_images_chw(), lr_before), "LR originals must never change"

    ray_bundle, batch = dm.next_train(1)
    idx = batch["indices"]
    assert idx[:, 1].max() >= 12 or idx[:, 2].max() >= 16  # 64 rays over a 48x64 grid leave LR bounds
    expected = hr[idx[:, 0], idx[:, 1], idx[:, 2]]
    assert torch.allclose(batch["image"], expected, atol=1 / 255 / 2 + 1e-6)  # uint8 storage
    assert ray_bundle.origins.shape == (64, 3)
    generator = dm.train_ray_generator
    assert any(module is generator for module in dm.modules()), "datamanager.to(device) must move the generator"
    assert generator.image_coords.device == torch.device(dm.device)


def test_write_errors_and_state_roundtrip(scene):
    dm = _datamanager(scene)
    n = dm.num_train_views
    with pytest.raises(ValueError, match="expected"):
        dm.write_view(0, torch.zeros(12, 16, 3))
    with pytest.raises(IndexError):
        dm.write_view(n, torch.zeros(48, 64, 3))
    dm.write_view(1, torch.full((48, 64, 3), 0.5))
    state = dm.hr_state()
    assert state["hr_images"].dtype == torch.uint8 and state["written"].tolist()[1] is True

    other = _datamanager(scene)
    other.load_hr_state(state)
    assert other.is_hr and torch.equal(other.hr_state()["hr_images"], state["hr_images"])
    assert torch.allclose(other.hr_images()[1], torch.full((48, 64, 3), 0.5), atol=1 / 255)


def test_scale_mismatch_is_a_clear_error(scene):
    with pytest.raises(DataScaleError, match="sr-scale"):
        _datamanager(scene, sr_scale=4, data_sr_scale=2)


def test_lr_originals_are_in_camera_order(scene):
    """View i of the LR originals is the image of camera i, whatever order the image cache loaded them in."""
    dm = _datamanager(scene)
    dataset = dm.train_dataset
    lr = dm.lr_images_chw()
    for i in range(dm.num_train_views):
        expected = dataset.get_image_float32(i).permute(2, 0, 1)
        assert torch.allclose(lr[i], expected[:3]), f"LR original {i} is not the image of camera {i}"


def _digest(folder):
    import hashlib

    return {
        str(p.relative_to(folder)): (p.stat().st_mode, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("bad", [0, -4])
def test_sr_scale_below_one_is_named_without_suggesting_it_for_the_parser(scene, bad):
    before = _digest(scene)
    with pytest.raises(DataScaleError) as info:
        _datamanager(scene, sr_scale=bad)
    message = str(info.value)
    assert "--pipeline.datamanager.sr-scale must be an integer >= 1" in message and repr(bad) in message
    assert f"--sr-scale {bad}" not in message  # never advise the bad value for llff-data too
    assert _digest(scene) == before


def test_train_views_render_at_hr_when_loaded_for_inference(scene):
    """Training keeps the LR train cameras (rays match the LR images until the first write); ns-eval/ns-render
    load the datamanager in "test"/"inference" mode, where train cameras are at sr_scale x, like the eval views."""
    train = _datamanager(scene)
    assert int(train.train_dataset.cameras.width[0]) == 16 and int(train.train_dataset.cameras.height[0]) == 12
    for mode in ("test", "inference"):
        config = SRDataManagerConfig(
            dataparser=LLFFDataParserConfig(data=scene, downscale_factor=4, sr_scale=4, llffhold=3),
            sr_scale=4,
            train_num_rays_per_batch=64,
            eval_num_rays_per_batch=64,
        )
        dm = config.setup(device="cpu", test_mode=mode)
        cams = dm.train_dataset.cameras
        assert (int(cams.width[0]), int(cams.height[0])) == (64, 48), mode
        eval_cams = dm.eval_dataset.cameras
        assert (int(eval_cams.width[0]), int(eval_cams.height[0])) == (64, 48), mode
        assert torch.allclose(cams.fx, train.train_dataset.cameras.fx * 4)
        if mode == "test":  # set up for evaluation: the SR bookkeeping still starts from the LR cameras (4x, not 16x)
            assert int(dm.hr_cameras().width[0]) == 64 and dm.lr_size == (12, 16)


@pytest.mark.parametrize("factor", [0.25, 1.0, 2.0])
def test_render_dataset_downscale_factor_says_how_to_get_the_size(scene, factor):
    """`ns-render dataset --downscale-factor X` sets the parser's downscale_factor to the float X."""
    before = _digest(scene)
    config = SRDataManagerConfig(
        dataparser=LLFFDataParserConfig(data=scene, downscale_factor=factor, sr_scale=4, llffhold=3), sr_scale=4
    )
    with pytest.raises(DataScaleError) as info:
        config.setup(device="cpu", test_mode="inference")
    message = str(info.value)
    assert f"--downscale-factor {factor:g}" in message
    assert "leave --downscale-factor out for HR stills" in message and "ns-render interpolate" in message
    assert _digest(scene) == before
