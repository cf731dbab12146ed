"""The grid decoder of PREANNOTATE=everything on the default runtime: torch, or a batched ONNX Runtime graph?

On a CPU the default runtime serves MobileSAM's encoder and prompt graph on ONNX Runtime; the prompt graph
answers one click with one mask, while automatic mask generation needs the three candidates of 64 clicks per
decoder call. The server decodes the grid with the checkpoint's torch prompt encoder and mask decoder fed the
ONNX encoder's embedding (`predictors/sam_grid.py`). This times that against the alternative, the same prompt
encoder and mask decoder exported as one batched ONNX graph (64 clicks in, 64×3 low-res logits and IoUs out),
on `--batches` batches of a 32×32 grid's clicks spread over the grid (one embedding), taking turns batch by
batch, and reports the median per batch, a whole grid's time (16 batches) and how far the two answers are apart.

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
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.machine import cpu_model
from sam_ls_backend.compute_thread import COMPUTE
from tests.support.checkpoints import save_random_checkpoint
from tests.support.shape_scenes import shape_scene

BATCH = 64  # SamAutomaticMaskGenerator's points_per_batch, the server's EVERYTHING_POINTS_PER_BATCH


class BatchedGridGraph(torch.nn.Module):
    """SAM's prompt encoder + mask decoder for BATCH single clicks: coordinates BATCH×2×2 in the 1024-input frame
    (the click, then SAM's padding point), labels BATCH×2 (1, -1); out: logits BATCH×3×256×256, IoUs BATCH×3."""

    def __init__(self, sam) -> None:
        super().__init__()
        from sam_ls_backend.predictors.onnx_export import PromptGraph

        self.prompt = PromptGraph(sam)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor):
        encoder = self.prompt.prompt_encoder
        dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(point_coords.shape[0], -1, 64, 64)
        logits, iou = self.prompt.mask_decoder.predict_masks(
            image_embeddings=image_embeddings, image_pe=encoder.get_dense_pe(),
            sparse_prompt_embeddings=self.prompt.embed_points(point_coords, point_labels),
            dense_prompt_embeddings=dense)
        return logits[:, 1:], iou[:, 1:]


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
    base = rows["torch (served)"][0]
    for name, (seconds, logit, iou) in rows.items():
        print(f"| {name} | {seconds:.2f} | {seconds * per_grid:.1f} | {base / seconds:.2f} | {logit:.2e} "
              f"| {iou:.2e} |")
    return 0


def measure(work: Path, grid: int, batches: int) -> dict[str, tuple[float, float, float]]:
    """Median seconds per batch of each decoder, and the largest differences from torch's answer."""
    import onnxruntime as ort

    from sam_ls_backend.predictors.automatic import point_grid
    from sam_ls_backend.predictors.onnx_runtime import session_options
    from sam_ls_backend.predictors.registry import load_predictor
    from sam_ls_backend.predictors.sam import _build_mobile_sam
    from sam_ls_backend.settings import Settings

    checkpoint = save_random_checkpoint("vit_t", work / "mobile_sam.pt")
    predictor = load_predictor(Settings.from_env({}, MOBILESAM_CHECKPOINT=str(checkpoint), DEVICE="cpu",
                                                 RUNTIME="auto"))
    decoder = predictor.grid_decoder()  # type: ignore[attr-defined]
    embedding = predictor.embed(shape_scene(640, 480, seed=0)[0])
    points = point_grid(grid) * np.array([640.0, 480.0])
    starts = np.linspace(0, len(points) - BATCH, batches).astype(int) // BATCH * BATCH

    sam = _build_mobile_sam()
    sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    sam.eval()
    graph_path = work / "grid.onnx"
    coords = np.zeros((BATCH, 2, 2), dtype=np.float32)
    labels = np.tile(np.array([[1.0, -1.0]], dtype=np.float32), (BATCH, 1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(BatchedGridGraph(sam), (torch.zeros(1, 256, 64, 64), torch.as_tensor(coords),
                                                  torch.as_tensor(labels)), str(graph_path),
                          input_names=["image_embeddings", "point_coords", "point_labels"],
                          output_names=["low_res", "iou"], opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(graph_path), sess_options=session_options(),
                                   providers=["CPUExecutionProvider"])
    scale = 1024 / max(640, 480)
    features = np.asarray(embedding.features, dtype=np.float32)

    def torch_batch(start: int) -> tuple[np.ndarray, np.ndarray]:
        low_res, iou = decoder.decode_grid(embedding, points[start:start + BATCH])
        return low_res.numpy(), iou.numpy()

    def onnx_batch(start: int) -> tuple[np.ndarray, np.ndarray]:
        coords[:, 0, :] = points[start:start + BATCH] * scale
        low_res, iou = session.run(None, {"image_embeddings": features, "point_coords": coords,
                                          "point_labels": labels})
        return low_res, iou

    times: dict[str, list[float]] = {"torch (served)": [], "batched ONNX graph": []}
    logit_gap, iou_gap = [0.0], [0.0]
    for start in starts:
        answers = {}
        for name, run in (("torch (served)", torch_batch), ("batched ONNX graph", onnx_batch)):
            started = time.perf_counter()
            answers[name] = run(int(start))
            times[name].append(time.perf_counter() - started)
        (torch_logits, torch_iou), (onnx_logits, onnx_iou) = answers.values()
        logit_gap.append(float(np.abs(onnx_logits - torch_logits).max()))
        iou_gap.append(float(np.abs(onnx_iou - torch_iou).max()))
    return {"torch (served)": (statistics.median(times["torch (served)"]), 0.0, 0.0),
            "batched ONNX graph": (statistics.median(times["batched ONNX graph"]), max(logit_gap), max(iou_gap))}


if __name__ == "__main__":
    sys.exit(main())
