"""The Triton hash-grid encoding (vsdsr_nerfstudio.models.triton_hash_encoding) against nerfstudio's torch one.

The kernels themselves run in Triton's CPU interpreter, in a subprocess (``TRITON_INTERPRET=1`` must be set before
the kernels are first imported and must not leak into other tests): tests/triton_hash_parity.py computes the
differences, the assertions are here. Everything else (state_dict interchange, backend choice, the swap inside a real
NerfactoField, import-lightness) runs in-process on the torch path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.fields.density_fields import HashMLPDensityField
from nerfstudio.fields.nerfacto_field import NerfactoField

from vsdsr_nerfstudio.models import triton_hash_encoding as the
from vsdsr_nerfstudio.models.triton_hash_encoding import (
    TritonHashEncoding,
    resolve_hash_backend,
    swap_hash_encodings,
)

TESTS = Path(__file__).resolve().parent
ENC = dict(num_levels=4, min_res=2, max_res=64, log2_hashmap_size=8, features_per_level=2)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def parity() -> dict:
    """Run the interpreter parity script once (about 20 s, most of it importing nerfstudio)."""
    if importlib.util.find_spec("triton") is None:  # CPU-only torch builds ship without triton
        pytest.skip("triton is not installed: the kernels cannot run in its interpreter")
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(TESTS / "triton_hash_parity.py")],
        env=_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {case["case"]: case for case in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("name", ["levels4_f2", "levels6_f3_batched", "level1_f1"])
def test_kernels_match_torch_encoding(parity: dict, name: str) -> None:
    case = parity[name]
    assert case["shape_ok"]
    # Forward: the same float32 operations in the same order (bit-identical in the interpreter).
    assert case["fwd_ref_max"] > 0.5
    assert case["fwd_max_abs"] <= 1e-6
    # Table gradients (full backward, and the table-only backward of inputs without grad): sums of the same
    # products in another order.
    assert case["grad_table_ref_max"] > 1.0
    assert case["grad_table_max_abs"] <= 1e-5
    assert case["grad_table_only_max_abs"] <= 1e-5
    # Position gradients (incl. on cell borders, where ceil == floor): scaled by up to max_res, so relative.
    tol = 1e-5 * case["grad_x_ref_max"]
    assert case["grad_x_ref_max"] > 10.0
    assert case["grad_x_max_abs"] <= tol
    assert case["grad_x_only_max_abs"] <= tol


def test_parity_cases_cover_borders_outside_points_and_collisions(parity: dict) -> None:
    """The cases hit what they claim: points on cell borders at every level, points outside the unit cube (negative
    coordinates hash through two's complement), and hash collisions on the finest level."""
    for name in ("levels4_f2", "levels6_f3_batched", "level1_f1"):
        case = parity[name]
        assert case["point_levels_on_border"] >= 20, name
        assert case["finest_level_distinct_rows"] < case["finest_level_cells"], name  # pigeonhole: collisions
    for name in ("levels4_f2", "level1_f1"):
        assert parity[name]["points_outside"] >= 50
        assert parity[name]["points_negative"] >= 10


def test_swapped_nerfacto_field_runs_the_kernels_with_same_outputs(parity: dict) -> None:
    case = parity["nerfacto_field_swap"]
    assert case["swapped"] == 1
    assert case["density_ref_max"] > 0.0
    assert case["rgb_max_abs"] <= 1e-6
    assert case["density_max_abs"] <= 1e-5 * max(1.0, case["density_ref_max"])
    assert case["grad_table_ref_max"] > 0.0
    assert case["grad_table_max_abs"] <= 1e-5 * max(1.0, case["grad_table_ref_max"])


def test_same_init_and_state_dict_interchange() -> None:
    torch.manual_seed(7)
    ref = HashEncoding(implementation="torch", **ENC)
    torch.manual_seed(7)
    tri = TritonHashEncoding(**ENC)
    assert list(tri.state_dict()) == list(ref.state_dict()) == ["hash_table"]
    assert torch.equal(tri.hash_table, ref.hash_table)  # same random init from the same seed

    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    # torch-trained -> Triton module
    with torch.no_grad():
        ref.hash_table.uniform_(-1, 1)
    tri.load_state_dict(ref.state_dict())
    assert torch.equal(tri(x), ref(x))
    # Triton-trained -> torch module
    with torch.no_grad():
        tri.hash_table.normal_()
    ref.load_state_dict(tri.state_dict())
    assert torch.equal(ref(x), tri(x))
    assert not tri.uses_triton(x)  # CPU without the interpreter: nerfstudio's torch path


def test_from_hash_encoding_shares_the_parameter_and_draws_no_random_numbers() -> None:
    torch.manual_seed(0)
    ref = HashEncoding(implementation="torch", **ENC)
    state = torch.get_rng_state()
    tri = TritonHashEncoding.from_hash_encoding(ref)
    assert torch.equal(torch.get_rng_state(), state)
    assert tri.hash_table is ref.hash_table
    assert tri.get_out_dim() == ref.get_out_dim() and torch.equal(tri.scalings, ref.scalings)
    assert tri._parameters is not ref._parameters  # independent modules
    ref.tcnn_encoding = object()  # as built on tinycudann
    with pytest.raises(ValueError, match="implementation='torch'"):
        TritonHashEncoding.from_hash_encoding(ref)


@pytest.fixture
def fake_env(monkeypatch):
    """Pretend tinycudann / triton are (not) importable."""

    def set_env(tcnn: bool, triton: bool) -> None:
        monkeypatch.setattr(the, "_tcnn_import_error", lambda: None if tcnn else "No module named 'tinycudann'")
        monkeypatch.setattr(the, "_triton_import_error", lambda: None if triton else "No module named 'triton'")

    return set_env


@pytest.mark.parametrize(
    "tcnn, triton, cuda, expected",
    [
        (True, True, True, "tcnn"),
        (False, True, True, "triton"),
        (False, False, True, "torch"),
        (False, True, False, "torch"),
        (True, False, False, "tcnn"),
    ],
)
def test_resolve_auto(fake_env, tcnn: bool, triton: bool, cuda: bool, expected: str) -> None:
    fake_env(tcnn, triton)
    assert resolve_hash_backend("auto", device_is_cuda=cuda) == expected


def test_resolve_explicit_choices_and_errors(fake_env) -> None:
    fake_env(tcnn=False, triton=True)
    assert resolve_hash_backend("torch", device_is_cuda=True) == "torch"
    assert resolve_hash_backend("triton", device_is_cuda=True) == "triton"
    with pytest.raises(RuntimeError, match=r"needs a CUDA device.*hash_backend='auto' or 'torch'"):
        resolve_hash_backend("triton", device_is_cuda=False)
    with pytest.raises(RuntimeError, match=r"tinycudann cannot be imported"):
        resolve_hash_backend("tcnn", device_is_cuda=True)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_hash_backend("cuda", device_is_cuda=True)  # type: ignore[arg-type]
    fake_env(tcnn=True, triton=False)
    assert resolve_hash_backend("tcnn", device_is_cuda=True) == "tcnn"
    with pytest.raises(RuntimeError, match=r"triton cannot be imported.*pip install triton"):
        resolve_hash_backend("triton", device_is_cuda=True)


def _tiny_fields(seed: int):
    torch.manual_seed(seed)
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    field = NerfactoField(
        aabb=aabb,
        num_images=2,
        hidden_dim=16,
        hidden_dim_color=16,
        appearance_embedding_dim=4,
        implementation="torch",
        **{k: v for k, v in ENC.items() if k != "min_res"},
        base_res=2,
    )
    prop = HashMLPDensityField(
        aabb, num_levels=3, max_res=32, log2_hashmap_size=7, hidden_dim=8, implementation="torch"
    )
    return torch.nn.ModuleDict({"field": field, "prop": prop})


def test_swap_inside_real_fields_keeps_parameters_and_outputs() -> None:
    model = _tiny_fields(0)
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(2))
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = dict(model.named_parameters())
    with torch.no_grad():
        ref_base = model["field"].mlp_base(x)
        ref_prop = model["prop"].mlp_base(x)

    assert swap_hash_encodings(model, "torch") == 0
    assert swap_hash_encodings(model, "tcnn") == 0
    with pytest.raises(ValueError, match="resolved backend"):
        swap_hash_encodings(model, "auto")
    assert swap_hash_encodings(model, "triton") == 2  # nerfacto's mlp_base grid, the proposal field's encoding

    assert isinstance(model["field"].mlp_base.model[0], TritonHashEncoding)
    prop = model["prop"]
    assert isinstance(prop.encoding, TritonHashEncoding) and prop.encoding is prop.mlp_base[0]
    assert not any(type(m) is HashEncoding for m in model.modules())
    # Same keys, same Parameter objects (an optimiser built before the swap still trains them), same values.
    params_after = dict(model.named_parameters())
    assert list(params_after) == list(params_before)
    assert all(params_after[k] is p for k, p in params_before.items())
    after_state = model.state_dict()
    assert list(after_state) == list(before_state)
    assert all(torch.equal(after_state[k], v) for k, v in before_state.items())
    with torch.no_grad():
        assert torch.equal(model["field"].mlp_base(x), ref_base)  # CPU: the torch path, bit for bit
        assert torch.equal(model["prop"].mlp_base(x), ref_prop)
    assert swap_hash_encodings(model, "triton") == 0  # idempotent

    # A checkpoint of the swapped model loads into a freshly built torch one and vice versa.
    fresh = _tiny_fields(1)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh["field"].mlp_base(x), ref_base)
    with pytest.raises(ValueError, match="from_hash_encoding"):
        swap_hash_encodings(HashEncoding(implementation="torch", **ENC), "triton")


def test_importing_the_module_does_not_import_triton() -> None:
    code = (
        "import sys\n"
        "import vsdsr_nerfstudio.models.triton_hash_encoding as m\n"
        "enc = m.TritonHashEncoding(num_levels=2, min_res=2, max_res=4, log2_hashmap_size=4)\n"
        "import torch\n"
        "enc(torch.rand(5, 3))\n"  # CPU forward without the interpreter: torch path, still no triton
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok")
