"""Architecture configs of the Stable Diffusion x4 upscaler, as plain dicts (no diffusers import).

``SD_X4_*`` reproduce ``stabilityai/stable-diffusion-x4-upscaler`` (``unet/config.json``, ``vae/config.json``,
``scheduler/scheduler_config.json``, ``low_res_scheduler/scheduler_config.json``, ``text_encoder/config.json``,
``model_index.json``). They are used by the ``sd-x4-random`` preset (the real architecture with seeded random
weights, for GPU benchmarks without the hub) and as the reference the real download is checked against.

Source and cross-checks (see ``docs/prior.md``): the original LDM config
``Stability-AI/stablediffusion: configs/stable-diffusion/x4-upscaling.yaml`` converted with diffusers' own rules
(``diffusers/loaders/single_file_utils.py``: ``create_unet_diffusers_config_from_ldm``,
``create_vae_diffusers_config_from_ldm``), and the values in ``method.md`` section 1:

- UNet: ``model_channels 256 x channel_mult [1,2,2,4]`` -> ``block_out_channels [256,512,512,1024]``;
  ``attention_resolutions [2,4,8]`` -> no attention at the first level (``DownBlock2D``) and cross-attention at the
  three others; ``disable_self_attentions [T,T,T,F]`` -> ``only_cross_attention``; ``num_heads 8`` ->
  ``attention_head_dim 8`` (diffusers' legacy name for the head *count*); ``context_dim 1024``;
  ``use_linear_in_transformer`` -> ``use_linear_projection``; ``num_classes 1000`` -> ``num_class_embeds 1000``
  (an ``nn.Embedding(1000, 1024)`` added to the time embedding); ``image_size 512 // 4 = 128``.
- VAE: ``ch 128 x ch_mult [1,2,4]`` (3 levels, latent 4x smaller), ``z_channels 4``, ``num_res_blocks 2``,
  ``scale_factor 0.08333``. ``attn_resolutions: []`` but the encoder and decoder mid-blocks still have one
  attention layer each (``mid_block_add_attention`` defaults to True), which is what OOMs at full resolution.
- Schedulers: LDM ``parameterization "v"``, ``linear_start 1e-4``, ``linear_end 0.02``, 1000 steps; LDM's
  "linear" schedule is ``linspace(sqrt(b0), sqrt(b1))**2`` = diffusers' ``scaled_linear``. The low-res noise
  augmentation uses the same betas (``noise_schedule_config``) with ``max_noise_level 350``.
- Text: OpenCLIP ViT-H/14 text tower, penultimate layer (``layer: "penultimate"``): the diffusers conversion keeps
  23 of its 24 layers, then the final layer norm.

The ``TINY_*`` configs keep the exact structure (7 input channels, 4 latent channels, a 1000-way class embedding,
only-cross-attention blocks next to self+cross blocks, a 3-level VAE with mid-block attention, a CLIP text model)
at a size where a UNet forward on ``2x7x16x16`` takes milliseconds on a CPU. They mirror the dummy components of
diffusers' own upscale-pipeline tests.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

Config = Dict[str, Any]

# --------------------------------------------------------------------------------------------------------------
# stabilityai/stable-diffusion-x4-upscaler
# --------------------------------------------------------------------------------------------------------------

SD_X4_UNET: Config = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [256, 512, 512, 1024],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 7,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": 1000,
    "only_cross_attention": [True, True, True, False],
    "out_channels": 4,
    "sample_size": 128,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
"""``unet/config.json``: ``UNet2DConditionModel``, about 473 M parameters."""

SD_X4_VAE: Config = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "scaling_factor": 0.08333,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}
"""``vae/config.json``: ``AutoencoderKL`` with a 4x downscaling, 4-channel latent; run it in float32."""

SD_X4_SCHEDULER: Config = {
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
}
"""``scheduler/scheduler_config.json``: ``DDIMScheduler``, v-prediction."""

SD_X4_LOW_RES_SCHEDULER: Config = {
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "trained_betas": None,
    "variance_type": "fixed_small",
}
"""``low_res_scheduler/scheduler_config.json``: ``DDPMScheduler`` that noises the LR conditioning image."""

SD_X4_TEXT_ENCODER: Config = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "vocab_size": 49408,
}
"""``text_encoder/config.json``: ``CLIPTextModel`` = OpenCLIP-H text tower up to its penultimate layer
(77 x 1024 embeddings). The token ids in it are those of the SD 2 conversion and are unused here."""

SD_X4_MAX_NOISE_LEVEL: int = 350
"""``model_index.json``: ``max_noise_level`` of ``StableDiffusionUpscalePipeline``."""

# --------------------------------------------------------------------------------------------------------------
# Tiny preset: same classes and structure, small sizes, for tests and CPU runs
# --------------------------------------------------------------------------------------------------------------

TINY_UNET: Config = {
    "act_fn": "silu",
    "attention_head_dim": 4,
    "block_out_channels": [32, 32, 64],
    "cross_attention_dim": 32,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 7,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "num_class_embeds": 1000,
    "only_cross_attention": [True, True, False],
    "out_channels": 4,
    "sample_size": 16,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
"""Tiny ``UNet2DConditionModel``: time/class embedding width 128, 1000 noise-level classes."""

TINY_VAE: Config = {
    "act_fn": "silu",
    "block_out_channels": [16, 16, 32],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "out_channels": 3,
    "sample_size": 64,
    "scaling_factor": 0.08333,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}
"""Tiny ``AutoencoderKL``: 3 levels (latent 4x smaller), mid-block attention like the real one."""

TINY_TEXT_ENCODER: Config = {
    "attention_dropout": 0.0,
    "bos_token_id": 256,
    "eos_token_id": 257,
    "hidden_act": "gelu",
    "hidden_size": 32,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 258,
    "projection_dim": 32,
    "vocab_size": 260,
}
"""Tiny ``CLIPTextModel`` fed by the byte tokenizer of ``sr/priors/text.py`` (ids 0-255 bytes, 256 BOS, 257 EOS,
258 pad); 77 x 32 embeddings."""

PRESETS: Dict[str, Dict[str, Any]] = {
    "sd-x4-random": {
        "unet": SD_X4_UNET,
        "vae": SD_X4_VAE,
        "text_encoder": SD_X4_TEXT_ENCODER,
        "scheduler": SD_X4_SCHEDULER,
        "low_res_scheduler": SD_X4_LOW_RES_SCHEDULER,
        "max_noise_level": SD_X4_MAX_NOISE_LEVEL,
    },
    "tiny": {
        "unet": TINY_UNET,
        "vae": TINY_VAE,
        "text_encoder": TINY_TEXT_ENCODER,
        "scheduler": SD_X4_SCHEDULER,
        "low_res_scheduler": SD_X4_LOW_RES_SCHEDULER,
        "max_noise_level": SD_X4_MAX_NOISE_LEVEL,
    },
}
"""Component configs of the random-weight presets. Both use the real schedulers."""


def preset_configs(preset: str) -> Dict[str, Any]:
    """A deep copy of the component configs of ``preset`` (``"sd-x4-random"`` or ``"tiny"``)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown random-weight preset {preset!r}; choose one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[preset])
