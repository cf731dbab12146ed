"""Which runtime RUNTIME picks for each SAM_CHOICE and device, and how the setting is read (nothing is loaded)."""

from __future__ import annotations

import pytest

from sam_ls_backend.errors import ConfigError
from sam_ls_backend.predictors import device as device_module
from sam_ls_backend.predictors.registry import MODELS, model_spec
from sam_ls_backend.settings import Settings


@pytest.mark.parametrize("runtime, device, expected", [
    ("auto", "cpu", "onnx"),
    ("auto", "cuda", "torch"),
    ("auto", "cuda:1", "torch"),
    ("torch", "cpu", "torch"),
    ("onnx", "cpu", "onnx"),
    ("onnx", "cuda", "onnx"),
])
def test_mobile_sam_runtime(runtime, device, expected):
    settings = Settings.from_env({}, RUNTIME=runtime, DEVICE=device)
    assert model_spec("MobileSAM").runtime(settings) == expected


def test_auto_asks_torch_for_a_gpu_when_the_device_is_auto(monkeypatch):
    import torch

    settings = Settings.from_env({}, RUNTIME="auto", DEVICE="auto")
    monkeypatch.setattr(device_module, "resolve_device", lambda name: torch.device("cuda"))
    assert model_spec("MobileSAM").runtime(settings) == "torch"
    monkeypatch.setattr(device_module, "resolve_device", lambda name: torch.device("cpu"))
    assert model_spec("MobileSAM").runtime(settings) == "onnx"


def test_sam_vit_b_is_onnx_on_a_cpu_vit_l_h_only_when_asked_and_sam2_sam3_onnx_stay_as_they_are(tmp_path):
    cpu = Settings.from_env({}, DEVICE="cpu", SAM_CHECKPOINT=str(tmp_path / "sam.pth"))
    assert model_spec("SAM").runtime(cpu) == "torch", "no checkpoint yet: nothing says it is a ViT-B"
    with open(tmp_path / "sam.pth", "wb") as checkpoint:  # sparse files the size of the official checkpoints
        checkpoint.truncate(375_042_383)  # sam_vit_b_01ec64.pth
    assert model_spec("SAM").runtime(cpu) == "onnx" and model_spec("SAM").may_export(cpu)
    assert model_spec("SAM").runtime(cpu.with_overrides(device="cuda")) == "torch"
    assert model_spec("SAM").runtime(cpu.with_overrides(sam_model_type="vit_h")) == "torch"
    with open(tmp_path / "sam.pth", "wb") as checkpoint:
        checkpoint.truncate(1_249_524_607)  # sam_vit_l_0b3195.pth
    assert model_spec("SAM").runtime(cpu) == "torch" and not model_spec("SAM").may_export(cpu)
    assert model_spec("SAM").runtime(cpu.with_overrides(sam_model_type="vit_b")) == "onnx"
    assert model_spec("SAM").runtime(cpu.with_overrides(runtime="onnx")) == "onnx"
    for choice in ("SAM2", "SAM3", "ONNX"):
        for runtime in ("auto", "onnx"):
            assert MODELS[choice].runtime(cpu.with_overrides(runtime=runtime)) == "torch"
            assert not MODELS[choice].may_export(cpu.with_overrides(runtime=runtime))


def test_runtime_defaults_to_auto_and_is_checked():
    assert Settings().runtime == "auto"
    assert Settings.from_env({"RUNTIME": " ONNX "}).runtime == "onnx"
    with pytest.raises(ConfigError, match="RUNTIME must be one of auto, torch, onnx, not 'tensorrt'"):
        Settings.from_env({"RUNTIME": "tensorrt"})


def test_may_export_only_when_a_checkpoint_lacks_its_graphs(tmp_path):
    from sam_ls_backend.predictors.files import cached_graphs

    checkpoint = tmp_path / "mobile_sam.pt"
    settings = Settings.from_env({}, MOBILESAM_CHECKPOINT=str(checkpoint), DEVICE="cpu")
    spec = model_spec("MobileSAM")
    assert not spec.may_export(settings), "no checkpoint: the start-up check reports it, nothing to export"
    checkpoint.write_bytes(b"weights" * 1000)
    assert spec.may_export(settings)
    assert not spec.may_export(settings.with_overrides(runtime="torch"))
    for graph in cached_graphs(settings, checkpoint):
        graph.write_bytes(b"graph")
    assert not spec.may_export(settings)
    checkpoint.write_bytes(b"other weights" * 1000)  # a new checkpoint: new names
    assert spec.may_export(settings)


def test_cache_names_follow_the_checkpoint_and_onnx_cache_dir(tmp_path):
    from sam_ls_backend.predictors.files import cached_graphs

    checkpoint = tmp_path / "models" / "mobile_sam.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    beside = cached_graphs(Settings(), checkpoint)
    assert [path.parent for path in beside] == [checkpoint.parent] * 2
    assert beside[0].name.startswith("mobile_sam.") and beside[0].name.endswith(".decoder.onnx")
    elsewhere = cached_graphs(Settings.from_env({}, ONNX_CACHE_DIR=str(tmp_path / "cache")), checkpoint)
    assert [path.name for path in elsewhere] == [path.name for path in beside]
    assert elsewhere[1].parent == tmp_path / "cache"
