"""PREANNOTATE=everything on the default runtime: the grid of clicks decoded by one batched ONNX Runtime graph.

The checkpoint's prompt encoder and mask decoder are exported as one graph (`BatchedGridGraph`: N clicks in,
their three candidates out, N free at run time) beside the other exported graphs, named like them
(`<checkpoint stem>.<fingerprint>.grid.onnx`, `files.cached_graphs`), on first use. The export is written to a
hidden temporary file in the same folder, checked against the torch decoder (`sam_grid.SamGridDecoder`) on the
embedding of a synthetic picture, then renamed into place, under the folder lock the other exports take. A file
that ONNX Runtime cannot open is exported again; an export that fails or is refused by the check leaves the
grid to the torch decoder (`load_grid_decoder` logs why).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from sam_ls_backend.compute_thread import COMPUTE, on_compute_thread
from sam_ls_backend.errors import RuntimeUnavailable
from sam_ls_backend.predictors.base import Embedding
from sam_ls_backend.predictors.files import cached_graphs
from sam_ls_backend.predictors.onnx_export import PromptGraph
from sam_ls_backend.predictors.sam_grid import SamGridDecoder, upscale_logits
from sam_ls_backend.settings import Settings

if TYPE_CHECKING:
    import onnxruntime as ort

    from sam_ls_backend.predictors.automatic import GridDecoder

log = logging.getLogger(__name__)

GRID_INPUTS = ("image_embeddings", "point_coords", "point_labels")
GRID_OUTPUTS = ("low_res", "iou")
EXPORT_BATCH = 64  # clicks traced at export (the batch axis stays free): EVERYTHING_POINTS_PER_BATCH's default
# The check before a graph is served: the torch decoder's answers on the synthetic picture's 8×8 grid.
CHECK_POINTS_PER_SIDE = 8
MAX_LOGIT_GAP = 1e-3  # largest low-res logit difference (float32 rounding measures ~1e-6)
MAX_IOU_GAP = 1e-3  # largest predicted-IoU difference


class BatchedGridGraph(torch.nn.Module):
    """SAM's prompt encoder + mask decoder for N single clicks, every candidate kept.

    In: image_embeddings float32 1×256×64×64; point_coords float64 N×2×2 in the 1024-input frame (x, y: the
    click, then SAM's padding point 0, 0); point_labels float32 N×2 (1, -1).
    Out: low_res float32 N×3×256×256 logits (the three multimask candidates), iou float32 N×3.
    The coordinates enter as float64 and become float32 where segment_anything's prompt encoder casts them.
    """

    def __init__(self, decoder: SamGridDecoder) -> None:
        super().__init__()
        self.prompt = PromptGraph(decoder)  # reads prompt_encoder, mask_decoder and mask_threshold

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor):
        encoder = self.prompt.prompt_encoder
        dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(point_coords.shape[0], -1, 64, 64)
        logits, iou = self.prompt.mask_decoder.predict_masks(
            image_embeddings=image_embeddings, image_pe=encoder.get_dense_pe(),
            sparse_prompt_embeddings=self.prompt.embed_points(point_coords, point_labels),
            dense_prompt_embeddings=dense)
        return logits[:, 1:], iou[:, 1:]


def export_grid_graph(decoder: SamGridDecoder, path: Path) -> None:
    """Write `decoder`'s prompt encoder and mask decoder (on the CPU) to `path` as a `BatchedGridGraph`."""
    coords = torch.zeros(EXPORT_BATCH, 2, 2, dtype=torch.float64)
    labels = torch.tensor([[1.0, -1.0]]).repeat(EXPORT_BATCH, 1)
    clicks = {0: "clicks"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about shapes read as Python numbers
        torch.onnx.export(BatchedGridGraph(decoder), (torch.zeros(1, 256, 64, 64), coords, labels), str(path),
                          input_names=list(GRID_INPUTS), output_names=list(GRID_OUTPUTS), opset_version=17,
                          dynamic_axes=dict.fromkeys(GRID_INPUTS[1:] + GRID_OUTPUTS, clicks), dynamo=False)


class OnnxGridDecoder:
    """The `automatic.GridDecoder` contract on a `BatchedGridGraph` session; thread-safe."""

    def __init__(self, session: ort.InferenceSession, image_size: int = 1024, mask_threshold: float = 0.0) -> None:
        self.session = session
        self.image_size = image_size  # the encoder's square input side
        self.mask_threshold = mask_threshold  # logits above this are the mask (SAM: 0.0)
        self._transform = ResizeLongestSide(image_size)

    def decode_grid(self, embedding: Embedding, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's three candidates for each of N single positive clicks at `points` (N×2 float64 pixels x, y of the
        original image): low-res logits N×3×256×256 float32 and predicted IoUs N×3 float32, CPU torch tensors.

        The clicks map to the 1024 frame as `SamGridDecoder.decode_grid` maps them, in float64 into the graph.
        """
        coords = np.zeros((len(points), 2, 2), dtype=np.float64)  # the second point is SAM's padding (0, 0)
        coords[:, 0] = self._transform.apply_coords(np.asarray(points, dtype=np.float64), embedding.original_size)
        labels = np.tile(np.array([[1.0, -1.0]], dtype=np.float32), (len(points), 1))
        features = np.asarray(embedding.features, dtype=np.float32)
        low_res, iou = self.session.run(list(GRID_OUTPUTS), {"image_embeddings": features, "point_coords": coords,
                                                             "point_labels": labels})
        return torch.from_numpy(low_res), torch.from_numpy(iou)

    @on_compute_thread
    @torch.inference_mode()
    def upscale(self, embedding: Embedding, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits N×256×256 as logits in the original image frame, N×H×W float32 (SAM's postprocessing)."""
        return upscale_logits(embedding, low_res, self.image_size)


def grid_graph_path(settings: Settings, checkpoint: Path) -> Path:
    """Where the batched grid graph of `checkpoint` is (or will be) kept: beside its other exported graphs."""
    decoder, _ = cached_graphs(settings, checkpoint)
    return decoder.with_name(decoder.name.removesuffix(".decoder.onnx") + ".grid.onnx")


def load_grid_decoder(settings: Settings, checkpoint: Path, embed: Callable[[np.ndarray], Embedding]) -> GridDecoder:
    """The ONNX grid decoder of `checkpoint` (exported and checked now unless cached; `embed` is the served image
    encoder, H×W×3 uint8 RGB to an embedding), or its torch decoder, with one log line saying why, when the graph
    cannot be had."""
    from sam_ls_backend.predictors import sam

    try:
        return OnnxGridDecoder(ensure_grid_graph(settings, checkpoint, embed))
    except RuntimeUnavailable as error:
        log.warning("PREANNOTATE=everything decodes its grid with the torch prompt encoder and mask decoder: %s",
                    error)
        return sam.load_grid_decoder(settings, checkpoint)


def ensure_grid_graph(settings: Settings, checkpoint: Path, embed: Callable[[np.ndarray], Embedding]
                      ) -> ort.InferenceSession:
    """A session on the checkpoint's grid graph, exporting (and checking) it first unless a readable one is cached.

    RuntimeUnavailable, saying why, when the export fails, its check refuses it or the folder is not writable.
    """
    from sam_ls_backend.predictors.onnx_cache import folder_lock

    path = grid_graph_path(settings, checkpoint)
    session = _open_cached(path, settings.device)
    if session is not None:
        return session
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with folder_lock(path.parent):
            session = _open_cached(path, settings.device)  # another worker may have exported while this one waited
            if session is None:
                _export_checked(checkpoint, path, embed)
                session = _open(path, settings.device)
    except OSError as error:
        raise RuntimeUnavailable(f"cannot write the grid graph to {path.parent} ({error.strerror or error}): set "
                                 "ONNX_CACHE_DIR to a writable folder") from None
    return session


def _open_cached(path: Path, device: str) -> ort.InferenceSession | None:
    """The session on `path`, or None when there is no file or ONNX Runtime cannot use it (then it is removed)."""
    if not path.is_file():
        return None
    try:
        return _open(path, device)
    except RuntimeUnavailable as error:
        log.warning("%s: exporting it again", error)
        path.unlink(missing_ok=True)
        return None


def _open(path: Path, device: str) -> ort.InferenceSession:
    import onnxruntime as ort

    from sam_ls_backend.predictors.onnx_runtime import execution_providers, session_options

    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(), providers=execution_providers(device))
    except Exception as error:  # onnxruntime raises several kinds for a corrupt or foreign file
        raise RuntimeUnavailable(f"{path} is not a readable ONNX graph ({str(error)[:200]})") from None
    names = tuple(value.name for value in session.get_inputs()), tuple(value.name for value in session.get_outputs())
    if names != (GRID_INPUTS, GRID_OUTPUTS):
        raise RuntimeUnavailable(f"{path} is not a batched grid graph (inputs and outputs {names})")
    return session


def _export_checked(checkpoint: Path, path: Path, embed: Callable[[np.ndarray], Embedding]) -> None:
    """Export to a hidden file beside `path`, check it against the torch decoder, then rename it to `path`."""
    from sam_ls_backend.predictors.sam import decoder_parts, read_state_dict

    log.info("exporting the prompt encoder and mask decoder of %s as a batched ONNX grid graph for "
             "PREANNOTATE=everything: once per checkpoint", checkpoint.name)
    started = time.perf_counter()
    prompt_encoder, mask_decoder = decoder_parts(read_state_dict(checkpoint, mmap=True))
    reference = SamGridDecoder(prompt_encoder.eval(), mask_decoder.eval(), torch.device("cpu"))
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    staged = Path(temporary)
    try:
        try:
            COMPUTE.run(export_grid_graph, reference, staged)
        except Exception as error:  # the exporter raises many kinds
            raise RuntimeUnavailable(f"the grid graph's export failed: {str(error)[:200]}") from None
        logit_gap, iou_gap = check_grid_graph(OnnxGridDecoder(_open(staged, "cpu")), reference, embed)
        if logit_gap > MAX_LOGIT_GAP or iou_gap > MAX_IOU_GAP:
            raise RuntimeUnavailable(f"the exported grid graph was refused: its answers differ from the torch "
                                     f"decoder's by up to {logit_gap:.2e} in logits and {iou_gap:.2e} in IoU "
                                     f"(tolerances {MAX_LOGIT_GAP:.0e}, {MAX_IOU_GAP:.0e})")
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    log.info("exported and checked %s in %.1f s (largest differences from torch: logits %.1e, IoU %.1e)",
             path.name, time.perf_counter() - started, logit_gap, iou_gap)


def check_grid_graph(graph: OnnxGridDecoder, reference: Any, embed: Callable[[np.ndarray], Embedding]
                     ) -> tuple[float, float]:
    """The largest logit and predicted-IoU differences between `graph` and the torch `reference` decoder on the
    synthetic picture's grid, decoded as one full batch and as a smaller one (the batch axis is free)."""
    from sam_ls_backend.predictors.automatic import point_grid
    from sam_ls_backend.predictors.onnx_convert import synthetic_picture

    width, height = 800, 600
    embedding = embed(synthetic_picture(width, height))
    points = point_grid(CHECK_POINTS_PER_SIDE) * np.array([width, height], dtype=np.float64)
    logit_gap = iou_gap = 0.0
    for batch in (points, points[:7]):
        low_res, iou = graph.decode_grid(embedding, batch)
        expected_low_res, expected_iou = reference.decode_grid(embedding, batch)
        logit_gap = max(logit_gap, float((low_res - expected_low_res).abs().max()))
        iou_gap = max(iou_gap, float((iou - expected_iou).abs().max()))
    return logit_gap, iou_gap
