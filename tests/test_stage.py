"""SRStage (CPU, seeded): an analytic stub prior for descent, the tiny SD-x4 prior for the wiring."""

from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from vsdsr_nerfstudio.sr.core import stage as stage_mod  # noqa: E402
from vsdsr_nerfstudio.sr.core.lora import CameraLoRAConfig, normalized_flat_c2w  # noqa: E402
from vsdsr_nerfstudio.sr.core.objectives import schedule_coefficients, x0_to_pred  # noqa: E402
from vsdsr_nerfstudio.sr.core.stage import (  # noqa: E402
    SRStage,
    SRStageConfig,  # noqa: E402
    patch_size_for,
    rolling_views,
)
from vsdsr_nerfstudio.sr.priors.base import SRPrior  # noqa: E402
from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig  # noqa: E402

TARGET = torch.tensor([0.5, -0.3, 0.2, 0.1]).view(1, 4, 1, 1)


def scaled_linear_alphas_cumprod(T: int = 1000) -> torch.Tensor:
    betas = torch.linspace(1e-4**0.5, 0.02**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


class StubDenoiser(nn.Module):
    """A LoRA-able "UNet": its only weight is a per-channel offset of the clean estimate (zero at init)."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.to_q = nn.Linear(1, channels, bias=False)
        nn.init.zeros_(self.to_q.weight)

    def offset(self) -> torch.Tensor:
        return self.to_q(torch.ones(1, 1)).view(1, -1, 1, 1)


class AnalyticPrior(SRPrior):
    """v-prediction prior whose text-conditional clean estimate is TARGET (constant per channel), the
    unconditional one 0, plus the denoiser's (LoRA-trainable) offset. Encode = 4x4 average pooling."""

    def __init__(self) -> None:
        self.latent_channels = 4
        self.prediction_type = "v_prediction"
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self.max_noise_level = 350
        self.uses_text = True
        self.class_embedding_dim = 8
        self.denoiser = StubDenoiser()
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.calls = []

    def encode(self, images, sample=False, generator=None):
        pooled = F.avg_pool2d(images, 4) * 2 - 1
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)

    def decode(self, latents):
        return F.interpolate((latents[:, :3] + 1) / 2, scale_factor=4, mode="nearest").clamp(0, 1)

    def noise_lr(self, lr_images, noise_level, generator: Optional[torch.Generator] = None):
        return lr_images * 2 - 1

    def text_embeddings(self):
        return torch.ones(1, 1, 2), torch.zeros(1, 1, 2)

    def predict(self, z_t, t, lr_cond, noise_level, text=None, extra_class_embedding=None):
        self.calls.append(dict(batch=z_t.shape[0], hw=tuple(z_t.shape[-2:])))
        cond = torch.zeros(z_t.shape[0]) if text is None else text[:, 0, 0]
        x0 = cond.view(-1, 1, 1, 1) * TARGET + self.denoiser.offset()
        a_t, s_t = schedule_coefficients(self.alphas_cumprod, t)
        return x0_to_pred(x0.expand_as(z_t), z_t, a_t, s_t, "v_prediction")


def make_tiny_prior():
    return SRPriorConfig(prior="tiny").setup(torch.device("cpu"))


def views_data(n=2, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    renders = torch.rand(n, 3, 4 * h, 4 * w, generator=g)
    lr = torch.rand(n, 3, h, w, generator=g)
    c2w = torch.eye(4).repeat(n, 1, 1)[:, :3].clone()
    c2w[:, :3, 3] = torch.randn(n, 3, generator=g)
    return renders, lr, c2w


def distance_to_target(stage: SRStage) -> float:
    return (stage.current_latents() - TARGET).abs().mean().item()


def test_pure_helpers():
    assert rolling_views(0, 3, 2) == ([0, 1, 0], 1)  # B > N: with replacement
    assert rolling_views(1, 3, 2) == ([1, 0, 1], 0)
    assert rolling_views(3, 2, 5) == ([3, 4], 0)
    assert patch_size_for((378, 504), 128) == (128, 128)
    assert patch_size_for((100, 60), 128, 8) == (96, 56)  # clipped, multiple of 8
    assert patch_size_for((16, 16), 8) == (8, 8)


@pytest.mark.parametrize("guidance", ["sds", "rsd", "vsd"])
def test_stage_descends_to_the_prior_target_and_only_updates_the_residual(guidance):
    prior = AnalyticPrior()
    # the LoRA (lr 0.05) must track the latents faster than they move (lr 0.01), else VSD oscillates
    cfg = SRStageConfig(
        guidance=guidance,
        guidance_scale=1.0,
        batch_size=2,
        patch_size=16,
        latent_lr=0.01,
        lora=CameraLoRAConfig(every=1, lr=0.05, camera_drop_prob=0.0),
        vsd_loss="l2",
        seed=0,
        t_max=0.7,
        t_min=0.7,
    )  # fixed t: the loss values of different steps are comparable
    stage = cfg.setup(prior=prior)
    renders, lr, c2w = views_data()
    # one flat colour: the stub LoRA (a per-channel offset) can represent the latent "distribution" exactly
    renders = torch.tensor([0.9, 0.2, 0.6]).view(1, 3, 1, 1).expand_as(renders).clone()
    renders0, lr0, c2w0 = renders.clone(), lr.clone(), c2w.clone()
    stage.begin(renders, lr, c2w, num_steps=150)
    z_r = stage.z_r.clone()
    d0 = distance_to_target(stage)
    losses = []
    while not stage.done:
        losses.append(stage.step().loss)
    d1 = distance_to_target(stage)
    assert d1 < 0.25 * d0, (d0, d1)
    if guidance != "vsd":  # the analytic surrogate is proportional to the distance itself
        assert sum(losses[-10:]) < 0.3 * sum(losses[:10])
    assert torch.equal(stage.z_r, z_r) and stage.delta.abs().sum() > 0  # only the residual moved
    assert torch.equal(renders, renders0) and torch.equal(lr, lr0) and torch.equal(c2w, c2w0)
    images = stage.finish()
    assert images.shape == renders.shape and 0 <= images.min() and images.max() <= 1


def test_vsd_needs_the_lora_to_move_and_lora_tracks_the_particle():
    """With omega = gamma = 1 the VSD gradient is zero until the LoRA has learnt the current latents."""
    prior = AnalyticPrior()
    cfg = SRStageConfig(
        guidance="vsd",
        guidance_scale=1.0,
        batch_size=2,
        patch_size=16,
        lora=CameraLoRAConfig(every=1000, camera_drop_prob=0.0),
    )
    stage = cfg.setup(prior=prior)
    renders, lr, c2w = views_data()
    stage.begin(renders, lr, c2w, num_steps=3)
    stats = [stage.step() for _ in range(3)]
    assert stats[0].lora is not None and stats[1].lora is None  # trained on call 0 only
    assert stats[0].loss == 0.0 and stats[0].grad_norm == 0.0  # LoRA == pretrained model at the start


def test_first_step_moves_delta_by_minus_lr_sign_g_inside_the_patches_only(monkeypatch):
    prior = make_tiny_prior()
    cfg = SRStageConfig(
        batch_size=3, patch_size=8, latent_lr=1e-2, latent_weight_decay=0.0, vsd_loss="l1", guidance_scale=10.0, seed=1
    )
    stage = cfg.setup(prior=prior)
    seen = {}
    real = stage_mod.surrogate_loss

    def spy(z, grad, kind):
        seen["grad"], seen["kind"] = grad.clone(), kind
        return real(z, grad, kind)

    monkeypatch.setattr(stage_mod, "surrogate_loss", spy)
    renders, lr, c2w = views_data(n=3)
    stage.begin(renders, lr, c2w, num_steps=10)
    stats = stage.step()
    assert seen["kind"] == "l1" and stats.views == [0, 1, 2]
    delta = stage.delta.detach()
    inside = torch.zeros_like(delta, dtype=torch.bool)
    for b, (v, (y, x)) in enumerate(zip(stats.views, stats.patches, strict=True)):
        expected = -1e-2 * torch.sign(seen["grad"][b])  # Adam's first step is lr * sign(grad)
        assert torch.allclose(delta[v, :, y : y + 8, x : x + 8], expected, atol=1e-6)
        inside[v, :, y : y + 8, x : x + 8] = True
    assert (delta[~inside] == 0).all()
    assert stats.grad_norm == pytest.approx((0.5 / 3) * (seen["grad"] != 0).sum().sqrt().item(), rel=1e-4)


def test_vsd_step_wiring_cfg_noise_level_camera_and_lr_conditioning(monkeypatch):
    """One VSD step on the tiny prior, every denoiser call recorded: text CFG (omega) on the pretrained branch with
    adapters OFF and no camera; the LoRA branch with adapters ON, conditional text, the patch's OWN camera;
    noise_level in every call; the LR conditioning is the real LR image's patch; g = w (eps_pre,w - eps_lora)."""
    prior = make_tiny_prior()
    omega, B, nl = 10.0, 3, 37
    cfg = SRStageConfig(
        batch_size=B,
        patch_size=8,
        guidance_scale=omega,
        noise_level=nl,
        lora=CameraLoRAConfig(every=1, camera_drop_prob=0.0),
        seed=2,
    )
    stage = cfg.setup(prior=prior)
    lora = stage.lora
    with torch.no_grad():  # a non-trivial LoRA model
        g = torch.Generator().manual_seed(0)
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    calls, mlp_inputs, noised = [], [], []
    real_predict, real_noise_lr = prior.predict, prior.noise_lr

    def predict_spy(z_t, t, lr_cond, noise_level, text=None, extra_class_embedding=None):
        out = real_predict(z_t, t, lr_cond, noise_level, text=text, extra_class_embedding=extra_class_embedding)
        calls.append(
            dict(
                z_t=z_t.detach().clone(),
                t=t.clone(),
                lr=lr_cond.clone(),
                nl=noise_level.clone(),
                text=None if text is None else text.clone(),
                extra=extra_class_embedding is not None,
                lora_on=lora.is_enabled,
                out=out.detach().clone(),
            )
        )
        return out

    def noise_lr_spy(lr_images, noise_level, generator=None):
        noised.append(lr_images.clone())
        return real_noise_lr(lr_images, noise_level, generator=generator)

    monkeypatch.setattr(prior, "predict", predict_spy)
    monkeypatch.setattr(prior, "noise_lr", noise_lr_spy)
    lora.camera_mlp.register_forward_hook(lambda m, args, out: mlp_inputs.append(args[0].detach().clone()))
    seen = {}
    real_surrogate = stage_mod.surrogate_loss
    monkeypatch.setattr(
        stage_mod,
        "surrogate_loss",
        lambda z, grad, kind: seen.setdefault("g", grad.clone()) is not None and real_surrogate(z, grad, kind),
    )

    renders, lr, c2w = views_data(n=4, seed=3)
    stage.begin(renders, lr, c2w, num_steps=5)
    stats = stage.step()
    views = stats.views
    assert views == [0, 1, 2]
    pre, lora_call, train_call = calls  # guidance: pretrained (2B, CFG), LoRA (B); then the LoRA update (B)
    # noise level reaches BOTH branches (and the LoRA update)
    for c in calls:
        assert (c["nl"] == nl).all()
    # adapters: off for the pretrained branch, on for the LoRA branch; camera only on the LoRA branch
    assert not pre["lora_on"] and not pre["extra"]
    assert lora_call["lora_on"] and lora_call["extra"] and train_call["lora_on"] and train_call["extra"]
    assert not lora.is_enabled
    # text CFG: cond then uncond on the pretrained branch; the LoRA branch gets the conditional text only
    cond, uncond = prior.text_embeddings()
    assert pre["z_t"].shape[0] == 2 * B
    assert torch.allclose(pre["text"][:B], cond.expand(B, -1, -1)) and torch.allclose(
        pre["text"][B:], uncond.expand(B, -1, -1)
    )
    assert torch.allclose(lora_call["text"], cond.expand(B, -1, -1))
    # the LR conditioning is the patch of the REAL LR image of each patch's view
    for b, (v, (y, x)) in enumerate(zip(views, stats.patches, strict=True)):
        assert torch.equal(noised[0][b], lr[v, :, y : y + 8, x : x + 8])
    assert torch.equal(pre["lr"][:B], lora_call["lr"])  # same noised LR in both branches
    # each patch's camera is its own view's
    expected_cams = normalized_flat_c2w(c2w, lora.camera_center, lora.camera_scale)
    assert torch.allclose(mlp_inputs[0], expected_cams[views])
    assert torch.allclose(mlp_inputs[1], expected_cams[views])  # the LoRA update (no drop with p = 0)
    # the VSD gradient from the recorded raw outputs
    z_t = lora_call["z_t"]
    a, s = schedule_coefficients(prior.alphas_cumprod, lora_call["t"])
    v_c, v_u = pre["out"].chunk(2)
    v_pre = v_u + omega * (v_c - v_u)
    eps_pre, eps_lora = a * v_pre + s * z_t, a * lora_call["out"] + s * z_t
    assert torch.allclose(seen["g"], (1 - a**2) * (eps_pre - eps_lora), atol=1e-4)


def test_camera_cfg_in_stage_batches_pi_and_zero(monkeypatch):
    prior = make_tiny_prior()
    stage = SRStageConfig(
        batch_size=2, patch_size=8, camera_guidance_scale=4.0, lora=CameraLoRAConfig(every=1000)
    ).setup(prior=prior)
    inputs = []
    stage.lora.camera_mlp.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach().clone()))
    renders, lr, c2w = views_data(n=2)
    stage.begin(renders, lr, c2w, num_steps=2)
    stage.step()  # trains the LoRA (call 0)
    inputs.clear()
    stage.step()
    (cams,) = inputs
    assert cams.shape[0] == 4 and (cams[2:] == 0).all() and (cams[:2] != 0).any()


def test_rsd_uses_one_noise_for_both_timesteps(monkeypatch):
    prior = make_tiny_prior()
    stage = SRStageConfig(guidance="rsd", batch_size=2, patch_size=8).setup(prior=prior)
    assert stage.lora is None
    qs, zts = [], []
    real_q = stage_mod.q_sample

    def q_spy(x0, noise, a_t, s_t):
        out = real_q(x0, noise, a_t, s_t)
        qs.append((x0.detach().clone(), noise, a_t.clone(), out.detach().clone()))
        return out

    real_predict = prior.predict

    def predict_spy(z_t, t, *args, **kwargs):
        zts.append((z_t.clone(), t.clone()))
        return real_predict(z_t, t, *args, **kwargs)

    monkeypatch.setattr(stage_mod, "q_sample", q_spy)
    monkeypatch.setattr(prior, "predict", predict_spy)
    renders, lr, c2w = views_data(n=2)
    stage.begin(renders, lr, None, num_steps=4)
    stats = stage.step()
    (x0_t, noise_t, a_t, z_t), (x0_p, noise_p, a_p, z_p) = qs
    assert noise_t is noise_p  # the SAME eps builds z_t and z_{t-1}
    assert torch.equal(x0_t, x0_p)
    a_ref, _ = schedule_coefficients(prior.alphas_cumprod, torch.tensor([980, 979]))
    assert torch.allclose(a_t.flatten(), a_ref[0].flatten().expand(2)) and torch.allclose(
        a_p.flatten(), a_ref[1].flatten().expand(2)
    )
    ((z_in, t_in),) = zts  # one CFG'd pretrained forward
    assert torch.equal(z_in[:2], z_t) and (t_in == 980).all() and stats.t == 980


def test_t_schedule_endpoints_and_restart_per_stage():
    prior = AnalyticPrior()
    stage = SRStageConfig(guidance="sds", batch_size=1, patch_size=8).setup(prior=prior)
    renders, lr, c2w = views_data(n=1)
    for _ in range(2):  # two stages: the ramp restarts
        stats = []
        stage.run(renders, lr, c2w, num_steps=5, callback=stats.append)
        assert [s.t for s in stats] == [980.0, 860.0, 740.0, 620.0, 500.0]
    assert stage.stage_index == 1


def test_memory_is_bounded_by_batch_and_patch():
    """The prior only ever sees B (or 2B for CFG) patches, never a whole view or all N views."""
    prior = AnalyticPrior()
    stage = SRStageConfig(guidance="vsd", batch_size=3, patch_size=8, lora=CameraLoRAConfig(every=1)).setup(prior=prior)
    renders, lr, c2w = views_data(n=5, h=16, w=24)
    stage.run(renders, lr, c2w, num_steps=4)
    assert prior.calls and all(c["batch"] <= 6 and c["hw"] == (8, 8) for c in prior.calls)


def test_delta_resets_each_stage_and_lora_persists():
    prior = make_tiny_prior()
    stage = SRStageConfig(batch_size=2, patch_size=8, lora=CameraLoRAConfig(every=1)).setup(prior=prior)
    renders, lr, c2w = views_data(n=2)
    stage.begin(renders, lr, c2w, num_steps=2)
    stage.step()
    lora_after_1 = [p.detach().clone() for p in stage.lora.parameters()]
    stage.finish()
    stage.begin(renders, lr, c2w, num_steps=2)
    assert (stage.delta == 0).all() and stage.step_index == 0
    assert all(torch.equal(a, b) for a, b in zip(lora_after_1, stage.lora.parameters(), strict=True))
    assert stage.lora.num_calls == 1 and stage.lora.num_stages == 2
    # lora.persist=False re-initialises the LoRA at the next stage
    stage.finish()
    stage.config.lora.persist = False
    stage.begin(renders, lr, c2w, num_steps=2)
    assert stage.lora.num_calls == 0
    assert all(
        (p == 0).all() for n, p in zip(stage.lora.lora_names, stage.lora.lora_params, strict=True) if "lora_B" in n
    )


def test_base_weights_unchanged_and_output_shape_on_tiny_prior():
    prior = make_tiny_prior()
    base = {k: v.clone() for k, v in prior.denoiser.state_dict().items() if "lora_" not in k}
    vae = {k: v.clone() for k, v in prior.vae.state_dict().items()}
    stage = SRStageConfig(batch_size=2, patch_size=8, lora=CameraLoRAConfig(every=1, lr=1e-2)).setup(prior=prior)
    assert stage.config.lora.gradient_checkpointing and prior.denoiser.is_gradient_checkpointing
    lora0 = [p.detach().clone() for p in stage.lora.parameters()]
    renders, lr, c2w = views_data(n=3)
    steps = []
    images = stage.run(renders, lr, c2w, num_steps=4, callback=steps.append)
    assert [s.step for s in steps] == [0, 1, 2, 3] and all(s.lora is not None for s in steps)
    # the LoRA trains through the checkpointed UNet (B matrices leave zero)
    assert all(not torch.equal(a, b) for a, b in zip(lora0, stage.lora.parameters(), strict=True))
    state = {k.replace(".base_layer", ""): v for k, v in prior.denoiser.state_dict().items() if "lora_" not in k}
    assert state.keys() == base.keys() and all(torch.equal(state[k], base[k]) for k in base)
    assert all(torch.equal(v, vae[k]) for k, v in prior.vae.state_dict().items())
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    sd = stage.state_dict()
    assert sd["lora"]["num_calls"] == 4 and sd["stage_index"] == 0


def test_bad_inputs_are_refused():
    prior = AnalyticPrior()
    stage = SRStageConfig(batch_size=2, patch_size=8).setup(prior=prior)
    renders, lr, c2w = views_data(n=2)
    with pytest.raises(ValueError, match="latent"):
        stage.begin(renders, lr[..., :8], c2w, num_steps=2)
    with pytest.raises(ValueError, match="c2w"):
        stage.begin(renders, lr, None, num_steps=2)
    with pytest.raises(RuntimeError):
        SRStageConfig(guidance="sds").setup(prior=prior).step()
    with pytest.raises(ValueError):
        SRStageConfig(noise_level=400).setup(prior=prior)


def test_stage_runs_on_the_pixel_space_prior():
    """A 48-channel, text-free prior: the same code path (no text CFG, LoRA on its attention, v-prediction)."""
    prior = SRPriorConfig(prior="pixel-tiny").setup(torch.device("cpu"))
    assert prior.latent_channels == 48 and not prior.uses_text
    stage = SRStageConfig(batch_size=2, patch_size=8, lora=CameraLoRAConfig(every=1)).setup(prior=prior)
    renders, lr, c2w = views_data(n=2)
    stats = []
    images = stage.run(renders, lr, c2w, num_steps=2, callback=stats.append)
    assert images.shape == renders.shape and all(s.lora is not None for s in stats)
    assert all(torch.isfinite(torch.tensor([s.loss, s.grad_norm])).all() for s in stats)
