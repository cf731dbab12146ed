"""Where a model's files are, the error that says how to get a missing one, and their fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sam_ls_backend.errors import ConfigError

# Part of every graph's name: a change to what the graphs take or give renames them, so they are exported again.
EXPORT_FORMAT = "sam-ls-backend onnx graphs 1"


class ModelSettings(Protocol):
    """The settings that say which model and where its files are (sam_ls_backend.settings.Settings has them)."""

    @property
    def sam_choice(self) -> str: ...
    @property
    def mobilesam_checkpoint(self) -> str: ...
    @property
    def sam_checkpoint(self) -> str: ...
    @property
    def sam_model_type(self) -> str: ...
    @property
    def onnx_decoder(self) -> str: ...
    @property
    def onnx_encoder(self) -> str: ...
    @property
    def sam2_model_dir(self) -> str: ...
    @property
    def sam3_model_dir(self) -> str: ...
    @property
    def runtime(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def onnx_cache_dir(self) -> str: ...

    def model_path(self, name: str) -> Path: ...


@dataclass(frozen=True)
class ModelFile:
    """A checkpoint file or model folder, with the setting that names it and how to download it."""

    path: Path
    variable: str  # the environment variable that names it (resolved against MODEL_DIR)
    download: str  # the argument of ./download_models.sh that fetches it

    def require_file(self) -> Path:
        """The path, when it is a file; else a ConfigError that says how to get it."""
        if not self.path.is_file():
            raise ConfigError(f"checkpoint not found: {self.path}. Run ./download_models.sh {self.download} "
                              f"or set {self.variable} to the checkpoint's path")
        return self.path

    def require_folder(self, required: tuple[str, ...] = ("config.json",)) -> Path:
        """The path, when it is a folder holding the `required` files (a Hugging Face snapshot); else ConfigError."""
        if not self.path.is_dir() or not all((self.path / name).is_file() for name in required):
            raise ConfigError(f"model folder not found or incomplete: {self.path}. Run ./download_models.sh "
                              f"{self.download} or set {self.variable} to a downloaded model folder")
        return self.path


def mobile_sam_checkpoint(settings: ModelSettings) -> ModelFile:
    return ModelFile(settings.model_path(settings.mobilesam_checkpoint), "MOBILESAM_CHECKPOINT", "mobile_sam")


def sam_checkpoint(settings: ModelSettings, model_type: str | None = None) -> ModelFile:
    """SAM_CHECKPOINT, or MobileSAM's checkpoint when `model_type` is vit_t (the ONNX path's torch encoder)."""
    if model_type == "vit_t":
        return mobile_sam_checkpoint(settings)
    return ModelFile(settings.model_path(settings.sam_checkpoint), "SAM_CHECKPOINT", settings.sam_model_type)


def onnx_paths(settings: ModelSettings) -> tuple[Path, Path | None]:
    """The decoder and (if set) encoder files, resolved against MODEL_DIR; ConfigError names a missing one.

    Cheap and free of onnxruntime, so the server's start-up check can run it before gunicorn forks.
    """
    decoder = _model_file(settings, settings.onnx_decoder, "ONNX_DECODER")
    encoder = _model_file(settings, settings.onnx_encoder, "ONNX_ENCODER") if settings.onnx_encoder else None
    return decoder, encoder


def _model_file(settings: ModelSettings, name: str, variable: str) -> Path:
    """A setting's file, resolved against MODEL_DIR like the checkpoints; ConfigError when it is missing."""
    path = settings.model_path(name)
    if not path.is_file():
        raise ConfigError(f"{variable} not found: {path}. Export it with python onnx_converter.py --checkpoint "
                          f"<SAM or MobileSAM checkpoint>{' --encoder' if variable == 'ONNX_ENCODER' else ''}, "
                          f"or set {variable} to the file's path")
    return path


def cached_graphs(settings: ModelSettings, checkpoint: Path) -> tuple[Path, Path]:
    """Where the decoder and encoder exported from `checkpoint` are (or will be) kept."""
    folder = settings.model_path(settings.onnx_cache_dir) if settings.onnx_cache_dir else checkpoint.parent
    stem = f"{checkpoint.stem}.{fingerprint(EXPORT_FORMAT, [checkpoint])}"
    return folder / f"{stem}.decoder.onnx", folder / f"{stem}.encoder.onnx"


def is_exported(settings: ModelSettings, checkpoint: Path) -> bool:
    """Both graphs of `checkpoint` are in the cache (cheap: reads 2 MiB of the checkpoint, imports nothing)."""
    return all(path.is_file() for path in cached_graphs(settings, checkpoint))


def fingerprint(model_version: str, files: list[Path]) -> str:
    """Identifies the weights cheaply: the model's name, and each file's size, head and tail."""
    digest = hashlib.sha256(model_version.encode())
    for path in files:
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(size - (1 << 20), 0))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]
