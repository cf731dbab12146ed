"""Time SAM's image encoder and prompt decoder in every runtime variant worth choosing from, in one run.

    python -m bench.bench_onnx [--model vit_t|vit_b] [--checkpoint PATH] [--repeats N] [--compile]

Without a checkpoint it builds a random-weight model (compute does not depend on weight values). The
checkpoint is exported with onnx_converter.py (encoder and int8 copies) into a temporary folder. Variants:
torch as the server runs it (inference_mode, torch's default threads), torch eager under no_grad, torch on
one thread, torch with channels-last weights, torch.compile (with --compile: compiling takes minutes on a
small CPU), and ONNX Runtime fp32 at each graph optimisation level, on one thread, with spinning threads,
and int8. Prints the machine, the versions, and per step the median milliseconds over the repeats (the
variants taking turns, so a busy machine slows them alike: compare ratios within one run) and the worst mask
IoU against the server's torch path over the converter's sample prompts. An encoder's IoU is measured
through torch's decoder, so each row shows the cost of its own step only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from sam_ls_backend.predictors.onnx_graph import DECODER_GRAPH, ENCODER_GRAPH
from sam_ls_backend.predictors.onnx_runtime import OnnxImageEncoder, OnnxSamPredictor, open_graph, session_options
from sam_ls_backend.predictors.sam import SamImagePredictor
from tests.support.checkpoints import save_random_checkpoint

SIZES = [(1024, 768), (4000, 3000)]  # width × height of the pictures clicked on
CHECKPOINT_NAMES = {"vit_t": "mobile_sam.pt", "vit_b": "sam_vit_b.pth"}

Encode = Callable[[np.ndarray], Embedding]


@dataclass(frozen=True)
class Variant:
    """One way of running a step: how to call it, the torch threads it runs with (0: torch's default), its file."""

    name: str
    call: Callable
    threads: int = 0
    file: Path | None = None


def main() -> None:
    args = _parse_args()
    logging.basicConfig(level=logging.ERROR)  # the quantizer's advice is noise here
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or save_random_checkpoint(args.model, Path(folder) / CHECKPOINT_NAMES[args.model])
        sam, model_type = load_sam(checkpoint)
        started = time.perf_counter()
        files = convert(checkpoint, Path(folder), encoder=True, quantize=True, sample=synthetic_picture(800, 600),
                        report=lambda line: None)
        export_s = time.perf_counter() - started
        reference = SamImagePredictor(sam, model_type)
        print_header(model_type, "random weights" if args.checkpoint is None else checkpoint.name, export_s)
        print(f"{'step':<36} {'variant':<36} {'file MiB':>8} {'median ms':>10} {'vs server torch':>15} "
              f"{'worst IoU':>10}")
        bench_encoder(reference, encoder_variants(sam, model_type, files, args.compile, args.served_only),
                      args.repeats)
        decoders = decoder_variants(reference, files, args.served_only)
        for width, height in SIZES:
            bench_decoder(reference, decoders, synthetic_picture(width, height), args.repeats)
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def encoder_variants(sam: torch.nn.Module, model_type: str, files: list[Path], compile_too: bool,
                     served_only: bool = False) -> list[Variant]:
    """Every image encoder variant (`served_only`: torch and ONNX Runtime as the server runs them, and int8);
    the first is the server's torch path, the reference of the ratios."""
    served = SamImagePredictor(sam, model_type)
    variants = [Variant("torch (server: inference_mode)", served.embed)]
    if not served_only:
        variants += [Variant("torch eager (no_grad)", eager_encoder(served)),
                     Variant("torch, 1 thread", served.embed, threads=1),
                     Variant("torch, channels-last", channels_last_encoder(sam, model_type))]
    if compile_too:
        variants.append(Variant("torch.compile", compiled_encoder(sam, model_type)))
    fp32, int8 = graph_file(files, ENCODER_GRAPH, ""), graph_file(files, ENCODER_GRAPH, ".int8")
    for name, options in ort_settings()[:1] if served_only else ort_settings():
        session = open_graph(fp32, "ONNX_ENCODER", ENCODER_GRAPH, "cpu", session_options(**options))
        variants.append(Variant(f"ORT fp32, {name}", OnnxImageEncoder(session), file=fp32))
    session = open_graph(int8, "ONNX_ENCODER", ENCODER_GRAPH, "cpu")
    variants.append(Variant("ORT int8 (opt-in)", OnnxImageEncoder(session), file=int8))
    return variants


def decoder_variants(reference: SamImagePredictor, files: list[Path], served_only: bool = False) -> list[Variant]:
    """Every prompt decoder variant (each decodes the sample prompts); the first is the server's torch path."""
    variants = [Variant("torch (server: inference_mode)", reference)]
    if not served_only:
        variants.append(Variant("torch, 1 thread", reference, threads=1))
    fp32, int8 = graph_file(files, DECODER_GRAPH, ""), graph_file(files, DECODER_GRAPH, ".int8")
    for name, options in ort_settings()[:1] if served_only else ort_settings():
        session = open_graph(fp32, "ONNX_DECODER", DECODER_GRAPH, "cpu", session_options(**options))
        variants.append(Variant(f"ORT fp32, {name}", OnnxSamPredictor(session, no_encoder, reference.model_type),
                                file=fp32))
    session = open_graph(int8, "ONNX_DECODER", DECODER_GRAPH, "cpu")
    variants.append(Variant("ORT int8 (opt-in)", OnnxSamPredictor(session, no_encoder, reference.model_type),
                            file=int8))
    return variants


def ort_settings() -> list[tuple[str, dict]]:
    """ONNX Runtime session settings to compare; the first is the server's default."""
    return [("all opts, threads per core (server)", {}),
            ("extended opts", {"optimization": "extended"}),
            ("basic opts", {"optimization": "basic"}),
            ("no graph opts", {"optimization": "disable"}),
            ("all opts, 1 thread", {"threads": 1}),
            ("all opts, spinning threads", {"spinning": True})]


def bench_encoder(reference: SamImagePredictor, variants: list[Variant], repeats: int) -> None:
    """Rows for embedding one picture; an encoder's IoU is judged through torch's decoder."""
    image = synthetic_picture(*SIZES[0])
    expected = reference.embed(image)
    calls = {variant.name: with_threads(variant.threads, lambda call=variant.call: call(image))
             for variant in variants}
    times = interleaved_medians(calls, repeats)
    served = times[variants[0].name]
    for index, variant in enumerate(variants):
        embedding = with_threads(variant.threads, lambda call=variant.call: call(image))()
        iou = worst_iou(reference, reference, expected, embedding)
        row("image encoder (resize + encode)" if index == 0 else "", variant, times[variant.name], served, iou)


def bench_decoder(reference: SamImagePredictor, variants: list[Variant], image: np.ndarray, repeats: int) -> None:
    """Rows for one click on `image`, every variant decoding torch's embedding of it."""
    torch_embedding = reference.embed(image)
    numpy_embedding = as_numpy(torch_embedding)

    def given(variant: Variant) -> Embedding:
        return torch_embedding if isinstance(variant.call, SamImagePredictor) else numpy_embedding

    calls = {variant.name: with_threads(variant.threads, lambda v=variant: decode_all(v.call, given(v)))
             for variant in variants}
    times = interleaved_medians(calls, repeats)
    height, width = image.shape[:2]
    served = times[variants[0].name]
    for index, variant in enumerate(variants):
        iou = worst_iou(reference, variant.call, torch_embedding, given(variant))
        row(f"prompt decoder, per click, {width}×{height}" if index == 0 else "", variant,
            times[variant.name] / len(SAMPLE_PROMPTS), served / len(SAMPLE_PROMPTS), iou)


def eager_encoder(served: SamImagePredictor) -> Encode:
    """The server's resize and encoder under `torch.no_grad` instead of `inference_mode`."""
    model = served.model

    def encode(image: np.ndarray) -> Embedding:
        from segment_anything.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(image)
        with torch.no_grad():
            pixels = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
            features = model.image_encoder(model.preprocess(pixels))
        return Embedding(features=features, input_size=(int(pixels.shape[-2]), int(pixels.shape[-1])),
                         original_size=image.shape[:2])

    return encode


def channels_last_encoder(sam: torch.nn.Module, model_type: str) -> Encode:
    """A copy of the model with its 4-D weights in channels-last memory order (same values)."""
    import copy

    model = copy.deepcopy(sam).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return SamImagePredictor(model, model_type).embed


def compiled_encoder(sam: torch.nn.Module, model_type: str) -> Encode:
    """A copy of the model whose image encoder goes through `torch.compile` (compiled on first call)."""
    import copy

    model = copy.deepcopy(sam)
    model.image_encoder = torch.compile(model.image_encoder)
    predictor = SamImagePredictor(model, model_type)
    started = time.perf_counter()
    predictor.embed(synthetic_picture(*SIZES[0]))
    print(f"torch.compile: first call (compiling) took {time.perf_counter() - started:.0f} s")
    return predictor.embed


def no_encoder(image: np.ndarray) -> Embedding:
    raise NotImplementedError("decoder variants decode torch's embeddings")


def graph_file(files: list[Path], graph: str, suffix: str) -> Path:
    kind = "decoder" if graph == DECODER_GRAPH else "encoder"
    (path,) = [path for path in files if path.name.endswith(f".{kind}{suffix}.onnx")]
    return path


def with_threads(threads: int, call: Callable[[], object]) -> Callable[[], object]:
    """`call` run with torch limited to `threads` (0: unchanged)."""
    def run():
        with torch_threads(threads):
            return call()

    return run


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def row(step: str, variant: Variant, ms: float, served_ms: float, iou: float) -> None:
    size = f"{variant.file.stat().st_size / 2**20:.1f}" if variant.file else "-"
    print(f"{step:<36} {variant.name:<36} {size:>8} {ms:>10.1f} {served_ms / ms:>14.2f}× {iou:>10.4f}")


def print_header(model_type: str, weights: str, export_s: float) -> None:
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"onnx {version('onnx')}, numpy {np.__version__}")
    print(f"model: {model_type} ({weights}); export + check + int8 took {export_s:.0f} s; "
          f"load average (1 min) at the start: {os.getloadavg()[0]:.1f}")
    print("'vs server torch': how many times faster than the server's torch path, in this run\n")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CHECKPOINT_NAMES), default="vit_t",
                        help="random-weight model to build when no checkpoint is given (default vit_t)")
    parser.add_argument("--checkpoint", type=Path, help="SAM or MobileSAM checkpoint (default: random weights)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per step (default 5)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (compiles for minutes)")
    parser.add_argument("--served-only", action="store_true",
                        help="only the served torch and ONNX Runtime settings, and int8: every ONNX Runtime session "
                             "of a ViT-B/L/H encoder holds GBs, and all variants at once exhaust 24 GB")
    return parser.parse_args()


if __name__ == "__main__":
    main()
