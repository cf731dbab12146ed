"""Where a model's files are, the error that says how to get a missing one, and their fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sam_ls_backend.errors import ConfigError


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
