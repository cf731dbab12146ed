"""The models SAM_CHOICE can name, and for each: where its files are, how to check and load them.

This is the one place SAM_CHOICE is compared. An entry's loader imports its model's code only when called,
so reading the registry costs no torch or onnxruntime import (a gunicorn master checks files, loads nothing).
Adding a model is one module under `predictors/` with a `load(settings, files)` and one `ModelSpec` line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sam_ls_backend.errors import ConfigError
from sam_ls_backend.predictors.base import Predictor
from sam_ls_backend.predictors.files import ModelFile

if TYPE_CHECKING:
    from sam_ls_backend.predictors.sam3 import ConceptSegmenter
    from sam_ls_backend.predictors.video import VideoTracker
    from sam_ls_backend.settings import Settings


@dataclass(frozen=True)
class LoadedModels:
    """What a SAM_CHOICE serves: the predictor clicks go to, SAM 3's concept detector (else None), and how to
    load its video tracker (else None). The tracker is loaded on the first video request, not at start-up:
    it holds a second copy of the image model's weights, which a project without videos should not pay for."""

    predictor: Predictor
    concepts: ConceptSegmenter | None = None
    video: Callable[[], VideoTracker] | None = None


class ModelSpec:
    """How one SAM_CHOICE is served: a checkpoint file, loaded by `loader` ("module:function" under
    `sam_ls_backend.predictors`, called as function(settings, main_file) and returning `LoadedModels`)."""

    def __init__(self, main_file: Callable[[Settings], ModelFile], loader: str) -> None:
        self.main_file = main_file
        self.loader = loader

    def check(self, settings: Settings) -> None:
        """Raise the ConfigError that explains a missing file, without loading anything."""
        self.main_file(settings).require_file()

    def load(self, settings: Settings) -> LoadedModels:
        """The model's weights, loaded (start-up only: takes seconds)."""
        module, _, function = self.loader.partition(":")
        load = getattr(importlib.import_module(f"sam_ls_backend.predictors.{module}"), function)
        return load(settings, self.main_file(settings))

    def files(self, settings: Settings) -> list[Path]:
        """The files whose contents define the model's answers (they fingerprint the shared cache)."""
        return [path for path in self._files(settings) if path.is_file()]

    def _files(self, settings: Settings) -> list[Path]:
        return [self.main_file(settings).path]


class FolderModelSpec(ModelSpec):
    """A model served from a Hugging Face model folder (config.json and safetensors)."""

    def check(self, settings: Settings) -> None:
        self.main_file(settings).require_folder()

    def _files(self, settings: Settings) -> list[Path]:
        folder = self.main_file(settings).path
        return sorted(folder.glob("*.safetensors")) + [folder / "config.json"]


class OnnxModelSpec(ModelSpec):
    """SAM's prompt decoder exported to ONNX, with an exported encoder or the checkpoint it came from."""

    def check(self, settings: Settings) -> None:
        from sam_ls_backend.predictors.onnx_runtime import onnx_paths  # onnxruntime itself is not imported

        onnx_paths(settings)

    def _files(self, settings: Settings) -> list[Path]:
        if settings.onnx_encoder:
            return [self.main_file(settings).path, settings.model_path(settings.onnx_encoder)]
        return [self.main_file(settings).path, mobile_sam_checkpoint(settings).path, sam_checkpoint(settings).path]


def mobile_sam_checkpoint(settings: Settings) -> ModelFile:
    return ModelFile(settings.model_path(settings.mobilesam_checkpoint), "MOBILESAM_CHECKPOINT", "mobile_sam")


def sam_checkpoint(settings: Settings, model_type: str | None = None) -> ModelFile:
    """SAM_CHECKPOINT, or MobileSAM's checkpoint when `model_type` is vit_t (the ONNX path's torch encoder)."""
    if model_type == "vit_t":
        return mobile_sam_checkpoint(settings)
    return ModelFile(settings.model_path(settings.sam_checkpoint), "SAM_CHECKPOINT", settings.sam_model_type)


# The choices whose models track objects through videos.
VIDEO_MODELS = ("SAM2", "SAM3")

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


def load_predictor(settings: Settings) -> Predictor:
    """The predictor SAM_CHOICE names, loaded from its files as the server loads it."""
    return model_spec(settings.sam_choice).load(settings).predictor
