"""GPU check and timings of the Triton hash-grid encoding (issue #14) against nerfstudio's torch encoding.

Needs a CUDA GPU with torch, triton and nerfstudio 1.1.5; our package is imported from this checkout (no install
needed). Prints one JSON object:

- ``parity``: forward values, table and position gradients of ``TritonHashEncoding`` vs nerfstudio's
  ``HashEncoding(implementation="torch")`` on the GPU, at Nerfacto's sizes with this package's settings
  (16 levels, 2 features, 2**19 entries, base 16, max_res 4096) and at the two proposal networks' sizes, on random
  points, points on cell borders and points outside the unit cube (table ~U(-1, 1), so the tolerances mean something).
- ``encoding``: median ms of the encoding forward (no grad) and forward+backward (positions and table with grad, as
  Nerfacto's field asks) for 4096x48 and 262144 points, torch vs Triton, and a sweep of the kernels' block size and
  warps.
- ``nerfacto``: nerfstudio's NerfactoModel with this package's settings (max_res 4096, average_init_density 0.01,
  camera optimiser off, mixed precision) on 4096 random rays: one training step (forward, losses, backward, Adam;
  in the proposal sampler's first steps, when the proposal nets train every step, and at step 2000, when they train
  every 3rd step) and an eval forward of 8192 rays, with the torch hash grid and with it swapped to Triton, and the
  largest difference between the two models' eval renders.

    python3 bench/bench_triton_hash_grid.py > triton.json
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from the checkout without installing

from nerfstudio.field_components.encodings import HashEncoding  # noqa: E402

from vsdsr_nerfstudio.models import _triton_hash_kernels as kernels  # noqa: E402
from vsdsr_nerfstudio.models.triton_hash_encoding import TritonHashEncoding, swap_hash_encodings  # noqa: E402

DEV = torch.device("cuda")
NERFACTO = dict(num_levels=16, min_res=16, max_res=4096, log2_hashmap_size=19, features_per_level=2)
PROPOSALS = [
    dict(num_levels=5, min_res=16, max_res=128, log2_hashmap_size=17, features_per_level=2),
    dict(num_levels=5, min_res=16, max_res=256, log2_hashmap_size=17, features_per_level=2),
]


def timed(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs (CUDA events), after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 4)


def test_points(enc: HashEncoding, n_random: int, gen: torch.Generator) -> torch.Tensor:
    inside = torch.rand(n_random, 3, generator=gen, device=DEV)
    borders = []
    for res in enc.scalings.tolist():
        k = torch.randint(0, int(res) + 1, (256, 3), generator=gen, device=DEV).float()
        on_one = torch.rand(256, 3, generator=gen, device=DEV)
        on_one[:, 0] = k[:, 0] / res
        borders += [k / res, on_one]
    outside = torch.rand(4096, 3, generator=gen, device=DEV) * 2.0 - 0.5
    return torch.cat([inside, *borders, outside])


def parity(settings: dict, n_random: int, seed: int) -> dict:
    gen = torch.Generator(device=DEV).manual_seed(seed)
    ref = HashEncoding(implementation="torch", **settings).to(DEV)
    with torch.no_grad():
        ref.hash_table.uniform_(-1.0, 1.0, generator=gen)
    tri = TritonHashEncoding(**settings).to(DEV)
    tri.load_state_dict(ref.state_dict())
    x = test_points(ref, n_random, gen)
    g = torch.randn(x.shape[0], ref.get_out_dim(), generator=gen, device=DEV)
    xr, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_r = ref(xr)
    out_r.backward(g)
    assert tri.uses_triton(xt)
    out_t = tri(xt)
    out_t.backward(g)
    res = {
        "settings": settings,
        "points": x.shape[0],
        "fwd_max_abs": (out_t - out_r).abs().max().item(),
        "fwd_ref_max": out_r.abs().max().item(),
        "grad_table_max_abs": (tri.hash_table.grad - ref.hash_table.grad).abs().max().item(),
        "grad_table_ref_max": ref.hash_table.grad.abs().max().item(),
        "grad_x_max_abs": (xt.grad - xr.grad).abs().max().item(),
        "grad_x_ref_max": xr.grad.abs().max().item(),
    }
    res["ok"] = bool(
        res["fwd_max_abs"] <= 1e-6
        and res["grad_table_max_abs"] <= 1e-5 * max(1.0, res["grad_table_ref_max"])
        and res["grad_x_max_abs"] <= 1e-5 * res["grad_x_ref_max"]
    )
    return res


def encoding_timings(n: int) -> dict:
    torch.manual_seed(0)
    ref = HashEncoding(implementation="torch", **NERFACTO).to(DEV)
    tri = TritonHashEncoding.from_hash_encoding(ref)
    x = torch.rand(n, 3, device=DEV)
    g = torch.randn(n, ref.get_out_dim(), device=DEV)

    def fwd(enc):
        def run():
            with torch.no_grad():
                enc(x)

        return run

    def fwd_bwd(enc, x_grad=True):
        def run():
            xx = x.detach().requires_grad_(x_grad)
            ref.hash_table.grad = None
            enc(xx).backward(g)

        return run

    out = {
        "points": n,
        "torch_fwd_ms": timed(fwd(ref), reps=10),
        "triton_fwd_ms": timed(fwd(tri)),
        "torch_fwd_bwd_ms": timed(fwd_bwd(ref), reps=10),
        "triton_fwd_bwd_ms": timed(fwd_bwd(tri)),
        "triton_fwd_bwd_table_grad_only_ms": timed(fwd_bwd(tri, x_grad=False)),
    }
    out["fwd_speedup"] = round(out["torch_fwd_ms"] / out["triton_fwd_ms"], 1)
    out["fwd_bwd_speedup"] = round(out["torch_fwd_bwd_ms"] / out["triton_fwd_bwd_ms"], 1)
    return out


def kernel_sweep(n: int) -> dict:
    """Forward and backward kernel times for block sizes and warps (the defaults are the module's constants)."""
    torch.manual_seed(0)
    enc = HashEncoding(implementation="torch", **NERFACTO).to(DEV)
    table = enc.hash_table.detach()
    scal = enc.scalings.to(DEV)
    x = torch.rand(n, 3, device=DEV)
    g = torch.randn(n, enc.get_out_dim(), device=DEV)
    cfg = (19, 16, 2)
    rows = []
    for block in (64, 128, 256, 512):
        for warps in (2, 4, 8):
            if block * 2 < 32 * warps:
                continue
            rows.append(
                {
                    "block": block,
                    "warps": warps,
                    "fwd_ms": timed(
                        lambda b=block, w=warps: kernels.hash_grid_forward(x, table, scal, *cfg, b, w), reps=10
                    ),
                    "bwd_ms": timed(
                        lambda b=block, w=warps: kernels.hash_grid_backward(g, x, table, scal, *cfg, True, True, b, w),
                        reps=10,
                    ),
                }
            )
    return {
        "points": n,
        "defaults": {"fwd": [kernels.FWD_BLOCK, kernels.FWD_WARPS], "bwd": [kernels.BWD_BLOCK, kernels.BWD_WARPS]},
        "rows": rows,
    }


def nerfacto(n_rays: int = 4096, eval_rays: int = 8192) -> dict:
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.cameras.rays import RayBundle
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.models.nerfacto import NerfactoModelConfig
    from torchmetrics.image import lpip

    # Nerfacto builds torchmetrics' LPIPS in populate_modules, which downloads AlexNet (no network on the GPU
    # machine); no eval metric is computed here.
    lpip.LearnedPerceptualImagePatchSimilarity = lambda *args, **kwargs: None
    config = NerfactoModelConfig(
        max_res=4096,
        average_init_density=0.01,
        implementation="torch",
        camera_optimizer=CameraOptimizerConfig(mode="off"),
    )
    torch.manual_seed(0)
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    model_t = config.setup(scene_box=scene_box, num_train_data=17, metadata={}, device=DEV).to(DEV)
    model_x = copy.deepcopy(model_t)
    swapped = swap_hash_encodings(model_x, "triton")
    # The proposal sampler calls the density_fns (bound methods): the copy's must be bound to the copy's networks.
    assert all(fn.__self__ is net for fn, net in zip(model_x.density_fns, model_x.proposal_networks, strict=True))
    assert all(isinstance(net.encoding, TritonHashEncoding) for net in model_x.proposal_networks)

    def rays(n: int, seed: int) -> RayBundle:
        gen = torch.Generator(device=DEV).manual_seed(seed)
        dirs = torch.nn.functional.normalize(
            torch.cat([torch.rand(n, 2, generator=gen, device=DEV) - 0.5, -torch.ones(n, 1, device=DEV)], -1), dim=-1
        )
        return RayBundle(
            origins=(torch.rand(n, 3, generator=gen, device=DEV) - 0.5) * 0.1,
            directions=dirs,
            pixel_area=torch.full((n, 1), 1e-6, device=DEV),
            camera_indices=torch.randint(0, 17, (n, 1), generator=gen, device=DEV),
        )

    train_rays = rays(n_rays, 1)
    batch = {"image": torch.rand(n_rays, 3, device=DEV)}
    eval_bundle = rays(eval_rays, 2)

    def step_fn(model, at_step=None):
        """One training step as nerfstudio's trainer runs it (autocast, GradScaler, Adam). ``at_step``: the
        proposal sampler's schedule at that step (None: its first 10 steps, proposal nets trained every step)."""
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-15)
        scaler = torch.amp.GradScaler("cuda")

        def run():
            model.train()
            if at_step is not None:
                model.proposal_sampler.step_cb(at_step)
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=True):
                outputs = model(train_rays)
                metrics = model.get_metrics_dict(outputs, batch)
                loss = sum(model.get_loss_dict(outputs, batch, metrics).values())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        return run

    def eval_fn(model):
        def run():
            model.eval()
            with torch.no_grad(), torch.autocast("cuda", enabled=True):
                return model(eval_bundle)["rgb"]

        return run

    rgb_t, rgb_x = eval_fn(model_t)().float(), eval_fn(model_x)().float()
    res = {
        "rays_per_step": n_rays,
        "samples_per_ray": {"proposals": list(config.num_proposal_samples_per_ray), "nerf": 48},
        "hash_encodings_swapped": swapped,
        "eval_rgb_max_abs_torch_vs_triton": (rgb_x - rgb_t).abs().max().item(),
        "torch_train_step_ms": timed(step_fn(model_t), reps=10),
        "triton_train_step_ms": timed(step_fn(model_x), reps=20),
        # At step 2000 (end of the package's LR pretraining) nerfacto's schedule trains the proposal nets every 3rd
        # step; the other steps run them without grad.
        "torch_train_step_ms_at_step_2000": timed(step_fn(model_t, 2000), reps=12),
        "triton_train_step_ms_at_step_2000": timed(step_fn(model_x, 2000), reps=24),
        "torch_eval_ms_per_8192_rays": timed(eval_fn(model_t), reps=10),
        "triton_eval_ms_per_8192_rays": timed(eval_fn(model_x), reps=20),
    }
    res["torch_eval_mrays_per_s"] = round(eval_rays / res["torch_eval_ms_per_8192_rays"] / 1e3, 3)
    res["triton_eval_mrays_per_s"] = round(eval_rays / res["triton_eval_ms_per_8192_rays"] / 1e3, 3)
    res["train_step_speedup"] = round(res["torch_train_step_ms"] / res["triton_train_step_ms"], 2)
    res["train_step_at_step_2000_speedup"] = round(
        res["torch_train_step_ms_at_step_2000"] / res["triton_train_step_ms_at_step_2000"], 2
    )
    return res


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench_triton_hash_grid.py needs a CUDA GPU")
    import triton

    t0 = time.time()
    summary = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "parity": [parity(NERFACTO, 262144, 0)] + [parity(p, 65536, i + 1) for i, p in enumerate(PROPOSALS)],
    }
    print(json.dumps(summary["parity"]), file=sys.stderr)  # progress, in case the run is cut short
    summary["encoding"] = [encoding_timings(4096 * 48), encoding_timings(262144)]
    print(json.dumps(summary["encoding"]), file=sys.stderr)
    summary["kernel_sweep"] = kernel_sweep(4096 * 48)
    print(json.dumps(summary["kernel_sweep"]), file=sys.stderr)
    try:
        summary["nerfacto"] = nerfacto()
    except Exception as exc:  # keep the encoding numbers if the model-level run breaks
        summary["nerfacto"] = {"error": f"{type(exc).__name__}: {exc}"}
    summary["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
