"""The models SAM_CHOICE can name, and for each: where its files are, how to check and load them.

This is the one place SAM_CHOICE is compared. An entry's loader imports its model's code only when called,
so reading the registry costs no torch or onnxruntime import (a gunicorn master checks files, loads nothing).
Adding a model is one module under `predictors/` with a `load(settings, files)` and one `ModelSpec` line here.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

from sam_ls_backend.errors import ConfigError, RuntimeUnavailable
from sam_ls_backend.predictors.base import LoadedModels, Predictor
from sam_ls_backend.predictors.files import (
    ModelFile,
    ModelSettings,
    is_exported,
    mobile_sam_checkpoint,
    onnx_paths,
    sam_checkpoint,
)

log = logging.getLogger(__name__)


class ModelSpec:
    """How one SAM_CHOICE is served: a checkpoint file, loaded by `loader` ("module:function" under
    `sam_ls_backend.predictors`, called as function(settings, main_file) and returning `LoadedModels`).

    A model that can also run on ONNX Runtime names `onnx_loader`; `onnx_on_cpu` says RUNTIME=auto serves it
    there on a CPU (measured faster: README, ONNX). A failed export under auto falls back to `loader`. A model
    whose predictors can switch to a fine-tuned decoder (`use_decoder`) says `learns`.
    """

    def __init__(self, main_file: Callable[[ModelSettings], ModelFile], loader: str, onnx_loader: str = "",
                 onnx_on_cpu: bool | Callable[[ModelSettings], bool] = False, learns: bool = False) -> None:
        self.main_file = main_file
        self.loader = loader
        self.onnx_loader = onnx_loader
        self.onnx_on_cpu = onnx_on_cpu
        self.learns = learns  # LEARN=on can fine-tune its decoder (learning/): a SAM checkpoint in main_file

    def check(self, settings: ModelSettings) -> None:
        """Raise the ConfigError that explains a missing file, without loading anything."""
        self.main_file(settings).require_file()

    def _onnx_on_cpu(self, settings: ModelSettings) -> bool:
        return self.onnx_on_cpu(settings) if callable(self.onnx_on_cpu) else self.onnx_on_cpu

    def runtime(self, settings: ModelSettings) -> str:
        """torch or onnx: what RUNTIME makes of this model here (auto on DEVICE=auto asks torch for a GPU)."""
        if not self.onnx_loader or settings.runtime == "torch":
            return "torch"
        if settings.runtime == "onnx":
            return "onnx"
        return "onnx" if self._onnx_on_cpu(settings) and not _on_gpu(settings.device) else "torch"

    def may_export(self, settings: ModelSettings) -> bool:
        """RUNTIME may export this model's checkpoint at load and its graphs are not cached yet (cheap: no
        torch or onnxruntime import, so a gunicorn master can ask and leave the export to a child process)."""
        if not self.onnx_loader or settings.runtime == "torch" or (settings.runtime == "auto"
                                                                   and not self._onnx_on_cpu(settings)):
            return False
        checkpoint = self.main_file(settings).path
        return checkpoint.is_file() and not is_exported(settings, checkpoint)

    def load(self, settings: ModelSettings) -> LoadedModels:
        """The model's weights, loaded (start-up only: takes seconds; a first ONNX export, a minute or more)."""
        if self.runtime(settings) == "onnx":
            try:
                return self._call(self.onnx_loader, settings)
            except RuntimeUnavailable as why:
                self.fall_back(settings, why)
        return self._call(self.loader, settings)

    def fall_back(self, settings: ModelSettings, why: RuntimeUnavailable) -> None:
        """RUNTIME=auto: say in one log line why torch serves instead; RUNTIME=onnx: ConfigError with the reason."""
        if settings.runtime == "onnx":
            raise ConfigError(f"RUNTIME=onnx: {why}")
        log.warning("RUNTIME=auto: serving %s on torch, as its ONNX Runtime graphs are unavailable: %s",
                    self.main_file(settings).path.name, why)

    def _call(self, loader: str, settings: ModelSettings) -> LoadedModels:
        module, _, function = loader.partition(":")
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


# The largest SAM checkpoint taken for a ViT-B without reading it: sam_vit_b_01ec64.pth is 375 MB, ViT-L's 1.25 GB.
VIT_B_MAX_BYTES = 600 * 2**20


def _is_vit_b(settings: ModelSettings) -> bool:
    """SAM_MODEL_TYPE=vit_b, or (auto) a checkpoint no larger than a ViT-B's: cheap, the weights are not read."""
    if settings.sam_model_type != "auto":
        return settings.sam_model_type == "vit_b"
    path = sam_checkpoint(settings).path
    return path.is_file() and path.stat().st_size <= VIT_B_MAX_BYTES


# The choices whose models track objects through videos.
VIDEO_MODELS = ("SAM2", "SAM3")

MODELS: dict[str, ModelSpec] = {
    # MobileSAM: on a CPU, ONNX Runtime fp32 is the faster exact runtime (README, Runtime).
    "MobileSAM": ModelSpec(mobile_sam_checkpoint, "sam:load_mobile_sam", "onnx_cache:load_mobile_sam",
                           onnx_on_cpu=True, learns=True),
    # SAM ViT-B: on a CPU, ONNX Runtime fp32 too (measured faster); ViT-L/H stay on torch unless RUNTIME=onnx.
    "SAM": ModelSpec(sam_checkpoint, "sam:load_sam", "onnx_cache:load_sam", onnx_on_cpu=_is_vit_b,
                     learns=True),
    "ONNX": OnnxModelSpec(lambda s: ModelFile(s.model_path(s.onnx_decoder), "ONNX_DECODER", ""), "onnx_runtime:load"),
    "SAM2": FolderModelSpec(lambda s: ModelFile(s.model_path(s.sam2_model_dir), "SAM2_MODEL_DIR", "sam2"),
                            "hf:load_sam2"),
    "SAM3": FolderModelSpec(lambda s: ModelFile(s.model_path(s.sam3_model_dir), "SAM3_MODEL_DIR", "sam3"),
                            "sam3:load_sam3"),
}


def _on_gpu(device: str) -> bool:
    if device == "auto":
        from sam_ls_backend.predictors.device import resolve_device

        return resolve_device(device).type == "cuda"
    return device.startswith("cuda")


def model_spec(choice: str) -> ModelSpec:
    """The entry SAM_CHOICE names (settings have already checked the name)."""
    if choice not in MODELS:
        raise ConfigError(f"SAM_CHOICE must be one of {', '.join(MODELS)}, not {choice!r}")
    return MODELS[choice]


def load_predictor(settings: ModelSettings) -> Predictor:
    """The predictor SAM_CHOICE names, loaded from its files as the server loads it."""
    return model_spec(settings.sam_choice).load(settings).predictor
