"""Parity of the Triton hash-grid kernels against nerfstudio's torch HashEncoding, run in Triton's CPU interpreter.

Run by tests/test_triton_hash_encoding.py in a subprocess with ``TRITON_INTERPRET=1`` (it must be set before the
kernels are first imported, and must not leak into other tests). Prints one JSON object with, per case, the largest
absolute differences of the forward values and of the gradients (table, positions) and the reference magnitudes,
plus coverage counts that show the cases hit what they claim (cell borders, points outside the unit cube, hash
collisions). The test asserts on them; this script only computes.

    TRITON_INTERPRET=1 python tests/triton_hash_parity.py
"""

from __future__ import annotations

import json
import os
import sys

import torch
from nerfstudio.field_components.encodings import HashEncoding

from vsdsr_nerfstudio.models.triton_hash_encoding import TritonHashEncoding, swap_hash_encodings


def _points(enc: HashEncoding, gen: torch.Generator) -> torch.Tensor:
    """Random points in the unit cube, points on cell borders of every level (some with one, some with all three
    coordinates on a border, incl. 0 and 1), and points outside [0, 1]."""
    inside = torch.rand(160, 3, generator=gen)
    borders = []
    for res in enc.scalings.tolist():
        k = torch.randint(0, int(res) + 1, (12, 3), generator=gen).float()
        on_all = k / res  # every coordinate on a border of this level
        on_one = torch.rand(12, 3, generator=gen)
        on_one[:, 1] = on_all[:, 1]  # only y on a border
        borders += [on_all, on_one]
    corners = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5], [1.0, 0.0, 0.25]])
    outside = torch.rand(80, 3, generator=gen) * 2.0 - 0.5  # [-0.5, 1.5)
    outside[:10, 0] = -outside[:10, 0].abs() - 0.01  # surely negative
    return torch.cat([inside, *borders, corners, outside])


def _coverage(enc: HashEncoding, x: torch.Tensor) -> dict:
    scaled = x[:, None, :] * enc.scalings.view(-1, 1)
    on_border = (scaled == torch.floor(scaled)).any(dim=-1)
    corners = 8 * x.shape[0]
    with torch.no_grad():
        idx = enc.hash_fn(torch.floor(scaled).int())  # one corner per point and level
    finest = idx[:, -1]
    return {
        "point_levels_on_border": int(on_border.sum()),
        "points_outside": int(((x < 0) | (x > 1)).any(dim=-1).sum()),
        "points_negative": int((x < 0).any(dim=-1).sum()),
        "finest_level_distinct_rows": int(finest.unique().numel()),
        "finest_level_cells": int(torch.unique(torch.floor(scaled[:, -1]), dim=0).shape[0]),
        "corner_lookups": corners,
    }


def _case(name: str, seed: int, batch_shape=None, **kwargs) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ref = HashEncoding(implementation="torch", **kwargs)
    with torch.no_grad():
        ref.hash_table.uniform_(-1.0, 1.0, generator=gen)  # O(1) values so float32 tolerances mean something
    tri = TritonHashEncoding(**kwargs)
    tri.load_state_dict(ref.state_dict())
    x = _points(ref, gen)
    if batch_shape is not None:
        x = x[: int(torch.tensor(batch_shape).prod())].reshape(*batch_shape, 3)
    grad_out = torch.randn(*x.shape[:-1], ref.get_out_dim(), generator=gen)

    x_ref = x.clone().requires_grad_(True)
    out_ref = ref(x_ref)
    out_ref.backward(grad_out)
    x_tri = x.clone().requires_grad_(True)
    assert tri.uses_triton(x_tri), "the Triton path is not taken: is TRITON_INTERPRET=1 set?"
    out_tri = tri(x_tri)
    out_tri.backward(grad_out)
    table_full = tri.hash_table.grad.clone()

    # Table gradient alone (positions without grad) and position gradient alone (frozen table).
    tri.hash_table.grad = None
    tri(x.clone()).backward(grad_out)
    table_only = tri.hash_table.grad.clone()
    tri.hash_table.requires_grad_(False)
    x_only = x.clone().requires_grad_(True)
    tri(x_only).backward(grad_out)
    tri.hash_table.requires_grad_(True)

    return {
        "case": name,
        "shape_ok": tuple(out_tri.shape) == tuple(out_ref.shape) and out_tri.dtype == out_ref.dtype,
        "fwd_max_abs": (out_tri - out_ref).abs().max().item(),
        "fwd_ref_max": out_ref.abs().max().item(),
        "grad_table_max_abs": (table_full - ref.hash_table.grad).abs().max().item(),
        "grad_table_only_max_abs": (table_only - ref.hash_table.grad).abs().max().item(),
        "grad_table_ref_max": ref.hash_table.grad.abs().max().item(),
        "grad_x_max_abs": (x_tri.grad - x_ref.grad).abs().max().item(),
        "grad_x_only_max_abs": (x_only.grad - x_ref.grad).abs().max().item(),
        "grad_x_ref_max": x_ref.grad.abs().max().item(),
        **_coverage(ref, x.reshape(-1, 3)),
    }


def _field_case(seed: int = 3) -> dict:
    """A tiny NerfactoField built on the torch encoding, swapped to Triton: same outputs and gradients (the swap of
    a real field, run through the kernels)."""
    from nerfstudio.cameras.rays import Frustums, RaySamples
    from nerfstudio.field_components.field_heads import FieldHeadNames
    from nerfstudio.field_components.spatial_distortions import SceneContraction
    from nerfstudio.fields.nerfacto_field import NerfactoField

    torch.manual_seed(seed)
    field = NerfactoField(
        aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]),
        num_images=2,
        hidden_dim=16,
        num_levels=4,
        base_res=4,
        max_res=64,
        log2_hashmap_size=8,
        hidden_dim_color=16,
        appearance_embedding_dim=4,
        spatial_distortion=SceneContraction(order=float("inf")),
        implementation="torch",
    )
    gen = torch.Generator().manual_seed(seed)
    n_rays, n_samples = 6, 8
    origins = (torch.rand(n_rays, 1, 3, generator=gen) - 0.5).expand(n_rays, n_samples, 3)
    directions = torch.nn.functional.normalize(torch.randn(n_rays, 1, 3, generator=gen), dim=-1)
    directions = directions.expand(n_rays, n_samples, 3)
    starts = torch.linspace(0.05, 2.5, n_samples + 1)
    samples = RaySamples(
        frustums=Frustums(
            origins=origins.contiguous(),
            directions=directions.contiguous(),
            starts=starts[:-1].view(1, -1, 1).expand(n_rays, n_samples, 1).contiguous(),
            ends=starts[1:].view(1, -1, 1).expand(n_rays, n_samples, 1).contiguous(),
            pixel_area=torch.full((n_rays, n_samples, 1), 1e-4),
        ),
        camera_indices=torch.zeros(n_rays, n_samples, 1, dtype=torch.long),
    )

    def run():
        field.zero_grad(set_to_none=True)
        out = field(samples)
        rgb, density = out[FieldHeadNames.RGB], out[FieldHeadNames.DENSITY]
        (rgb.square().sum() + density.sum()).backward()
        table = field.mlp_base.model[0].hash_table
        return rgb.detach(), density.detach(), table.grad.clone()

    rgb_t, dens_t, gtab_t = run()
    swapped = swap_hash_encodings(field, "triton")
    assert isinstance(field.mlp_base.model[0], TritonHashEncoding)
    rgb_x, dens_x, gtab_x = run()
    return {
        "case": "nerfacto_field_swap",
        "swapped": swapped,
        "rgb_max_abs": (rgb_x - rgb_t).abs().max().item(),
        "density_max_abs": (dens_x - dens_t).abs().max().item(),
        "density_ref_max": dens_t.abs().max().item(),
        "grad_table_max_abs": (gtab_x - gtab_t).abs().max().item(),
        "grad_table_ref_max": gtab_t.abs().max().item(),
    }


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1: the kernels must run in Triton's CPU interpreter")
    cases = [
        # Coarse levels whose grid fits in the table (res 2: 27 vertices <= 256) and fine ones that collide.
        _case("levels4_f2", 0, num_levels=4, min_res=2, max_res=64, log2_hashmap_size=8, features_per_level=2),
        # Odd feature count (padded lanes in the kernel), nerfacto-like level spacing, a batch shape.
        _case(
            "levels6_f3_batched",
            1,
            batch_shape=(20, 12),
            num_levels=6,
            min_res=4,
            max_res=256,
            log2_hashmap_size=9,
            features_per_level=3,
        ),
        # One feature per level, a single level (growth factor 1).
        _case("level1_f1", 2, num_levels=1, min_res=16, max_res=16, log2_hashmap_size=6, features_per_level=1),
    ]
    cases.append(_field_case())
    print(json.dumps(cases))


if __name__ == "__main__":
    main()
