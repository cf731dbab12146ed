"""The grid decoder of PREANNOTATE=everything on the default runtime: torch, or a batched ONNX Runtime graph?

On a CPU the default runtime serves MobileSAM's encoder and prompt graph on ONNX Runtime; the prompt graph
answers one click with one mask, while automatic mask generation needs the three candidates of 64 clicks per
decoder call. The server decodes the grid with the checkpoint's prompt encoder and mask decoder exported as one
batched ONNX graph (`predictors/onnx_grid.py`: 64 clicks in, 64×3 low-res logits and IoUs out) fed the ONNX
encoder's embedding. This times it against the same two modules in torch (`predictors/sam_grid.py`, the fallback
when the graph cannot be exported), on `--batches` batches of a 32×32 grid's clicks spread over the grid (one
embedding), taking turns batch by batch, and reports the median per batch, a whole grid's time (16 batches)
and how far the two answers are apart.

    python -m bench.bench_grid [--batches N] [--grid N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import cpu_model
from sam_ls_backend.compute_thread import COMPUTE
from tests.support.checkpoints import save_random_checkpoint
from tests.support.shape_scenes import shape_scene

BATCH = 64  # SamAutomaticMaskGenerator's points_per_batch, the server's EVERYTHING_POINTS_PER_BATCH


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4, help="batches of 64 clicks timed per decoder")
    parser.add_argument("--grid", type=int, default=32, help="clicks per side (a multiple of 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = COMPUTE.run(measure, Path(work), args.grid, args.batches)
    import onnxruntime

    print(f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; python "
          f"{platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"random-weight MobileSAM, 640x480 scene, {args.batches} batches of {BATCH} clicks of a "
          f"{args.grid}x{args.grid} grid")
    per_grid = args.grid * args.grid // BATCH
    print(f"| grid decoder | median s per {BATCH} clicks | s per {args.grid}x{args.grid} grid | × torch "
          "| largest logit difference | largest IoU difference |")
    print("|---|---|---|---|---|---|")
    base = rows["torch"][0]
    for name, (seconds, logit, iou) in rows.items():
        print(f"| {name} | {seconds:.2f} | {seconds * per_grid:.1f} | {base / seconds:.2f} | {logit:.2e} "
              f"| {iou:.2e} |")
    return 0


def measure(work: Path, grid: int, batches: int) -> dict[str, tuple[float, float, float]]:
    """Median seconds per batch of each decoder, and the largest differences from torch's answer."""
    from sam_ls_backend.predictors.automatic import point_grid
    from sam_ls_backend.predictors.registry import load_predictor
    from sam_ls_backend.predictors.sam import load_grid_decoder
    from sam_ls_backend.settings import Settings

    checkpoint = save_random_checkpoint("vit_t", work / "mobile_sam.pt")
    settings = Settings.from_env({}, MOBILESAM_CHECKPOINT=str(checkpoint), DEVICE="cpu", RUNTIME="auto")
    predictor = load_predictor(settings)
    served = predictor.grid_decoder()  # type: ignore[attr-defined]  # exports the batched graph
    decoders = {"torch": load_grid_decoder(settings, checkpoint), f"batched ONNX graph ({type(served).__name__}, "
                "served)": served}
    embedding = predictor.embed(shape_scene(640, 480, seed=0)[0])
    points = point_grid(grid) * np.array([640.0, 480.0])
    starts = np.linspace(0, len(points) - BATCH, batches).astype(int) // BATCH * BATCH

    times: dict[str, list[float]] = {name: [] for name in decoders}
    logit_gap, iou_gap = [0.0], [0.0]
    for start in starts:
        answers = []
        for name, decoder in decoders.items():
            started = time.perf_counter()
            answers.append(decoder.decode_grid(embedding, points[start:start + BATCH]))
            times[name].append(time.perf_counter() - started)
        (torch_logits, torch_iou), (onnx_logits, onnx_iou) = answers
        logit_gap.append(float((onnx_logits - torch_logits).abs().max()))
        iou_gap.append(float((onnx_iou - torch_iou).abs().max()))
    (torch_name, torch_times), (onnx_name, onnx_times) = times.items()
    return {torch_name: (statistics.median(torch_times), 0.0, 0.0),
            onnx_name: (statistics.median(onnx_times), max(logit_gap), max(iou_gap))}


if __name__ == "__main__":
    sys.exit(main())
