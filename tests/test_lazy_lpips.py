"""LPIPS in the model: built at the first evaluation, never a submodule, and skipped cleanly without weights."""

import math

import torch

import vsdsr_nerfstudio.metrics.lpips as lpips_module
from vsdsr_nerfstudio.metrics.lazy_lpips import LazyLPIPS


def test_not_built_until_first_call_and_skipped_without_weights(monkeypatch):
    calls = []

    def fake_build(weights):
        calls.append(weights)
        return None  # what build_lpips returns with no weights file and no network (after one warning)

    monkeypatch.setattr(lpips_module, "build_lpips", fake_build)
    metric = LazyLPIPS(None)
    assert calls == [] and metric.available
    a = torch.rand(1, 3, 8, 8)
    value = metric(a, a)
    assert math.isnan(float(value)) and not metric.available
    metric(a, a)
    assert calls == [None], "a failed build must not be retried for every image"


def test_uses_the_built_metric_and_resets_its_state(monkeypatch):
    class FakeMetric:
        def __init__(self):
            self.resets = 0

        def to(self, device):
            return self

        def __call__(self, a, b):
            return (a - b).abs().mean()

        def reset(self):
            self.resets += 1

    fake = FakeMetric()
    monkeypatch.setattr(lpips_module, "build_lpips", lambda weights: fake)
    metric = LazyLPIPS("weights.npz")
    a, b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    assert float(metric(a, b)) == 1.0 and metric.available and fake.resets == 1
    assert not isinstance(metric, torch.nn.Module), "must stay out of the model's state_dict"
