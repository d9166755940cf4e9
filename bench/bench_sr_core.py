"""GPU benchmark of the SR core on the real Stable Diffusion x4 upscaler architecture (random weights).

One command (on a CUDA machine with the package installed):

    python bench/bench_sr_core.py [--steps 12] [--out results.json]

Measures, with the shipping defaults (bf16 UNet, fp32 tiled VAE, B=16 latent patches of 128x128, text CFG 10,
camera CFG 1, LoRA rank 4 updated every 3rd step with gradient checkpointing):
- VAE encode and decode of one 2016x1512 view (tiled), and peak memory;
- a VSD step without / with the LoRA update, an RSD step, an SDS step; peak memory of each;
- achieved FLOP/s of the UNet forwards against the card's dense bf16 peak (FLOPs counted with
  torch.utils.flop_counter on one UNet forward).
Timings: CUDA-synchronised wall clock, median over the timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from vsdsr_nerfstudio.data.resample import area_downsample
from vsdsr_nerfstudio.sr.core.stage import SRStage, SRStageConfig
from vsdsr_nerfstudio.sr.priors.config import SRPriorConfig

# Dense bf16 tensor-core peaks (no sparsity), from NVIDIA's datasheets.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.5, "H100 NVL": 835.0, "H200": 989.4, "A100": 312.0}


def card_peak(name: str) -> float:
    """Dense bf16 peak (TFLOP/s) of the named card; H100 SXM if the variant is not in the name."""
    for key, value in BF16_PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return value
    return BF16_PEAK_TFLOPS["H100 SXM"] if "H100" in name else float("nan")


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> List[float]:
    """CUDA-synchronised wall times of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def unet_forward_flops(prior, batch: int, size: int) -> int:
    """FLOPs of one UNet forward on ``batch`` latent patches of ``size`` x ``size``."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(batch, prior.latent_channels, size, size, device=prior.device)
    lr = torch.randn(batch, 3, size, size, device=prior.device)
    t = torch.full((batch,), 500, device=prior.device, dtype=torch.long)
    level = torch.full((batch,), 20, device=prior.device, dtype=torch.long)
    text = prior.text_embeddings()[0].expand(batch, -1, -1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        prior.predict(z, t, lr, level, text=text)
    return int(counter.get_total_flops())


def stage_step_times(prior, guidance: str, steps: int, views: int, hw) -> Dict[str, object]:
    """Median step time (and peak memory) of one guidance, LoRA-update steps reported separately."""
    config = SRStageConfig(guidance=guidance)
    stage = SRStage(config, prior)
    h, w = hw
    renders = torch.rand(views, 3, h, w)
    lr_images = area_downsample(renders, 4)
    c2w = torch.eye(4).repeat(views, 1, 1)
    c2w[:, 0, 3] = torch.linspace(-0.5, 0.5, views)
    stage.begin(renders, lr_images, c2w, num_steps=steps + 3)
    stage.step()  # warm-up (cuDNN/SDPA autotuning, LoRA optimiser state)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    plain, with_lora = [], []
    for _ in range(steps):
        start = time.perf_counter()
        stats = stage.step()
        torch.cuda.synchronize()
        (with_lora if stats.lora is not None else plain).append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30
    stage.finish()
    result = {"step_s": statistics.median(plain) if plain else None, "peak_gib": peak, "steps": len(plain)}
    if with_lora:
        result["step_with_lora_update_s"] = statistics.median(with_lora)
        result["lora_update_s"] = statistics.median(with_lora) - (statistics.median(plain) if plain else 0.0)
        result["lora_steps"] = len(with_lora)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per guidance (after one warm-up)")
    parser.add_argument("--views", type=int, default=2, help="views in the stage (the cost does not depend on it)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    results: Dict[str, object] = {"device": name, "torch": torch.__version__}

    start = time.perf_counter()
    prior = SRPriorConfig(prior="sd-x4-random", unet_dtype="bf16").setup(device=device)
    results["setup_s"] = time.perf_counter() - start
    results["unet_params_m"] = sum(p.numel() for p in prior.denoiser.parameters()) / 1e6

    # VAE on one 2016x1512 view (tiled; fp32).
    image = torch.rand(1, 3, 1512, 2016, device=device)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        enc = timed(lambda: prior.encode(image), repeats=3)
        latent = prior.encode(image)
        enc_peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        dec = timed(lambda: prior.decode(latent), repeats=3)
        dec_peak = torch.cuda.max_memory_allocated() / 2**30
    results["vae_encode_2016x1512_s"] = statistics.median(enc)
    results["vae_decode_2016x1512_s"] = statistics.median(dec)
    results["vae_encode_peak_gib"], results["vae_decode_peak_gib"] = enc_peak, dec_peak

    # Raw UNet forward throughput: the CFG batch of a VSD/RSD step is 2 x B = 32 patches of 128x128.
    flops32 = unet_forward_flops(prior, 32, 128)
    z = torch.randn(32, prior.latent_channels, 128, 128, device=device)
    lr = torch.randn(32, 3, 128, 128, device=device)
    t = torch.full((32,), 500, device=device, dtype=torch.long)
    level = torch.full((32,), 20, device=device, dtype=torch.long)
    text = prior.text_embeddings()[0].expand(32, -1, -1)
    with torch.no_grad():
        fwd = statistics.median(timed(lambda: prior.predict(z, t, lr, level, text=text), repeats=10, warmup=3))
    peak = card_peak(name)
    results["unet_forward_32x128_s"] = fwd
    results["unet_forward_32x128_tflop"] = flops32 / 1e12
    results["unet_forward_achieved_tflops"] = flops32 / fwd / 1e12
    results["bf16_peak_tflops"] = peak
    results["unet_forward_mfu"] = flops32 / fwd / 1e12 / peak

    for guidance in ("vsd", "rsd", "sds"):
        results[guidance] = stage_step_times(prior, guidance, args.steps, args.views, (1512, 2016))
        torch.cuda.empty_cache()

    vsd = results["vsd"]
    # A VSD step runs 2B pretrained (CFG) + B LoRA forwards (gamma = 1): 1.5 x the 32-patch forward's FLOPs.
    results["vsd_step_achieved_tflops"] = 1.5 * flops32 / vsd["step_s"] / 1e12  # type: ignore[index]
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
