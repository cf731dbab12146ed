"""Pre-annotation speed: PREANNOTATE=everything beside segment-anything's SamAutomaticMaskGenerator, same images.

Builds a random-weight MobileSAM (vit_t) checkpoint, loads it through the server's own loader, and for each
generated 640×480 scene times the backend's path (image encoder, then automatic mask generation on the
embedding) and SamAutomaticMaskGenerator.generate with the same parameters, taking turns. Random weights cost
the same encoder compute as trained ones, but the decoder's later steps depend on how many candidates pass
the filters: the default filters keep none here, so the run is repeated with the filters off, where every
candidate is upscaled, measured and suppressed (the most work the grid can cost).

    python -m bench.bench_preannotate [--images N] [--grid N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.machine import cpu_model
from sam_ls_backend.compute_thread import COMPUTE
from sam_ls_backend.predictors.automatic import GridOptions, generate_masks
from tests.support.checkpoints import save_random_checkpoint
from tests.support.shape_scenes import shape_scene

WIDTH, HEIGHT = 640, 480
FILTERS = {"default filters": (0.88, 0.95), "filters off": (0.0, 0.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="scenes per filter setting")
    parser.add_argument("--grid", type=int, default=16, help="clicks per side of the grid (SAM's default: 32)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        checkpoint = save_random_checkpoint("vit_t", Path(work) / "mobile_sam.pt")
        rows = COMPUTE.run(measure, checkpoint, args.images, args.grid)
    print(f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}; {args.images} scenes of {WIDTH}x{HEIGHT}, {args.grid}x{args.grid} grid")
    print("| filters | backend: encoder | backend: grid | backend images/s | SamAutomaticMaskGenerator images/s "
          "| masks (backend = generator) |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['encoder']:.2f} s | {row['grid']:.2f} s | {1 / (row['encoder'] + row['grid']):.3f} "
              f"| {1 / row['generator']:.3f} | {row['masks']} |")
    return 0


def measure(checkpoint: Path, images: int, grid: int) -> dict[str, dict]:
    """Median seconds per image of each step, per filter setting."""
    from mobile_sam import sam_model_registry
    from segment_anything import SamAutomaticMaskGenerator

    from sam_ls_backend.predictors.registry import load_predictor
    from sam_ls_backend.settings import Settings

    predictor = load_predictor(Settings.from_env({}, MOBILESAM_CHECKPOINT=str(checkpoint), DEVICE="cpu"))
    model = sam_model_registry["vit_t"]()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    rows = {}
    for name, (iou, stability) in FILTERS.items():
        times: dict[str, list[float]] = {"encoder": [], "grid": [], "generator": []}
        masks = []
        for seed in range(images):
            image = shape_scene(WIDTH, HEIGHT, seed=seed)[0]
            started = time.perf_counter()
            embedding = predictor.embed(image)
            encoded = time.perf_counter()
            found = generate_masks(predictor, embedding, GridOptions(points_per_side=grid, pred_iou_thresh=iou,
                                                                     stability_thresh=stability))
            done = time.perf_counter()
            generator = SamAutomaticMaskGenerator(model, points_per_side=grid, pred_iou_thresh=iou,
                                                  stability_score_thresh=stability)
            theirs = generator.generate(image)
            times["encoder"].append(encoded - started)
            times["grid"].append(done - encoded)
            times["generator"].append(time.perf_counter() - done)
            same = [m.mask.tobytes() for m in found] == [t["segmentation"].tobytes() for t in theirs]
            masks.append(f"{len(found)}{'' if same else ' (differ!)'}")
        rows[name] = {step: statistics.median(values) for step, values in times.items()} | {"masks": ", ".join(masks)}
    return rows


if __name__ == "__main__":
    sys.exit(main())
