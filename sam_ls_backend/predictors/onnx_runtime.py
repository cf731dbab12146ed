"""SAM served by ONNX Runtime (`SAM_CHOICE=ONNX`): any image size, every prompt, and optionally no torch at all.

The prompt graph (`ONNX_DECODER`, written by `onnx_converter.py`) takes the image sizes at run time, so one
file serves every image. The image encoder runs as an ONNX graph too when `ONNX_ENCODER` is set (then this
process never imports torch), else in torch from the SAM / MobileSAM checkpoint the graphs came from.
Preprocessing is SamPredictor's, redone with PIL and NumPy: the same resize, normalisation and padding.

onnxruntime is imported only when a graph is opened: a gunicorn master that has imported it before
forking makes its workers abort (SIGABRT) when they exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from sam_ls_backend.errors import ConfigError, RuntimeUnavailable
from sam_ls_backend.predictors.base import Embedding, LoadedModels, MaskResult
from sam_ls_backend.predictors.files import ModelFile, onnx_paths, sam_checkpoint
from sam_ls_backend.predictors.onnx_graph import (
    BOX_CORNERS,
    DECODER_GRAPH,
    DECODER_OUTPUTS,
    EMBEDDING_SHAPE,
    ENCODER_GRAPH,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    GRAPH_KEY,
    IMAGE_SIZE,
    LOW_RES_SHAPE,
    MODEL_TYPE_KEY,
    PADDING_POINT,
    WEIGHTS_KEY,
)
from sam_ls_backend.protocol.prompts import Prompt
from sam_ls_backend.settings import Settings

if TYPE_CHECKING:
    import onnxruntime as ort

    from sam_ls_backend.predictors.automatic import GridDecoder

log = logging.getLogger(__name__)

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # SAM's normalisation (RGB)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

ImageEncoder = Callable[[np.ndarray], Embedding]


def load(settings: Settings, decoder_file: ModelFile) -> LoadedModels:
    """SAM_CHOICE=ONNX: the graphs the settings name; ConfigError names a missing, unreadable or mismatched file."""
    started = time.perf_counter()
    decoder_path, encoder_path = onnx_paths(settings)
    decoder = open_graph(decoder_path, "ONNX_DECODER", DECODER_GRAPH, settings.device)
    metadata = graph_metadata(decoder)
    model_type, weights = metadata.get(MODEL_TYPE_KEY, ""), metadata.get(WEIGHTS_KEY, "")
    if encoder_path is not None:
        session = open_graph(encoder_path, "ONNX_ENCODER", ENCODER_GRAPH, settings.device)
        if graph_metadata(session).get(WEIGHTS_KEY) != weights:
            raise ConfigError(f"ONNX_ENCODER={encoder_path} and ONNX_DECODER={decoder_path} were exported "
                              "from different checkpoints: export both from one with onnx_converter.py --encoder")
        encoder: ImageEncoder = OnnxImageEncoder(session)
    else:
        encoder = torch_image_encoder(settings, decoder_path, model_type, weights)
    log.info("loaded ONNX %s: decoder %s, encoder %s, on %s in %.1f s", model_type, decoder_path,
             encoder_path or "in torch", decoder.get_providers()[0], time.perf_counter() - started)
    grid = encoder.grid_decoder if isinstance(encoder, TorchImageEncoder) else None
    return LoadedModels(OnnxSamPredictor(decoder, encoder, model_type, grid, settings.device))


class OnnxSamPredictor:
    """Thread-safe SAM on ONNX Runtime: `embed` an image (ONNX or torch encoder), `predict` prompts on it."""

    runtime = "onnxruntime"

    def __init__(self, decoder: ort.InferenceSession, encoder: ImageEncoder, model_type: str,
                 grid: Callable[[], GridDecoder] | None = None, device: str = "cpu") -> None:
        self.model_type = model_type
        self.device = device
        self._checkpoint_decoder = decoder
        self._decoder = decoder
        self._encoder = encoder
        self._load_grid = grid
        self._grid: GridDecoder | None = None
        self._grid_lock = threading.Lock()

    def grid_decoder(self) -> GridDecoder:
        """What automatic mask generation decodes with, loaded on first use: the torch prompt encoder and mask
        decoder of the checkpoint the graphs came from, fed this encoder's embeddings (the exported prompt
        graph answers one click with one mask; the grid needs every click's three candidates)."""
        if self._load_grid is None:
            raise ConfigError("PREANNOTATE=everything on ONNX Runtime needs the SAM or MobileSAM checkpoint the "
                              "graphs were exported from: unset ONNX_ENCODER so the checkpoint is loaded")
        with self._grid_lock:
            if self._grid is None:
                self._grid = self._load_grid()
            return self._grid

    def use_decoder(self, learned: Any) -> None:
        """Serve the prompt graph of `learned` (a `learning.decoders.LearnedDecoder`: LEARN=on), or the
        checkpoint's own for None; RuntimeUnavailable when the learned one has no ONNX graph."""
        if learned is None:
            self._decoder = self._checkpoint_decoder
            return
        if not learned.onnx.is_file():
            raise RuntimeUnavailable(f"{learned.onnx.name} is missing: the learned decoder v{learned.version} "
                                     "has no ONNX Runtime graph (its export failed: see the trainer's log)")
        self._decoder = open_graph(learned.onnx, "the learned decoder", DECODER_GRAPH, self.device)

    def embed(self, image: np.ndarray) -> Embedding:
        """Run the image encoder on an H×W×3 uint8 RGB image; the features come back as a NumPy array."""
        return self._encoder(image)

    def predict(self, embedding: Embedding, prompt: Prompt, mask_input: np.ndarray | None = None) -> MaskResult:
        """One object's mask in the original frame; a lone click gets the best of SAM's three candidates.

        `mask_input` (256×256 logits, e.g. a previous answer's `low_res_logits`) is SamPredictor's `mask_input`.
        """
        feed = decoder_feed(embedding, prompt, mask_input)
        mask, score, low_res = self._decoder.run(list(DECODER_OUTPUTS), feed)
        return MaskResult(mask=mask[0, 0], score=float(score[0, 0]), low_res_logits=low_res[0, 0])

    def predict_batch(self, embedding: Embedding, prompts: Sequence[Prompt],
                      mask_inputs: Sequence[np.ndarray | None]) -> list[MaskResult]:
        """One mask per prompt, each refined with its `mask_input` when given (decoded one at a time)."""
        return [self.predict(embedding, prompt, mask) for prompt, mask in zip(prompts, mask_inputs)]


def decoder_feed(embedding: Embedding, prompt: Prompt, mask_input: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The prompt graph's inputs: the prompt's points and box corners in the 1024-input frame, as SAM orders them.

    Points come first; a box adds its two corners, and a prompt without a box gets SAM's padding point.
    """
    height, width = embedding.original_size
    input_height, input_width = embedding.input_size
    coords, labels, box = prompt.in_pixels(width, height)
    scale = np.array([input_width / width, input_height / height])
    points: list[np.ndarray] = []
    kinds: list[int] = []
    if coords is not None and labels is not None:
        points.append(coords * scale)
        kinds.extend(int(label) for label in labels)
    if box is not None:
        points.append(box.reshape(2, 2) * scale)
        kinds.extend(BOX_CORNERS)
    else:
        points.append(np.zeros((1, 2)))
        kinds.append(PADDING_POINT)
    return {
        "image_embeddings": np.asarray(embedding.features, dtype=np.float32).reshape(EMBEDDING_SHAPE),
        "point_coords": np.concatenate(points).astype(np.float32)[None],
        "point_labels": np.array(kinds, dtype=np.float32)[None],
        "mask_input": (np.zeros(LOW_RES_SHAPE, dtype=np.float32) if mask_input is None
                       else np.asarray(mask_input, dtype=np.float32).reshape(LOW_RES_SHAPE)),
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], dtype=np.float32),
        "multimask": np.array([prompt.is_single_click]),
        "input_size": np.array(embedding.input_size, dtype=np.int64),
        "original_size": np.array(embedding.original_size, dtype=np.int64),
    }


class OnnxImageEncoder:
    """SAM's image encoder as an ONNX graph; one image at a time, as it already uses every core."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> Embedding:
        pixels, input_size = preprocess(image)
        with self._lock:
            (features,) = self._session.run(list(ENCODER_OUTPUTS), {ENCODER_INPUTS[0]: pixels})
        return Embedding(features=features, input_size=input_size,
                         original_size=(int(image.shape[0]), int(image.shape[1])))


def preprocess(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """SamPredictor's input: long side resized to 1024 (PIL bilinear), normalised, zero-padded to 1×3×1024×1024.

    Returns the pixels and the resized (h, w). torchvision's resize of a PIL image is PIL's own `resize`.
    """
    height, width = resized_shape(int(image.shape[0]), int(image.shape[1]))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height),
                                                                          Image.Resampling.BILINEAR))
    pixels = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    pixels[0, :, :height, :width] = ((resized - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
    return pixels, (height, width)


def resized_shape(height: int, width: int) -> tuple[int, int]:
    """(h, w) with the long side scaled to 1024, rounded as SAM's `ResizeLongestSide` rounds."""
    scale = IMAGE_SIZE * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def torch_image_encoder(settings: Settings, decoder: Path, model_type: str, weights: str) -> TorchImageEncoder:
    """The torch encoder of the checkpoint the decoder was exported from (imports torch: no ONNX_ENCODER)."""
    checkpoint = sam_checkpoint(settings, model_type)
    if not checkpoint.path.is_file():
        raise ConfigError(f"SAM_CHOICE=ONNX without ONNX_ENCODER runs the {model_type} image encoder in torch from "
                          f"{checkpoint.variable}={checkpoint.path}, which does not exist: set ONNX_ENCODER to an "
                          f"encoder exported with onnx_converter.py --encoder, or {checkpoint.variable} to the "
                          "checkpoint")
    from sam_ls_backend.predictors.sam import load_predictor, weights_fingerprint

    torch_predictor = load_predictor(settings, checkpoint, mobile=model_type == "vit_t")
    if weights_fingerprint(torch_predictor.model) != weights:
        raise ConfigError(f"ONNX_DECODER={decoder} was not exported from {checkpoint.path}: export it "
                          f"from that checkpoint with onnx_converter.py, or set {checkpoint.variable} to its source")
    return TorchImageEncoder(torch_predictor)


class TorchImageEncoder:
    """The torch image encoder of the checkpoint the ONNX decoder came from; features as NumPy arrays."""

    def __init__(self, torch_predictor: Any) -> None:
        self._predictor = torch_predictor  # a predictors.sam.SamImagePredictor

    def __call__(self, image: np.ndarray) -> Embedding:
        embedding = self._predictor.embed(image)
        return Embedding(features=embedding.features.float().cpu().numpy(), input_size=embedding.input_size,
                         original_size=embedding.original_size)

    def grid_decoder(self) -> GridDecoder:
        """The same torch model's prompt encoder and mask decoder."""
        return self._predictor.grid_decoder()


def session_options(threads: int = 0, optimization: str = "all", spinning: bool = False) -> ort.SessionOptions:
    """ONNX Runtime's options for one graph: intra-op `threads` (0: one per core), graph `optimization`
    (disable, basic, extended or all) and whether idle threads spin. The server uses the defaults, the fastest
    measured (README, ONNX); `bench/bench_onnx.py` times the others."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel(OPTIMIZATION_LEVELS[optimization])
    # Idle threads sleep instead of spinning by default: the server's other threads (and torch, when it
    # runs the encoder) need the cores between two runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


OPTIMIZATION_LEVELS = {"disable": 0, "basic": 1, "extended": 2, "all": 99}  # ort.GraphOptimizationLevel values


def open_graph(path: Path, variable: str, graph: str, device: str,
               options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on `path`, refused unless onnx_converter.py wrote it as this kind of graph."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), sess_options=options or session_options(),
                                       providers=execution_providers(device))
    except Exception as error:  # onnxruntime raises several kinds for a missing, foreign or corrupt file
        raise ConfigError(f"{variable}={path} is not a readable ONNX model: {error}") from None
    found = graph_metadata(session).get(GRAPH_KEY)
    if found != graph:
        what = f"a SAM {found}" if found else "a graph without onnx_converter.py's metadata"
        flag = " --encoder" if graph == ENCODER_GRAPH else ""
        raise ConfigError(f"{variable}={path} holds {what}, not a SAM {graph}: export one with "
                          f"python onnx_converter.py --checkpoint <checkpoint>{flag}")
    return session


def graph_metadata(session: ort.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def execution_providers(device: str) -> list:
    """CUDA when DEVICE asks for it (or `auto` and onnxruntime-gpu is installed), else the CPU."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device.startswith("cuda") and not has_cuda:
        raise ConfigError(f"DEVICE={device} but this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    if device.startswith("cuda") or (device == "auto" and has_cuda):
        return [("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
