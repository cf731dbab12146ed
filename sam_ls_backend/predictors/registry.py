"""The models SAM_CHOICE can name, and for each: where its files are, how to check and load them.

This is the one place SAM_CHOICE is compared. An entry's loader imports its model's code only when called,
so reading the registry costs no torch or onnxruntime import (a gunicorn master checks files, loads nothing).
Adding a model is one module under `predictors/` with a `load(settings, files)` and one `ModelSpec` line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from sam_ls_backend.errors import ConfigError
from sam_ls_backend.predictors.base import LoadedModels, Predictor
from sam_ls_backend.predictors.files import ModelFile, ModelSettings, mobile_sam_checkpoint, onnx_paths, sam_checkpoint


class ModelSpec:
    """How one SAM_CHOICE is served: a checkpoint file, loaded by `loader` ("module:function" under
    `sam_ls_backend.predictors`, called as function(settings, main_file) and returning `LoadedModels`)."""

    def __init__(self, main_file: Callable[[ModelSettings], ModelFile], loader: str) -> None:
        self.main_file = main_file
        self.loader = loader

    def check(self, settings: ModelSettings) -> None:
        """Raise the ConfigError that explains a missing file, without loading anything."""
        self.main_file(settings).require_file()

    def load(self, settings: ModelSettings) -> LoadedModels:
        """The model's weights, loaded (start-up only: takes seconds)."""
        module, _, function = self.loader.partition(":")
        load = getattr(importlib.import_module(f"sam_ls_backend.predictors.{module}"), function)
        return load(settings, self.main_file(settings))

    def files(self, settings: ModelSettings) -> list[Path]:
        """The files whose contents define the model's answers (they fingerprint the shared cache)."""
        return [path for path in self._files(settings) if path.is_file()]

    def _files(self, settings: ModelSettings) -> list[Path]:
        return [self.main_file(settings).path]


class FolderModelSpec(ModelSpec):
    """A model served from a Hugging Face model folder (config.json and safetensors)."""

    def check(self, settings: ModelSettings) -> None:
        self.main_file(settings).require_folder()

    def _files(self, settings: ModelSettings) -> list[Path]:
        folder = self.main_file(settings).path
        return sorted(folder.glob("*.safetensors")) + [folder / "config.json"]


class OnnxModelSpec(ModelSpec):
    """SAM's prompt decoder exported to ONNX, with an exported encoder or the checkpoint it came from."""

    def check(self, settings: ModelSettings) -> None:
        onnx_paths(settings)

    def _files(self, settings: ModelSettings) -> list[Path]:
        if settings.onnx_encoder:
            return [self.main_file(settings).path, settings.model_path(settings.onnx_encoder)]
        return [self.main_file(settings).path, mobile_sam_checkpoint(settings).path, sam_checkpoint(settings).path]


MODELS: dict[str, ModelSpec] = {
    "MobileSAM": ModelSpec(mobile_sam_checkpoint, "sam:load_mobile_sam"),
    "SAM": ModelSpec(sam_checkpoint, "sam:load_sam"),
    "ONNX": OnnxModelSpec(lambda s: ModelFile(s.model_path(s.onnx_decoder), "ONNX_DECODER", ""), "onnx_runtime:load"),
    "SAM2": FolderModelSpec(lambda s: ModelFile(s.model_path(s.sam2_model_dir), "SAM2_MODEL_DIR", "sam2"),
                            "hf:load_sam2"),
    "SAM3": FolderModelSpec(lambda s: ModelFile(s.model_path(s.sam3_model_dir), "SAM3_MODEL_DIR", "sam3"),
                            "sam3:load_sam3"),
}


def model_spec(choice: str) -> ModelSpec:
    """The entry SAM_CHOICE names (settings have already checked the name)."""
    if choice not in MODELS:
        raise ConfigError(f"SAM_CHOICE must be one of {', '.join(MODELS)}, not {choice!r}")
    return MODELS[choice]


def load_predictor(settings: ModelSettings) -> Predictor:
    """The predictor SAM_CHOICE names, loaded from its files as the server loads it."""
    return model_spec(settings.sam_choice).load(settings).predictor
