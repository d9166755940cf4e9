"""Triton kernels of the fused multiresolution hash-grid encoding (private; imports triton at module level).

Use :mod:`vsdsr_nerfstudio.models.triton_hash_encoding`, which imports this module lazily, so importing the plugin
never imports triton. The kernels reproduce nerfstudio 1.1.5's pure-torch ``HashEncoding.pytorch_fwd`` exactly:

- positions are scaled per level by ``scalings`` (float32, ``floor(min_res * growth**level)``), corners are
  ``floor`` and ``ceil`` of the scaled position (not ``floor + 1``: on an integer coordinate both corners coincide,
  so the encoding is continuous there and its derivative along that axis is 0, as in torch),
- every level is hashed (nerfstudio's torch path has no dense indexing of coarse levels, unlike tinycudann):
  ``(x * 1) ^ (y * 2654435761) ^ (z * 805459861)`` modulo the power-of-two table size, plus ``level * table_size``.
  nerfstudio computes this in int64 with a floor modulo; the low ``log2_hashmap_size`` bits of that are the same as
  the wrapped uint32 product/xor masked with ``table_size - 1`` here (also for negative coordinates: two's
  complement), so indices are bit-identical for any ``log2_hashmap_size <= 32``,
- trilinear interpolation with the ``ceil`` corner weighted by the offset ``scaled - floor(scaled)``, in the same
  lerp order as torch (x, then y, then z), compiled without fused multiply-adds so every product and sum is rounded
  as torch rounds it (the forward is bit-identical to torch's, in the interpreter and on the GPU),
- no clamping: points outside the unit cube are scaled, floored and hashed like any other, as in torch.

Layout: positions ``[N, 3]`` float32, table ``[num_levels * table_size, F]`` float32 (nerfstudio's ``hash_table``),
output ``[N, num_levels * F]`` (level-major within a row, as torch's flatten). Grid: ``(cdiv(N, BLOCK), num_levels)``,
one launch for all levels; the level is the slow grid axis, so the programs running at any time touch one level's
table (a few MB), which stays in L2. Backward: table gradients by atomic adds, position gradients (the derivative of
the interpolation weights, times the level's scaling, summed over levels) by atomic adds into ``[N, 3]``.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""Whether these kernels were built by Triton's CPU interpreter (``TRITON_INTERPRET=1`` when first imported)."""

# Block sizes from the H200 sweep of bench/bench_triton_hash_grid.py (4096x48 points, Nerfacto's grid): within ~5%
# of each other from 64 to 512 points per program; these were among the fastest.
FWD_BLOCK = 128
FWD_WARPS = 4
BWD_BLOCK = 256
BWD_WARPS = 4

# No fused multiply-adds: torch computes ``x * scaling`` and then ``scaled - floor(scaled)`` (and each lerp product
# and sum) as separately rounded operations. Contracted into an FMA, the offset is taken from the exact product, off
# by up to half an ulp of ``x * scaling`` (2.4e-4 at resolution 4096): 5e-4 in the encoding, seen on an H200.
_LAUNCH = dict(enable_fp_fusion=False)


@triton.jit
def _row(hx, hy, hz, level_base, HASH_MASK: tl.constexpr, F: tl.constexpr):
    """First table element of a corner: ``((hx ^ hy ^ hz) & mask + level * T) * F`` (int64)."""
    h = (hx ^ hy ^ hz) & HASH_MASK
    return (level_base + h.to(tl.int64)) * F


@triton.jit
def _corner_rows(
    x_ptr, scale_ptr, rows, rmask, level, TABLE_SIZE: tl.constexpr, HASH_MASK: tl.constexpr, F: tl.constexpr
):
    """Offsets, scaling and the 8 corners' first table elements of BLOCK points at one level, in nerfstudio's corner
    order: 0=(c,c,c) 1=(c,f,c) 2=(f,f,c) 3=(f,c,c) 4=(c,c,f) 5=(c,f,f) 6=(f,f,f) 7=(f,c,f) for (x, y, z), c = ceil and
    f = floor of the scaled position."""
    px = tl.load(x_ptr + rows * 3 + 0, mask=rmask, other=0.0)
    py = tl.load(x_ptr + rows * 3 + 1, mask=rmask, other=0.0)
    pz = tl.load(x_ptr + rows * 3 + 2, mask=rmask, other=0.0)
    s = tl.load(scale_ptr + level)
    sx = px * s
    sy = py * s
    sz = pz * s
    fx = tl.floor(sx)
    fy = tl.floor(sy)
    fz = tl.floor(sz)
    ox = sx - fx
    oy = sy - fy
    oz = sz - fz
    # Hash terms: coordinate * prime, wrapped to 32 bits (the low bits of nerfstudio's int64 products).
    hxf = fx.to(tl.int32).to(tl.uint32, bitcast=True)
    hxc = tl.ceil(sx).to(tl.int32).to(tl.uint32, bitcast=True)
    hyf = fy.to(tl.int32).to(tl.uint32, bitcast=True) * 2654435761
    hyc = tl.ceil(sy).to(tl.int32).to(tl.uint32, bitcast=True) * 2654435761
    hzf = fz.to(tl.int32).to(tl.uint32, bitcast=True) * 805459861
    hzc = tl.ceil(sz).to(tl.int32).to(tl.uint32, bitcast=True) * 805459861
    base = level.to(tl.int64) * TABLE_SIZE
    r0 = _row(hxc, hyc, hzc, base, HASH_MASK, F)
    r1 = _row(hxc, hyf, hzc, base, HASH_MASK, F)
    r2 = _row(hxf, hyf, hzc, base, HASH_MASK, F)
    r3 = _row(hxf, hyc, hzc, base, HASH_MASK, F)
    r4 = _row(hxc, hyc, hzf, base, HASH_MASK, F)
    r5 = _row(hxc, hyf, hzf, base, HASH_MASK, F)
    r6 = _row(hxf, hyf, hzf, base, HASH_MASK, F)
    r7 = _row(hxf, hyc, hzf, base, HASH_MASK, F)
    return ox, oy, oz, s, r0, r1, r2, r3, r4, r5, r6, r7


@triton.jit
def _hash_grid_fwd_kernel(
    x_ptr,
    scale_ptr,
    table_ptr,
    out_ptr,
    n_points,
    TABLE_SIZE: tl.constexpr,
    HASH_MASK: tl.constexpr,
    NUM_LEVELS: tl.constexpr,
    F: tl.constexpr,
    FP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    rows = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < n_points
    ox, oy, oz, s, r0, r1, r2, r3, r4, r5, r6, r7 = _corner_rows(
        x_ptr, scale_ptr, rows, rmask, level, TABLE_SIZE, HASH_MASK, F
    )
    feat = tl.arange(0, FP)
    m2 = rmask[:, None] & (feat < F)[None, :]
    fo = feat[None, :]
    v0 = tl.load(table_ptr + r0[:, None] + fo, mask=m2, other=0.0)
    v1 = tl.load(table_ptr + r1[:, None] + fo, mask=m2, other=0.0)
    v2 = tl.load(table_ptr + r2[:, None] + fo, mask=m2, other=0.0)
    v3 = tl.load(table_ptr + r3[:, None] + fo, mask=m2, other=0.0)
    v4 = tl.load(table_ptr + r4[:, None] + fo, mask=m2, other=0.0)
    v5 = tl.load(table_ptr + r5[:, None] + fo, mask=m2, other=0.0)
    v6 = tl.load(table_ptr + r6[:, None] + fo, mask=m2, other=0.0)
    v7 = tl.load(table_ptr + r7[:, None] + fo, mask=m2, other=0.0)
    ox2 = ox[:, None]
    oy2 = oy[:, None]
    oz2 = oz[:, None]
    f03 = v0 * ox2 + v3 * (1 - ox2)
    f12 = v1 * ox2 + v2 * (1 - ox2)
    f56 = v5 * ox2 + v6 * (1 - ox2)
    f47 = v4 * ox2 + v7 * (1 - ox2)
    f0312 = f03 * oy2 + f12 * (1 - oy2)
    f4756 = f47 * oy2 + f56 * (1 - oy2)
    enc = f0312 * oz2 + f4756 * (1 - oz2)
    tl.store(out_ptr + rows[:, None] * (NUM_LEVELS * F) + level * F + fo, enc, mask=m2)


@triton.jit
def _hash_grid_bwd_kernel(
    x_ptr,
    scale_ptr,
    table_ptr,
    gout_ptr,
    gtable_ptr,
    gx_ptr,
    n_points,
    TABLE_SIZE: tl.constexpr,
    HASH_MASK: tl.constexpr,
    NUM_LEVELS: tl.constexpr,
    F: tl.constexpr,
    FP: tl.constexpr,
    BLOCK: tl.constexpr,
    NEED_TABLE_GRAD: tl.constexpr,
    NEED_X_GRAD: tl.constexpr,
):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    rows = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < n_points
    ox, oy, oz, s, r0, r1, r2, r3, r4, r5, r6, r7 = _corner_rows(
        x_ptr, scale_ptr, rows, rmask, level, TABLE_SIZE, HASH_MASK, F
    )
    feat = tl.arange(0, FP)
    m2 = rmask[:, None] & (feat < F)[None, :]
    fo = feat[None, :]
    g = tl.load(gout_ptr + rows[:, None] * (NUM_LEVELS * F) + level * F + fo, mask=m2, other=0.0)
    ox2 = ox[:, None]
    oy2 = oy[:, None]
    oz2 = oz[:, None]
    if NEED_TABLE_GRAD:
        # The chain rule of torch's lerp tree: d enc / d v0 = oz * oy * ox, and so on.
        gz1 = g * oz2
        gz0 = g * (1 - oz2)
        g03 = gz1 * oy2
        g12 = gz1 * (1 - oy2)
        g47 = gz0 * oy2
        g56 = gz0 * (1 - oy2)
        tl.atomic_add(gtable_ptr + r0[:, None] + fo, g03 * ox2, mask=m2, sem="relaxed")
        tl.atomic_add(gtable_ptr + r3[:, None] + fo, g03 * (1 - ox2), mask=m2, sem="relaxed")
        tl.atomic_add(gtable_ptr + r1[:, None] + fo, g12 * ox2, mask=m2, sem="relaxed")
        tl.atomic_add(gtable_ptr + r2[:, None] + fo, g12 * (1 - ox2), mask=m2, sem="relaxed")
        tl.atomic_add(gtable_ptr + r4[:, None] + fo, g47 * ox2, mask=m2, sem="relaxed")
        tl.atomic_add(gtable_ptr + r7[:, None] + fo, g47 * (1 - ox2), mask=m2, sem="relaxed")
        tl.atomic_add(gtable_ptr + r5[:, None] + fo, g56 * ox2, mask=m2, sem="relaxed")
        tl.atomic_add(gtable_ptr + r6[:, None] + fo, g56 * (1 - ox2), mask=m2, sem="relaxed")
    if NEED_X_GRAD:
        v0 = tl.load(table_ptr + r0[:, None] + fo, mask=m2, other=0.0)
        v1 = tl.load(table_ptr + r1[:, None] + fo, mask=m2, other=0.0)
        v2 = tl.load(table_ptr + r2[:, None] + fo, mask=m2, other=0.0)
        v3 = tl.load(table_ptr + r3[:, None] + fo, mask=m2, other=0.0)
        v4 = tl.load(table_ptr + r4[:, None] + fo, mask=m2, other=0.0)
        v5 = tl.load(table_ptr + r5[:, None] + fo, mask=m2, other=0.0)
        v6 = tl.load(table_ptr + r6[:, None] + fo, mask=m2, other=0.0)
        v7 = tl.load(table_ptr + r7[:, None] + fo, mask=m2, other=0.0)
        f03 = v0 * ox2 + v3 * (1 - ox2)
        f12 = v1 * ox2 + v2 * (1 - ox2)
        f56 = v5 * ox2 + v6 * (1 - ox2)
        f47 = v4 * ox2 + v7 * (1 - ox2)
        f0312 = f03 * oy2 + f12 * (1 - oy2)
        f4756 = f47 * oy2 + f56 * (1 - oy2)
        # d offset / d position = scaling (the floor is piecewise constant, so it contributes nothing; on an
        # integer coordinate ceil == floor, the two corners are the same entry and the difference is exactly 0).
        d_ox = oz2 * (oy2 * (v0 - v3) + (1 - oy2) * (v1 - v2)) + (1 - oz2) * (oy2 * (v4 - v7) + (1 - oy2) * (v5 - v6))
        d_oy = oz2 * (f03 - f12) + (1 - oz2) * (f47 - f56)
        d_oz = f0312 - f4756
        gx = tl.sum(g * d_ox, axis=1) * s
        gy = tl.sum(g * d_oy, axis=1) * s
        gz = tl.sum(g * d_oz, axis=1) * s
        tl.atomic_add(gx_ptr + rows * 3 + 0, gx, mask=rmask, sem="relaxed")
        tl.atomic_add(gx_ptr + rows * 3 + 1, gy, mask=rmask, sem="relaxed")
        tl.atomic_add(gx_ptr + rows * 3 + 2, gz, mask=rmask, sem="relaxed")


def _check(positions: torch.Tensor, table: torch.Tensor, scalings: torch.Tensor, num_levels: int, f: int) -> None:
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be [N, 3], got {tuple(positions.shape)}")
    for name, t in (("positions", positions), ("hash_table", table), ("scalings", scalings)):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous float32, got {t.dtype} (contiguous={t.is_contiguous()})")
        if t.device != positions.device:
            raise ValueError(f"{name} is on {t.device}, positions on {positions.device}")
    if table.dim() != 2 or table.shape[1] != f or table.shape[0] % num_levels:
        raise ValueError(f"hash_table must be [num_levels * table_size, {f}], got {tuple(table.shape)}")
    if scalings.numel() != num_levels:
        raise ValueError(f"scalings must have {num_levels} entries, got {scalings.numel()}")
    if positions.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "The Triton hash-grid kernels got CPU tensors but were not built by Triton's interpreter: set "
            "TRITON_INTERPRET=1 before the first import to run them on CPU, or use the torch path."
        )


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else _NullCtx()


class _NullCtx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def hash_grid_forward(
    positions: torch.Tensor,
    table: torch.Tensor,
    scalings: torch.Tensor,
    log2_hashmap_size: int,
    num_levels: int,
    features_per_level: int,
    block: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> torch.Tensor:
    """Encode ``positions`` [N, 3] into [N, num_levels * features_per_level] (one launch for all levels)."""
    _check(positions, table, scalings, num_levels, features_per_level)
    table_size = 1 << log2_hashmap_size
    if table.shape[0] != num_levels * table_size:
        raise ValueError(f"hash_table has {table.shape[0]} rows, expected {num_levels} * 2**{log2_hashmap_size}")
    n = positions.shape[0]
    out = torch.empty((n, num_levels * features_per_level), device=positions.device, dtype=torch.float32)
    if n == 0:
        return out
    block = block or FWD_BLOCK
    grid = (triton.cdiv(n, block), num_levels)
    with _device_ctx(positions):
        _hash_grid_fwd_kernel[grid](
            positions,
            scalings,
            table,
            out,
            n,
            TABLE_SIZE=table_size,
            HASH_MASK=table_size - 1,
            NUM_LEVELS=num_levels,
            F=features_per_level,
            FP=triton.next_power_of_2(features_per_level),
            BLOCK=block,
            num_warps=num_warps or FWD_WARPS,
            **_LAUNCH,
        )
    return out


def hash_grid_backward(
    grad_out: torch.Tensor,
    positions: torch.Tensor,
    table: torch.Tensor,
    scalings: torch.Tensor,
    log2_hashmap_size: int,
    num_levels: int,
    features_per_level: int,
    need_table_grad: bool = True,
    need_positions_grad: bool = True,
    block: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``sum(grad_out * forward(...))`` w.r.t. positions [N, 3] and the table (dense, like torch's
    indexing backward); None where not asked for."""
    _check(positions, table, scalings, num_levels, features_per_level)
    n = positions.shape[0]
    grad_out = grad_out.to(torch.float32).contiguous()
    if grad_out.shape != (n, num_levels * features_per_level):
        raise ValueError(f"grad_out must be [{n}, {num_levels * features_per_level}], got {tuple(grad_out.shape)}")
    gtable = torch.zeros_like(table) if need_table_grad else None
    gx = torch.zeros_like(positions) if need_positions_grad else None
    if n == 0 or not (need_table_grad or need_positions_grad):
        return gx, gtable
    table_size = 1 << log2_hashmap_size
    block = block or BWD_BLOCK
    grid = (triton.cdiv(n, block), num_levels)
    with _device_ctx(positions):
        _hash_grid_bwd_kernel[grid](
            positions,
            scalings,
            table,
            grad_out,
            gtable if gtable is not None else table,  # unused pointer when the grad is not asked for
            gx if gx is not None else positions,
            n,
            TABLE_SIZE=table_size,
            HASH_MASK=table_size - 1,
            NUM_LEVELS=num_levels,
            F=features_per_level,
            FP=triton.next_power_of_2(features_per_level),
            BLOCK=block,
            NEED_TABLE_GRAD=need_table_grad,
            NEED_X_GRAD=need_positions_grad,
            num_warps=num_warps or BWD_WARPS,
            **_LAUNCH,
        )
    return gx, gtable
