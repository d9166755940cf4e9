"""torch >= 2.6 loads nerfstudio checkpoints (numpy float scalars) once our plugin is imported, and only those."""

import io
import pickle

import numpy as np
import pytest
import torch

import vsdsr_nerfstudio  # noqa: F401  (importing the plugin installs the allow-list)


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


def test_numpy_float_scalars_load_weights_only():
    state = {
        "step": 3,
        "optimizers": {"fields": {"param_groups": [{"lr": np.float64(0.0087), "eps": 1e-15}]}},
        "schedulers": {"fields": {"_last_lr": [np.float64(0.0087)], "f32": np.float32(1.5)}},
        "pipeline": {"w": torch.ones(2)},
    }
    loaded = _roundtrip(state)
    assert loaded["optimizers"]["fields"]["param_groups"][0]["lr"] == pytest.approx(0.0087)
    assert loaded["schedulers"]["fields"]["f32"] == pytest.approx(1.5)
    assert torch.equal(loaded["pipeline"]["w"], torch.ones(2))


class _Arbitrary:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_globals_still_refused():
    buffer = io.BytesIO()
    torch.save({"evil": _Arbitrary()}, buffer, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer, map_location="cpu", weights_only=True)
