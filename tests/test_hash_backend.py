"""The Nerfacto model of `vsd-sr` picks its hash grid (tinycudann, Triton, torch) through `hash_backend`, and a
checkpoint made with one backend loads into the other (same table layout, same state_dict)."""

from __future__ import annotations

import pytest
import torch
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.encodings import HashEncoding

import vsdsr_nerfstudio.models.nerfacto as nerfacto_module
from vsdsr_nerfstudio.models.nerfacto import VsdSrModelConfig
from vsdsr_nerfstudio.models.triton_hash_encoding import TritonHashEncoding

TINY = dict(
    num_levels=4,
    max_res=64,
    log2_hashmap_size=10,
    hidden_dim=16,
    hidden_dim_color=16,
    appearance_embed_dim=4,
    num_proposal_samples_per_ray=(8, 8),
    num_nerf_samples_per_ray=8,
    proposal_net_args_list=[
        {"hidden_dim": 8, "log2_hashmap_size": 8, "num_levels": 2, "max_res": 16, "use_linear": False},
        {"hidden_dim": 8, "log2_hashmap_size": 8, "num_levels": 2, "max_res": 32, "use_linear": False},
    ],
)


def build(backend: str, seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    config = VsdSrModelConfig(hash_backend=backend, **TINY)
    box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    return config.setup(scene_box=box, num_train_data=3, metadata={}, device=device)


def encodings(model):
    return [m for m in model.modules() if isinstance(m, HashEncoding)]


def test_auto_on_cpu_builds_the_torch_grid():
    model = build("auto")
    assert model.hash_backend in ("torch", "tcnn")  # tcnn only where it is installed
    if model.hash_backend == "torch":
        assert encodings(model) and not any(isinstance(e, TritonHashEncoding) for e in encodings(model))
        # the torch grid renders in small chunks (memory); Triton / tinycudann in the config's large ones
        assert model.config.eval_num_rays_per_chunk == VsdSrModelConfig().torch_grid_max_chunk < (1 << 16)
    assert model.config.implementation == VsdSrModelConfig().implementation  # the config is left as it was


def test_explicit_triton_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="hash_backend='triton' needs a CUDA device"):
        build("triton")


def test_the_triton_backend_swaps_every_grid_and_checkpoints_interchange(monkeypatch):
    """As on a CUDA machine without tinycudann: every grid (field + both proposal networks) becomes the Triton
    encoding; a torch-built model's state_dict loads into it and back, and (on CPU both compute the torch path)
    the density queries agree exactly."""
    reference = build("torch", seed=3)
    monkeypatch.setattr(nerfacto_module, "hash_backend_for_device", lambda requested, device: "triton")
    triton_model = build("auto", seed=4)
    grids = encodings(triton_model)
    assert len({id(g) for g in grids}) == 3 and all(isinstance(g, TritonHashEncoding) for g in grids)
    assert triton_model.hash_backend == "triton" and triton_model.config.eval_num_rays_per_chunk == 1 << 16
    assert reference.state_dict().keys() == triton_model.state_dict().keys()
    triton_model.load_state_dict(reference.state_dict())
    positions = torch.rand(64, 3)
    for ref_grid, new_grid in zip(encodings(reference), grids, strict=True):
        assert torch.equal(ref_grid(positions), new_grid(positions))
    reference.load_state_dict(triton_model.state_dict())  # and back
