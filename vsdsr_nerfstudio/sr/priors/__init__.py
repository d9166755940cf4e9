"""Diffusion x4 priors behind one contract (``base.SRPrior``): configs that build them, the SD x4 upscaler
(tiled VAE, text encoder), the embedded pixel-space prior and its DDIM sampler. Only ``base`` and ``config`` are
import-light; the implementations import diffusers."""
