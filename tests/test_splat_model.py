"""The Gaussian model's CPU pieces: pure-torch rasteriser against analytic footprints, Mip-Splatting's 3D filter
math, SfM points in the parser's world frame, and the model's forward/backward/densification on a CPU."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_llff import load_scene, make_llff_scene

from vsdsr_nerfstudio.models.gaussian_filters import (
    apply_3d_filter,
    capped_growth,
    filter_variance,
    max_sampling_rate,
)
from vsdsr_nerfstudio.models.torch_rasterizer import rasterization_torch

W, H, F = 40, 32, 30.0


def _camera():
    K = torch.tensor([[[F, 0.0, W / 2], [0.0, F, H / 2], [0.0, 0.0, 1.0]]])
    return torch.eye(4)[None], K


def _one_gaussian(x=0.0, y=0.0, z=5.0, s=0.4, o=0.8):
    return (
        torch.tensor([[x, y, z]]),
        torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        torch.full((1, 3), s),
        torch.tensor([o]),
    )


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_single_gaussian_matches_analytic_footprint(mode):
    means, quats, scales, opac = _one_gaussian()
    viewmat, K = _camera()
    color = torch.tensor([[0.2, 0.6, 1.0]])
    render, alpha, info = rasterization_torch(
        means, quats, scales, opac, color, viewmat, K, W, H, rasterize_mode=mode, eps2d=0.3
    )
    sigma2 = (F * 0.4 / 5.0) ** 2  # exact: at the optical axis the Jacobian is f / z
    var = sigma2 + 0.3
    o = 0.8 * (sigma2 / var if mode == "antialiased" else 1.0)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    expected = o * torch.exp(-0.5 * ((xs - W / 2) ** 2 + (ys - H / 2) ** 2) / var)
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    radius = math.ceil(3 * math.sqrt(var + math.sqrt(0.01)))  # gsplat's radius rule (isotropic case)
    assert int(info["radii"][0, 0]) == radius
    assert torch.allclose(alpha[0, ..., 0], expected, atol=1e-5)
    assert torch.allclose(render[0], expected[..., None] * color, atol=1e-5)
    assert torch.allclose(info["means2d"][0, 0], torch.tensor([W / 2, H / 2]))


def test_front_gaussian_occludes_back_one_and_depth_is_expected():
    front, back = _one_gaussian(z=4.0, s=1.0, o=0.99), _one_gaussian(z=8.0, s=2.0, o=0.99)
    means, quats, scales, opac = (torch.cat([b, f]) for f, b in zip(front, back, strict=True))  # back listed first
    colors = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    viewmat, K = _camera()
    render, alpha, _ = rasterization_torch(means, quats, scales, opac, colors, viewmat, K, W, H, render_mode="RGB+ED")
    centre = render[0, H // 2, W // 2]
    assert centre[0] > 0.98 and centre[2] < 0.02  # red (front) wins at the centre
    # expected depth: (a1 * 4 + (1 - a1) a2 * 8) / (a1 + (1 - a1) a2) with a1, a2 ~ 0.99: just above 4
    assert 4.0 < float(centre[3]) < 4.1
    # gradients flow to every input
    means.requires_grad_(True)
    r, _, info = rasterization_torch(means, quats, scales, opac, colors, viewmat, K, W, H)
    r.sum().backward()
    assert means.grad is not None and means.grad.abs().sum() > 0


def test_sh_degree_one_depends_on_view_direction():
    means, quats, scales, opac = _one_gaussian(x=1.0, s=0.6, o=0.99)  # off-axis: the view direction has x
    viewmat, K = _camera()
    sh = torch.zeros(1, 4, 3)
    sh[0, 3, 0] = 1.0  # degree-1 coefficient along x: red brightens/dims as the view direction's x changes
    shifted = viewmat.clone()
    shifted[0, 0, 3] = 1.0  # move the camera: the Gaussian is seen from another direction
    a, _, _ = rasterization_torch(means, quats, scales, opac, sh, viewmat, K, W, H, sh_degree=1)
    b, _, _ = rasterization_torch(means, quats, scales, opac, sh, shifted, K, W, H, sh_degree=1)
    assert abs(float(a[0, ..., 0].max()) - float(b[0, ..., 0].max())) > 1e-3
    dc, _, _ = rasterization_torch(means, quats, scales, opac, sh, viewmat, K, W, H, sh_degree=0)
    assert not torch.allclose(dc, a)


def test_3d_filter_math():
    # two cameras looking down +z from the origin, focal 100 and 400: the closer-sampling one bounds the filter
    viewmats = torch.eye(4).repeat(2, 1, 1)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -1.0]])  # the second is behind both cameras
    rate, seen = max_sampling_rate(
        means, viewmats, torch.tensor([100.0, 400.0]), torch.tensor([64.0, 64.0]), torch.tensor([48.0, 48.0])
    )
    assert seen.tolist() == [True, False]
    assert torch.allclose(rate, torch.tensor([200.0, 200.0]))  # unseen: the smallest seen rate
    var = filter_variance(rate, 0.2)
    assert torch.allclose(var, torch.tensor([0.2 / 200.0**2] * 2))
    scales = torch.tensor([[0.01, 0.02, 0.001], [1.0, 1.0, 1.0]])
    opac = torch.tensor([0.5, 0.5])
    new_scales, new_opac = apply_3d_filter(scales, opac, var)
    cov = torch.diag_embed(scales**2)
    cov_f = cov + var[:, None, None] * torch.eye(3)
    assert torch.allclose(new_scales**2, torch.diagonal(cov_f, dim1=-2, dim2=-1))
    assert torch.allclose(new_opac, opac * torch.sqrt(torch.det(cov) / torch.det(cov_f)))
    assert new_opac[1] > 0.4999 and new_opac[0] < 0.5  # a large Gaussian is untouched, a thin one fades
    assert capped_growth(90, 30, 100) == 10 and capped_growth(100, 5, 100) == 0 and capped_growth(5, 7, 0) == 7


def _write_points(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    from nerfstudio.data.utils.colmap_parsing_utils import Point3D, write_points3D_binary

    points = {
        i + 1: Point3D(id=i + 1, xyz=xyz[i], rgb=rgb[i], error=0.0, image_ids=np.array([1]), point2D_idxs=np.array([0]))
        for i in range(len(xyz))
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_points3D_binary(points, path)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_llff_scene(tmp_path_factory.mktemp("splat_scene"), n_views=6, hr_size=(64, 48), factors=(4, 1))


def test_sfm_points_are_in_the_parser_world_frame(scene):
    from vsdsr_nerfstudio.data.llff_dataparser import LLFFDataParserConfig

    gt = load_scene(scene)
    _write_points(scene / "sparse" / "0" / "points3D.bin", gt.markers, np.full((len(gt.markers), 3), 200, np.uint8))
    try:
        out = LLFFDataParserConfig(data=scene, downscale_factor=4, sr_scale=4, llffhold=0).setup()
        outputs = out.get_dataparser_outputs("train")
    finally:
        (scene / "sparse" / "0" / "points3D.bin").unlink()
    xyz = outputs.metadata["points3D_xyz"]
    assert xyz.shape == (len(gt.markers), 3) and outputs.metadata["points3D_rgb"].dtype == torch.uint8
    cams = outputs.cameras
    for view in range(len(cams)):
        # projection with the parser's camera of the parser-frame point ...
        c2w = cams.camera_to_worlds[view]
        local = (xyz - c2w[:, 3]) @ c2w[:, :3]  # OpenGL camera coordinates
        u = cams.cx[view] + cams.fx[view] * local[:, 0] / -local[:, 2]
        v = cams.cy[view] - cams.fy[view] * local[:, 1] / -local[:, 2]
        # ... equals the projection with the ground-truth camera of the original point (original LLFF frame)
        g = gt.c2w[view]
        lg = (gt.markers - g[:3, 3]) @ g[:3, :3]
        f = gt.focal * int(cams.width[view]) / gt.width
        u_gt = cams.cx[view].item() + f * lg[:, 0] / -lg[:, 2]
        v_gt = cams.cy[view].item() - f * lg[:, 1] / -lg[:, 2]
        assert np.allclose(u.numpy(), u_gt, atol=1e-3) and np.allclose(v.numpy(), v_gt, atol=1e-3)


def test_no_sparse_folder_means_no_points(scene):
    from vsdsr_nerfstudio.data.llff_dataparser import LLFFDataParserConfig

    outputs = LLFFDataParserConfig(data=scene, downscale_factor=4, sr_scale=4).setup().get_dataparser_outputs()
    assert "points3D_xyz" not in outputs.metadata


def _model(seed_points=None, **overrides):
    from nerfstudio.data.scene_box import SceneBox

    from vsdsr_nerfstudio.models.splatfacto import VsdSrSplatModelConfig

    torch.manual_seed(0)
    config = VsdSrSplatModelConfig(num_random=200, random_scale=2.0, sh_degree=1, **overrides)
    box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    return config.setup(scene_box=box, num_train_data=2, metadata={}, seed_points=seed_points)


def _cameras(width=24, height=16):
    from nerfstudio.cameras.cameras import Cameras

    c2w = torch.eye(4)[None, :3, :4].repeat(2, 1, 1)
    c2w[:, 2, 3] = 3.0  # looking down -z at the origin
    c2w[1, 0, 3] = 0.2
    return Cameras(camera_to_worlds=c2w, fx=20.0, fy=20.0, cx=width / 2, cy=height / 2, width=width, height=height)


def test_model_seeded_and_random_init_render_on_cpu():
    xyz = torch.randn(50, 3) * 0.3
    rgb = torch.randint(0, 256, (50, 3), dtype=torch.uint8)
    seeded = _model(seed_points=(xyz, rgb))
    assert seeded.num_points == 50 and torch.allclose(seeded.means.data, xyz)
    assert torch.allclose(seeded.colors, rgb.float() / 255, atol=1e-5)
    random = _model()
    assert random.num_points == 200
    random.eval()
    out = random.get_outputs_for_camera(_cameras()[0:1])
    assert out["rgb"].shape == (16, 24, 3) and out["depth"].shape == (16, 24, 1)
    assert 0 <= float(out["rgb"].min()) and float(out["rgb"].max()) <= 1
    # the 3D filter: computed from cameras, and it changes the render
    random.update_3d_filter(_cameras())
    assert random.filter_3d_variance.shape == (200,) and float(random.filter_3d_variance.min()) > 0
    hr = random.render_camera_rgb(_cameras(96, 64)[0:1])
    assert hr.shape == (64, 96, 3)


def test_model_trains_a_step_and_densifies_under_a_cap():
    model = _model(max_gaussians=230, warmup_length=0, refine_every=2, densify_grad_thresh=0.0)
    model.train()
    params = model.get_param_groups()
    optimizers = {k: torch.optim.Adam(v, lr=1e-3) for k, v in params.items() if k in model.gauss_params}
    model.optimizers = optimizers
    model.strategy_state["grad2d"] = None
    cams = _cameras()
    target = torch.rand(16, 24, 3)
    for step in range(1, 7):  # refinement at step 6 (after the pause that follows the step-0 opacity reset)
        model.step = step
        out = model.get_outputs(cams[step % 2 : step % 2 + 1])
        loss = model.get_loss_dict(out, {"image": target})["main_loss"]
        loss.backward()
        model.step_post_backward(step)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad()
    assert 200 < model.num_points <= 230  # grew (threshold 0), and stopped at the cap


def test_cuda_rasterizer_without_cuda_is_a_clear_error():
    from vsdsr_nerfstudio.models.splatfacto import GsplatCudaError, VsdSrSplatModelConfig

    with pytest.raises(GsplatCudaError, match="rasterizer"):
        VsdSrSplatModelConfig(rasterizer="cuda").check_runtime("cpu")
    VsdSrSplatModelConfig(rasterizer="auto").check_runtime("cpu")  # auto falls back to torch: no error


def test_resume_repoints_the_optimizers_at_the_loaded_gaussians():
    """Splatfacto's load_state_dict replaces its parameters (resized to the checkpoint's count) after nerfstudio
    built the optimizers on the old ones; SRTrainer re-points them, moving the loaded Adam state along, so a resumed
    run trains (and densifies) the Gaussians the model renders."""
    from nerfstudio.engine.optimizers import Optimizers

    from vsdsr_nerfstudio.method_configs.vsd_sr_splat import splat_optimizers
    from vsdsr_nerfstudio.pipeline.trainer import repoint_optimizers

    saved = _model()
    checkpoint = {k: v[:150].clone() if k.startswith("gauss_params.") else v for k, v in saved.state_dict().items()}
    fresh = _model()  # a resumed run: the model and its optimizers are built before the checkpoint is loaded
    optimizers = Optimizers(splat_optimizers(100), fresh.get_param_groups())
    fresh.load_state_dict(checkpoint)
    groups = fresh.get_param_groups()
    assert optimizers.optimizers["means"].param_groups[0]["params"][0] is not groups["means"][0]  # the defect
    assert repoint_optimizers(optimizers, groups) == len(groups)
    for name, optimizer in optimizers.optimizers.items():
        assert optimizer.param_groups[0]["params"][0] is groups[name][0]
    before = fresh.means.detach().clone()
    fresh.means.sum().backward()
    optimizers.optimizers["means"].step()
    assert fresh.means.shape[0] == 150 and not torch.equal(fresh.means.detach(), before)
    assert repoint_optimizers(optimizers, fresh.get_param_groups()) == 0  # nothing left to move
