"""RUNTIME=onnx (and auto on a CPU) for MobileSAM and SAM: the checkpoint exported to ONNX once, then reused.

The two graphs (`onnx_export.py`: prompt decoder with upscaling, image encoder) are written beside the
checkpoint, or in ONNX_CACHE_DIR, named by the checkpoint's fingerprint:
`<checkpoint stem>.<fingerprint>.decoder.onnx` and `.encoder.onnx`. A new or changed checkpoint gets new
names, so a stale export is never served. Files appear only once the converter's own check (`Checker`:
the sample prompts on two images, against the torch model) found every mask at IoU ≥ MIN_IOU; the export
is staged in a hidden folder and each file is moved in atomically. Workers starting together take a lock
on the folder, so one exports and the others reuse its files.

Importing this module imports neither torch nor onnxruntime: a gunicorn master may ask whether an export
is needed (`is_exported`) and leave the export to a child process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from sam_ls_backend.errors import ConfigError, RuntimeUnavailable
from sam_ls_backend.predictors.base import LoadedModels
from sam_ls_backend.predictors.files import ModelFile, cached_graphs
from sam_ls_backend.settings import Settings

log = logging.getLogger(__name__)

# The converter's check for a graph that is to be served by default: masks as SamPredictor's, IoU >= 0.999.
MIN_IOU = 0.999


def ensure_exported(settings: Settings, checkpoint: Path) -> tuple[Path, Path]:
    """The decoder and encoder of `checkpoint`, exported and checked now unless the cache has them.

    Raises RuntimeUnavailable, saying why, when the export fails or its check refuses it.
    """
    decoder, encoder = cached_graphs(settings, checkpoint)
    if decoder.is_file() and encoder.is_file():
        return decoder, encoder
    folder = decoder.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(folder):
            if decoder.is_file() and encoder.is_file():  # another worker exported while this one waited
                return decoder, encoder
            _export(checkpoint, folder, decoder.name.removesuffix(".decoder.onnx"))
    except OSError as error:
        raise RuntimeUnavailable(f"cannot write the exported graphs to {folder} ({error.strerror or error}): "
                                 "set ONNX_CACHE_DIR to a writable folder") from None
    return decoder, encoder


def _export(checkpoint: Path, folder: Path, stem: str) -> None:
    from sam_ls_backend.predictors.onnx_convert import ExportError, convert, synthetic_picture

    log.info("exporting %s to ONNX Runtime graphs in %s: once per checkpoint, this takes about a minute",
             checkpoint.name, folder)
    started = time.perf_counter()
    try:
        convert(checkpoint, folder, encoder=True, quantize=False, sample=synthetic_picture(800, 600),
                report=log.debug, stem=stem, min_iou=MIN_IOU)
    except (ExportError, ConfigError) as error:
        raise RuntimeUnavailable(str(getattr(error, "message", error))) from None
    log.info("exported and checked %s's ONNX graphs in %.0f s", checkpoint.name, time.perf_counter() - started)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself (no lock file is left behind); released on exit."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def load_mobile_sam(settings: Settings, checkpoint: ModelFile) -> LoadedModels:
    """SAM_CHOICE=MobileSAM on ONNX Runtime: the MobileSAM checkpoint's exported graphs."""
    return LoadedModels(load_exported(settings, checkpoint, mobile=True))


def load_sam(settings: Settings, checkpoint: ModelFile) -> LoadedModels:
    """SAM_CHOICE=SAM on ONNX Runtime: the SAM ViT-B / L / H checkpoint's exported graphs."""
    return LoadedModels(load_exported(settings, checkpoint, mobile=False))


def load_exported(settings: Settings, checkpoint: ModelFile, mobile: bool):
    """An `OnnxSamPredictor` on the checkpoint's graphs, exporting them first if needed.

    RuntimeUnavailable when they cannot be had or opened; ConfigError when the checkpoint is the wrong model.
    """
    from sam_ls_backend.predictors.onnx_graph import DECODER_GRAPH, ENCODER_GRAPH, MODEL_TYPE_KEY, WEIGHTS_KEY
    from sam_ls_backend.predictors.onnx_runtime import OnnxImageEncoder, OnnxSamPredictor, graph_metadata, open_graph

    path = checkpoint.require_file()
    decoder_path, encoder_path = ensure_exported(settings, path)
    started = time.perf_counter()
    try:
        decoder = open_graph(decoder_path, "the exported decoder", DECODER_GRAPH, settings.device)
        encoder = open_graph(encoder_path, "the exported encoder", ENCODER_GRAPH, settings.device)
    except ConfigError as error:
        raise RuntimeUnavailable(f"{error.message}; delete it to export again") from None
    metadata = graph_metadata(decoder)
    model_type = metadata.get(MODEL_TYPE_KEY, "")
    if graph_metadata(encoder).get(WEIGHTS_KEY) != metadata.get(WEIGHTS_KEY):
        raise RuntimeUnavailable(f"{encoder_path} and {decoder_path} hold different weights: delete both to "
                                 "export again")
    if mobile and model_type != "vit_t":
        raise ConfigError(f"SAM_CHOICE=MobileSAM but {path.name} holds a SAM {model_type} model: use SAM_CHOICE=SAM")
    if settings.sam_model_type not in ("auto", model_type):
        raise ConfigError(f"SAM_MODEL_TYPE={settings.sam_model_type} but {path.name} holds a {model_type} model")
    log.info("serving %s on ONNX Runtime (%s) from %s and %s, opened in %.1f s", model_type,
             decoder.get_providers()[0], decoder_path.name, encoder_path.name, time.perf_counter() - started)
    image_encoder = OnnxImageEncoder(encoder)
    return OnnxSamPredictor(decoder, image_encoder, model_type, device=settings.device,
                            grid=partial(_grid_decoder, settings, path, image_encoder))


def _grid_decoder(settings: Settings, checkpoint: Path, embed):
    """PREANNOTATE=everything: the checkpoint's batched ONNX grid graph, checked on `embed`'s embedding, or its
    torch prompt encoder and mask decoder when the graph cannot be had (imports torch)."""
    from sam_ls_backend.predictors.onnx_grid import load_grid_decoder

    return load_grid_decoder(settings, checkpoint, embed)
