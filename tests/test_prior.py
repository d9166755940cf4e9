"""Tests of the Stable Diffusion x4 upscaler prior (``sr/priors/config.py``, ``sr/priors/sd_upscaler.py``,
``sr/priors/tiled_vae.py``, ``sr/priors/text.py``, ``sr/priors/sd_x4_configs.py``). CPU only, seeded, no network
ever."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vsdsr_nerfstudio.sr.priors.config import PriorLoadError, SRPriorConfig

REPO = Path(__file__).resolve().parents[1]


def _subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def prior():
    """The tiny preset on the CPU."""
    return SRPriorConfig(prior="tiny").setup(device="cpu")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny preset saved as a diffusers folder."""
    from vsdsr_nerfstudio.sr.priors.sd_upscaler import save_tiny_prior

    return save_tiny_prior(tmp_path_factory.mktemp("tiny-x4"))


def _inputs(batch: int = 2, h: int = 16, w: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z_t = torch.randn(batch, 4, h, w, generator=g)
    lr = torch.rand(batch, 3, h, w, generator=g) * 2 - 1
    t = torch.tensor([500, 700][:batch])
    k = torch.full((batch,), 20)
    return z_t, t, lr, k


# ---- attributes, shapes, VAE -------------------------------------------------------------------------------


def test_attributes(prior):
    assert prior.scale == 4 and prior.latent_channels == 4
    assert prior.prediction_type == "v_prediction"
    assert prior.max_noise_level == 350
    assert prior.uses_text and prior.class_embedding_dim == 128
    assert prior.dtype == torch.float32  # bf16 requested, CPU forces fp32
    assert prior.vae.dtype == torch.float32
    assert prior.alphas_cumprod.dtype == torch.float32 and prior.num_train_timesteps == 1000
    # method.md section 1: alpha_bar_500 ~ 0.331, alpha_bar_980 ~ 1.07e-3, alpha_bar_999 ~ 7.3e-4
    ac = prior.alphas_cumprod
    assert abs(ac[500].item() - 0.331) < 1e-3
    assert abs(ac[980].item() - 1.07e-3) < 2e-5 and abs(ac[999].item() - 7.3e-4) < 2e-5
    assert all(not p.requires_grad for p in prior.denoiser.parameters())
    assert all(not p.requires_grad for p in prior.vae.parameters())
    assert not prior.denoiser.training and not prior.vae.training
    # SDPA attention (diffusers' default processor)
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert all(isinstance(p, AttnProcessor2_0) for p in prior.denoiser.attn_processors.values())


def test_encode_decode_shapes_and_range(prior):
    hr = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    z = prior.encode(hr)
    assert z.shape == (2, 4, 16, 12) and z.dtype == torch.float32  # latent on the LR grid
    x = prior.decode(z)
    assert x.shape == (2, 3, 64, 48) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    # mode = posterior mean x scaling factor
    direct = prior.vae.encode(hr * 2 - 1).latent_dist.mode() * prior.vae.config.scaling_factor
    torch.testing.assert_close(z, direct, rtol=0, atol=0)
    # decode divides by the scaling factor and maps [-1, 1] -> [0, 1]
    direct = ((prior.vae.decode(z / prior.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(x, direct, rtol=0, atol=0)


def test_encode_sample(prior):
    hr = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mode = prior.encode(hr)
    s1 = prior.encode(hr, sample=True, generator=torch.Generator().manual_seed(5))
    s2 = prior.encode(hr, sample=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2) and not torch.equal(s1, mode)


# ---- LR conditioning ---------------------------------------------------------------------------------------


def test_noise_lr_matches_low_res_scheduler(prior):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 3, 8, 8, generator=g)
    k = torch.tensor([0, 20, 350])
    out = prior.noise_lr(y, k, generator=torch.Generator().manual_seed(1))
    eta = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    expected = prior.low_res_scheduler.add_noise(2 * y - 1, eta, k)  # what the diffusers upscale pipeline does
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    a = prior.low_res_scheduler.alphas_cumprod[k].view(-1, 1, 1, 1)
    torch.testing.assert_close(out, a.sqrt() * (2 * y - 1) + (1 - a).sqrt() * eta, rtol=1e-6, atol=1e-6)
    # level 0 is *nearly* clean: alpha_bar_0 = 1 - beta_0 = 1 - 1e-4, so the noise std is 0.01 (not exactly 0)
    assert abs(prior.low_res_alphas_cumprod[0].item() - (1 - 1e-4)) < 1e-7
    assert (out[0] - (2 * y[0] - 1)).abs().max() < 0.06
    with pytest.raises(ValueError):
        prior.noise_lr(y, torch.tensor([0, 20, 351]))


def test_noise_lr_level_20_std(prior):
    y = torch.full((4, 3, 128, 128), 0.5)  # 2y - 1 = 0: the output is pure noise
    out = prior.noise_lr(y, 20, generator=torch.Generator().manual_seed(0))
    assert abs(out.std().item() - 0.052) < 1.5e-3
    assert abs(out.std().item() - (1 - prior.low_res_alphas_cumprod[20]).sqrt().item()) < 5e-4


# ---- denoiser ----------------------------------------------------------------------------------------------


def test_predict_shape_dtype_and_text(prior):
    z_t, t, lr, k = _inputs()
    cond, uncond = prior.text_embeddings()
    assert cond.shape == uncond.shape == (1, 77, 32)
    assert not torch.equal(cond, uncond)
    out_c = prior.predict(z_t, t, lr, k, text=cond)
    out_u = prior.predict(z_t, t, lr, k, text=None)
    assert out_c.shape == z_t.shape and out_c.dtype == torch.float32
    assert (out_c - out_u).abs().max() > 1e-4  # text reaches the UNet
    torch.testing.assert_close(out_u, prior.predict(z_t, t, lr, k, text=uncond), rtol=0, atol=0)
    # ints broadcast like (B,) tensors
    torch.testing.assert_close(prior.predict(z_t, t, lr, 20, text=cond), out_c, rtol=0, atol=0)


def test_noise_level_reaches_unet(prior):
    z_t, t, lr, k = _inputs()
    out20 = prior.predict(z_t, t, lr, k)
    out100 = prior.predict(z_t, t, lr, torch.full_like(k, 100))
    assert (out20 - out100).abs().max() > 1e-4
    # per-sample labels: changing sample 1's level leaves sample 0 untouched
    mixed = prior.predict(z_t, t, lr, torch.tensor([20, 100]))
    torch.testing.assert_close(mixed[0], out20[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1], out100[1], rtol=1e-5, atol=1e-6)


def test_extra_class_embedding(prior):
    z_t, t, lr, k = _inputs()
    base = prior.predict(z_t, t, lr, k)
    zeros = prior.predict(z_t, t, lr, k, extra_class_embedding=torch.zeros(2, prior.class_embedding_dim))
    assert torch.equal(base, zeros)
    extra = torch.randn(2, prior.class_embedding_dim, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = prior.predict(z_t, t, lr, k, extra_class_embedding=extra)
    assert (out - base).abs().max() > 1e-4
    # it is added to the class embedding output: same as shifting the embedding table by `extra` for these labels
    emb = prior.denoiser.class_embedding
    saved = emb.weight.data.clone()
    try:
        emb.weight.data[20] += extra[0].detach()
        shifted = prior.predict(z_t[:1], t[:1], lr[:1], k[:1])
    finally:
        emb.weight.data.copy_(saved)
    torch.testing.assert_close(shifted, out[:1].detach(), rtol=1e-5, atol=1e-5)
    # gradients reach the extra embedding (camera MLP) and z_t; the hook is cleared after the call
    out.square().mean().backward()
    assert extra.grad is not None and extra.grad.abs().sum() > 0
    assert prior._class_hook.extra is None
    torch.testing.assert_close(prior.predict(z_t, t, lr, k), base, rtol=0, atol=0)
    z = z_t.clone().requires_grad_(True)
    prior.predict(z, t, lr, k).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        prior.predict(z_t, t, lr, k, extra_class_embedding=torch.zeros(2, 7))


def test_text_encoder_released(prior):
    from transformers import CLIPTextModel

    assert prior.text_encoder_released
    assert not any(isinstance(v, CLIPTextModel) for v in vars(prior).values())


# ---- tiled VAE ---------------------------------------------------------------------------------------------


def _strip_group_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, nn.Identity())
        else:
            _strip_group_norm(child)


def _local_vae():
    """A VAE without any non-local op: no mid-block attention, GroupNorm (tile-wide statistics) -> identity."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[8, 8, 8],
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        layers_per_block=0,
        norm_num_groups=8,
        latent_channels=4,
        mid_block_add_attention=False,
    )
    _strip_group_norm(vae)
    return vae.double().eval()


@torch.no_grad()
def test_tiled_vae_exact_for_local_vae():
    from vsdsr_nerfstudio.sr.priors.tiled_vae import tiled_decode, tiled_encode

    vae = _local_vae()
    tile, overlap = 56, 44  # zero-weight margin = overlap // 4 = 11 latent px (44 image px)
    # empirical receptive-field radius, so the test proves what it claims: it must fit in the margin
    z = torch.randn(1, 4, 48, 48, dtype=torch.float64)
    z2 = z.clone()
    z2[..., 24, 24] += 1
    changed = torch.nonzero((vae.decode(z2).sample - vae.decode(z).sample).abs().amax(dim=(0, 1)) > 0)
    radius_out = max(96 - changed.min().item(), changed.max().item() - 96)
    assert radius_out <= (overlap * 4) // 4
    x = torch.randn(1, 3, 192, 192, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 96, 96] += 1
    changed = torch.nonzero((vae.encode(x2).latent_dist.mean - vae.encode(x).latent_dist.mean).abs().amax(dim=(0, 1)))
    assert max(24 - changed.min().item(), changed.max().item() - 24) <= overlap // 4

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 72, 64, generator=g, dtype=torch.float64)  # 3 x 2 tiles
    full = vae.decode(z).sample
    tiled = tiled_decode(vae, z, tile, overlap)
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-12)
    x = torch.randn(2, 3, 288, 256, generator=g, dtype=torch.float64)
    dist = vae.encode(x).latent_dist
    mean, logvar = tiled_encode(vae, x, tile, overlap)
    torch.testing.assert_close(mean, dist.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(logvar, dist.logvar, rtol=0, atol=1e-12)


@torch.no_grad()
def test_tiled_vae_close_with_attention(prior):
    """The tiny attention VAE with real tiling differs from the untiled one. Measured with random weights on a
    smooth 128x128 image, 24/8 tiles on a 32x32 latent: relative L2 error ~2e-3 (decode) from the mid-block
    attention alone (GroupNorm removed), ~0.19 with the tile-wide GroupNorm statistics as well. Tolerances:
    1e-2 and 0.3."""
    import copy

    from vsdsr_nerfstudio.sr.priors.tiled_vae import tiled_decode, tiled_encode

    g = torch.Generator().manual_seed(0)
    x = nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(128, 128), mode="bicubic")
    x = x.clamp(0, 1) * 2 - 1

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    attn_only = copy.deepcopy(prior.vae)
    _strip_group_norm(attn_only)
    for vae, tol in ((attn_only, 1e-2), (prior.vae, 0.3)):
        mean = vae.encode(x).latent_dist.mean
        assert rel(tiled_encode(vae, x, 24, 8)[0], mean) < tol
        assert rel(tiled_decode(vae, mean, 24, 8), vae.decode(mean).sample) < tol


@torch.no_grad()
def test_single_tile_is_untouched(prior):
    from vsdsr_nerfstudio.sr.priors.tiled_vae import tiled_decode, tiled_encode

    z = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tiled_decode(prior.vae, z, 16, 4), prior.vae.decode(z).sample)
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(tiled_encode(prior.vae, x, 16, 4)[0], prior.vae.encode(x).latent_dist.mean)
    # tile <= 0 disables tiling
    assert torch.equal(tiled_decode(prior.vae, z, 0, 0), prior.vae.decode(z).sample)
    assert torch.equal(tiled_encode(prior.vae, x, 0, 0)[0], prior.vae.encode(x).latent_dist.mean)


def test_tile_layout():
    from vsdsr_nerfstudio.sr.priors.tiled_vae import blend_ramp, tile_starts

    assert tile_starts(10, 16, 4) == [0]
    assert tile_starts(64, 48, 40) == [0, 8, 16]
    assert tile_starts(504, 128, 32) == [0, 96, 192, 288, 376]
    with pytest.raises(ValueError):
        tile_starts(64, 16, 16)
    # two tiles overlapping by exactly `overlap` have complementary weights
    size, overlap = 20, 8
    a = blend_ramp(size, False, True, overlap, torch.device("cpu"), torch.float64)
    b = blend_ramp(size, True, False, overlap, torch.device("cpu"), torch.float64)
    torch.testing.assert_close(a[size - overlap :] + b[:overlap], torch.ones(overlap, dtype=torch.float64))
    assert b[: overlap // 4].eq(0).all() and a[-(overlap // 4) :].eq(0).all()


def test_prior_tiles_large_inputs(prior):
    """With a tile smaller than the latent, the prior's encode/decode go through the tiles."""
    from vsdsr_nerfstudio.sr.priors.tiled_vae import tiled_decode

    old = prior.vae_tile_size, prior.vae_tile_overlap
    try:
        prior.vae_tile_size, prior.vae_tile_overlap = 8, 4
        z = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(0))
        x = prior.decode(z)
        expected = ((tiled_decode(prior.vae, z / prior.scaling_factor, 8, 4) + 1) / 2).clamp(0, 1)
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
        assert prior.encode(x).shape == (1, 4, 16, 12)
    finally:
        prior.vae_tile_size, prior.vae_tile_overlap = old


# ---- text --------------------------------------------------------------------------------------------------


def test_byte_tokenizer():
    from vsdsr_nerfstudio.sr.priors.text import ByteTokenizer

    tok = ByteTokenizer()
    ids = tok(["horns, high resolution, 4K, photo", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[1, :3].tolist() == [256, 257, 258] and ids.max() < tok.vocab_size == 259
    long = tok("x" * 500)
    assert long.shape == (1, 77) and long[0, -1].item() == 257


def _minimal_clip_bpe(folder: Path) -> int:
    """A CLIP BPE vocabulary without merges (byte-level symbols only): ``vocab.json`` + ``merges.txt``, no
    ``tokenizer_config.json``. Returns the vocabulary size."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
    bs += list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def test_clip_tokenizer_path(tiny_folder, tmp_path):
    """A folder with a real ``CLIPTokenizer`` (as the hub repo has) instead of the byte-tokenizer marker."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from vsdsr_nerfstudio.sr.priors import sd_x4_configs
    from vsdsr_nerfstudio.sr.priors.text import load_tokenizer

    folder = tmp_path / "clip-tok"
    shutil.copytree(tiny_folder, folder)
    shutil.rmtree(folder / "tokenizer")
    vocab_size = _minimal_clip_bpe(folder / "tokenizer")
    shutil.rmtree(folder / "text_encoder")
    cfg = dict(sd_x4_configs.TINY_TEXT_ENCODER, vocab_size=vocab_size, bos_token_id=512, eos_token_id=513)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg)).eval()
    text_encoder.save_pretrained(folder / "text_encoder")

    tokenize = load_tokenizer(str(folder), local_files_only=True)
    ids = tokenize(["horns, high resolution, 4K, photo", ""])
    assert ids.shape == (2, 77) and ids[0, 0].item() == 512 and ids[1, :2].tolist() == [512, 513]
    loaded = SRPriorConfig(model_path=str(folder), prompt="horns, high resolution, 4K, photo").setup("cpu")
    cond, uncond = loaded.text_embeddings()
    with torch.no_grad():
        expected = text_encoder(ids)[0]
    torch.testing.assert_close(cond, expected[:1], rtol=0, atol=0)
    torch.testing.assert_close(uncond, expected[1:], rtol=0, atol=0)


# ---- loading, saving, errors -------------------------------------------------------------------------------


def test_save_load_identical(prior, tiny_folder):
    assert {p.name for p in tiny_folder.iterdir()} >= {
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "low_res_scheduler",
        "model_index.json",
    }
    loaded = SRPriorConfig(model_path=str(tiny_folder)).setup(device="cpu")
    assert loaded.prediction_type == "v_prediction" and loaded.max_noise_level == 350
    for a, b in zip(prior.text_embeddings(), loaded.text_embeddings(), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(loaded.alphas_cumprod, prior.alphas_cumprod, rtol=0, atol=0)
    torch.testing.assert_close(loaded.low_res_alphas_cumprod, prior.low_res_alphas_cumprod, rtol=0, atol=0)
    z_t, t, lr, k = _inputs()
    cond = prior.text_embeddings()[0]
    assert torch.equal(prior.predict(z_t, t, lr, k, text=cond), loaded.predict(z_t, t, lr, k, text=cond))
    hr = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior.encode(hr), loaded.encode(hr))
    assert torch.equal(prior.decode(prior.encode(hr)), loaded.decode(loaded.encode(hr)))


def test_prediction_type_read_from_config(tiny_folder, tmp_path):
    folder = tmp_path / "eps"
    shutil.copytree(tiny_folder, folder)
    cfg_file = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    assert cfg["prediction_type"] == "v_prediction"
    cfg["prediction_type"] = "epsilon"
    cfg_file.write_text(json.dumps(cfg))
    assert SRPriorConfig(model_path=str(folder)).setup(device="cpu").prediction_type == "epsilon"


def test_missing_local_folder(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(PriorLoadError) as info:
        SRPriorConfig(model_path=str(missing)).setup(device="cpu")
    msg = str(info.value)
    assert "prior.model_path" in msg and str(missing) in msg and "tiny" in msg and "does not exist" in msg
    # a folder without the diffusers layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriorLoadError, match="unet"):
        SRPriorConfig(model_path=str(tmp_path / "empty")).setup(device="cpu")
    # relative path-like strings are not sent to the hub either
    with pytest.raises(PriorLoadError, match="does not exist"):
        SRPriorConfig(model_path="./no/such/upscaler").setup(device="cpu")


def test_light_import_and_offline_hub_id(tmp_path):
    """One subprocess (empty HF cache, HF_HUB_OFFLINE=1, so nothing touches the network): importing
    ``prior_config`` and building a config imports no diffusers/transformers/peft; then an uncached hub id raises
    PriorLoadError."""
    code = (
        "import sys\n"
        "from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig, PriorLoadError\n"
        "cfg = SRPriorConfig(model_path='stabilityai/stable-diffusion-x4-upscaler')\n"
        "print('HEAVY', [m for m in ('diffusers', 'transformers', 'peft') if m in sys.modules])\n"
        "try:\n"
        "    cfg.setup(device='cpu')\n"
        "except PriorLoadError as e:\n"
        "    print('PRIOR_LOAD_ERROR'); print(e)\n"
    )
    env = _subprocess_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout
    assert "HEAVY []" in out, out + res.stderr
    assert "PRIOR_LOAD_ERROR" in out, out + res.stderr
    assert "prior.model_path" in out and "HF_HUB_OFFLINE=1" in out and "tiny" in out


# ---- real configs ------------------------------------------------------------------------------------------


def test_real_architecture_configs():
    """The sd-x4-random architecture, built on the meta device (no memory): method.md section 1 values."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from vsdsr_nerfstudio.sr.priors import sd_x4_configs as c

    with torch.device("meta"):
        unet = UNet2DConditionModel(**c.SD_X4_UNET)
        vae = AutoencoderKL(**c.SD_X4_VAE)
        text = CLIPTextModel(CLIPTextConfig(**c.SD_X4_TEXT_ENCODER))

    def count(m):
        return sum(p.numel() for p in m.parameters())

    # checkpoint sizes of the hub repo in fp32: unet 1.89 GB, vae 221 MB, text encoder 1.36 GB
    assert 470e6 < count(unet) < 476e6 and 55e6 < count(vae) < 56e6 and 339e6 < count(text) < 342e6
    assert tuple(unet.class_embedding.weight.shape) == (1000, 1024)
    assert unet.conv_in.in_channels == 7 and unet.conv_out.out_channels == 4
    block = unet.down_blocks[1].attentions[0].transformer_blocks[0]
    assert block.only_cross_attention and block.attn1.to_k.in_features == 1024
    assert not unet.down_blocks[3].attentions[0].transformer_blocks[0].only_cross_attention
    assert vae.encoder.mid_block.attentions[0] is not None and vae.config.scaling_factor == 0.08333
    sched = DDIMScheduler.from_config(c.SD_X4_SCHEDULER)
    low = DDPMScheduler.from_config(c.SD_X4_LOW_RES_SCHEDULER)
    assert sched.config.prediction_type == "v_prediction" and sched.config.steps_offset == 1
    assert low.config.prediction_type == "epsilon"
    torch.testing.assert_close(sched.alphas_cumprod, low.alphas_cumprod)


def test_scene_prompt():
    cfg = SRPriorConfig()
    assert cfg.scene_prompt("horns") == "horns, high resolution, 4K, photo"
    assert cfg.scene_prompt(None) == cfg.prompt and cfg.negative_prompt == ""


def test_to_device_keeps_outputs_and_parameters(prior):
    z_t, t, lr, k = _inputs()
    before = prior.predict(z_t, t, lr, k)
    param = next(prior.denoiser.parameters())
    assert prior.to("cpu") is prior and prior.device == torch.device("cpu")
    assert next(prior.denoiser.parameters()) is param  # moved in place: optimisers stay valid
    torch.testing.assert_close(prior.predict(z_t, t, lr, k), before, rtol=0, atol=0)
