"""Pure-tensor tests of sr/core/objectives.py and sr/core/schedules.py (no diffusers, no nerfstudio)."""

import math

import pytest
import torch

from vsdsr_nerfstudio.sr.core import objectives as obj
from vsdsr_nerfstudio.sr.core import schedules


def _scaled_linear_alphas_cumprod(T: int = 1000) -> torch.Tensor:
    """The x4 upscaler's training schedule (scaled_linear beta 1e-4 .. 0.02)."""
    betas = torch.linspace(1e-4**0.5, 0.02**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


ABAR = _scaled_linear_alphas_cumprod()


def _setup(seed=0, B=3, C=4, h=6, w=5):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, C, h, w, generator=g)
    eps = torch.randn(B, C, h, w, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    a, s = obj.schedule_coefficients(ABAR, t)
    return x0, eps, t, a, s


def test_schedule_coefficients_values():
    a, s = obj.schedule_coefficients(ABAR, torch.tensor([500, 980, -1]))
    assert a.shape == (3, 1, 1, 1)
    assert torch.allclose(a**2 + s**2, torch.ones_like(a))
    assert abs(a[0].item() ** 2 - 0.331) < 2e-3  # method.md §1: abar_500 ~ 0.331
    assert abs(a[1].item() ** 2 - 1.07e-3) < 5e-5  # abar_980 ~ 1.07e-3
    assert a[2].item() == 1.0 and s[2].item() == 0.0  # t = -1 is clean
    with pytest.raises(ValueError):
        obj.schedule_coefficients(ABAR, torch.tensor([1000]))
    w = obj.vsd_weight(ABAR, torch.tensor([500]))
    assert torch.allclose(w.flatten(), 1 - ABAR[500:501])


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_conversions_recover_truth_and_round_trip(prediction_type):
    x0, eps, t, a, s = _setup()
    z_t = obj.q_sample(x0, eps, a, s)
    target = obj.training_target(x0, eps, a, s, prediction_type)
    # a perfect denoiser's output converts back to the true eps and x0
    assert torch.allclose(obj.pred_to_eps(target, z_t, a, s, prediction_type), eps, atol=1e-4)
    assert torch.allclose(obj.pred_to_x0(target, z_t, a, s, prediction_type), x0, atol=2e-3)
    # inverses
    assert torch.allclose(obj.eps_to_pred(eps, z_t, a, s, prediction_type), target, atol=2e-3)
    assert torch.allclose(obj.x0_to_pred(x0, z_t, a, s, prediction_type), target, atol=1e-3)
    pred = torch.randn_like(x0)
    e = obj.pred_to_eps(pred, z_t, a, s, prediction_type)
    assert torch.allclose(obj.eps_to_pred(e, z_t, a, s, prediction_type), pred, atol=2e-3)


def test_v_formulas_explicit():
    x0, eps, t, a, s = _setup()
    z_t = a * x0 + s * eps
    v = a * eps - s * x0
    assert torch.allclose(obj.v_target(x0, eps, a, s), v)
    assert torch.allclose(obj.training_target(x0, eps, a, s, "epsilon"), eps)  # eps-model: never a v target
    vh = torch.randn_like(v)
    assert torch.allclose(obj.pred_to_eps(vh, z_t, a, s, "v_prediction"), a * vh + s * z_t)
    assert torch.allclose(obj.pred_to_x0(vh, z_t, a, s, "v_prediction"), a * z_t - s * vh)


def test_conversions_refuse_the_unet_input_with_lr_channels():
    """Defect §2.6.2: threestudio converted v->eps with the 7-channel UNet input. We refuse it."""
    x0, eps, t, a, s = _setup()
    z_t = obj.q_sample(x0, eps, a, s)
    unet_input = torch.cat([z_t, torch.rand(z_t.shape[0], 3, *z_t.shape[2:])], dim=1)
    v = torch.randn_like(z_t)
    for fn in (obj.pred_to_eps, obj.pred_to_x0, obj.eps_to_pred, obj.x0_to_pred):
        with pytest.raises(ValueError, match="latent"):
            fn(v, unet_input, a, s, "v_prediction")
    with pytest.raises(ValueError):
        obj.pred_to_eps(v, z_t, a, s, "sample")


def test_cfg_combine():
    u, c = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.allclose(obj.cfg_combine(u, c, 10.0), u + 10.0 * (c - u))
    assert torch.allclose(obj.cfg_combine(u, c, 1.0), c)
    assert torch.allclose(obj.cfg_combine(u, c, 0.0), u)
    # CFG commutes with the (affine) v -> eps conversion
    x0, eps, t, a, s = _setup(B=2, h=3, w=3)
    z_t = obj.q_sample(x0, eps, a, s)
    lhs = obj.pred_to_eps(obj.cfg_combine(u, c, 7.0), z_t, a, s, "v_prediction")
    rhs = obj.cfg_combine(
        obj.pred_to_eps(u, z_t, a, s, "v_prediction"), obj.pred_to_eps(c, z_t, a, s, "v_prediction"), 7.0
    )
    assert torch.allclose(lhs, rhs, atol=1e-5)


@pytest.mark.parametrize("B", [1, 4])
def test_l2_surrogate_gradient_is_g_over_B(B):
    g0 = torch.Generator().manual_seed(1)
    z = torch.randn(B, 4, 5, 5, generator=g0, requires_grad=True)
    eps_pre, eps_lora = torch.randn(B, 4, 5, 5, generator=g0), torch.randn(B, 4, 5, 5, generator=g0)
    t = torch.randint(500, 981, (B,), generator=g0)
    w = obj.vsd_weight(ABAR, t)
    g = obj.vsd_gradient(eps_pre, eps_lora, w)
    assert torch.allclose(g, (1 - ABAR[t]).view(-1, 1, 1, 1) * (eps_pre - eps_lora))
    loss = obj.surrogate_loss(z, g, "l2")
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.allclose(grad, g / B, atol=1e-6)
    assert math.isclose(loss.item(), 0.5 * g.pow(2).sum().item() / B, rel_tol=1e-5)


@pytest.mark.parametrize("B", [1, 4])
def test_l1_surrogate_gradient_is_half_sign_g_over_B(B):
    g0 = torch.Generator().manual_seed(2)
    z = torch.randn(B, 4, 5, 5, generator=g0, requires_grad=True)
    g = torch.randn(B, 4, 5, 5, generator=g0)
    loss = obj.surrogate_loss(z, g, "l1")
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.allclose(grad, 0.5 * torch.sign(g) / B)
    assert math.isclose(loss.item(), 0.5 * g.abs().sum().item() / B, rel_tol=1e-5)
    with pytest.raises(ValueError):
        obj.surrogate_loss(z, g, "l3")


def test_sds_gradient():
    eps_hat, eps, w = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.rand(2, 1, 1, 1)
    assert torch.allclose(obj.sds_gradient(eps_hat, eps, w), w * (eps_hat - eps))
    nan = torch.full_like(eps, float("nan"))
    assert torch.isfinite(obj.sds_gradient(nan, eps, w)).all()


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_rsd_step_with_a_perfect_denoiser_is_exact(prediction_type):
    """With the same eps in z_t and z_{t-1} and a perfect denoiser, the DDIM step lands exactly on z_{t-1}."""
    x0, eps, _, _, _ = _setup(B=2)
    t = torch.tensor([700, 501])
    a, s = obj.schedule_coefficients(ABAR, t)
    ap, sp = obj.schedule_coefficients(ABAR, t - 1)
    z_t, z_prev = obj.q_sample(x0, eps, a, s), obj.q_sample(x0, eps, ap, sp)
    pred = obj.training_target(x0, eps, a, s, prediction_type)
    z_hat = obj.ddim_step(
        obj.pred_to_x0(pred, z_t, a, s, prediction_type), obj.pred_to_eps(pred, z_t, a, s, prediction_type), ap, sp
    )
    assert torch.allclose(z_hat, z_prev, atol=1e-3)


def test_rsd_loss_value_and_gradient():
    B = 3
    z = torch.randn(B, 4, 4, 4, requires_grad=True)
    eps = torch.randn(B, 4, 4, 4)
    ap, sp = obj.schedule_coefficients(ABAR, torch.full((B,), 599))
    z_prev = obj.q_sample(z, eps, ap, sp)
    z_hat = torch.randn(B, 4, 4, 4, requires_grad=True)
    loss = obj.rsd_loss(z_prev, z_hat)
    assert math.isclose(loss.item(), B * (z_prev - z_hat).abs().mean().item(), rel_tol=1e-6)
    gz, gh = torch.autograd.grad(loss, [z, z_hat], allow_unused=True)
    assert gh is None  # the DDIM target is stop-gradient
    expected = B * ap * torch.sign(z_prev - z_hat).detach() / z.numel()
    assert torch.allclose(gz, expected, atol=1e-7)


def test_linear_schedule_endpoints_and_monotone():
    K = 11
    ts = [schedules.linear_timestep(k, K) for k in range(K)]
    assert ts[0] == 980 and ts[-1] == 500
    assert ts[1] == 932  # floor guard: 1000 * (0.98 - 0.48 / 10) = 931.99999... in floats
    assert all(a > b for a, b in zip(ts[:-1], ts[1:], strict=True))
    assert schedules.linear_timestep(K + 5, K) == 500
    assert schedules.linear_timestep(0, 1) == 980
    assert schedules.linear_timestep(999, 1000) == 500
    assert schedules.linear_timestep(0, 5, t_max=0.7, t_min=0.2) == 700
    assert schedules.linear_timestep(4, 5, t_max=0.7, t_min=0.2) == 200
    batch = schedules.stage_timesteps("linear", 3, K, 5)
    assert batch.tolist() == [ts[3]] * 5
    with pytest.raises(ValueError):
        schedules.stage_timesteps("cosine", 0, K, 1)


def test_uniform_and_lora_timesteps_ranges():
    g = torch.Generator().manual_seed(0)
    t = schedules.stage_timesteps("uniform", 0, 10, 4000, generator=g)
    assert t.min().item() == 500 and t.max().item() == 980
    assert len(set(t[:8].tolist())) > 1  # per-sample draws
    tl = schedules.lora_timesteps(20000, generator=g)
    assert tl.min().item() == 0 and tl.max().item() == 999
