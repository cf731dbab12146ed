"""Time SAM's image encoder and prompt decoder in torch, ONNX Runtime fp32 and ONNX Runtime int8, in one run.

    python -m bench.bench_onnx [--checkpoint models/mobile_sam.pt] [--repeats N]

Without a checkpoint it builds a random-weight MobileSAM (compute does not depend on weight values). The
checkpoint is exported with onnx_converter.py (encoder and int8 copies) into a temporary folder. Prints the
machine, the versions, and per step the median milliseconds over the repeats and the worst mask IoU against
torch over the converter's sample prompts. An encoder's IoU is measured through torch's decoder, so each
row shows the cost of its own step only.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from bench.machine import cpu_model
from sam_ls_backend.predictors.base import Embedding, Predictor
from sam_ls_backend.predictors.onnx_convert import (
    SAMPLE_PROMPTS,
    as_numpy,
    convert,
    load_sam,
    mask_iou,
    synthetic_picture,
)
from sam_ls_backend.predictors.registry import load_predictor
from sam_ls_backend.predictors.sam import SamImagePredictor
from sam_ls_backend.settings import Settings
from tests.support.checkpoints import save_random_checkpoint

ROOT = Path(__file__).resolve().parent.parent

SIZES = [(1024, 768), (4000, 3000)]  # width × height of the pictures clicked on


def main() -> None:
    args = _parse_args()
    logging.basicConfig(level=logging.ERROR)  # the quantizer's advice is noise here
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or save_random_checkpoint("vit_t", Path(folder) / "mobile_sam.pt")
        sam, model_type = load_sam(checkpoint)
        files = convert(checkpoint, Path(folder), encoder=True, quantize=True, sample=synthetic_picture(800, 600),
                        report=lambda line: None)
        predictors = {"torch": SamImagePredictor(sam, model_type),
                      "ORT fp32": onnx_predictor(files, "", checkpoint),
                      "ORT int8": onnx_predictor(files, ".int8", checkpoint)}
        print_header(model_type, "random weights" if args.checkpoint is None else checkpoint.name)
        print(f"{'step':<38} {'runtime':<9} {'file MiB':>8} {'median ms':>10} {'worst IoU vs torch':>19}")
        bench_encoder(predictors, files, args.repeats)
        for width, height in SIZES:
            bench_decoder(predictors, files, synthetic_picture(width, height), args.repeats)
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def bench_encoder(predictors: dict[str, Predictor], files: list[Path], repeats: int) -> None:
    """Rows for embedding one picture; an encoder's IoU is judged through torch's decoder."""
    reference = predictors["torch"]
    image = synthetic_picture(*SIZES[0])
    embeddings = {name: predictor.embed(image) for name, predictor in predictors.items()}
    calls = {name: (lambda predictor=predictor: predictor.embed(image)) for name, predictor in predictors.items()}
    times = interleaved_medians(calls, repeats)
    for name in predictors:
        iou = None if name == "torch" else worst_iou(reference, reference, embeddings["torch"], embeddings[name])
        row("image encoder (resize + encode)" if name == "torch" else "", name,
            file_size(files, "encoder", name), times[name], iou)


def bench_decoder(predictors: dict[str, Predictor], files: list[Path], image: np.ndarray, repeats: int) -> None:
    """Rows for one click on `image`, every runtime decoding torch's embedding of it."""
    reference = predictors["torch"]
    torch_embedding = reference.embed(image)
    given = {name: torch_embedding if name == "torch" else as_numpy(torch_embedding) for name in predictors}
    calls = {name: (lambda predictor=predictor, embedding=given[name]: decode_all(predictor, embedding))
             for name, predictor in predictors.items()}
    times = interleaved_medians(calls, repeats)
    height, width = image.shape[:2]
    for name, predictor in predictors.items():
        iou = None if name == "torch" else worst_iou(reference, predictor, torch_embedding, given[name])
        row(f"prompt decoder, per click, {width}×{height}" if name == "torch" else "", name,
            file_size(files, "decoder", name), times[name] / len(SAMPLE_PROMPTS), iou)


def onnx_predictor(files: list[Path], suffix: str, checkpoint: Path) -> Predictor:
    """The served ONNX predictor on the exported decoder and encoder of one precision."""
    by_name = {path.name: path for path in files}
    stem = checkpoint.stem
    return load_predictor(Settings.from_env(
        {}, SAM_CHOICE="ONNX", DEVICE="cpu", ONNX_DECODER=str(by_name[f"{stem}.decoder{suffix}.onnx"]),
        ONNX_ENCODER=str(by_name[f"{stem}.encoder{suffix}.onnx"])))


def worst_iou(reference: Predictor, candidate: Predictor, expected_from: Embedding, decoded_from: Embedding) -> float:
    """Worst IoU over the sample prompts of `candidate` on one embedding against `reference` on the other."""
    return min(mask_iou(candidate.predict(decoded_from, prompt).mask, reference.predict(expected_from, prompt).mask)
               for prompt in SAMPLE_PROMPTS.values())


def decode_all(predictor: Predictor, embedding: Embedding) -> None:
    """One full decode (prompt to mask at the original size) of every sample prompt."""
    for prompt in SAMPLE_PROMPTS.values():
        predictor.predict(embedding, prompt)


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each call, the calls taking turns so that a busy machine slows all alike."""
    for call in calls.values():
        call()  # warm-up: first runs allocate
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def file_size(files: list[Path], graph: str, runtime: str) -> float | None:
    if runtime == "torch":
        return None
    suffix = ".int8.onnx" if "int8" in runtime else ".onnx"
    (path,) = [path for path in files if path.name.endswith(f".{graph}{suffix}")]
    return path.stat().st_size / 2**20


def row(step: str, runtime: str, size: float | None, ms: float, iou: float | None = None) -> None:
    shown_size = f"{size:.1f}" if size is not None else "-"
    shown_iou = f"{iou:.4f}" if iou is not None else "(reference)"
    print(f"{step:<38} {runtime:<9} {shown_size:>8} {ms:>10.1f} {shown_iou:>19}")


def print_header(model_type: str, weights: str) -> None:
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"onnx {version('onnx')}, numpy {np.__version__}")
    print(f"model: {model_type} ({weights}); load average (1 min) at the start: {os.getloadavg()[0]:.1f}")
    print()



def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="SAM or MobileSAM checkpoint (default: random vit_t)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per step (default 5)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
