"""NIQE (Mittal et al., "Making a 'Completely Blind' Image Quality Analyzer", 2013) in torch, CPU or GPU.

A port of BasicSR 1.4.2's ``basicsr/metrics/niqe.py`` (``calculate_niqe``, ``niqe``, ``compute_feature``,
``estimate_aggd_param``) and of the MATLAB-style ``imresize`` of ``basicsr/utils/matlab_functions.py``
(Apache-2.0, see ``assets/NOTICE.md``), with the official MATLAB pristine parameters that BasicSR ships
(``assets/niqe_pris_params.npz``). Lower is better.

NIQE is numerically fragile: flat image regions normalise to exact zeros or to values a few float32 ulps from
zero, whose *signs* decide which pixels enter the left/right AGGD statistics, and each block's shape parameter is an
argmin over a grid. A float64 re-implementation of the same algorithm therefore differs from BasicSR by ~0.02
(1008x756) to ~0.1 (smooth or small images). This port instead reproduces BasicSR's float32 arithmetic operation by
operation, as BasicSR runs it under NumPy 2 (NEP 50 keeps the AGGD scalars in float32):

- grey / Y conversion from the float32 ``[0, 1]`` image, scaled to ``[0, 255]`` and rounded (half to even);
- the 7x7 Gaussian filtering is accumulated in float64 and rounded to float32 (``scipy.ndimage.convolve`` on a
  float32 image); the local variance, the normalisation and the block products are float32;
- every ``np.mean`` over float32 data is NumPy's pairwise summation, emulated bit for bit by
  :func:`masked_pairwise_sum` (a correctly rounded mean instead moves NIQE by up to ~5e-4 on the fern images);
- the x0.5 antialiased bicubic resize makes BasicSR's very float32 ``Tensor.mv`` calls, on the CPU even for a
  GPU image; float32 square roots and divisions by constants are correctly rounded (torch's vectorised CPU sqrt
  and CUDA's division by a Python scalar are not);
- features, their mean / covariance and the Mahalanobis-like distance are float64.

Result: on CPU and on GPU this port equals BasicSR 1.4.2 (NumPy 2) run on the same host to ~1e-11 (checked on 42
fern images and the BIC images of ``shared/metrics/REFERENCE.md``, both conversions, on an AMD EPYC host, and on
the REFERENCE.md images on an Intel Xeon host, CPU and H100). BasicSR itself, and so this port, depends slightly on
the host through the float32 rounding of the CPU BLAS gemv in the resize: the Intel host gives up to 1.2e-4 (1008x756)
and 7.2e-4 (504x378) away from REFERENCE.md, the AMD host REFERENCE.md's 4 decimals. (BasicSR under NumPy 1.x
differs by up to ~7e-4 too: float64 promotion of the AGGD scalars, float32 sums chunked by 8192.)

The per-block features are computed for all 96x96 blocks at once (no Python loop over blocks).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from importlib import resources
from typing import List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

ConvertTo = Literal["y", "gray"]

PARAMS_RESOURCE = "assets/niqe_pris_params.npz"
BLOCK_SIZE = 96
# NumPy's pairwise summation: blocks of at most 128 elements summed with 8 accumulators (PW_BLOCKSIZE).
_PW_BLOCKSIZE = 128
_PW_UNROLL = 8
# Neighbour shifts of the paired-product features (BasicSR ``compute_feature``), as (rows, columns).
_SHIFTS: Tuple[Tuple[int, int], ...] = ((0, 1), (1, 0), (1, 1), (1, -1))
# Values per call of ``masked_pairwise_sum`` from ``_numpy_mean`` (bounds the memory of the emulation).
_MAX_CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NiqeParams:
    """The NIQE pristine model: MVG mean ``(36,)``, covariance ``(36, 36)`` and the 7x7 Gaussian window (float64)."""

    mu_pris: Float[Tensor, "36"]
    cov_pris: Float[Tensor, "36 36"]
    gaussian_window: Float[Tensor, "7 7"]


@functools.lru_cache(maxsize=1)
def _load_params_numpy() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = (resources.files("vsdsr_nerfstudio") / PARAMS_RESOURCE).read_bytes()
    with np.load(io.BytesIO(data)) as npz:
        return (
            np.asarray(npz["mu_pris_param"], dtype=np.float64).reshape(-1),
            np.asarray(npz["cov_pris_param"], dtype=np.float64),
            np.asarray(npz["gaussian_window"], dtype=np.float64),
        )


def load_niqe_params(device: Union[str, torch.device, None] = None) -> NiqeParams:
    """The packaged pristine parameters (``vsdsr_nerfstudio/assets/niqe_pris_params.npz``) as float64 tensors."""
    mu, cov, window = _load_params_numpy()
    return NiqeParams(
        mu_pris=torch.from_numpy(mu).to(device),
        cov_pris=torch.from_numpy(cov).to(device),
        gaussian_window=torch.from_numpy(window).to(device),
    )


@functools.lru_cache(maxsize=1)
def _aggd_tables_numpy() -> Tuple[np.ndarray, ...]:
    """The shape grid of ``estimate_aggd_param`` and the gamma-function ratios BasicSR evaluates on it."""
    gam = np.arange(0.2, 10.001, 0.001)  # exactly BasicSR's grid (9801 values)
    recip = np.reciprocal(gam)
    g = np.vectorize(math.gamma, otypes=[np.float64])
    r_gam = np.square(g(recip * 2)) / (g(recip) * g(recip * 3))
    # ``gamma(1 / alpha)`` etc. as BasicSR writes them for the selected alpha.
    g1, g2, g3 = g(1 / gam), g(2 / gam), g(3 / gam)
    beta_factor = np.sqrt(g1 / g3)
    mean_factor = g2 / g1
    return gam, r_gam, beta_factor, mean_factor


@functools.lru_cache(maxsize=4)
def _aggd_tables(device: torch.device) -> Tuple[Tensor, ...]:
    return tuple(torch.from_numpy(t).to(device) for t in _aggd_tables_numpy())


# ----------------------------------------------------------------------------------------------------------------
# Colour conversion (as BasicSR: float32 image in [0, 1] -> [0, 255], rounded)
# ----------------------------------------------------------------------------------------------------------------


def _true_div(x: Float[Tensor, "*S"], divisor: float) -> Float[Tensor, "*S"]:
    """IEEE (correctly rounded) ``x / divisor``. CUDA divides by a Python scalar as ``x * (1 / divisor)``."""
    return x / torch.full_like(x, divisor)


def _as_bgr_over_255(rgb: Float[Tensor, "3 H W"]) -> Float[Tensor, "3 H W"]:
    """BasicSR's ``img.astype(float32) / 255.`` for the float32 image ``rgb * 255`` (identity for ``uint8 / 255``)."""
    return _true_div(rgb.float() * 255.0, 255.0)


def rgb_to_y_255(rgb: Float[Tensor, "3 H W"]) -> Float[Tensor, "H W"]:
    """BT.601 luma ``16 + 65.481 R + 128.553 G + 24.966 B`` in ``[0, 255]``, rounded to integers (float32).

    As BasicSR ``to_y_channel`` + ``round``: the dot product in float64, ``/ 255`` rounded to float32, ``* 255`` in
    float32, then round half to even.
    """
    x = _as_bgr_over_255(rgb).double()
    y = x[2] * 24.966 + x[1] * 128.553 + x[0] * 65.481 + 16.0
    return (_true_div(y, 255.0).float() * 255.0).round()


def _fma32(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 fused multiply-add ``a * b + c`` (one rounding), through float64."""
    return (a.double() * b.double() + c.double()).float()


def rgb_to_gray_255(rgb: Float[Tensor, "3 H W"]) -> Float[Tensor, "H W"]:
    """Grey ``0.299 R + 0.587 G + 0.114 B`` in ``[0, 255]``, rounded to integers (float32).

    As BasicSR ``cv2.cvtColor(img / 255., cv2.COLOR_BGR2GRAY) * 255.`` + ``round``: float32 coefficients and
    float32 fused multiply-adds in the order of OpenCV's IPP kernel (``fma(R, cr, fma(B, cb, G * cg))``), ``* 255``
    in float32, round half to even.
    """
    x = _as_bgr_over_255(rgb)
    cr, cg, cb = (torch.tensor(c, dtype=torch.float32, device=x.device) for c in (0.299, 0.587, 0.114))
    gray = _fma32(x[0], cr, _fma32(x[2], cb, x[1] * cg))
    return (gray * 255.0).round()


def to_niqe_input(rgb: Float[Tensor, "3 H W"], convert_to: ConvertTo = "y") -> Float[Tensor, "H W"]:
    """The single-channel, integer-valued ``[0, 255]`` image NIQE sees for an RGB image in ``[0, 1]``."""
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"expected an RGB image of shape (3, H, W), got {tuple(rgb.shape)}")
    if convert_to == "y":
        return rgb_to_y_255(rgb)
    if convert_to == "gray":
        return rgb_to_gray_255(rgb)
    raise ValueError(f"convert_to must be 'y' or 'gray', got {convert_to!r}")


# ----------------------------------------------------------------------------------------------------------------
# MATLAB-style bicubic resize (BasicSR ``imresize``)
# ----------------------------------------------------------------------------------------------------------------


def _cubic(x: Float[Tensor, "*S"]) -> Float[Tensor, "*S"]:
    absx = torch.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    return (1.5 * absx3 - 2.5 * absx2 + 1) * ((absx <= 1).type_as(absx)) + (
        -0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2
    ) * (((absx > 1) * (absx <= 2)).type_as(absx))


def resize_weights_indices(
    in_length: int, out_length: int, scale: float, antialiasing: bool = True
) -> Tuple[Float[Tensor, "O K"], Tensor, int, int]:
    """BasicSR ``calculate_weights_indices`` (bicubic, float32, on CPU).

    Returns the ``(out_length, K)`` weights, the ``(out_length,)`` first input index of every output in the
    symmetrically padded input, and the padding lengths at the start and at the end.
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        kernel_width = kernel_width / scale
    x = torch.linspace(1, out_length, out_length)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    indices = left.view(out_length, 1).expand(out_length, p) + torch.linspace(0, p - 1, p).view(1, p).expand(
        out_length, p
    )
    distance_to_center = u.view(out_length, 1).expand(out_length, p) - indices
    if scale < 1 and antialiasing:
        weights = scale * _cubic(distance_to_center * scale)
    else:
        weights = _cubic(distance_to_center)
    weights = weights / torch.sum(weights, 1).view(out_length, 1).expand(out_length, p)
    zero_count = torch.sum(weights == 0, 0)
    if not math.isclose(zero_count[0], 0, rel_tol=1e-6):
        indices, weights = indices.narrow(1, 1, p - 2), weights.narrow(1, 1, p - 2)
    if not math.isclose(zero_count[-1], 0, rel_tol=1e-6):
        indices, weights = indices.narrow(1, 0, p - 2), weights.narrow(1, 0, p - 2)
    sym_len_s = int(-indices.min() + 1)
    sym_len_e = int(indices.max() - in_length)
    first = (indices[:, 0] + sym_len_s - 1).long()
    return weights.contiguous(), first, sym_len_s, sym_len_e


def _symmetric_pad(img: Float[Tensor, "C H W"], dim: int, start: int, end: int) -> Float[Tensor, "C h w"]:
    """MATLAB ``symmetric`` padding (edge pixel repeated) of ``start`` / ``end`` pixels along ``dim``."""
    parts = [img]
    if start > 0:
        parts.insert(0, img.narrow(dim, 0, start).flip(dim))
    if end > 0:
        parts.append(img.narrow(dim, img.shape[dim] - end, end).flip(dim))
    return torch.cat(parts, dim=dim).contiguous()


@torch.no_grad()
def imresize(img: Float[Tensor, "*C H W"], scale: float, antialiasing: bool = True) -> Float[Tensor, "*C h w"]:
    """MATLAB ``imresize(img, scale, 'bicubic')`` as BasicSR implements it (float32, not rounded).

    Output size ``ceil(H * scale) x ceil(W * scale)``; with ``antialiasing`` the kernel is widened by ``1 / scale``
    when downsampling. Like BasicSR, every output row (then column) is one float32 ``Tensor.mv`` on the same strided
    views (a Python loop over the ``h + w`` output lines): NIQE depends on these float32 roundings at the 1e-4 level,
    and no plain re-ordering of the sums reproduces MKL's gemv.
    """
    squeeze = img.ndim == 2
    img = img.float()[None] if squeeze else img.float()
    in_c, in_h, in_w = img.shape
    out_h, out_w = math.ceil(in_h * scale), math.ceil(in_w * scale)
    w_h, first_h, start_h, end_h = resize_weights_indices(in_h, out_h, scale, antialiasing)
    w_w, first_w, start_w, end_w = resize_weights_indices(in_w, out_w, scale, antialiasing)
    w_h, w_w = w_h.to(img.device), w_w.to(img.device)
    k_h, k_w = w_h.shape[1], w_w.shape[1]

    img_aug = _symmetric_pad(img, 1, start_h, end_h)
    out_1 = img.new_empty(in_c, out_h, in_w)
    for i, idx in enumerate(first_h.tolist()):
        for j in range(in_c):
            out_1[j, i, :] = img_aug[j, idx : idx + k_h, :].transpose(0, 1).mv(w_h[i])

    out_1_aug = _symmetric_pad(out_1, 2, start_w, end_w)
    out_2 = img.new_empty(in_c, out_h, out_w)
    for i, idx in enumerate(first_w.tolist()):
        for j in range(in_c):
            out_2[j, :, i] = out_1_aug[j, :, idx : idx + k_w].mv(w_w[i])
    return out_2[0] if squeeze else out_2


# ----------------------------------------------------------------------------------------------------------------
# NumPy float32 summation, bit for bit
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _perfect_split_depth(n: int) -> Optional[int]:
    """Depth ``d`` if NumPy's pairwise tree of ``n`` values is ``2**d`` runs of one length, a multiple of 8 (else None).

    True for the NIQE block sizes: 96 * 96 = 128 runs of 72, 48 * 48 = 32 runs of 72.
    """
    depth = 0
    while n > _PW_BLOCKSIZE:
        half = n // 2
        if half % _PW_UNROLL or 2 * half != n:
            return None
        n, depth = half, depth + 1
    return depth if n >= _PW_UNROLL and n % _PW_UNROLL == 0 else None


def _pairwise_sum_perfect(values: Float[Tensor, "N L"], depth: int) -> Float[Tensor, " N"]:
    """:func:`masked_pairwise_sum` of whole rows whose split tree is perfect (see :func:`_perfect_split_depth`)."""
    n_rows, length = values.shape
    n_runs = 1 << depth
    per_run = length // n_runs // _PW_UNROLL  # rows of 8 in each run
    octets = values.float().reshape(n_rows * n_runs, per_run, _PW_UNROLL).transpose(0, 1).contiguous()
    acc = octets[0]
    for r in range(1, per_run):
        acc = acc + octets[r]
    acc = acc.T
    res = (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))).view(n_rows, n_runs)
    for _ in range(depth):
        res = res[:, 0::2] + res[:, 1::2]
    return res[:, 0]


def masked_pairwise_sum(
    values: Float[Tensor, "N L"], mask: Optional[Bool[Tensor, "N L"]] = None
) -> Float[Tensor, " N"]:
    """``np.add.reduce(values[i][mask[i]])`` for every row, in float32 and in NumPy's exact summation order.

    NumPy 2 (2.4 and 2.5 checked; 1.26 first cuts arrays over 8192 values into 8192-value chunks) sums float32
    data pairwise: a run of ``n > 128`` elements is split at ``n2 = n // 2 - (n // 2) % 8`` and the halves added; a
    run of ``8 <= n <= 128`` is summed by 8 accumulators over rows of 8, combined as
    ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``, then its ``n % 8`` tail added one by one; a run of
    ``n < 8`` is added one by one. Every split point is a multiple of 8 from the start of the row and only a row's
    last run has a tail, so after compacting the selected values of each row to its front (zero padded) every run
    is a sequence of whole "octets". All rows are done at once: the split tree is built level by level, the runs
    are summed octet by octet, and the tree is folded back level by level. ``mask=None`` selects all.
    """
    n_rows, length = values.shape
    device = values.device
    if mask is None and _perfect_split_depth(length) is not None:
        return _pairwise_sum_perfect(values, _perfect_split_depth(length))
    width = (length // _PW_UNROLL + 1) * _PW_UNROLL  # row stride in the buffer, a multiple of 8, >= length
    zero_slot = n_rows * width  # one octet of zeros after the rows, then a scratch octet
    buf = values.new_zeros(n_rows * width + 2 * _PW_UNROLL, dtype=torch.float32)
    row_base = torch.arange(n_rows, device=device)[:, None] * width
    if mask is None:
        counts = torch.full((n_rows,), length, dtype=torch.long, device=device)
        dest = row_base + torch.arange(length, device=device)
    else:
        counts = mask.sum(dim=1)
        dest = torch.where(mask, torch.cumsum(mask, dim=1) - 1 + row_base, zero_slot + _PW_UNROLL)
    buf.scatter_(0, dest.reshape(-1), values.float().reshape(-1))
    octets = buf.view(-1, _PW_UNROLL)
    zero_octet = zero_slot // _PW_UNROLL

    # Split tree, level by level. Node ids 0..n_rows-1 are the rows; children get fresh ids.
    leaf_ids: List[Tensor] = []
    leaf_starts: List[Tensor] = []
    leaf_lens: List[Tensor] = []
    merges: List[Tuple[Tensor, Tensor, Tensor]] = []
    ids = torch.arange(n_rows, device=device)
    seg_start, seg_len = row_base[:, 0], counts  # starts as buffer positions (multiples of 8)
    next_id = n_rows
    while ids.numel() > 0:
        big = seg_len > _PW_BLOCKSIZE
        leaf_ids.append(ids[~big])
        leaf_starts.append(seg_start[~big])
        leaf_lens.append(seg_len[~big])
        p_ids, p_start, p_len = ids[big], seg_start[big], seg_len[big]
        k = p_ids.numel()
        if k == 0:
            break
        half = p_len // 2
        n2 = half - half % _PW_UNROLL
        left = torch.arange(next_id, next_id + k, device=device)
        right = left + k
        next_id += 2 * k
        merges.append((p_ids, left, right))
        ids = torch.cat([left, right])
        seg_start = torch.cat([p_start, p_start + n2])
        seg_len = torch.cat([n2, p_len - n2])

    l_ids, l_len = torch.cat(leaf_ids), torch.cat(leaf_lens)
    first = torch.cat(leaf_starts) // _PW_UNROLL
    n_full = l_len // _PW_UNROLL
    acc = octets.index_select(0, torch.where(n_full > 0, first, zero_octet))
    for r in range(1, int(n_full.max()) if n_full.numel() else 0):
        acc = acc + octets.index_select(0, torch.where(n_full > r, first + r, zero_octet))
    acc = acc.T
    res = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
    # the tail (n % 8 values) is the front of the next octet, zeros behind it
    tail = octets.index_select(0, torch.where(l_len % _PW_UNROLL > 0, first + n_full, zero_octet)).T
    for t in range(_PW_UNROLL - 1):
        res = res + tail[t]

    node = torch.zeros(next_id, dtype=torch.float32, device=device)
    node[l_ids] = res
    for p_ids, left, right in reversed(merges):
        node[p_ids] = node[left] + node[right]
    return node[:n_rows]


def _sqrt32(x: Float[Tensor, "*S"]) -> Float[Tensor, "*S"]:
    """Correctly rounded float32 square root (torch's vectorised CPU float32 sqrt is not: it is 1 ulp off often)."""
    return torch.sqrt(x.double()).float()


def _numpy_mean(values: Float[Tensor, "N L"], mask: Optional[Bool[Tensor, "N L"]] = None) -> Float[Tensor, " N"]:
    """``np.mean(values[i][mask[i]])`` in float32 (pairwise sum, divided in float64, rounded); NaN when empty."""
    total = torch.empty(values.shape[0], dtype=torch.float32, device=values.device)
    rows = max(1, _MAX_CHUNK_ELEMENTS // max(1, values.shape[1]))
    for i in range(0, values.shape[0], rows):
        total[i : i + rows] = masked_pairwise_sum(values[i : i + rows], None if mask is None else mask[i : i + rows])
    count = torch.full_like(total, values.shape[1], dtype=torch.float64) if mask is None else mask.sum(dim=1).double()
    return (total.double() / count).float()


# ----------------------------------------------------------------------------------------------------------------
# NIQE features
# ----------------------------------------------------------------------------------------------------------------


def _aggd_fit(x: Float[Tensor, "N L"]) -> Tuple[Tensor, Float[Tensor, " N"], Float[Tensor, " N"]]:
    """Grid position of the AGGD shape, and the float32 left / right standard deviations, of every row."""
    x = x.float()
    sq = x * x
    sides = _numpy_mean(torch.cat([sq, sq]), torch.cat([x < 0, x > 0])).view(2, -1)
    moments = _numpy_mean(torch.cat([x.abs(), sq])).view(2, -1)
    left_std, right_std = _sqrt32(sides[0]), _sqrt32(sides[1])
    gammahat = left_std / right_std
    rhat = moments[0] * moments[0] / moments[1]
    gammahat3 = (gammahat.double() ** 3).float()  # NumPy's float32 ``gammahat**3`` is powf: correctly rounded
    denom = gammahat * gammahat + 1
    rhatnorm = rhat * (gammahat3 + 1) * (gammahat + 1) / (denom * denom)

    _, r_gam, _, _ = _aggd_tables(x.device)
    target = rhatnorm.double()
    # r_gam is strictly increasing: the nearest grid value is a neighbour of the insertion point (the clamp makes
    # the end points win outside the grid). np.argmin takes the first of equal distances, and 0 for NaN.
    right = torch.searchsorted(r_gam, target).clamp(1, r_gam.numel() - 1)
    d_left = (r_gam[right - 1] - target) ** 2
    d_right = (r_gam[right] - target) ** 2
    pos = torch.where(d_left <= d_right, right - 1, right)
    pos = torch.where(torch.isnan(target), torch.zeros_like(pos), pos)
    return pos, left_std, right_std


def estimate_aggd_param(
    x: Float[Tensor, "N L"],
) -> Tuple[Float[Tensor, " N"], Float[Tensor, " N"], Float[Tensor, " N"]]:
    """AGGD parameters ``(alpha, beta_l, beta_r)`` (float64) of every row of ``x`` (float32), BasicSR's estimator.

    ``alpha`` is the grid value ``0.2, 0.201, ..., 10`` whose ``Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))`` is nearest
    to the bias-corrected moment ratio (first on ties; ``0.2`` when that ratio is NaN, as ``np.argmin`` does).
    A row without negative (positive) values has ``beta_l`` (``beta_r``) NaN.
    """
    pos, left_std, right_std = _aggd_fit(x)
    gam, _, beta_factor, _ = _aggd_tables(x.device)
    factor = beta_factor[pos]
    return gam[pos], left_std.double() * factor, right_std.double() * factor


def compute_feature(blocks: Float[Tensor, "N h w"]) -> Float[Tensor, "N 18"]:
    """The 18 NIQE features of every normalised block (BasicSR ``compute_feature``), float64.

    ``[alpha, (beta_l + beta_r) / 2]`` of the block, then ``[alpha, mean, beta_l, beta_r]`` of the products with its
    neighbour along (0, 1), (1, 0), (1, 1) and (1, -1); neighbours wrap around inside the block (``np.roll``).
    """
    n = blocks.shape[0]
    blocks = blocks.float()
    products = [blocks] + [blocks * torch.roll(blocks, shifts=s, dims=(1, 2)) for s in _SHIFTS]
    pos, left_std, right_std = _aggd_fit(torch.cat([p.reshape(n, -1) for p in products]))
    gam, _, beta_factor, mean_factor = _aggd_tables(blocks.device)
    alpha = gam[pos].view(len(products), n)
    beta_l = (left_std.double() * beta_factor[pos]).view(len(products), n)
    beta_r = (right_std.double() * beta_factor[pos]).view(len(products), n)
    ratio = mean_factor[pos].view(len(products), n)  # gamma(2 / alpha) / gamma(1 / alpha)
    feats = [alpha[0], (beta_l[0] + beta_r[0]) / 2]
    for k in range(1, len(products)):
        feats += [alpha[k], (beta_r[k] - beta_l[k]) * ratio[k], beta_l[k], beta_r[k]]
    return torch.stack(feats, dim=1)


def _gaussian_filter(img: Float[Tensor, "H W"], window: Float[Tensor, "k k"]) -> Float[Tensor, "H W"]:
    """``scipy.ndimage.convolve(img, window, mode='nearest')`` for a float32 image: float64 sum, float32 result.

    (A separable two-pass version is ~3x faster, but its float64 sums differ from SciPy's by ~1e-15 relative instead
    of ~1e-16, enough to flip a float32 rounding now and then; the 2-D sum keeps NIQE within 1e-11 of BasicSR.)
    """
    k = window.shape[-1]
    padded = F.pad(img.double()[None, None], (k // 2,) * 4, mode="replicate")
    kernel = torch.flip(window.to(img.device, torch.float64), dims=(0, 1))[None, None]
    return F.conv2d(padded, kernel)[0, 0].float()


def normalize_mscn(img: Float[Tensor, "H W"], window: Float[Tensor, "k k"]) -> Float[Tensor, "H W"]:
    """Mean-subtracted, contrast-normalised coefficients ``(I - mu) / (sigma + 1)`` (float32, as BasicSR)."""
    img = img.float()
    mu = _gaussian_filter(img, window)
    sigma = _sqrt32(torch.abs(_gaussian_filter(img * img, window) - mu * mu))
    return (img - mu) / (sigma + 1)


def image_blocks(img: Float[Tensor, "H W"], block_h: int, block_w: int) -> Float[Tensor, "N block_h block_w"]:
    """Non-overlapping blocks of an image whose size is a multiple of the block size, column-major block order."""
    h, w = img.shape
    nh, nw = h // block_h, w // block_w
    if nh * block_h != h or nw * block_w != w:
        raise ValueError(f"image {h}x{w} is not a multiple of the block size {block_h}x{block_w}")
    return img.reshape(nh, block_h, nw, block_w).permute(2, 0, 1, 3).reshape(nh * nw, block_h, block_w)


def crop_to_blocks(img: Float[Tensor, "H W"], block_h: int = BLOCK_SIZE, block_w: int = BLOCK_SIZE) -> Tensor:
    """Crop from the top-left to a whole number of blocks (as BasicSR and MATLAB NIQE)."""
    h, w = img.shape[-2:]
    return img[..., : (h // block_h) * block_h, : (w // block_w) * block_w]


def niqe_features(
    img: Float[Tensor, "H W"], window: Float[Tensor, "k k"], block_h: int = BLOCK_SIZE, block_w: int = BLOCK_SIZE
) -> Float[Tensor, "N 36"]:
    """The 36 multiscale features of every block: 18 at full size, 18 after the x0.5 MATLAB bicubic resize."""
    img = crop_to_blocks(img.float(), block_h, block_w)
    feats = []
    for scale in (1, 2):
        mscn = normalize_mscn(img, window)
        feats.append(compute_feature(image_blocks(mscn, block_h // scale, block_w // scale)))
        if scale == 1:
            # On CPU even for a GPU image: BasicSR's float32 roundings are those of the CPU BLAS gemv.
            img = imresize(_true_div(img, 255.0).cpu(), scale=0.5, antialiasing=True).to(img.device) * 255.0
    return torch.cat(feats, dim=1)


def niqe_distance(
    features: Float[Tensor, "N 36"], mu_pris: Float[Tensor, "36"], cov_pris: Float[Tensor, "36 36"]
) -> float:
    """``sqrt((mu_p - mu) pinv((cov_p + cov) / 2) (mu_p - mu)^T)`` with NaN-aware MVG fit of the block features."""
    features = features.double()
    mu = torch.nanmean(features, dim=0)
    valid = features[~torch.isnan(features).any(dim=1)]
    centred = valid - valid.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (valid.shape[0] - 1)
    diff = (mu_pris.to(mu) - mu)[None]
    inv = torch.linalg.pinv((cov_pris.to(cov) + cov) / 2, rtol=1e-15)
    return float(torch.sqrt(diff @ inv @ diff.T).squeeze())


def niqe(
    img: Float[Tensor, "H W"],
    params: Optional[NiqeParams] = None,
    block_size_h: int = BLOCK_SIZE,
    block_size_w: int = BLOCK_SIZE,
) -> float:
    """NIQE of a single-channel image in ``[0, 255]`` (BasicSR ``niqe``): crop to blocks, features, distance.

    Raises ``ValueError`` when fewer than two blocks fit (the covariance of one block is undefined).
    """
    if img.ndim != 2:
        raise ValueError(f"expected a single-channel image (H, W), got {tuple(img.shape)}")
    n_blocks = (img.shape[0] // block_size_h) * (img.shape[1] // block_size_w)
    if n_blocks < 2:
        raise ValueError(
            f"NIQE needs at least 2 blocks of {block_size_h}x{block_size_w}; image is {img.shape[0]}x{img.shape[1]}"
        )
    params = params if params is not None else load_niqe_params(img.device)
    feats = niqe_features(img, params.gaussian_window, block_size_h, block_size_w)
    return niqe_distance(feats, params.mu_pris, params.cov_pris)


def calculate_niqe(image: Float[Tensor, "3 H W"], convert_to: ConvertTo = "y", crop_border: int = 0) -> float:
    """NIQE of an RGB image in ``[0, 1]`` (lower is better), equal to BasicSR 1.4.2's ``calculate_niqe``.

    Matches ``basicsr.metrics.calculate_niqe(bgr * 255, crop_border, input_order='HWC', convert_to=...)``:
    ``convert_to='y'`` uses BT.601 luma, ``'gray'`` OpenCV's ``0.299 R + 0.587 G + 0.114 B``; the channel is scaled
    to ``[0, 255]``, ``crop_border`` pixels are removed on every side, the result is rounded to integers, cropped
    from the top-left to whole 96x96 blocks and scored. Runs on ``image.device``; ``image`` is used as float32
    and not clamped.
    """
    channel = to_niqe_input(image, convert_to)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border > 0:
        channel = channel[crop_border:-crop_border, crop_border:-crop_border]
    return niqe(channel)


def calculate_niqe_batch(
    images: Union[Float[Tensor, "B 3 H W"], Sequence[Float[Tensor, "3 H W"]]],
    convert_to: ConvertTo = "y",
    crop_border: int = 0,
) -> Float[Tensor, " B"]:
    """:func:`calculate_niqe` of each image of a batch (or a list of differently sized images), float64 on CPU."""
    return torch.tensor([calculate_niqe(im, convert_to, crop_border) for im in images], dtype=torch.float64)
