"""The pure-torch rasteriser of `vsd-sr-splat` (models/torch_rasterizer.py, the CPU path) against gsplat's CUDA
kernels on the same Gaussians, on a GPU: images, alphas and gradients, classic and antialiased modes.

    python3 bench/compare_rasterizers.py [--out results.json]

Random Gaussians in front of one camera (SH degree 3), 320x240. Prints max/mean absolute differences as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict

import torch


def scene(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * torch.tensor([2.0, 1.5, 2.0]) - torch.tensor([1.0, 0.75, -2.0])
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.5 - 3.5)
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.randn(n, 16, 3, generator=g) * 0.3
    viewmats = torch.eye(4)[None]
    width, height = 320, 240
    Ks = torch.tensor([[[300.0, 0.0, width / 2], [0.0, 300.0, height / 2], [0.0, 0.0, 1.0]]])
    return dict(
        means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats, Ks=Ks
    ), (width, height)


def run(rasterize, tensors: Dict[str, torch.Tensor], size, mode: str):
    leaves = {k: v.clone().cuda().requires_grad_(k in ("means", "colors", "opacities")) for k, v in tensors.items()}
    render, alpha, _ = rasterize(
        **leaves, width=size[0], height=size[1], sh_degree=3, rasterize_mode=mode, render_mode="RGB", packed=False
    )
    (render.square().sum() + alpha.sum()).backward()
    grads = {k: leaves[k].grad.detach() for k in ("means", "colors", "opacities")}
    return render.detach(), alpha.detach(), grads


def main() -> None:
    from gsplat.rendering import rasterization

    from vsdsr_nerfstudio.models.torch_rasterizer import rasterization_torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--gaussians", type=int, default=3000)
    args = parser.parse_args()
    tensors, size = scene(args.gaussians)
    report: Dict = {"gaussians": args.gaussians, "size": list(size), "device": torch.cuda.get_device_name(0)}
    for mode in ("classic", "antialiased"):
        ref_render, ref_alpha, ref_grads = run(rasterization, tensors, size, mode)
        render, alpha, grads = run(rasterization_torch, tensors, size, mode)
        entry = {
            "render_max_abs": (render - ref_render).abs().max().item(),
            "render_mean_abs": (render - ref_render).abs().mean().item(),
            "alpha_max_abs": (alpha - ref_alpha).abs().max().item(),
            "render_range": [ref_render.min().item(), ref_render.max().item()],
            "alpha_mean": ref_alpha.mean().item(),
        }
        for name, ref in ref_grads.items():
            scale = ref.abs().max().item()
            entry[f"grad_{name}_max_abs_rel"] = (grads[name] - ref).abs().max().item() / max(scale, 1e-12)
        report[mode] = entry
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
