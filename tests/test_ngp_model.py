"""Instant-NGP as the NeRF of `vsd-sr` (`vsd-sr-ngp`), on a CPU: the preset, the model's 4x defaults and offline
metrics (the same as the Nerfacto model's), the pipeline's model-agnostic hooks, and the clear error when nerfacc's
CUDA kernels cannot run (nerfacc itself is never built or called here: its ray marching is CUDA-only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from synthetic_llff import make_llff_scene

import vsdsr_nerfstudio.metrics.lpips as lpips_module
import vsdsr_nerfstudio.models.instant_ngp as ngp_model
import vsdsr_nerfstudio.models.nerfacc_cuda as nerfacc_cuda
from vsdsr_nerfstudio.data.llff_dataparser import LLFFDataParserConfig
from vsdsr_nerfstudio.metrics.lazy_lpips import LazyLPIPS
from vsdsr_nerfstudio.models.instant_ngp import VsdSrNGPModelConfig
from vsdsr_nerfstudio.pipeline.datamanager import SRDataManagerConfig
from vsdsr_nerfstudio.pipeline.i3ds import (
    I3DSPipelineConfig,
    average_appearance,
    check_model_runtime,
    model_camera_optimizer,
)

HR_SIZE = (2016, 1512)  # fern at 4x its images_8 training resolution


def _tiny_ngp(**overrides) -> VsdSrNGPModelConfig:
    """The NGP model config at CPU-test size (the defaults are tested on the preset, not built here)."""
    sizes = dict(max_res=64, log2_hashmap_size=12, grid_resolution=16, grid_levels=1, eval_num_rays_per_chunk=256)
    return VsdSrNGPModelConfig(**{**sizes, **overrides})


@pytest.fixture
def no_cuda_check(monkeypatch):
    """Build the NGP model on the CPU: skip the nerfacc/CUDA check (tested on its own below)."""
    monkeypatch.setattr(ngp_model, "require_nerfacc_cuda", lambda device=None: None)


@pytest.fixture
def no_lpips_download(monkeypatch):
    """Fail the test if anything builds torchmetrics' LPIPS (which downloads AlexNet)."""
    import torchmetrics.image.lpip as lpip

    def forbidden(*args, **kwargs):
        raise AssertionError("torchmetrics LPIPS built (AlexNet download) at model construction")

    monkeypatch.setattr(lpip, "LearnedPerceptualImagePatchSimilarity", forbidden)


def _scene_box():
    from nerfstudio.data.scene_box import SceneBox

    return SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))


def _build(config, num_train_data: int = 3):
    torch.manual_seed(0)
    return config.setup(scene_box=_scene_box(), num_train_data=num_train_data, metadata={}, device="cpu")


# ----------------------------------------------------------------------------------------------- the preset
def test_preset_is_vsd_sr_with_the_ngp_model():
    from vsdsr_nerfstudio.method_configs.vsd_sr import vsd_sr_config
    from vsdsr_nerfstudio.method_configs.vsd_sr_ngp import vsd_sr_ngp_config

    config, base = vsd_sr_ngp_config(), vsd_sr_config()
    assert config.method_name == "vsd-sr-ngp"
    model = config.pipeline.model
    assert type(model) is VsdSrNGPModelConfig
    # The finest level must resolve the HR images: at least as many cells as the larger HR side, as VsdSrModel.
    assert model.max_res == base.pipeline.model.max_res == 4096 >= max(HR_SIZE)
    assert model.log2_hashmap_size == 21
    assert model.use_appearance_embedding and model.use_average_appearance_embedding
    assert model.lpips_weights is None and model.niqe_channel == "y"
    # nerfstudio 1.1.5's Instant-NGP has no camera optimiser: poses stay at the dataset's (VsdSrModel's default).
    assert not hasattr(model, "camera_optimizer")
    assert model_camera_optimizer(SimpleNamespace(config=model)) is None
    assert set(config.optimizers) == {"fields"}
    assert config.optimizers["fields"]["optimizer"].lr == base.optimizers["fields"]["optimizer"].lr
    # Everything but the model and its optimiser groups is the default preset's.
    for name in ("pretrain_steps", "upscale_steps", "sync_steps", "num_cycles"):
        assert getattr(config.pipeline, name) == getattr(base.pipeline, name)
    assert config.pipeline.prior == base.pipeline.prior and config.pipeline.stage == base.pipeline.stage
    assert config.pipeline.datamanager == base.pipeline.datamanager
    assert config.max_num_iterations == base.max_num_iterations


def test_preset_config_yml_round_trip():
    """ns-train saves config.yml and ns-eval/ns-render load it: the model config must survive (no nerfacc needed)."""
    import yaml

    from vsdsr_nerfstudio.method_configs.vsd_sr_ngp import vsd_sr_ngp_config

    config = vsd_sr_ngp_config()
    loaded = yaml.load(yaml.dump(config), Loader=yaml.Loader)
    assert type(loaded.pipeline.model) is VsdSrNGPModelConfig and loaded.pipeline.model == config.pipeline.model
    assert loaded.pipeline.model._target is ngp_model.VsdSrNGPModel


# ----------------------------------------------------------------------------------------------- the model
def test_model_builds_offline_without_lpips_download(no_cuda_check, no_lpips_download):
    model = _build(_tiny_ngp())
    assert isinstance(model.lpips, LazyLPIPS) and not isinstance(model.lpips, torch.nn.Module)
    assert not any("lpips" in key for key in model.state_dict()), "LPIPS must stay out of checkpoints"
    assert set(model.get_param_groups()) == {"fields"}


def test_appearance_flag_as_named_and_averaged_in_eval(no_cuda_check, no_lpips_download):
    from nerfstudio.cameras.rays import Frustums, RaySamples
    from nerfstudio.field_components.field_heads import FieldHeadNames

    assert _build(_tiny_ngp(use_appearance_embedding=False)).field.embedding_appearance is None
    model = _build(_tiny_ngp())
    field_ = model.field
    assert field_.embedding_appearance is not None and field_.use_average_appearance_embedding

    n = 16
    generator = torch.Generator().manual_seed(1)
    directions = torch.nn.functional.normalize(torch.randn(n, 1, 3, generator=generator), dim=-1)
    frustums = Frustums(
        origins=torch.zeros(n, 1, 3),
        directions=directions,
        starts=torch.full((n, 1, 1), 0.3),
        ends=torch.full((n, 1, 1), 0.35),
        pixel_area=torch.ones(n, 1, 1),
    )
    samples = RaySamples(frustums=frustums, camera_indices=torch.randint(0, 3, (n, 1, 1), generator=generator))
    weights = field_.embedding_appearance.embedding.weight
    with torch.no_grad():
        weights.copy_(torch.randn(weights.shape, generator=generator))
        model.eval()
        eval_rgb = field_(samples)[FieldHeadNames.RGB]
        field_.use_average_appearance_embedding = False  # nerfstudio's NGPModel: zeros
        zeros_rgb = field_(samples)[FieldHeadNames.RGB]
        weights.copy_(weights.mean(dim=0, keepdim=True).expand_as(weights))  # every view = the mean embedding
        model.train()
        mean_rgb = field_(samples)[FieldHeadNames.RGB]
    assert torch.allclose(eval_rgb, mean_rgb, atol=1e-6)
    assert not torch.allclose(eval_rgb, zeros_rgb, atol=1e-4)


def _fake_outputs_and_batch(height: int = 96, width: int = 192, proposal_depths: int = 0):
    generator = torch.Generator().manual_seed(3)
    gt = torch.rand(height, width, 3, generator=generator)
    rgb = (gt + 0.1 * torch.randn(height, width, 3, generator=generator)).clamp(0, 1)
    outputs = {"rgb": rgb, "accumulation": torch.ones(height, width, 1), "depth": torch.rand(height, width, 1)}
    for i in range(proposal_depths):
        outputs[f"prop_depth_{i}"] = outputs["depth"]
    return outputs, {"image": gt}


def test_eval_metrics_are_the_nerfacto_models(no_cuda_check, no_lpips_download, monkeypatch):
    """Same metrics, same values as VsdSrModel on the same render: PSNR/SSIM/NIQE, LPIPS when it can be built."""
    from vsdsr_nerfstudio.method_configs.vsd_sr_tiny import vsd_sr_tiny_config

    ngp = _build(_tiny_ngp())
    nerfacto = _build(vsd_sr_tiny_config().pipeline.model)
    outputs, batch = _fake_outputs_and_batch(proposal_depths=nerfacto.config.num_proposal_iterations)

    monkeypatch.setattr(lpips_module, "build_lpips", lambda weights: None)  # no weights, no network
    ngp_metrics, images = ngp.get_image_metrics_and_images(outputs, batch)
    nerfacto_metrics, _ = nerfacto.get_image_metrics_and_images(outputs, batch)
    assert set(ngp_metrics) == {"psnr", "ssim", "niqe"}, ngp_metrics
    assert ngp_metrics == pytest.approx(nerfacto_metrics, rel=1e-6)
    assert images["img"].shape == (96, 384, 3)

    fake_lpips = lambda a, b: (a - b).abs().mean()
    fake_lpips.to = lambda device: fake_lpips
    fake_lpips.reset = lambda: None
    monkeypatch.setattr(lpips_module, "build_lpips", lambda weights: fake_lpips)
    for model in (ngp, nerfacto):
        model.lpips = LazyLPIPS(None)
    ngp_metrics, _ = ngp.get_image_metrics_and_images(outputs, batch)
    nerfacto_metrics, _ = nerfacto.get_image_metrics_and_images(outputs, batch)
    assert set(ngp_metrics) == {"psnr", "ssim", "lpips", "niqe"}
    assert ngp_metrics == pytest.approx(nerfacto_metrics, rel=1e-6)


# ----------------------------------------------------------------------------------------------- pipeline hooks
def test_camera_optimizer_hook():
    on = SimpleNamespace(mode="SO3xR3")
    optimizer = object()
    assert model_camera_optimizer(SimpleNamespace(config=SimpleNamespace(camera_optimizer=on))) is None  # no module
    model = SimpleNamespace(config=SimpleNamespace(camera_optimizer=on), camera_optimizer=optimizer)
    assert model_camera_optimizer(model) is optimizer
    model.config.camera_optimizer = SimpleNamespace(mode="off")
    assert model_camera_optimizer(model) is None
    assert model_camera_optimizer(SimpleNamespace(config=SimpleNamespace())) is None  # Instant-NGP: none at all


def test_average_appearance_hook():
    field_ = SimpleNamespace(embedding_appearance=object(), use_average_appearance_embedding=False)
    model = SimpleNamespace(field=field_)
    with average_appearance(model):
        assert field_.use_average_appearance_embedding is True
    assert field_.use_average_appearance_embedding is False, "restored after the renders"
    with average_appearance(SimpleNamespace()):  # no field: nothing to do
        pass
    no_embedding = SimpleNamespace(field=SimpleNamespace(embedding_appearance=None))
    with average_appearance(no_embedding):
        assert not hasattr(no_embedding.field, "use_average_appearance_embedding")


def test_runtime_hook():
    calls = []
    check_model_runtime(SimpleNamespace(check_runtime=calls.append), "cuda:0")
    check_model_runtime(SimpleNamespace(), "cpu")  # a config without the hook (Nerfacto): nothing to check
    assert calls == ["cuda:0"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_llff_scene(tmp_path_factory.mktemp("ngp_scene"), n_views=5, hr_size=(64, 48), factors=(4,), seed=4)


def _pipeline_config(scene: Path) -> I3DSPipelineConfig:
    return I3DSPipelineConfig(
        datamanager=SRDataManagerConfig(
            dataparser=LLFFDataParserConfig(data=scene, downscale_factor=4, sr_scale=4, llffhold=5),
            sr_scale=4,
            train_num_rays_per_batch=64,
            eval_num_rays_per_batch=64,
        ),
        model=_tiny_ngp(),
    )


def test_pipeline_sets_up_and_renders_hr_views_with_the_ngp_model(scene, no_cuda_check, no_lpips_download):
    """The I3DS pipeline on a tiny scene with the NGP model: setup, optimisers, callbacks, and the 4x renders of an
    upscaling stage (a model without camera optimiser; the average appearance embedding). nerfacc's ray marching is
    CUDA-only, so the renderer is replaced by one that records what the pipeline set up."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes
    from nerfstudio.engine.optimizers import Optimizers

    from vsdsr_nerfstudio.method_configs.vsd_sr_ngp import vsd_sr_ngp_config

    pipeline = _pipeline_config(scene).setup(device="cpu", test_mode="val")
    model = pipeline.model
    assert isinstance(model, ngp_model.VsdSrNGPModel)
    optimizers = Optimizers(vsd_sr_ngp_config().optimizers, pipeline.get_param_groups())
    attributes = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipeline, trainer=None)
    assert pipeline.get_training_callbacks(attributes)

    seen = []

    def fake_render(bundle):
        seen.append((model.training, model.field.use_average_appearance_embedding, tuple(bundle.shape)))
        return {"rgb": torch.full((*bundle.shape, 3), 0.5)}

    model.get_outputs_for_camera_ray_bundle = fake_render
    model.field.use_average_appearance_embedding = False  # the pipeline averages for its renders regardless
    model.train()
    renders = pipeline.render_train_views_hr()
    n = pipeline.datamanager.num_train_views
    assert renders.shape == (n, 3, *pipeline.datamanager.hr_size)
    assert seen == [(False, True, pipeline.datamanager.hr_size)] * n
    assert model.training and model.field.use_average_appearance_embedding is False, "model state restored"


# ----------------------------------------------------------------------------------------------- no CUDA
FIX = ("cuda::std::equal_to<>()", "#include <cuda/std/functional>", "scan.cu")


@pytest.fixture
def fresh_check(monkeypatch):
    """require_nerfacc_cuda with its success cache cleared; loading nerfacc's kernels fails the test."""
    monkeypatch.setattr(nerfacc_cuda, "_checked", False)

    def must_not_load():
        raise AssertionError("nerfacc's kernels must not be loaded (or built) here")

    monkeypatch.setattr(nerfacc_cuda, "_load_nerfacc_kernels", must_not_load)
    return monkeypatch


def _assert_clear(message: str) -> None:
    assert "vsd-sr-ngp" in message and "nerfacc" in message, message
    assert "ns-train vsd-sr" in message and "Nerfacto" in message and "without CUDA" in message, message


def test_no_cuda_device_is_a_clear_error(fresh_check):
    with pytest.raises(nerfacc_cuda.NerfaccCudaError, match="device is 'cpu'") as error:
        nerfacc_cuda.require_nerfacc_cuda("cpu")
    _assert_clear(str(error.value))
    fresh_check.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(nerfacc_cuda.NerfaccCudaError, match="no CUDA device") as error:
        nerfacc_cuda.require_nerfacc_cuda("cuda:0")
    _assert_clear(str(error.value))
    assert "nerfacc.cuda._backend" not in sys.modules, "the check must not start nerfacc's CUDA build"


def test_cuda13_unpatched_scan_is_caught_before_building(fresh_check, tmp_path):
    scan = tmp_path / "scan.cu"
    scan.write_text("#include <cub/cub.cuh>\n... cub::Equality(), ...\n... cub::Equality(), ...\n")
    fresh_check.setattr(torch.cuda, "is_available", lambda: True)
    fresh_check.setattr(nerfacc_cuda, "_scan_source", lambda: scan)
    fresh_check.setattr(nerfacc_cuda, "_build_dir", lambda: str(tmp_path / "build"))
    fresh_check.setattr(nerfacc_cuda, "nvcc_version", lambda: (13, 0))
    fresh_check.setattr(nerfacc_cuda, "_has_prebuilt_kernels", lambda: False)
    with pytest.raises(nerfacc_cuda.NerfaccCudaError, match="nvcc 13.0") as error:
        nerfacc_cuda.require_nerfacc_cuda("cuda")
    message = str(error.value)
    _assert_clear(message)
    assert all(part in message for part in FIX) and str(scan) in message

    # Patched as the message says: the kernels load (built), and the check passes once and is cached.
    scan.write_text("#include <cuda/std/functional>\n... cuda::std::equal_to<>() ...\n")
    loads = []
    fresh_check.setattr(nerfacc_cuda, "_load_nerfacc_kernels", lambda: loads.append(1) or object())
    nerfacc_cuda.require_nerfacc_cuda("cuda")
    nerfacc_cuda.require_nerfacc_cuda("cuda")
    assert loads == [1]
    # CUDA 12 compiles the original file: no early stop.
    fresh_check.setattr(nerfacc_cuda, "_checked", False)
    fresh_check.setattr(nerfacc_cuda, "nvcc_version", lambda: (12, 8))
    scan.write_text("cub::Equality()")
    nerfacc_cuda.require_nerfacc_cuda("cuda")
    assert loads == [1, 1]


def test_failed_nerfacc_build_prints_the_fix(fresh_check, tmp_path):
    fresh_check.setattr(torch.cuda, "is_available", lambda: True)
    fresh_check.setattr(nerfacc_cuda, "_build_dir", lambda: str(tmp_path / "build"))
    fresh_check.setattr(nerfacc_cuda, "_jit_build_blocked_by_cuda13", lambda scan: (False, "13.0"))
    log = 'Error building extension \'nerfacc_cuda\': scan.cu(29): error: namespace "cub" has no member "Equality"'

    def failing_build():
        raise RuntimeError(log)

    fresh_check.setattr(nerfacc_cuda, "_load_nerfacc_kernels", failing_build)
    with pytest.raises(nerfacc_cuda.NerfaccCudaError) as error:
        nerfacc_cuda.require_nerfacc_cuda("cuda")
    message = str(error.value)
    _assert_clear(message)
    assert all(part in message for part in FIX) and log in message
    assert isinstance(error.value.__cause__, RuntimeError)
    assert not nerfacc_cuda._checked

    fresh_check.setattr(nerfacc_cuda, "_load_nerfacc_kernels", lambda: None)  # nerfacc found no nvcc
    with pytest.raises(nerfacc_cuda.NerfaccCudaError, match="nvcc") as error:
        nerfacc_cuda.require_nerfacc_cuda("cuda")
    _assert_clear(str(error.value))


def test_pipeline_and_model_stop_before_any_data_without_cuda(fresh_check, tmp_path, no_lpips_download):
    """The pipeline checks before its datamanager reads anything (here: a data folder that does not exist)."""
    config = _pipeline_config(tmp_path / "no-such-scene")
    with pytest.raises(nerfacc_cuda.NerfaccCudaError, match="device is 'cpu'"):
        config.setup(device="cpu", test_mode="val")
    with pytest.raises(nerfacc_cuda.NerfaccCudaError, match="device is 'cpu'"):  # any pipeline: the model checks too
        _build(_tiny_ngp())


def test_ns_train_without_cuda_stops_early_with_the_message(scene, tmp_path):
    """The real command, as on a machine without CUDA: one clear error before any data is read or kernel built."""
    args = [
        str(Path(sys.executable).parent / "ns-train"),
        "vsd-sr-ngp",
        "--machine.device-type",
        "cpu",
        "--vis",
        "tensorboard",
        "--data",
        str(scene),
        "--output-dir",
        str(tmp_path / "out"),
        "llff-data",
        "--downscale-factor",
        "4",
        "--sr-scale",
        "4",
    ]
    env = dict(os.environ, COLUMNS="200")
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "NerfaccCudaError" in output and "ns-train vsd-sr` (Nerfacto)" in output, output[-3000:]
    assert "Setting up CUDA" not in output and "site-packages/nerfacc" not in output, output[-3000:]
