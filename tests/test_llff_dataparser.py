"""Tests of the ``llff-data`` dataparser and its cached image folders, on a synthetic scene and on fern."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_llff import load_scene, make_llff_scene, measure_marker

from vsdsr_nerfstudio.data import image_io
from vsdsr_nerfstudio.data.llff_dataparser import (
    LLFFDataError,
    LLFFDataParserConfig,
    split_indices,
    sr_cameras,
)

FERN = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff" / "fern"
N_VIEWS = 10
HR_SIZE = (256, 192)  # (W, H) of images/; images_4/ is 64x48


# ----------------------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="session")
def scene_template(tmp_path_factory) -> Path:
    """One synthetic scene per session (read-only by convention: tests that write use ``scene``)."""
    return make_llff_scene(
        tmp_path_factory.mktemp("llff") / "scene",
        n_views=N_VIEWS,
        hr_size=HR_SIZE,
        factors=(4,),
        seed=0,
        supersample=1,
    )


TEMPLATE_CONTENT = ["images", "images_4", "poses_bounds.npy", "synthetic_gt.npz"]


@pytest.fixture
def scene(scene_template, tmp_path) -> Path:
    """A private, writable copy of the synthetic scene."""
    assert sorted(p.name for p in scene_template.iterdir()) == TEMPLATE_CONTENT, "a test wrote into the template"
    return Path(shutil.copytree(scene_template, tmp_path / "scene"))


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch) -> Path:
    """Point ~/.cache at a temporary home so that no test reads or writes the real user cache."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return home / ".cache" / "vsdsr_nerfstudio"


def parse(data: Path, split: str = "train", **kwargs):
    return LLFFDataParserConfig(data=data, **kwargs).setup().get_dataparser_outputs(split)


def parse_template(data: Path, split: str = "train", **kwargs):
    """Parse the shared template with factors whose folders exist (images_4/, images/), so that nothing is built."""
    kwargs.setdefault("downscale_factor", 4)
    kwargs.setdefault("sr_scale", 4)
    return parse(data, split, **kwargs)


def transformed_points(outputs, points: np.ndarray) -> torch.Tensor:
    """World points -> the dataparser's coordinates (the same map as applied to the camera poses)."""
    transform = outputs.dataparser_transform.double()
    pts = torch.from_numpy(points).double()
    return (pts @ transform[:, :3].T + transform[:, 3]) * outputs.dataparser_scale


def project(cameras, i: int, points: torch.Tensor) -> torch.Tensor:
    """Project through a nerfstudio (OpenGL) camera: continuous pixel coordinates (u, v)."""
    c2w = cameras.camera_to_worlds[i].double()
    cam = (points - c2w[:, 3]) @ c2w[:, :3]
    depth = -cam[:, 2]
    u = cameras.cx[i].double() + cameras.fx[i].double() * cam[:, 0] / depth
    v = cameras.cy[i].double() - cameras.fy[i].double() * cam[:, 1] / depth
    return torch.stack([u, v], -1)


def sizes(cameras) -> set:
    """The distinct (width, height) of a Cameras batch."""
    return set(zip(cameras.width.flatten().tolist(), cameras.height.flatten().tolist(), strict=True))


def folder_digest(folder: Path) -> Dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ----------------------------------------------------------------------------------------------------------------
# geometry: a known world point lands on the right pixel


@pytest.mark.parametrize("split, factor", [("train", 4), ("test", 1)])
def test_world_point_projects_to_its_pixel(scene_template, split, factor):
    """Markers at known world points, through the parsed cameras: analytic projection and the dot in the image."""
    gt = load_scene(scene_template)
    out = parse_template(scene_template, split, downscale_factor=4, sr_scale=4)
    cams = out.cameras
    assert int(cams.width[0]) == HR_SIZE[0] // factor and int(cams.height[0]) == HR_SIZE[1] // factor
    points = transformed_points(out, gt.markers)
    checked = 0
    for i, view in enumerate(out.metadata["image_indices"].tolist()):
        uv = project(cams, i, points).numpy()
        expected = gt.project(gt.markers, view, factor)
        np.testing.assert_allclose(uv, expected, atol=2e-3)  # parsed camera == generator's camera, all markers

        # nerfstudio's own ray generation: the ray through that pixel passes through the point
        rays = cams.generate_rays(camera_indices=i, coords=torch.from_numpy(uv[:, ::-1].copy()).float())
        to_point = points.float() - rays.origins
        along = (to_point * rays.directions).sum(-1, keepdim=True)
        assert torch.all(along > 0)
        miss = torch.linalg.norm(to_point - along * rays.directions, dim=-1) / torch.linalg.norm(to_point, dim=-1)
        assert float(miss.max()) < 1e-4

        # and the image file of that camera shows the dot where the camera says
        image = load(out.image_filenames[i])
        visible = gt.marker_visible(view)
        sigma = gt.marker_sigma_px(view, factor)
        for m in np.nonzero(visible)[0]:
            found = measure_marker(image, uv[m], radius=3 * sigma[m])
            assert np.linalg.norm(found - uv[m]) < 0.35, (split, view, m, found, uv[m])
            checked += 1
    assert checked >= 2 * len(out.image_filenames)


@pytest.mark.parametrize("orientation, center", [("up", "poses"), ("pca", "focus"), ("vertical", "none")])
def test_transform_shared_by_splits_and_matches_nerfstudio_convention(scene_template, orientation, center):
    gt = load_scene(scene_template)
    options = {"orientation_method": orientation, "center_method": center}
    train = parse_template(scene_template, "train", **options)
    test = parse_template(scene_template, "test", **options)
    assert torch.equal(train.dataparser_transform, test.dataparser_transform)
    assert train.dataparser_scale == test.dataparser_scale
    # scaled so that the largest |camera coordinate| over all views is 1
    all_c2w = torch.cat([train.cameras.camera_to_worlds, test.cameras.camera_to_worlds])
    assert float(all_c2w[:, :, 3].abs().max()) == pytest.approx(1.0, abs=1e-5)
    # back to the original world: exactly the generator's OpenGL camera-to-worlds
    for out in (train, test):
        original = out.transform_poses_to_original_space(out.cameras.camera_to_worlds, camera_convention="opengl")
        expected = gt.c2w[out.metadata["image_indices"].numpy(), :3, :4]
        np.testing.assert_allclose(original.numpy(), expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    # near/far: the bounds with the same scale
    bounds = gt.bounds * train.dataparser_scale
    assert train.metadata["near"] == pytest.approx(bounds[:, 0].min(), rel=1e-5)
    assert train.metadata["far"] == pytest.approx(bounds[:, 1].max(), rel=1e-5)
    np.testing.assert_allclose(train.metadata["bounds"].numpy(), bounds[train.metadata["image_indices"]], rtol=1e-5)


def test_scale_factor_and_scene_box(scene_template):
    base = parse_template(scene_template, "train")
    out = parse_template(scene_template, "train", scale_factor=2.0, scene_scale=3.0)
    assert out.dataparser_scale == pytest.approx(2 * base.dataparser_scale)
    torch.testing.assert_close(out.cameras.camera_to_worlds[:, :, 3], 2 * base.cameras.camera_to_worlds[:, :, 3])
    assert out.metadata["near"] == pytest.approx(2 * base.metadata["near"])
    assert out.scene_box.aabb.tolist() == [[-3.0] * 3, [3.0] * 3]
    fixed = parse_template(
        scene_template, "train", orientation_method="none", center_method="none", auto_scale_poses=False
    )
    assert fixed.dataparser_scale == 1.0
    torch.testing.assert_close(fixed.dataparser_transform, torch.eye(4)[:3])


# ----------------------------------------------------------------------------------------------------------------
# splits, resolutions, intrinsics


def test_split_indices():
    assert split_indices(20, 8, "test").tolist() == [0, 8, 16]
    assert split_indices(20, 8, "val").tolist() == [0, 8, 16]
    assert split_indices(20, 8, "train").tolist() == [i for i in range(20) if i not in (0, 8, 16)]
    assert split_indices(10, 3, "test").tolist() == [0, 3, 6, 9]
    assert split_indices(10, 0, "train").tolist() == list(range(10))
    assert split_indices(10, 0, "test").tolist() == list(range(10))
    with pytest.raises(ValueError):
        split_indices(10, 8, "everything")


@pytest.mark.parametrize("llffhold, eval_views", [(8, [0, 8]), (3, [0, 3, 6, 9]), (0, list(range(N_VIEWS)))])
def test_splits_through_parser(scene_template, llffhold, eval_views):
    train = parse_template(scene_template, "train", llffhold=llffhold)
    test = parse_template(scene_template, "test", llffhold=llffhold)
    val = parse_template(scene_template, "val", llffhold=llffhold)
    train_views = list(range(N_VIEWS)) if llffhold == 0 else [v for v in range(N_VIEWS) if v not in eval_views]
    assert train.metadata["image_indices"].tolist() == train_views
    assert test.metadata["image_indices"].tolist() == eval_views == val.metadata["image_indices"].tolist()
    assert len(train.image_filenames) == train.cameras.shape[0] == len(train_views)
    assert len(test.image_filenames) == test.cameras.shape[0] == len(eval_views)
    # the k-th view is the k-th file of each folder, whatever the names
    assert [p.name for p in train.image_filenames] == [f"image{v:03d}.png" for v in train_views]
    assert [p.name for p in test.image_filenames] == [f"img_{v:03d}.png" for v in eval_views]
    assert train.metadata["llffhold"] == llffhold


def test_llffhold_one_leaves_no_train_view(scene_template):
    with pytest.raises(LLFFDataError, match="train split .* is empty"):
        parse_template(scene_template, "train", llffhold=1)


@pytest.mark.parametrize("downscale, sr_scale", [(4, 4), (4, 2), (4, 1), (8, 4), (8, 2), (8, 8)])
def test_eval_is_sr_scale_times_train(scene, user_cache, downscale, sr_scale):
    train = parse(scene, "train", downscale_factor=downscale, sr_scale=sr_scale)
    test = parse(scene, "test", downscale_factor=downscale, sr_scale=sr_scale)
    tw, th = HR_SIZE[0] // downscale, HR_SIZE[1] // downscale
    assert sizes(train.cameras) == {(tw, th)}
    assert sizes(test.cameras) == {(tw * sr_scale, th * sr_scale)}
    gt = load_scene(scene)
    torch.testing.assert_close(train.cameras.fx, torch.full_like(train.cameras.fx, gt.focal / downscale))
    torch.testing.assert_close(test.cameras.fx, torch.full_like(test.cameras.fx, gt.focal * sr_scale / downscale))
    torch.testing.assert_close(test.cameras.fy, test.cameras.fx)
    torch.testing.assert_close(test.cameras.cx, torch.full_like(test.cameras.cx, tw * sr_scale / 2))
    torch.testing.assert_close(test.cameras.cy, torch.full_like(test.cameras.cy, th * sr_scale / 2))
    for out in (train, test):  # the images have the size of their cameras
        for i, path in enumerate(out.image_filenames):
            assert Image.open(path).size == (int(out.cameras.width[i]), int(out.cameras.height[i]))
    for out in (train, test):
        meta = out.metadata
        assert meta["sr_scale"] == sr_scale and meta["downscale_factor"] == downscale
        assert meta["train_image_size"] == (th, tw)
        assert meta["hr_image_size"] == (th * sr_scale, tw * sr_scale)
        assert meta["full_image_size"] == (HR_SIZE[1], HR_SIZE[0])
    assert train.metadata["image_factor"] == downscale and test.metadata["image_factor"] == downscale // sr_scale
    # the helper that renders train cameras at the HR size
    hr = sr_cameras(train.cameras, sr_scale)
    assert sizes(hr) == {(tw * sr_scale, th * sr_scale)}
    torch.testing.assert_close(hr.fx, train.cameras.fx * sr_scale)
    torch.testing.assert_close(hr.cx, torch.full_like(hr.cx, tw * sr_scale / 2))
    assert int(train.cameras.width[0]) == tw  # the original is untouched
    assert not user_cache.exists()  # the scene folder is writable: nothing goes to the user cache


# ----------------------------------------------------------------------------------------------------------------
# the HR/LR cache


def test_missing_folders_are_built_by_area_downsampling_and_reused(scene, user_cache, monkeypatch):
    originals = {name: folder_digest(scene / name) for name in ("images", "images_4")}
    train = parse(scene, "train", downscale_factor=8, sr_scale=4)  # images_8 from images_4
    test = parse(scene, "test", downscale_factor=8, sr_scale=4)  # images_2 from images
    assert train.image_filenames[0].parent == scene / "images_8"
    assert test.image_filenames[0].parent == scene / "images_2"
    # same file names as the source, same order
    assert [p.name for p in image_io.list_images(scene / "images_8")] == [f"image{v:03d}.png" for v in range(10)]
    assert [p.name for p in image_io.list_images(scene / "images_2")] == [f"img_{v:03d}.png" for v in range(10)]
    # box filter of the source (PIL rounds; <= 0.5 level from the exact mean)
    for name, source, target in (("image003.png", "images_4", "images_8"), ("img_008.png", "images", "images_2")):
        exact = image_io.area_downsample_array(load(scene / source / name), 2)
        assert np.abs(load(scene / target / name) - exact).max() <= 0.5 + 1e-9
    assert {name: folder_digest(scene / name) for name in ("images", "images_4")} == originals
    assert not user_cache.exists()

    # a second parse reuses the caches (no rebuild)
    def no_build(*args, **kwargs):
        raise AssertionError("cache rebuilt although valid")

    monkeypatch.setattr(image_io, "build_downsampled_folder", no_build)
    again = parse(scene, "test", downscale_factor=8, sr_scale=4)
    assert again.image_filenames == test.image_filenames
    parse(scene, "train", downscale_factor=8, sr_scale=4)


def test_missing_train_folder_built_from_images(scene, user_cache):
    reference = {p.name: load(p) for p in image_io.list_images(scene / "images_4")}
    shutil.rmtree(scene / "images_4")
    out = parse(scene, "train", downscale_factor=4, sr_scale=4)
    assert [p.name for p in out.image_filenames] == [f"img_{v:03d}.png" for v in (1, 2, 3, 4, 5, 6, 7, 9)]
    assert (scene / "images_4" / image_io.CACHE_MANIFEST).exists()
    for i, path in enumerate(out.image_filenames):  # the generator's own ×4 area downsample, up to rounding
        view = int(out.metadata["image_indices"][i])
        diff = np.abs(load(path).astype(int) - reference[f"image{view:03d}.png"].astype(int))
        assert diff.max() <= 1


@pytest.mark.parametrize("damage", ["delete_file", "wrong_size", "source_changed", "junk_manifest"])
def test_stale_cache_is_rebuilt(scene, user_cache, damage):
    parse(scene, "test", downscale_factor=8, sr_scale=4)
    cache = scene / "images_2"
    if damage == "delete_file":
        (cache / "img_003.png").unlink()
    elif damage == "wrong_size":
        Image.new("RGB", (10, 10)).save(cache / "img_003.png")
    elif damage == "source_changed":
        source = scene / "images" / "img_000.png"
        Image.fromarray(255 - load(source)).save(source)
    else:
        (cache / image_io.CACHE_MANIFEST).write_text("{not json")
    out = parse(scene, "test", downscale_factor=8, sr_scale=4)
    files = image_io.list_images(cache)
    assert len(files) == N_VIEWS
    assert all(Image.open(p).size == (128, 96) for p in files)
    assert image_io.cache_problem(cache, factor=2, num_images=N_VIEWS, expected_hw=(96, 128)) is None
    if damage == "source_changed":
        exact = image_io.area_downsample_array(load(scene / "images" / "img_000.png"), 2)
        assert np.abs(load(out.image_filenames[0]) - exact).max() <= 0.5 + 1e-9
    assert not list(scene.glob(".images_2*"))  # no temporary or stale folders left behind


def test_read_only_data_folder_falls_back_to_user_cache(scene, user_cache, monkeypatch):
    logged = []
    monkeypatch.setattr(image_io.CONSOLE, "log", lambda *args, **kwargs: logged.append(" ".join(map(str, args))))
    before = sorted(p.name for p in scene.iterdir())
    scene.chmod(0o555)
    try:
        assert not image_io.dir_is_writable(scene)  # also for root: no write bit means read-only
        test = parse(scene, "test", downscale_factor=8, sr_scale=4)
        train = parse(scene, "train", downscale_factor=8, sr_scale=4)
        assert any(f"Data folder {scene} is not writable" in line for line in logged)
        target = image_io.user_cache_dir(scene)
        assert target.parent == user_cache and len(target.name) == 16
        assert test.image_filenames[0].parent == target / "images_2"
        assert train.image_filenames[0].parent == target / "images_8"
        assert sorted(p.name for p in scene.iterdir()) == before
        assert int(test.cameras.width[0]) == 128 and int(train.cameras.width[0]) == 32

        monkeypatch.setattr(image_io, "build_downsampled_folder", lambda *a, **k: pytest.fail("rebuilt"))
        assert parse(scene, "test", downscale_factor=8, sr_scale=4).image_filenames == test.image_filenames
    finally:
        scene.chmod(0o755)


# ----------------------------------------------------------------------------------------------------------------
# bad input -> LLFFDataError naming the file


def test_missing_data_folder(tmp_path):
    with pytest.raises(LLFFDataError, match="does not exist"):
        parse(tmp_path / "nowhere")


def test_missing_poses_bounds(scene):
    (scene / "poses_bounds.npy").unlink()
    with pytest.raises(LLFFDataError, match=r"poses_bounds\.npy is missing") as err:
        parse(scene)
    assert str(scene) in str(err.value) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("shape", [(N_VIEWS, 15), (N_VIEWS, 3, 5), (0, 17)])
def test_wrong_pose_array_shape(scene, shape):
    np.save(scene / "poses_bounds.npy", np.zeros(shape))
    with pytest.raises(LLFFDataError, match=r"poses_bounds\.npy has shape .*expected \(N, 17\)"):
        parse(scene)


def test_bad_hwf_or_bounds(scene):
    array = np.load(scene / "poses_bounds.npy")
    bad = array.copy()
    bad[:, 15] = -1.0
    np.save(scene / "poses_bounds.npy", bad)
    with pytest.raises(LLFFDataError, match="near/far"):
        parse(scene)
    bad = array.copy()
    bad[3, 4] = 100.0  # H of one view differs
    np.save(scene / "poses_bounds.npy", bad)
    with pytest.raises(LLFFDataError, match=r"\(H, W, f\)"):
        parse(scene)


def test_image_count_differs_from_rows(scene):
    (scene / "images_4" / "image004.png").unlink()
    with pytest.raises(LLFFDataError) as err:
        parse(scene, downscale_factor=4, sr_scale=4)
    message = str(err.value)
    assert "images_4" in message and " 9 images" in message and "10 rows" in message


def test_missing_image_folder_lists_existing(scene):
    shutil.rmtree(scene / "images")
    with pytest.raises(LLFFDataError) as err:
        parse(scene, "train", downscale_factor=2, sr_scale=1)
    message = str(err.value)
    assert "images_2" in message and "images_4/" in message and "does not exist" in message


def test_unreadable_image(scene):
    (scene / "images_4" / "image002.png").write_bytes(b"this is not an image")
    with pytest.raises(LLFFDataError, match="image002.png"):
        parse(scene, "train", downscale_factor=4, sr_scale=4)


def test_truncated_image(scene):
    path = scene / "images" / "img_008.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    parse(scene, "train", downscale_factor=4, sr_scale=4)  # not a train view
    with pytest.raises(LLFFDataError, match="img_008.png"):
        parse(scene, "test", downscale_factor=4, sr_scale=4)


def test_unreadable_source_while_building_cache(scene, user_cache):
    (scene / "images" / "img_005.png").write_bytes(b"garbage")
    with pytest.raises(LLFFDataError, match="img_005.png"):
        parse(scene, "test", downscale_factor=8, sr_scale=4)
    assert not (scene / "images_2").exists() and not list(scene.glob(".images_2*"))


def test_size_not_divisible_by_factor(scene):
    with pytest.raises(LLFFDataError, match="not divisible by the factor 3"):
        parse(scene, downscale_factor=3, sr_scale=3)


def test_folder_size_inconsistent_with_hwf(scene):
    Image.open(scene / "images_4" / "image006.png").resize((63, 48)).save(scene / "images_4" / "image006.png")
    with pytest.raises(LLFFDataError, match=r"image006\.png is 63x48 .* but 64x48 was expected"):
        parse(scene, downscale_factor=4, sr_scale=4)
    # hwf that does not match the images at all
    shutil.copy(scene / "images_4" / "image005.png", scene / "images_4" / "image006.png")
    array = np.load(scene / "poses_bounds.npy")
    array[:, 4], array[:, 9] = 2 * array[:, 4], 2 * array[:, 9]  # claims 512x384 originals
    np.save(scene / "poses_bounds.npy", array)
    with pytest.raises(LLFFDataError, match="128x96 was expected"):
        parse(scene, downscale_factor=4, sr_scale=4)


@pytest.mark.parametrize("downscale, sr_scale, hint", [(4, 8, "factor 0.5"), (8, 3, "not an integer")])
def test_no_hr_source_for_eval_scale(scene, downscale, sr_scale, hint):
    for split in ("train", "test"):
        with pytest.raises(LLFFDataError, match=hint):
            parse(scene, split, downscale_factor=downscale, sr_scale=sr_scale)


def test_bad_options(scene):
    with pytest.raises(LLFFDataError, match="llffhold"):
        parse(scene, llffhold=-1)
    with pytest.raises(LLFFDataError, match="downscale_factor"):
        parse(scene, downscale_factor=0)
    with pytest.raises(ValueError, match="split"):
        parse(scene, "everything")


def test_module_imports_are_light():
    """The dataparser module (and its image helpers) import only nerfstudio, torch, numpy, PIL and their deps."""
    stdlib = {
        "__future__",
        "concurrent",
        "contextlib",
        "copy",
        "dataclasses",
        "hashlib",
        "json",
        "numbers",
        "os",
        "pathlib",
        "re",
        "shutil",
        "tempfile",
        "typing",
        "uuid",
    }
    allowed = stdlib | {"numpy", "torch", "PIL", "nerfstudio", "jaxtyping", "rich", "vsdsr_nerfstudio"}
    package = Path(image_io.__file__).parent
    for name in ("llff_dataparser.py", "image_io.py"):
        tree = ast.parse((package / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
                if node.module and node.module.startswith("vsdsr_nerfstudio"):
                    assert node.module == "vsdsr_nerfstudio.data.image_io", node.module
            else:
                continue
            assert roots <= allowed, (name, roots - allowed)


def test_registered_entry_point():
    from importlib.metadata import entry_points

    from vsdsr_nerfstudio.data.llff_dataparser import LLFFDataParser, llff_dataparser

    assert isinstance(llff_dataparser.config, LLFFDataParserConfig)
    assert llff_dataparser.config._target is LLFFDataParser
    points = entry_points(group="nerfstudio.dataparser_configs")
    if "llff-data" in points.names:  # the package is installed (editable)
        assert points["llff-data"].value == "vsdsr_nerfstudio.data.llff_dataparser:llff_dataparser"


# ----------------------------------------------------------------------------------------------------------------
# the real fern scene (read-only shared data)

needs_fern = pytest.mark.skipif(not (FERN / "poses_bounds.npy").exists(), reason=f"fern scene not found at {FERN}")


@needs_fern
def test_fern_train_and_x2_eval(user_cache):
    """downscale 8 (images_8, 504x378); sr_scale 2 evaluates on the existing images_4 (1008x756): no big JPEGs."""
    raw = np.load(FERN / "poses_bounds.npy")
    f_full = raw[:, 14]
    train = parse(FERN, "train", downscale_factor=8, sr_scale=2)
    test = parse(FERN, "test", downscale_factor=8, sr_scale=2)
    assert train.cameras.shape[0] == 17 and sizes(train.cameras) == {(504, 378)}
    assert test.metadata["image_indices"].tolist() == [0, 8, 16]
    assert [p.name for p in test.image_filenames] == ["image000.png", "image008.png", "image016.png"]
    assert all(p.parent.name == "images_4" for p in test.image_filenames)
    assert sizes(test.cameras) == {(1008, 756)}
    train_views = train.metadata["image_indices"].numpy()
    np.testing.assert_allclose(train.cameras.fx.flatten().numpy(), f_full[train_views] / 8, rtol=1e-6)
    np.testing.assert_allclose(test.cameras.fx.flatten().numpy(), f_full[[0, 8, 16]] / 4, rtol=1e-6)
    assert float(train.cameras.cx[0]) == 252.0 and float(train.cameras.cy[0]) == 189.0
    assert test.metadata["hr_image_size"] == (756, 1008) and train.metadata["train_image_size"] == (378, 504)
    assert not user_cache.exists()


@needs_fern
def test_fern_pose_convention():
    raw = np.load(FERN / "poses_bounds.npy")
    out = parse(FERN, "train", downscale_factor=8, sr_scale=2, llffhold=0)
    c2w = out.cameras.camera_to_worlds
    # forward-facing: every camera looks (-z) along the mean viewing direction
    forward = -c2w[:, :, 2]
    mean = forward.mean(0) / forward.mean(0).norm()
    assert float((forward @ mean).min()) > 0.95
    # orientation "up": the mean camera up (+y) is world +z
    up = c2w[:, :, 1].mean(0)
    assert float(up[2] / up.norm()) > 0.999
    # back in the original frame the columns are [right, -down, back, centre] of the LLFF matrix
    poses = raw[:, :15].reshape(-1, 3, 5)
    original = out.transform_poses_to_original_space(c2w, camera_convention="opengl").numpy()
    expected = np.stack([poses[:, :, 1], -poses[:, :, 0], poses[:, :, 2], poses[:, :, 3]], -1)
    np.testing.assert_allclose(original, expected, atol=1e-4 * np.abs(expected).max())
    # the COLMAP points (same world frame) are in front of the cameras, inside the images and within near/far
    points_file = FERN / "sparse" / "0" / "points3D.bin"
    if points_file.exists():
        from nerfstudio.data.utils.colmap_parsing_utils import read_points3D_binary

        xyz = np.array([p.xyz for p in read_points3D_binary(points_file).values()])
        points = transformed_points(out, xyz)
        for i in (0, 10, 19):
            uv = project(out.cameras, i, points)
            cam = (points - c2w[i, :, 3].double()) @ c2w[i, :, :3].double()
            depth = -cam[:, 2]
            inside = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 504) & (uv[:, 1] >= 0) & (uv[:, 1] < 378)
            assert float(inside.double().mean()) > 0.9
            near, far = out.metadata["bounds"][i].tolist()
            assert float(((depth > 0.5 * near) & (depth < 1.5 * far)).double().mean()) > 0.99


@needs_fern
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("VSDSR_TEST_FERN_FULL") != "1",
    reason="decodes the twenty 4032x3024 JPEGs (4-15 s); set VSDSR_TEST_FERN_FULL=1 to run",
)
def test_fern_standard_x4_protocol_uses_user_cache(user_cache):
    """downscale 8 / sr_scale 4: eval views 0, 8, 16 at 2016x1512 made from images/ into the user cache."""
    if image_io.dir_is_writable(FERN):
        pytest.skip(f"{FERN} is writable here; not writing a cache into the shared data")
    before = sorted(p.name for p in FERN.iterdir())
    test = parse(FERN, "test")
    assert test.metadata["image_indices"].tolist() == [0, 8, 16]
    assert sizes(test.cameras) == {(2016, 1512)}
    assert [p.name for p in test.image_filenames] == ["IMG_4026.png", "IMG_4034.png", "IMG_4042.png"]
    assert test.image_filenames[0].parent == image_io.user_cache_dir(FERN) / "images_2"
    assert sorted(p.name for p in FERN.iterdir()) == before
    # consistent with the shipped images_4 (the README: area downsamples agree to about 50 dB)
    ours = image_io.area_downsample_array(load(test.image_filenames[1]), 2)
    shipped = load(FERN / "images_4" / "image008.png").astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean((ours - shipped) ** 2))
    assert psnr > 40
    assert os.access(test.image_filenames[0], os.R_OK)


def test_wrong_size_original_is_not_answered_with_rebuild_advice(scene):
    """images/ holds the photos themselves: nothing can rebuild them by area downsampling."""
    shutil.rmtree(scene / "images_4")  # so that the test split reads images/ directly, and images_4 is not built
    Image.open(scene / "images" / "img_004.png").resize((255, 192)).save(scene / "images" / "img_004.png")
    before = {name: folder_digest(scene / name) for name in ("images",)}
    with pytest.raises(LLFFDataError) as info:
        parse(scene, "test", downscale_factor=4, sr_scale=4)
    message = str(info.value)
    assert "img_004.png is 255x192" in message and "original photos" in message
    assert "cannot be rebuilt" in message and "rebuilt by area downsampling" not in message
    assert {name: folder_digest(scene / name) for name in ("images",)} == before
    assert sorted(p.name for p in scene.iterdir()) == ["images", "poses_bounds.npy", "synthetic_gt.npz"]


def test_missing_original_is_not_answered_with_rebuild_advice(scene):
    (scene / "images" / "img_004.png").unlink()
    with pytest.raises(LLFFDataError) as info:
        parse(scene, "test", downscale_factor=4, sr_scale=4)
    assert "holds 9 images" in str(info.value) and "rebuilt" not in str(info.value)


def test_built_cache_folders_follow_the_umask(scene):
    old = os.umask(0o022)
    try:
        parse(scene, "train", downscale_factor=8, sr_scale=4)  # builds images_8/
        parse(scene, "test", downscale_factor=8, sr_scale=4)  # builds images_2/
    finally:
        os.umask(old)
    for name in ("images_8", "images_2"):
        assert stat.S_IMODE((scene / name).stat().st_mode) == 0o755, name
