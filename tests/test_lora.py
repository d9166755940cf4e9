"""CameraLoRA on the tiny SD-x4 prior (CPU, seeded): shared weights, adapter switching, conditioning, training."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from vsdsr_nerfstudio.sr.core import lora as lora_mod  # noqa: E402
from vsdsr_nerfstudio.sr.core.lora import CameraLoRA, camera_normalization, normalized_flat_c2w  # noqa: E402
from vsdsr_nerfstudio.sr.core.objectives import schedule_coefficients, v_target  # noqa: E402
from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig  # noqa: E402

B, H, W = 2, 16, 16


def make_prior():
    return SRPriorConfig(prior="tiny").setup(torch.device("cpu"))


def randomize_lora(lora: CameraLoRA, seed: int = 0, scale: float = 0.3) -> None:
    """Give the LoRA (B matrices start at zero) and the camera MLP (last layer starts at zero) non-zero weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def inputs(prior, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_t = torch.randn(B, 4, H, W, generator=g)
    t = torch.tensor([500, 900])
    lr = prior.noise_lr(torch.rand(B, 3, H, W, generator=g), torch.full((B,), 20), generator=g)
    nl = torch.full((B,), 20)
    text = prior.text_embeddings()[0].expand(B, -1, -1)
    cams = torch.randn(B, 16, generator=g)
    return z_t, t, lr, nl, text, cams


@pytest.fixture(scope="module")
def prior_and_lora():
    prior = make_prior()
    lora = CameraLoRA(prior, every=3, seed=0)
    randomize_lora(lora)
    return prior, lora


def test_camera_normalization_pure():
    c2w = torch.eye(4).repeat(3, 1, 1)[:, :3]
    c2w[:, :3, 3] = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [2.0, 2.0, 0]])
    center, scale = camera_normalization(c2w)
    assert torch.allclose(center, torch.tensor([2.0, 2 / 3, 0]))
    flat = normalized_flat_c2w(c2w, center, scale)
    assert flat.shape == (3, 16)
    m = flat.view(3, 4, 4)
    assert torch.allclose(m[:, 3], torch.tensor([0.0, 0, 0, 1]))
    assert torch.allclose(m[:, :3, :3], c2w[:, :3, :3])
    assert m[:, :3, 3].norm(dim=-1).max().item() == pytest.approx(1.0)


def test_single_copy_of_base_weights():
    """LoRA and pretrained branch share the frozen base weights (no second UNet as in VSD-SR)."""
    prior = make_prior()
    before = {n: (p.data_ptr(), p.numel()) for n, p in prior.denoiser.named_parameters()}
    n_before = sum(p.numel() for p in prior.denoiser.parameters())
    lora = CameraLoRA(prior)
    after = dict(prior.denoiser.named_parameters())
    # every base parameter is still the very same storage (peft moved it under `.base_layer.`)
    for name, (ptr, numel) in before.items():
        new_name = (
            name
            if name in after
            else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert after[new_name].data_ptr() == ptr and after[new_name].numel() == numel, name
    n_lora = sum(p.numel() for p in lora.lora_params)
    assert sum(p.numel() for p in prior.denoiser.parameters()) == n_before + n_lora
    assert 0 < n_lora < 0.2 * n_before
    assert all(not p.requires_grad for n, p in prior.denoiser.named_parameters() if "lora_" not in n)
    # all four projections of every attention got an adapter
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora.lora_names}
    assert {"to_q", "to_k", "to_v", "0"} <= names
    assert all(p.dtype == torch.float32 for p in lora.parameters())


def test_adapters_off_by_default_and_on_in_context(prior_and_lora):
    prior, lora = prior_and_lora
    z_t, t, lr, nl, text, cams = inputs(prior)
    fresh = make_prior()  # same seed -> same base weights, no adapters
    ref = fresh.predict(z_t, t, lr, nl, text=text)
    assert not lora.is_enabled
    assert torch.allclose(prior.predict(z_t, t, lr, nl, text=text), ref, atol=1e-5)
    with lora.enabled():
        assert lora.is_enabled
        on = prior.predict(z_t, t, lr, nl, text=text)
    assert not lora.is_enabled
    assert (on - ref).abs().max() > 1e-3
    assert (lora.predict(z_t, t, lr, nl, text, cams) - ref).abs().max() > 1e-3
    assert not lora.is_enabled  # predict() restores the pretrained branch
    assert torch.allclose(prior.predict(z_t, t, lr, nl, text=text), ref, atol=1e-5)


def test_noise_level_changes_both_branches(prior_and_lora):
    """Defect §2.6.3: VSD-SR dropped noise_level in the pretrained UNet and replaced it in the LoRA UNet."""
    prior, lora = prior_and_lora
    z_t, t, lr, nl, text, cams = inputs(prior)
    nl2 = torch.full((B,), 200)
    pre_a, pre_b = prior.predict(z_t, t, lr, nl, text=text), prior.predict(z_t, t, lr, nl2, text=text)
    assert (pre_a - pre_b).abs().max() > 1e-3
    lora_a, lora_b = lora.predict(z_t, t, lr, nl, text, cams), lora.predict(z_t, t, lr, nl2, text, cams)
    assert (lora_a - lora_b).abs().max() > 1e-3


def test_camera_changes_only_the_lora_branch(prior_and_lora):
    prior, lora = prior_and_lora
    z_t, t, lr, nl, text, cams = inputs(prior)
    out_a = lora.predict(z_t, t, lr, nl, text, cams)
    out_b = lora.predict(z_t, t, lr, nl, text, cams.flip(0))
    assert (out_a - out_b).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # each sample's output depends on its camera
    # the camera only changes the sample it belongs to
    cams_c = cams.clone()
    cams_c[1] += 1.0
    out_c = lora.predict(z_t, t, lr, nl, text, cams_c)
    assert torch.allclose(out_c[0], out_a[0], atol=1e-5) and (out_c[1] - out_a[1]).abs().max() > 1e-3


def test_camera_embedding_is_added_not_replacing(prior_and_lora):
    """With a zero camera embedding, the LoRA branch with adapters on == the adapted UNet with the noise-level
    embedding intact, i.e. the embedding is *added* to class_labels' embedding."""
    prior, lora = prior_and_lora
    z_t, t, lr, nl, text, cams = inputs(prior)
    saved = [p.detach().clone() for p in lora.camera_mlp.parameters()]
    with torch.no_grad():
        for p in lora.camera_mlp.parameters():
            p.zero_()
    try:
        with lora.enabled():
            ref = prior.predict(z_t, t, lr, nl, text=text)
        assert torch.allclose(lora.predict(z_t, t, lr, nl, text, cams), ref, atol=1e-5)
    finally:
        with torch.no_grad():
            for p, s in zip(lora.camera_mlp.parameters(), saved, strict=True):
                p.copy_(s)


def test_camera_cfg_formula(prior_and_lora):
    prior, lora = prior_and_lora
    z_t, t, lr, nl, text, cams = inputs(prior)
    f_pi = lora.predict(z_t, t, lr, nl, text, cams)
    f_0 = lora.predict(z_t, t, lr, nl, text, torch.zeros_like(cams))
    gamma = 3.0
    # (the guided call batches pi and pi=0 in one forward: float noise of a different batch size, ~1e-4)
    assert torch.allclose(lora.predict_guided(z_t, t, lr, nl, text, cams, gamma), f_0 + gamma * (f_pi - f_0), atol=2e-3)
    assert (f_pi - f_0).abs().max() > 1e-2
    assert torch.allclose(lora.predict_guided(z_t, t, lr, nl, text, cams, 1.0), f_pi, atol=1e-6)


def test_fresh_lora_model_equals_pretrained():
    """Zero-initialised LoRA B and camera output layer: at the start the LoRA model is the pretrained model."""
    prior = make_prior()
    lora = CameraLoRA(prior)
    z_t, t, lr, nl, text, cams = inputs(prior)
    assert torch.allclose(lora.predict(z_t, t, lr, nl, text, cams), prior.predict(z_t, t, lr, nl, text=text), atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_training_target_follows_prior_prediction_type(prediction_type, monkeypatch):
    """Defect §2.6.2: VSD-SR forced an eps target on the v-model. We read prior.prediction_type."""
    prior = make_prior()
    assert prior.prediction_type == "v_prediction"
    prior.prediction_type = prediction_type
    lora = CameraLoRA(prior, every=1)
    seen = []
    real = lora_mod.training_target

    def spy(x0, noise, a_t, s_t, ptype):
        out = real(x0, noise, a_t, s_t, ptype)
        seen.append((x0.clone(), noise.clone(), a_t.clone(), s_t.clone(), ptype, out.clone()))
        return out

    monkeypatch.setattr(lora_mod, "training_target", spy)
    z_t, t, lr, nl, text, cams = inputs(prior)
    z = torch.randn(B, 4, H, W)
    lora.train_step(z, lr, nl, text, cams)
    ((x0, noise, a_t, s_t, ptype, target),) = seen
    assert ptype == prediction_type and torch.equal(x0, z)
    expected = v_target(z, noise, a_t, s_t) if prediction_type == "v_prediction" else noise
    assert torch.allclose(target, expected)


def test_lora_updates_exactly_every_k_calls_and_base_never_changes():
    prior = make_prior()
    k = 3
    lora = CameraLoRA(prior, every=k, lr=1e-2)
    base_before = {n: p.detach().clone() for n, p in prior.denoiser.named_parameters() if "lora_" not in n}
    z_t, t, lr, nl, text, cams = inputs(prior)
    z = torch.randn(B, 4, H, W)
    updated = []
    for i in range(7):
        snap = [p.detach().clone() for p in lora.parameters()]
        out = lora.maybe_train(z, lr, nl, text, cams)
        changed = any(not torch.equal(a, b) for a, b in zip(snap, lora.parameters(), strict=True))
        assert changed == (out is not None) == (i % k == 0), i
        updated.append(changed)
    assert updated == [True, False, False, True, False, False, True]
    assert lora.num_calls == 7 and lora.num_updates == 3
    for n, p in prior.denoiser.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n
    # the lora B matrices (zero at init) and the camera output layer actually trained
    assert all(p.abs().sum() > 0 for n, p in zip(lora.lora_names, lora.lora_params, strict=True) if "lora_B" in n)
    assert lora.camera_mlp.linear_2.weight.abs().sum() > 0


def test_camera_dropout_probability_and_whole_batch():
    prior = make_prior()
    lora = CameraLoRA(prior, camera_drop_prob=0.1, seed=3)
    draws = torch.tensor([lora.draw_camera_drop() for _ in range(4000)], dtype=torch.float32)
    assert abs(draws.mean().item() - 0.1) < 0.02
    z_t, t, lr, nl, text, cams = inputs(prior)
    fed = []
    handle = lora.camera_mlp.register_forward_hook(lambda m, args, out: fed.append(args[0].detach().clone()))
    try:
        for p, expect_zero in ((1.0, True), (0.0, False)):
            lora.camera_drop_prob = p
            fed.clear()
            stats = lora.train_step(torch.randn(B, 4, H, W), lr, nl, text, cams)
            assert stats["camera_dropped"] == expect_zero
            assert bool((fed[0] == 0).all()) == expect_zero  # whole batch, not per patch
            if not expect_zero:
                assert torch.equal(fed[0], cams)
    finally:
        handle.remove()


def test_state_dict_round_trip_and_resume_determinism():
    prior_a = make_prior()
    lora_a = CameraLoRA(prior_a, every=2, lr=1e-2, seed=5)
    z_t, t, lr, nl, text, cams = inputs(prior_a)
    z = torch.randn(B, 4, H, W)
    lora_a.encode_cameras(torch.eye(4)[:3].repeat(2, 1, 1))
    for _ in range(3):
        lora_a.maybe_train(z, lr, nl, text, cams)
    state = lora_a.state_dict()

    prior_b = make_prior()
    lora_b = CameraLoRA(prior_b, every=2, lr=1e-2, seed=99)
    lora_b.load_state_dict(state)
    assert lora_b.num_calls == 3 and lora_b.num_updates == 2
    assert lora_b.camera_scale == lora_a.camera_scale and torch.equal(lora_b.camera_center, lora_a.camera_center)
    for pa, pb in zip(lora_a.parameters(), lora_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # continuing both gives identical results (optimizer moments, counter and RNG restored)
    for _ in range(2):
        ra = lora_a.maybe_train(z, lr, nl, text, cams)
        rb = lora_b.maybe_train(z, lr, nl, text, cams)
        assert (ra is None) == (rb is None)
    for pa, pb in zip(lora_a.parameters(), lora_b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)
    assert torch.allclose(
        lora_a.predict(z_t, t, lr, nl, text, cams), lora_b.predict(z_t, t, lr, nl, text, cams), atol=1e-5
    )
    with pytest.raises(ValueError):
        CameraLoRA(make_prior(), rank=8).load_state_dict(state)


def test_reset_restores_pretrained_model():
    prior = make_prior()
    lora = CameraLoRA(prior, every=1, lr=1e-2)
    z_t, t, lr, nl, text, cams = inputs(prior)
    lora.maybe_train(torch.randn(B, 4, H, W), lr, nl, text, cams)
    lora.reset()
    assert lora.num_calls == 0 and lora.num_updates == 0
    assert torch.allclose(lora.predict(z_t, t, lr, nl, text, cams), prior.predict(z_t, t, lr, nl, text=text), atol=1e-5)


def test_schedule_coefficients_used_for_lora_noise(monkeypatch):
    """LoRA training timesteps cover U{0..T-1} (sanity of the wiring into the prior's schedule)."""
    prior = make_prior()
    lora = CameraLoRA(prior)
    ts = torch.cat([lora_mod.lora_timesteps(500, prior.num_train_timesteps, lora.generator) for _ in range(10)])
    assert ts.min() == 0 and ts.max() == prior.num_train_timesteps - 1
    a, s = schedule_coefficients(prior.alphas_cumprod, torch.tensor([0, 999]))
    assert a[0] > 0.99 and s[1] > 0.99
