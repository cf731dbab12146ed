"""Export SAM / MobileSAM to ONNX for `SAM_CHOICE=ONNX`, check the export against torch, optionally quantize.

    python onnx_converter.py --checkpoint models/mobile_sam.pt             # prompt decoder (any image size)
    python onnx_converter.py --checkpoint models/mobile_sam.pt --encoder   # + image encoder: serve without torch
    python onnx_converter.py --checkpoint models/mobile_sam.pt --quantize  # + int8 copies, with the IoU they cost

Files appear (beside the checkpoint, or in --output-dir) only once the exported graphs have answered sample
prompts like torch; any failure exits non-zero with one line that says what failed, and writes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from PIL import Image, UnidentifiedImageError
from torch import nn

from sam_ls_backend.errors import ConfigError
from sam_ls_backend.predictors import onnx_export
from sam_ls_backend.predictors.base import Embedding
from sam_ls_backend.predictors.files import mobile_sam_checkpoint
from sam_ls_backend.predictors.onnx_export import export_decoder, export_encoder
from sam_ls_backend.predictors.onnx_graph import DECODER_GRAPH, ENCODER_GRAPH
from sam_ls_backend.predictors.onnx_runtime import OnnxImageEncoder, OnnxSamPredictor, open_graph
from sam_ls_backend.predictors.sam import MODEL_BUILDERS, SamImagePredictor, read_state_dict, recognise_model_type
from sam_ls_backend.protocol.prompts import Prompt
from sam_ls_backend.settings import Settings

MIN_IOU = 0.99  # every fp32 mask must agree this well with torch's, or the export is refused

# Sample prompts, in percent of the image: one of each shape SAM is given (several rectangles are several boxes).
SAMPLE_PROMPTS = {
    "one click": Prompt(None, "image", ((50.0, 50.0),), (1,)),
    "clicks +/-": Prompt(None, "image", ((30.0, 40.0), (70.0, 60.0), (35.0, 45.0)), (1, 0, 1)),
    "box": Prompt(None, "image", box=(20.0, 10.0, 70.0, 70.0)),
    "box + clicks": Prompt(None, "image", ((40.0, 40.0), (60.0, 20.0)), (1, 0), (20.0, 10.0, 70.0, 70.0)),
}

Report = Callable[[str], None]


class ExportError(Exception):
    """The export, its validation or its quantization failed; the message says which and why."""


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # The quantizer's advice and shape-merging warnings are noise to a user of this command.
    logging.basicConfig(level=logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        sample = read_sample(args.sample) if args.sample else synthetic_picture(800, 600)
        written = convert(args.checkpoint, args.output_dir or args.checkpoint.parent, encoder=args.encoder,
                          quantize=args.quantize, sample=sample)
    except ConfigError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    except (ExportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    serve = f"SAM_CHOICE=ONNX ONNX_DECODER={written[0]}"
    encoder = [path for path in written if path.name.endswith(".encoder.onnx")]
    print(f"serve with: {serve}" + (f" ONNX_ENCODER={encoder[0]}" if encoder else ""))
    return 0


def convert(checkpoint: Path, output_dir: Path, encoder: bool, quantize: bool, sample: np.ndarray,
            report: Report = print, stem: str | None = None, min_iou: float = MIN_IOU) -> list[Path]:
    """Export, validate against torch, optionally quantize; returns the files written (decoder first).

    Files are named `<stem>.decoder.onnx` and `<stem>.encoder.onnx` (`stem` defaults to the checkpoint's).
    Each graph is checked right after its export, so a refused decoder costs no encoder export; any mask
    below `min_iou` against torch refuses the export and nothing is written.
    """
    sam, model_type = load_sam(checkpoint)
    stem = stem or checkpoint.stem
    report(f"exporting {model_type} from {checkpoint}")
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=output_dir))
    try:
        exported = {DECODER_GRAPH: staging / f"{stem}.decoder.onnx"}
        _step("exporting the prompt decoder", export_decoder, sam, exported[DECODER_GRAPH], model_type)
        checker = _step("running torch on the sample", Checker, SamImagePredictor(sam, model_type), sample,
                        exported[DECODER_GRAPH])
        _validate(checker, DECODER_GRAPH, exported[DECODER_GRAPH], min_iou, report)
        if encoder:
            exported[ENCODER_GRAPH] = staging / f"{stem}.encoder.onnx"
            _step("exporting the image encoder", export_encoder, sam, exported[ENCODER_GRAPH], model_type)
            _validate(checker, ENCODER_GRAPH, exported[ENCODER_GRAPH], min_iou, report)
        if quantize:
            for graph, path in list(exported.items()):
                int8 = path.with_name(path.name.replace(".onnx", ".int8.onnx"))
                _step(f"quantizing the {graph}", quantize_int8, path, int8)
                worst = _step(f"validating the int8 {graph}", checker.worst_iou, graph, int8)
                report(f"  {graph} int8: mask IoU against torch {worst[0]:.4f} at worst ({worst[1]}): "
                       "the cost of int8")
        return publish(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _validate(checker: Checker, graph: str, path: Path, min_iou: float, report: Report) -> None:
    """Refuse (ExportError) a graph whose worst mask IoU against torch is below `min_iou`."""
    worst = _step(f"validating the {graph}", checker.worst_iou, graph, path)
    report(f"  {graph} fp32: mask IoU against torch {worst[0]:.4f} at worst ({worst[1]})")
    if worst[0] < min_iou:
        raise ExportError(f"validation failed: the exported {graph} gives a mask with IoU {worst[0]:.4f} "
                          f"< {min_iou} against torch ({worst[1]}); nothing was written")


class Checker:
    """Compares masks from exported graphs with the torch model's, on the sample prompts and images.

    Besides every sample prompt alone, one case refines: clicks +/- with the one click's logits as mask_input.
    """

    def __init__(self, reference: SamImagePredictor, sample: np.ndarray, decoder: Path) -> None:
        self.model_type = reference.model_type
        self.images = [sample, portrait_crop(sample)]
        self.embeddings = [reference.embed(image) for image in self.images]
        self.cases = [sample_cases(reference, embedding) for embedding in self.embeddings]
        self.expected = [[reference.predict(embedding, prompt, mask_input).mask for _, prompt, mask_input in cases]
                         for embedding, cases in zip(self.embeddings, self.cases)]
        self.decoder = decoder  # the fp32 decoder, through which an encoder's embeddings are judged

    def worst_iou(self, graph: str, path: Path) -> tuple[float, str]:
        """Lowest mask IoU (and where) of a decoder on torch's embeddings, or of an encoder on the sample."""
        if graph == DECODER_GRAPH:
            return self._worst(self._predictor(path), [as_numpy(embedding) for embedding in self.embeddings])
        encoder = OnnxImageEncoder(open_graph(path, "ONNX_ENCODER", ENCODER_GRAPH, "cpu"))
        return self._worst(self._predictor(self.decoder), [encoder(self.images[0])])

    def _worst(self, candidate: OnnxSamPredictor, embeddings: list[Embedding]) -> tuple[float, str]:
        results = []
        for embedding, cases, expected in zip(embeddings, self.cases, self.expected):
            height, width = embedding.original_size
            for (name, prompt, mask_input), reference_mask in zip(cases, expected):
                iou = mask_iou(candidate.predict(embedding, prompt, mask_input).mask, reference_mask)
                results.append((iou, f"{name} on a {width}×{height} image"))
        return min(results)

    def _predictor(self, decoder: Path) -> OnnxSamPredictor:
        session = open_graph(decoder, "ONNX_DECODER", DECODER_GRAPH, "cpu")
        return OnnxSamPredictor(session, _no_encoder, self.model_type)


def sample_cases(reference: SamImagePredictor, embedding: Embedding) -> list[tuple[str, Prompt, np.ndarray | None]]:
    """(name, prompt, mask_input) to check: each sample prompt, and one refined by a previous answer."""
    previous = reference.predict(embedding, SAMPLE_PROMPTS["one click"]).low_res_logits
    return [(name, prompt, None) for name, prompt in SAMPLE_PROMPTS.items()] + [
        ("clicks +/- refining one click", SAMPLE_PROMPTS["clicks +/-"], previous)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; two empty masks agree fully."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def as_numpy(embedding: Embedding) -> Embedding:
    """The embedding with its features as a float32 NumPy array (what the ONNX path and the cache hold)."""
    return Embedding(features=embedding.features.float().cpu().numpy(), input_size=embedding.input_size,
                     original_size=embedding.original_size)


def load_sam(checkpoint: Path) -> tuple[nn.Module, str]:
    """The SAM / MobileSAM model in a checkpoint, in eval mode on the CPU, and its type (vit_t, vit_b, ...)."""
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint not found: {checkpoint}")
    state_dict = read_state_dict(checkpoint)
    model_type = recognise_model_type(state_dict)
    sam = MODEL_BUILDERS[model_type]()
    sam.load_state_dict(state_dict)
    return sam.eval(), model_type


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the weights of MatMul / Gemm nodes (ONNX Runtime's quantizer).

    The exporter shares identical weights between layers (through Identity nodes); the quantizer assumes
    a weight has one user, so every user gets its own copy first.
    """
    model = onnx.load(str(source))
    _unshare_weights(model.graph)
    large = sum(len(tensor.raw_data) for tensor in model.graph.initializer) > onnx_export.EXTERNAL_DATA_BYTES
    unshared = target.with_name(f"unshared-{target.name}")
    onnx.save_model(model, str(unshared), save_as_external_data=large, location=f"{unshared.name}.data")
    try:
        quantize_dynamic(unshared, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         use_external_data_format=large)
    finally:
        unshared.unlink(missing_ok=True)
        unshared.with_name(f"{unshared.name}.data").unlink(missing_ok=True)


def _unshare_weights(graph: onnx.GraphProto) -> None:
    """Replace each Identity node that forwards a weight by a copy of the weight under the node's output name."""
    weights = {tensor.name: tensor for tensor in graph.initializer}
    for node in [node for node in graph.node if node.op_type == "Identity" and node.input[0] in weights]:
        copy = onnx.TensorProto()
        copy.CopyFrom(weights[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)


def publish(staging: Path, output_dir: Path) -> list[Path]:
    """Move every staged file into `output_dir` (each move atomic); returns the graphs, the decoder first."""
    written = []
    for path in sorted(staging.iterdir(), key=lambda path: (not path.name.endswith(".decoder.onnx"), path.name)):
        os.replace(path, output_dir / path.name)
        written.append(output_dir / path.name)
    return [path for path in written if path.suffix == ".onnx"]


def _step(what: str, action: Callable, *args):
    """Run one stage; any failure becomes an ExportError that names the stage."""
    try:
        return action(*args)
    except ExportError:
        raise
    except Exception as error:  # torch, onnx and onnxruntime raise many kinds; the user needs the stage
        raise ExportError(f"{what} failed: {type(error).__name__}: {error}") from error


def portrait_crop(image: np.ndarray) -> np.ndarray:
    """An odd-sized portrait part of the image: masks must land right on every size and aspect ratio."""
    height = image.shape[0] - 1 + image.shape[0] % 2
    width = min(image.shape[1], height * 5 // 8)
    return np.ascontiguousarray(image[:height, :width - 1 + width % 2])


def _no_encoder(image: np.ndarray) -> Embedding:
    raise NotImplementedError("validation decodes the torch model's embeddings")


def synthetic_picture(width: int, height: int) -> np.ndarray:
    """An H×W×3 uint8 picture of a few flat shapes on a gradient: the default validation sample."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.full_like(xx, 60)], -1).astype(np.uint8)
    image[(xx - width * 0.45) ** 2 + (yy - height * 0.5) ** 2 < (height * 0.22) ** 2] = (220, 40, 40)
    image[int(height * 0.1):int(height * 0.35), int(width * 0.6):int(width * 0.9)] = (30, 30, 200)
    return image


def read_sample(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise ConfigError(f"--sample {path} is not a readable image: {error}") from None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Export SAM / MobileSAM to ONNX for SAM_CHOICE=ONNX, validated against torch.",
        epilog="Exit status: 0 written and validated, 1 export or validation failed, 2 bad input.")
    parser.add_argument("--checkpoint", type=Path, default=mobile_sam_checkpoint(Settings()).path,
                        help="SAM or MobileSAM checkpoint (default: models/mobile_sam.pt)")
    parser.add_argument("--output-dir", type=Path,
                        help="where to write the .onnx files (default: beside the checkpoint)")
    parser.add_argument("--encoder", action="store_true",
                        help="export the image encoder too (ONNX_ENCODER): serving then needs no torch")
    parser.add_argument("--quantize", action="store_true",
                        help="also write int8 copies (*.int8.onnx) and report the mask IoU they cost")
    parser.add_argument("--sample", type=Path, help="image to validate on (default: a synthetic picture)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
