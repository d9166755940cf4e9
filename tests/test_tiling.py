"""One home each (issue #10, item 5): the SD VAE's tiled encode/decode and the pixel prior's tiled denoiser calls
both go through ``sr/priors/tiling.py``; text guidance goes through ``sr/priors/utils.guided_predict``, which
combines the branches with ``sr/core/objectives.cfg_combine``."""

from __future__ import annotations

from types import SimpleNamespace

import torch


def test_pixel_sampler_windows_use_the_shared_tiling_and_are_exact_for_a_local_denoiser(monkeypatch):
    from vsdsr_nerfstudio.sr.priors import pixel_prior, tiling

    calls = []

    def predict(z_t, t, lr_cond, noise_level, text=None, extra_class_embedding=None):
        calls.append(tuple(z_t.shape[-2:]))
        return torch.tanh(z_t * 0.7 + lr_cond.mean(1, keepdim=True)) * (t.view(-1, 1, 1, 1) / 1000.0)

    prior = SimpleNamespace(uses_text=False, predict=predict)
    g = torch.Generator().manual_seed(0)
    z, lr = torch.randn(2, 48, 21, 17, generator=g), torch.rand(2, 3, 21, 17, generator=g)
    t, k = torch.tensor([900, 400]), torch.tensor([20, 20])
    whole = pixel_prior._tiled_predict(prior, z, t, lr, k, 1.0, tile=0, overlap=0)
    assert calls == [(21, 17)]
    used = []
    monkeypatch.setattr(pixel_prior, "tiled_map", lambda *a, **kw: used.append(1) or tiling.tiled_map(*a, **kw))
    calls.clear()
    tiled = pixel_prior._tiled_predict(prior, z, t, lr, k, 1.0, tile=8, overlap=4)
    assert used and len(calls) == len(tiling.tile_starts(21, 8, 4)) * len(tiling.tile_starts(17, 8, 4))
    assert set(calls) == {(8, 8)}
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)  # a per-pixel denoiser: blending is exact


def test_vae_tiling_is_the_shared_one():
    from vsdsr_nerfstudio.sr.priors import tiled_vae, tiling

    assert tiled_vae.tile_starts is tiling.tile_starts and tiled_vae.blend_ramp is tiling.blend_ramp
    x = torch.rand(1, 3, 20, 12, generator=torch.Generator().manual_seed(1))
    out = tiling.tiled_map(lambda c: c * 3.0 - 1.0, x, (20, 12), tile=8, overlap=4, in_scale=1, out_scale=1)
    torch.testing.assert_close(out, x * 3.0 - 1.0, rtol=0, atol=1e-6)


def test_guided_predict_batches_both_branches_and_combines_them_with_cfg_combine():
    from vsdsr_nerfstudio.sr.core.objectives import cfg_combine
    from vsdsr_nerfstudio.sr.priors.utils import guided_predict

    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(1, 5, 4, generator=g), torch.randn(1, 5, 4, generator=g)
    batches = []

    def predict(z_t, t, lr_cond, noise_level, text=None, extra_class_embedding=None):
        batches.append(z_t.shape[0])
        return z_t * text.mean(dim=(1, 2)).view(-1, 1, 1, 1) + lr_cond.mean()

    prior = SimpleNamespace(uses_text=True, predict=predict, text_embeddings=lambda: (cond, uncond))
    z, lr = torch.randn(3, 4, 6, 6, generator=g), torch.rand(3, 3, 6, 6, generator=g)
    t, k = torch.tensor([10, 20, 30]), torch.tensor([20, 20, 20])
    out = guided_predict(prior, z, t, lr, k, 7.5)
    assert batches == [6]  # one batched call for both branches
    pred_u = predict(z, t, lr, k, text=uncond.expand(3, -1, -1))
    pred_c = predict(z, t, lr, k, text=cond.expand(3, -1, -1))
    torch.testing.assert_close(out, cfg_combine(pred_u, pred_c, 7.5))
    torch.testing.assert_close(guided_predict(prior, z, t, lr, k, 1.0), pred_c)  # scale 1: the conditional branch
