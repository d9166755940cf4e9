"""Nerfacto on fern with the torch and the Triton hash grid side by side, in one process (issue #14, items 3-4).

For each backend, the `vsd-sr-embedded` pipeline (this package's Nerfacto settings) on fern (LR 504x378, 17 training
views): time per LR training step (mixed precision, 4096 rays, the model's own training callbacks) early in
training and at step 2000; the HR switch (bicubic 4x views written as the SR stage would); time per HR sync step;
and the 4x render of training views (rays/s, and the time for all 17 views). Then the 4x render path: chunk sizes
and autocast on the Triton model, each render compared in PSNR with the default path on the same weights (the
issue allows at most 0.1 dB), and the same weights rendered with the torch grid (parity of the whole model).

Run on the GPU machine (after `. bench/gpu_setup.sh`):
    python3 bench/bench_nerfacto_fern_backends.py --data .gpudata/fern_e2e --out $OUT/nerfacto_backends.json
Prints one JSON document (also written to --out).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

DEVICE = "cuda"
TINY = False
DOWNSCALE, LLFFHOLD = 8, 8


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def build_pipeline(data: Path, backend: str, seed: int = 0):
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    from vsdsr_nerfstudio.method_configs.vsd_sr_embedded import vsd_sr_embedded_config
    from vsdsr_nerfstudio.method_configs.vsd_sr_tiny import vsd_sr_tiny_config

    torch.manual_seed(seed)
    config = vsd_sr_tiny_config() if TINY else vsd_sr_embedded_config()
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.data = data
    config.pipeline.model.hash_backend = backend
    config.pipeline.datamanager.dataparser.downscale_factor = DOWNSCALE
    config.pipeline.datamanager.dataparser.llffhold = LLFFHOLD
    pipeline = config.pipeline.setup(device=DEVICE, test_mode="val", world_size=1, local_rank=0)
    pipeline.train()
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    scaler = torch.amp.GradScaler(DEVICE, enabled=DEVICE == "cuda")
    attrs = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=scaler, pipeline=pipeline, trainer=None)
    callbacks = pipeline.model.get_training_callbacks(attrs)
    before = [c for c in callbacks if TrainingCallbackLocation.BEFORE_TRAIN_ITERATION in c.where_to_run]
    after = [c for c in callbacks if TrainingCallbackLocation.AFTER_TRAIN_ITERATION in c.where_to_run]

    def train_step(step: int) -> None:
        for c in before:
            c.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()
        with torch.autocast(DEVICE, enabled=DEVICE == "cuda"):
            _, loss_dict, _ = pipeline.get_train_loss_dict(step=step)
            loss = sum(loss_dict.values())
        scaler.scale(loss).backward()
        optimizers.optimizer_scaler_step_all(scaler)
        scaler.update()
        optimizers.scheduler_step_all(step)
        for c in after:
            c.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)

    return pipeline, train_step


def time_steps(train_step, first: int, count: int, warmup: int = 5) -> float:
    for i in range(warmup):
        train_step(first + i)
    sync()
    t0 = time.perf_counter()
    for i in range(count):
        train_step(first + warmup + i)
    sync()
    return (time.perf_counter() - t0) / count


@torch.no_grad()
def render_views(pipeline, indices: List[int], chunk: int, autocast: str = "off") -> torch.Tensor:
    model = pipeline.model
    cameras = pipeline.datamanager.hr_cameras().to(DEVICE)
    old_chunk = model.config.eval_num_rays_per_chunk
    model.config.eval_num_rays_per_chunk = chunk
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast)
    model.eval()
    out = []
    try:
        for index in indices:
            bundle = cameras.generate_rays(camera_indices=index, keep_shape=True)
            with torch.autocast(DEVICE, dtype=dtype) if dtype else nullcontext():
                rgb = model.get_outputs_for_camera_ray_bundle(bundle)["rgb"]
            out.append(rgb.float().clamp(0, 1).cpu())
    finally:
        model.config.eval_num_rays_per_chunk = old_chunk
        model.train()
    return torch.stack(out)


def timed_render(pipeline, indices: List[int], chunk: int, autocast: str = "off"):
    sync()
    t0 = time.perf_counter()
    images = render_views(pipeline, indices, chunk, autocast)
    sync()
    seconds = time.perf_counter() - t0
    rays = images.shape[0] * images.shape[1] * images.shape[2]
    return images, seconds, rays / seconds


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a, b).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def hr_switch(pipeline) -> None:
    dm = pipeline.datamanager
    lr = dm.lr_images_chw()
    hr = F.interpolate(lr, scale_factor=dm.config.sr_scale, mode="bicubic", align_corners=False).clamp(0, 1)
    dm.write_views(hr.permute(0, 2, 3, 1).contiguous())


def bench_backend(data: Path, backend: str, lr_steps: int, hr_steps: int, render_views_n: int) -> Dict:
    pipeline, train_step = build_pipeline(data, backend)
    result: Dict = {"backend": pipeline.model.hash_backend}
    result["lr_step_ms_early"] = 1000 * time_steps(train_step, 0, lr_steps)
    result["lr_step_ms_at_2000"] = 1000 * time_steps(train_step, 2000, lr_steps)
    hr_switch(pipeline)
    result["hr_step_ms"] = 1000 * time_steps(train_step, 2200, hr_steps)
    result["peak_gib_training"] = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None
    n = pipeline.datamanager.num_train_views
    indices = list(range(min(render_views_n, n)))
    _, seconds, rays_per_s = timed_render(pipeline, indices, pipeline.model.config.eval_num_rays_per_chunk)
    result.update(render_views=len(indices), render_s=seconds, render_mrays_per_s=rays_per_s / 1e6)
    result["render_17_views_s_extrapolated"] = seconds * n / len(indices)
    return {"result": result, "pipeline": pipeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--lr-steps", type=int, default=60)
    parser.add_argument("--hr-steps", type=int, default=40)
    parser.add_argument("--torch-render-views", type=int, default=1)
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke run of the script)")
    parser.add_argument("--tiny", action="store_true", help="vsd-sr-tiny sizes (a CPU smoke run)")
    parser.add_argument("--downscale-factor", type=int, default=8)
    parser.add_argument("--llffhold", type=int, default=8)
    args = parser.parse_args()
    global DEVICE, TINY, DOWNSCALE, LLFFHOLD
    DEVICE, TINY, DOWNSCALE, LLFFHOLD = args.device, args.tiny, args.downscale_factor, args.llffhold
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    report: Dict = {"device": name, "torch_version": torch.__version__}

    torch_run = bench_backend(args.data, "torch", args.lr_steps, args.hr_steps, args.torch_render_views)
    report["torch"] = torch_run["result"]
    torch_pipeline = torch_run.pop("pipeline")
    print(json.dumps(report, indent=1), flush=True)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    triton_run = bench_backend(args.data, "triton" if DEVICE == "cuda" else "auto", args.lr_steps, args.hr_steps, 17)
    report["triton"] = triton_run["result"]
    pipeline = triton_run["pipeline"]
    print(json.dumps(report, indent=1), flush=True)

    # the 4x render path on the Triton model: chunk size x autocast, against the default path on the same weights
    view = [0]
    default_chunk = pipeline.model.config.eval_num_rays_per_chunk
    reference, _, _ = timed_render(pipeline, view, default_chunk)
    variants = []
    for chunk in (default_chunk, 1 << 15, 1 << 16, 1 << 17):
        for autocast in ("off", "bf16", "fp16"):
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            images, seconds, rays_per_s = timed_render(pipeline, view, chunk, autocast)
            variants.append(
                {
                    "chunk": chunk,
                    "autocast": autocast,
                    "mrays_per_s": rays_per_s / 1e6,
                    "psnr_vs_default_db": psnr(images, reference),
                    "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None,
                }
            )
            print(json.dumps(variants[-1]), flush=True)
    report["render_variants_triton_view0"] = variants
    # whole-model parity: the Triton model's weights rendered with the torch grid
    torch_pipeline.model.load_state_dict(copy.deepcopy(pipeline.model.state_dict()))
    torch_image, _, _ = timed_render(torch_pipeline, view, default_chunk)
    report["psnr_triton_vs_torch_same_weights_db"] = psnr(reference, torch_image)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
