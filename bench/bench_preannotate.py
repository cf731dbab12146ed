"""Pre-annotation speed: PREANNOTATE=everything beside segment-anything's SamAutomaticMaskGenerator, same images;
or (--concepts) PREANNOTATE=concepts on SAM 3 at its real size.

everything: builds a random-weight MobileSAM (vit_t) checkpoint, loads it through the server's own loader
(RUNTIME, default auto: ONNX Runtime on a CPU, exported first), and for each generated 640×480 scene times the
backend's path (image encoder, then automatic mask generation on the embedding with the predictor's grid
decoder) and SamAutomaticMaskGenerator.generate with the same parameters, taking turns. Random weights cost
the same encoder compute as trained ones, but the decoder's later steps depend on how many candidates pass
the filters: the default filters keep none here, so the run is repeated with the filters off, where every
candidate is upscaled, measured and suppressed (the most work the grid can cost).

concepts: builds SAM 3's real architecture with random weights as the folder a user downloads, loads it
through the server's loader, and times whole /predict calls of tasks without regions (image download, one
image encoder run, the three labels of the config as concepts, regions) on generated 1024×768 scenes.

    python -m bench.bench_preannotate [--images N] [--grid N] [--runtime auto|torch]
    python -m bench.bench_preannotate --concepts [--images N] [--folders DIR]
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
from sam_ls_backend.predictors.automatic import GridOptions, generate_masks
from sam_ls_backend.predictors.onnx_convert import mask_iou
from tests.support.checkpoints import save_random_checkpoint
from tests.support.shape_scenes import shape_scene

WIDTH, HEIGHT = 640, 480
FILTERS = {"default filters": (0.88, 0.95), "filters off": (0.0, 0.0)}
CONCEPT_WIDTH, CONCEPT_HEIGHT = 1024, 768
CONCEPT_CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
                  '<Label value="person"/><Label value="car"/><Label value="dog" concept="small brown dog"/>'
                  '</BrushLabels></View>')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="scenes per filter setting (concepts: scenes)")
    parser.add_argument("--grid", type=int, default=16, help="clicks per side of the grid (SAM's default: 32)")
    parser.add_argument("--runtime", default="auto", help="RUNTIME for MobileSAM (auto: the default's)")
    parser.add_argument("--concepts", action="store_true", help="SAM 3 concepts at the real size instead")
    parser.add_argument("--folders", type=Path, help="concepts: reuse (or keep) the built SAM 3 folder here")
    args = parser.parse_args()
    if args.concepts:
        return concepts(args.images, args.folders)
    with tempfile.TemporaryDirectory() as work:
        checkpoint = save_random_checkpoint("vit_t", Path(work) / "mobile_sam.pt")
        rows, runtime = COMPUTE.run(measure, checkpoint, args.images, args.grid, args.runtime)
    print(f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.1f}; MobileSAM on {runtime}; "
          f"{args.images} scenes of {WIDTH}x{HEIGHT}, {args.grid}x{args.grid} grid")
    print("| filters | backend: encoder | backend: grid | backend images/s | SamAutomaticMaskGenerator images/s "
          "| masks (backend = generator) |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['encoder']:.2f} s | {row['grid']:.2f} s | {1 / (row['encoder'] + row['grid']):.3f} "
              f"| {1 / row['generator']:.3f} | {row['masks']} |")
    return 0


def measure(checkpoint: Path, images: int, grid: int, runtime: str) -> tuple[dict[str, dict], str]:
    """Median seconds per image of each step, per filter setting; and the runtime that served."""
    from mobile_sam import sam_model_registry
    from segment_anything import SamAutomaticMaskGenerator

    from sam_ls_backend.predictors.registry import load_predictor
    from sam_ls_backend.settings import Settings

    predictor = load_predictor(Settings.from_env({}, MOBILESAM_CHECKPOINT=str(checkpoint), DEVICE="cpu",
                                                 RUNTIME=runtime))
    decoder = predictor.grid_decoder()  # type: ignore[attr-defined]
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
            found = generate_masks(decoder, embedding, GridOptions(points_per_side=grid, pred_iou_thresh=iou,
                                                                   stability_thresh=stability))
            done = time.perf_counter()
            generator = SamAutomaticMaskGenerator(model, points_per_side=grid, pred_iou_thresh=iou,
                                                  stability_score_thresh=stability)
            theirs = generator.generate(image)
            times["encoder"].append(encoded - started)
            times["grid"].append(done - encoded)
            times["generator"].append(time.perf_counter() - done)
            same = len(found) == len(theirs) and all(
                mask_iou(m.mask, t["segmentation"]) >= 0.999 for m, t in zip(found, theirs))
            masks.append(f"{len(found)}{'' if same else ' (differ!)'}")
        rows[name] = {step: statistics.median(values) for step, values in times.items()} | {"masks": ", ".join(masks)}
    return rows, predictor.runtime  # type: ignore[attr-defined]


def concepts(images: int, folders: Path | None) -> int:
    """SAM 3 concepts at the real size: whole /predict calls of tasks without regions, a 3-label config."""
    with tempfile.TemporaryDirectory() as work:
        folder = (folders or Path(work)) / "sam3"
        if not (folder / "config.json").is_file():
            from tests.support.hf_checkpoints import save_sam3_folder

            save_sam3_folder(folder, size="real")
        times, regions, runs = measure_concepts(folder, images)
    import transformers

    print(f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, Python {platform.python_version()}; load average "
          f"{os.getloadavg()[0]:.1f}; SAM 3 real size, random weights; {images} scenes of "
          f"{CONCEPT_WIDTH}x{CONCEPT_HEIGHT}, 3 labels")
    print("| case | median s per image | images/s | encoder runs per image | regions per image |")
    print("|---|---|---|---|---|")
    median = statistics.median(times)
    print(f"| PREANNOTATE=concepts, 3 labels | {median:.1f} | {1 / median:.3f} | {runs / images:g} "
          f"| {', '.join(str(r) for r in regions)} |")
    return 0


def measure_concepts(folder: Path, images: int) -> tuple[list[float], list[int], int]:
    """Seconds per task, regions per task, and encoder runs in all, through the backend's /predict."""
    from sam_ls_backend.app import load_backend
    from sam_ls_backend.settings import Settings
    from tests.support.image_host import ImageHost
    from tests.support.ls_bodies import predict_body

    host = ImageHost()
    try:
        settings = Settings.from_env({}, SAM_CHOICE="SAM3", SAM3_MODEL_DIR=str(folder), PREANNOTATE="concepts",
                                     LABEL_STUDIO_URL=host.url, LABEL_STUDIO_API_KEY=host.token)
        backend = load_backend(settings)
        runs: list[int] = []
        original = backend.concepts.model.get_vision_features
        backend.concepts.model.get_vision_features = lambda **kw: runs.append(1) or original(**kw)
        times, regions = [], []
        for seed in range(images):
            image = np.ascontiguousarray(shape_scene(CONCEPT_WIDTH, CONCEPT_HEIGHT, seed=seed)[0])
            body = predict_body(host.add_image(f"/data/upload/1/concepts-{seed}.png", image), None, task_id=seed + 1)
            body["label_config"] = CONCEPT_CONFIG
            started = time.perf_counter()
            (prediction,) = backend.predict(body)["results"]
            times.append(time.perf_counter() - started)
            regions.append(len(prediction["result"]))
    finally:
        host.close()
    return times, regions, len(runs)


if __name__ == "__main__":
    sys.exit(main())
