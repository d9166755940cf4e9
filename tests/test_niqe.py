"""NIQE (torch port of BasicSR 1.4.2): the BasicSR values of shared/metrics/REFERENCE.md, and data-free properties.

Reference tolerances. On the kind of host the reference was computed on (x86-64 AMD EPYC, torch's MKL) this port
gives every REFERENCE.md value to its 4 decimals (|delta| <= 5e-5), and on any host it equals BasicSR 1.4.2 run on
the same host to ~1e-11 (CPU, and GPU: float32 division and the resize are done as on the CPU). BasicSR itself is
host-dependent through the float32 rounding of MKL's gemv in its resize: on an Intel Xeon host it is 1.2e-4 off
REFERENCE.md on images_4/image005 (grey) and 7.2e-4 on images_8/image000 (Y; one block's AGGD shape moves one grid
step). Hence +-5e-4 for the 1008x756 images (images_4, BIC) and +-2e-3 for the 504x378 one.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from vsdsr_nerfstudio.metrics import niqe as nq

SHARED = Path(__file__).resolve().parents[2] / "shared"
FERN = SHARED / "data" / "llff" / "fern"

# shared/metrics/REFERENCE.md, BasicSR columns: (grey, Y).
REFERENCE = {
    "images_4/image000.png": (3.0672, 3.1110),
    "images_4/image005.png": (3.1047, 3.1320),
    "images_4/image010.png": (3.1411, 3.1909),
    "images_8/image000.png": (4.3915, 4.2924),
    "BIC": (7.1788, 7.1366),
    "BIC rounded to 8 bit": (7.1004, 7.0734),
}
TOLERANCE = {"images_8/image000.png": 2e-3}
DEFAULT_TOLERANCE = 5e-4
BIC_SHA256_PREFIX = "f8ed07f2b6245239"  # REFERENCE.md: float32 BIC array (C, H, W), CPU


@functools.lru_cache(maxsize=None)
def _load_png(name: str) -> Float[Tensor, "3 H W"]:
    path = FERN / name
    if not path.is_file():
        pytest.skip(f"shared test image {path} not found")
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).copy()
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


def _reference_input(name: str) -> Float[Tensor, "3 H W"]:
    if not name.startswith("BIC"):
        return _load_png(name)
    a = _load_png("images_4/image000.png")[None]
    bic = F.interpolate(F.avg_pool2d(a, 4), scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)[0]
    digest = hashlib.sha256(bic.contiguous().numpy().tobytes()).hexdigest()
    assert digest.startswith(BIC_SHA256_PREFIX), "the BIC input differs from REFERENCE.md's (torch interpolate?)"
    return torch.round(bic * 255.0) / 255.0 if name.endswith("8 bit") else bic


@pytest.mark.parametrize("convert_to", ["gray", "y"])
@pytest.mark.parametrize("name", list(REFERENCE))
def test_niqe_matches_basicsr_reference(name: str, convert_to: str) -> None:
    expected = REFERENCE[name][0 if convert_to == "gray" else 1]
    value = nq.calculate_niqe(_reference_input(name), convert_to=convert_to)
    assert abs(value - expected) <= TOLERANCE.get(name, DEFAULT_TOLERANCE), (name, convert_to, value, expected)


# ----------------------------------------------------------------------------------------------------------------
# data-free
# ----------------------------------------------------------------------------------------------------------------


def _pink_noise(h: int, w: int, seed: int = 0) -> Float[Tensor, "3 H W"]:
    """A seeded RGB 1/f-noise image in [0, 1] (natural-image-like spectrum)."""
    gen = torch.Generator().manual_seed(seed)
    fy, fx = torch.fft.fftfreq(h)[:, None], torch.fft.rfftfreq(w)[None]
    freq = torch.sqrt(fx**2 + fy**2)
    freq[0, 0] = 1.0
    shape = (3, h, w // 2 + 1)
    spectrum = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) / freq
    img = torch.fft.irfft2(spectrum, s=(h, w))
    return (0.5 + 0.15 * (img - img.mean()) / img.std()).clamp(0, 1)


def _gaussian_blur(img: Float[Tensor, "C H W"], sigma: float) -> Float[Tensor, "C H W"]:
    radius = int(3 * sigma)
    k = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(img[:, None], (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1))[:, 0]


def test_packaged_params_load() -> None:
    from importlib import resources

    data = (resources.files("vsdsr_nerfstudio") / nq.PARAMS_RESOURCE).read_bytes()
    assert hashlib.sha256(data).hexdigest().startswith("2a7c182a")  # BasicSR 1.4.2's file, unchanged
    params = nq.load_niqe_params()
    assert params.mu_pris.shape == (36,) and params.cov_pris.shape == (36, 36)
    assert params.gaussian_window.shape == (7, 7) and params.mu_pris.dtype == torch.float64
    assert torch.allclose(params.cov_pris, params.cov_pris.T)
    assert abs(float(params.gaussian_window.sum()) - 1.0) < 1e-12
    assert torch.equal(params.gaussian_window, params.gaussian_window.flip(0, 1))


def _numpy_pairwise_reference(values: np.ndarray) -> np.float32:
    """NumPy 2.x's float32 pairwise summation (``pairwise_sum`` of loops_utils.h.src), written out in Python."""
    n = len(values)
    if n < 8:
        res = np.float32(0.0)
        for v in values:
            res = np.float32(res + v)
        return res
    if n <= 128:
        r = values[:8].copy()
        i = 8
        while i < n - n % 8:
            r = (r + values[i : i + 8]).astype(np.float32)
            i += 8
        res = np.float32(np.float32(r[0] + r[1]) + np.float32(r[2] + r[3]))
        res = np.float32(res + np.float32(np.float32(r[4] + r[5]) + np.float32(r[6] + r[7])))
        for v in values[i:]:
            res = np.float32(res + v)
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return np.float32(_numpy_pairwise_reference(values[:n2]) + _numpy_pairwise_reference(values[n2:]))


@pytest.mark.parametrize("length", [1, 7, 8, 9, 100, 128, 129, 300, 1000, 2304])
def test_pairwise_sum_is_numpy_order(length: int) -> None:
    rng = np.random.default_rng(length)
    values = (rng.standard_normal((6, length)) ** 2).astype(np.float32)
    mask = rng.random((6, length)) < np.array([[0.0], [0.2], [0.5], [0.9], [1.0], [1.0]])
    expected_masked = [_numpy_pairwise_reference(v[m]) for v, m in zip(values, mask, strict=True)]
    expected_full = [_numpy_pairwise_reference(v) for v in values]
    got_masked = nq.masked_pairwise_sum(torch.from_numpy(values), torch.from_numpy(mask)).numpy()
    got_full = nq.masked_pairwise_sum(torch.from_numpy(values)).numpy()
    np.testing.assert_array_equal(got_masked, np.array(expected_masked, dtype=np.float32))
    np.testing.assert_array_equal(got_full, np.array(expected_full, dtype=np.float32))
    if np.lib.NumpyVersion(np.__version__) >= "2.4.0":  # NumPy 1.x adds > 8192 values in 8192-value chunks
        np.testing.assert_array_equal(got_full, np.add.reduce(values, axis=1))


def test_estimate_aggd_param() -> None:
    gen = torch.Generator().manual_seed(0)
    gaussian = 0.5 * torch.randn(2, 20000, generator=gen)
    positive = gaussian[:1].abs() + 0.1
    alpha, beta_l, beta_r = nq.estimate_aggd_param(torch.cat([gaussian, positive, torch.zeros(1, 20000)]))
    # a Gaussian is the AGGD with alpha = 2 and beta = sigma * sqrt(2)
    assert torch.allclose(alpha[:2], torch.full((2,), 2.0, dtype=torch.float64), atol=0.1)
    assert torch.allclose(beta_l[:2], torch.full((2,), 0.5 * 2**0.5, dtype=torch.float64), rtol=0.03)
    assert torch.allclose(beta_r[:2], torch.full((2,), 0.5 * 2**0.5, dtype=torch.float64), rtol=0.03)
    # no negative values: beta_l NaN, the ratio is NaN and np.argmin picks the first grid value
    assert torch.isnan(beta_l[2]) and float(alpha[2]) == pytest.approx(0.2) and torch.isfinite(beta_r[2])
    assert torch.isnan(beta_l[3]) and torch.isnan(beta_r[3]) and float(alpha[3]) == pytest.approx(0.2)


def test_blur_raises_niqe() -> None:
    sharp = _pink_noise(192, 288)
    for convert_to in ("y", "gray"):
        values = [
            nq.calculate_niqe(img, convert_to)
            for img in (sharp, _gaussian_blur(sharp, 2.0), _gaussian_blur(sharp, 4.0))
        ]
        assert values[0] < values[1] < values[2], values
        assert values[0] < 8.0 and values[2] > 10.0, values


def test_blocks_cropped_from_top_left() -> None:
    img = _pink_noise(200, 300, seed=1)
    value = nq.calculate_niqe(img)
    assert nq.calculate_niqe(img[:, :192, :288].clone()) == value  # 200x300 -> 2x3 blocks of 96
    garbage = img.clone()
    garbage[:, 192:, :] = torch.rand(3, 8, 300, generator=torch.Generator().manual_seed(2))
    garbage[:, :, 288:] = 1.0
    assert nq.calculate_niqe(garbage) == value
    assert nq.calculate_niqe(img, crop_border=4) == nq.calculate_niqe(img[:, 4:-4, 4:-4].clone())
    blocks = nq.image_blocks(torch.arange(4 * 6, dtype=torch.float32).view(4, 6), 2, 3)
    assert blocks[:, 0, 0].tolist() == [0.0, 12.0, 3.0, 15.0]  # column-major block order, as BasicSR


def test_too_small_raises() -> None:
    with pytest.raises(ValueError, match="at least 2 blocks"):
        nq.calculate_niqe(torch.rand(3, 100, 150))
    with pytest.raises(ValueError, match="convert_to"):
        nq.calculate_niqe(torch.rand(3, 192, 192), convert_to="rgb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        nq.calculate_niqe(torch.rand(1, 192, 192))


def test_imresize_half() -> None:
    const = torch.full((1, 40, 30), 0.37)
    out = nq.imresize(const, 0.5)
    assert out.shape == (1, 20, 15)
    assert torch.allclose(out, const[:, :20, :15], atol=1e-6)
    ramp = torch.arange(40, dtype=torch.float32)[:, None].expand(40, 30) / 40
    half = nq.imresize(ramp, 0.5)  # cubic convolution reproduces linear functions: pixel pairs averaged
    expected = (torch.arange(20, dtype=torch.float32) * 2 + 0.5)[:, None].expand(20, 15) / 40
    assert torch.allclose(half[3:-3], expected[3:-3], atol=1e-6)


def test_colour_conversion_is_rounded_luma() -> None:
    rgb = torch.eye(3).reshape(3, 1, 3)  # a red, a green and a blue pixel
    assert nq.rgb_to_gray_255(rgb).flatten().tolist() == [76.0, 150.0, 29.0]  # 0.299, 0.587, 0.114 of 255
    assert nq.rgb_to_y_255(rgb).flatten().tolist() == [81.0, 145.0, 41.0]  # 16 + 65.481, 128.553, 24.966


def test_batch_matches_single() -> None:
    imgs = torch.stack([_pink_noise(192, 192, seed=s) for s in (3, 4)])
    batch = nq.calculate_niqe_batch(imgs, "gray")
    assert batch.dtype == torch.float64 and batch.shape == (2,)
    assert batch.tolist() == [nq.calculate_niqe(img, "gray") for img in imgs]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu() -> None:
    img = _pink_noise(192, 288, seed=5)
    for convert_to in ("y", "gray"):
        assert nq.calculate_niqe(img.cuda(), convert_to) == pytest.approx(nq.calculate_niqe(img, convert_to), abs=1e-9)
