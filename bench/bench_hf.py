"""Encoder and per-prompt times of SAM 2.1-tiny and SAM 3 at their real sizes, beside MobileSAM, in one run.

Builds each model's real architecture with random weights, saves it as the Hugging Face folder a user
downloads, loads it through the server's own loaders, and times the steps a click or a concept costs on
a 1024×768 image. Random weights cost the same compute as trained ones.

    python -m bench.bench_hf [--repeats N] [--folders DIR]      (or `make bench`)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.machine import cpu_model
from sam_ls_backend.compute_thread import COMPUTE
from tests.support.checkpoints import save_random_checkpoint
from tests.support.hf_checkpoints import save_sam2_folder, save_sam3_folder
from tests.support.scenes import scene

ROOT = Path(__file__).resolve().parent.parent

WIDTH, HEIGHT = 1024, 768


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per prompt case (encoders: half, at least 2)")
    parser.add_argument("--folders", type=Path, help="reuse (or keep) the built model folders here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folders = args.folders or Path(work)
        folders.mkdir(parents=True, exist_ok=True)
        rows = COMPUTE.run(measure, folders, args.repeats)  # where the server runs models (compute_thread.py)
    report(rows)
    return 0


def measure(folders: Path, repeats: int) -> dict[str, list[float]]:
    """Every row of the table, in seconds; one model in memory at a time."""
    from sam_ls_backend.protocol.prompts import Prompt
    from sam_ls_backend.settings import Settings

    image = scene(WIDTH, HEIGHT, seed=1)
    click = Prompt(label="person", to_name="image", points=((40.0, 50.0),), point_labels=(1,))
    box = Prompt(label="person", to_name="image", box=(20.0, 30.0, 60.0, 80.0))
    encodes = max(2, repeats // 2)
    rows: dict[str, list[float]] = {}

    from sam_ls_backend.predictors.registry import load_predictor

    checkpoint = save_random_checkpoint("vit_t", folders / "mobile_sam.pt")
    mobile = load_predictor(Settings.from_env({}, MOBILESAM_CHECKPOINT=str(checkpoint)))
    rows.update(prompt_rows("MobileSAM", mobile, image, click, box, encodes, repeats))
    del mobile
    gc.collect()

    from sam_ls_backend.app import load_backend
    from sam_ls_backend.predictors.registry import load_predictor

    sam2 = folders / "sam2.1-hiera-tiny"
    if not (sam2 / "config.json").is_file():
        save_sam2_folder(sam2, size="real")
    predictor = load_predictor(Settings.from_env({}, SAM_CHOICE="SAM2", SAM2_MODEL_DIR=str(sam2)))
    rows.update(prompt_rows("SAM 2.1-tiny", predictor, image, click, box, encodes, repeats))
    del predictor
    gc.collect()

    sam3 = folders / "sam3"
    if not (sam3 / "config.json").is_file():
        save_sam3_folder(sam3, size="real")
        gc.collect()
    backend = load_backend(Settings.from_env({}, SAM_CHOICE="SAM3", SAM3_MODEL_DIR=str(sam3)))
    rows.update(concept_rows(backend.concepts, image, encodes, repeats))
    rows.update(prompt_rows("SAM 3 tracker", backend.predictor, image, click, None, encodes, repeats))
    return rows


def prompt_rows(name: str, predictor, image: np.ndarray, click, box, encodes: int, repeats: int
                ) -> dict[str, list[float]]:
    """Encoder time, then one click and one box decoded (upscaled to the image) on the cached embedding."""
    rows = {f"{name}: image encoder": timed(lambda: predictor.embed(image), encodes)}
    embedding = predictor.embed(image)
    rows[f"{name}: click (decoder + upscale)"] = timed(lambda: predictor.predict(embedding, click), repeats)
    if box is not None:
        rows[f"{name}: box (decoder + upscale)"] = timed(lambda: predictor.predict(embedding, box), repeats)
    return rows


def concept_rows(concepts, image: np.ndarray, encodes: int, repeats: int) -> dict[str, list[float]]:
    """SAM 3's image encoder, a new and a known concept (text features are kept per concept), a concept with an
    example and a counter-example box, and a new threshold over the kept candidates (no detector run)."""
    rows = {"SAM 3 concepts: image encoder": timed(lambda: concepts.embed(image), encodes)}
    embedding = concepts.embed(image)
    words = iter(f"{colour} {thing}" for colour in ("red", "blue", "green", "white", "black")
                 for thing in ("car", "dog", "cat", "bird", "tree"))
    rows["SAM 3 concepts: new concept (text encoder + detector)"] = timed(
        lambda: concepts.detect(embedding, next(words), [], []), repeats)
    rows["SAM 3 concepts: concept seen before (detector)"] = timed(
        lambda: concepts.detect(embedding, "person", [], []), repeats)
    boxes = [(200.0, 150.0, 500.0, 600.0), (600.0, 100.0, 900.0, 400.0)]
    rows["SAM 3 concepts: seen concept + example + counter-example box"] = timed(
        lambda: concepts.detect(embedding, "person", boxes, [1, 0]), repeats)
    detections = concepts.detect(embedding, "person", [], [])
    threshold = float(detections.scores[min(10, len(detections.scores) - 1)])
    rows["SAM 3 concepts: new threshold, 10 instances upscaled"] = timed(
        lambda: concepts.instances(detections, threshold), repeats)
    return rows


def timed(action: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def report(rows: dict[str, list[float]]) -> None:
    import torch
    import transformers

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; torch threads {torch.get_num_threads()}")
    print(f"random weights at the real architecture sizes; image {WIDTH}x{HEIGHT}\n")
    print(f"| {'case':<58} | {'median ms':>9} | {'n':>3} |")
    print(f"|{'-' * 60}|{'-' * 11}|{'-' * 5}|")
    for name, times in rows.items():
        print(f"| {name:<58} | {statistics.median(times) * 1000:>9.0f} | {len(times):>3} |")


if __name__ == "__main__":
    sys.exit(main())
