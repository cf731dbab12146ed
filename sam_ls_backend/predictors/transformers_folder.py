"""A Hugging Face model folder loaded offline: what SAM 2.1, SAM 3 and their video trackers share."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from sam_ls_backend.errors import ConfigError
from sam_ls_backend.predictors.device import resolve_device, use_torch_threads
from sam_ls_backend.predictors.files import ModelFile
from sam_ls_backend.settings import Settings

log = logging.getLogger(__name__)


def import_transformers() -> Any:
    """`transformers`, made unable to reach the network before it is first imported (HF_HUB_OFFLINE)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # weights, configs and the tokenizer come from the folder only
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as error:
        raise ConfigError(f"SAM 2.1 and SAM 3 need torch and transformers: {error}") from None
    return transformers


def load_pretrained(settings: Settings, folder: ModelFile, model_class: str, processor_class: str) -> tuple[Any, Any]:
    """`transformers.<model_class>` and `<processor_class>` from the local model folder only, on DEVICE, in
    eval mode (start-up or a first video request: takes seconds; the time goes to the log)."""
    transformers = import_transformers()
    path = folder.require_folder()
    use_torch_threads(settings.torch_threads)
    started = time.perf_counter()
    try:
        model = getattr(transformers, model_class).from_pretrained(path, local_files_only=True)
        processor = getattr(transformers, processor_class).from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path} does not hold a {model_class} model folder: {error}") from None
    model = model.to(resolve_device(settings.device)).eval()
    log.info("loaded %s from %s on %s in %.1f s", model_class, path, model.device, time.perf_counter() - started)
    return model, processor
