"""A MobileSAM checkpoint whose masks follow the prompt, trained once from random weights and cached.

On random weights SAM answers the same blob wherever one clicks, so a comparison with segment-anything's
`SamAutomaticMaskGenerator` at its default filters would compare two empty sets. This module takes the
random-weight MobileSAM every test uses (`checkpoints.py`), fine-tunes its prompt encoder and mask decoder
with the backend's own `learning.train.fine_tune` on generated scenes of coloured shapes (`shape_scenes.py`;
the image encoder stays random and frozen), then moves its IoU head's output by one constant so that the
best-predicted share of the answers passes the generator's default `pred_iou_thresh` (training keeps the
head honest, i.e. near the actual IoUs, far below 0.88 for a model this weak; the order of the predictions
is unchanged). The result is saved as an ordinary MobileSAM checkpoint (`SAM_CHOICE=MobileSAM
MOBILESAM_CHECKPOINT=<file>`), with the measured figures in a JSON file beside it.

It is built once into the tests' cache folder beside the Label Studio environment (`label_studio.cache_dir`),
under a lock so that two test processes never both train, and written atomically. Its name carries a hash of
the recipe and of the code that produces it, so changing either builds a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sam_ls_backend.learning.train import Example, TrainOptions, click_iou, fine_tune
from sam_ls_backend.predictors.automatic import point_grid
from tests.support import checkpoints, shape_scenes
from tests.support.label_studio import _cache_lock, cache_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Everything the checkpoint depends on besides the code."""

    base_seed: int = 0  # the random-weight MobileSAM: save_random_checkpoint("vit_t", seed=base_seed)
    train_seeds: tuple[int, ...] = tuple(range(1000, 1048))
    held_out_seeds: tuple[int, ...] = tuple(range(2000, 2008))
    sizes: tuple[tuple[int, int], ...] = ((320, 240), (240, 320), (400, 300))  # (width, height), in turn
    shapes: int = 5
    options: TrainOptions = field(default_factory=lambda: TrainOptions(steps=300, seed=0))
    calibration_seeds: tuple[int, ...] = (1000, 1001, 1002, 1003)  # training scenes the IoU head is set on
    calibration_grid: int = 16
    passing_share: float = 0.3  # of the grid's candidates, put above the generator's default IoU threshold
    passing_iou: float = 0.9


RECIPE = Recipe()
SOURCES = (Path(__file__), Path(checkpoints.__file__), Path(shape_scenes.__file__),
           *Path(__file__).resolve().parents[2].joinpath("sam_ls_backend", "learning").glob("*.py"))


def trained_checkpoint(recipe: Recipe = RECIPE) -> Path:
    """The checkpoint file for `recipe`, trained now (a few minutes) if the cache does not hold it yet."""
    path = cache_dir() / f"mobile-sam-shapes-{recipe_key(recipe)}.pt"
    if path.is_file():
        return path
    with _cache_lock(f".{path.name}.lock"):
        if not path.is_file():
            _build(recipe, path)
    return path


def trained_figures(recipe: Recipe = RECIPE) -> dict:
    """What building the checkpoint measured: steps, seconds, held-out click IoU before and after, ..."""
    return json.loads(trained_checkpoint(recipe).with_suffix(".json").read_text())


def recipe_key(recipe: Recipe) -> str:
    """A short hash of the recipe and of the code the checkpoint comes from."""
    digest = hashlib.blake2b(digest_size=6)
    digest.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    for source in sorted(SOURCES, key=lambda p: p.name):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def scene_examples(model: torch.nn.Module, seeds: tuple[int, ...], recipe: Recipe,
                   compact: bool = True) -> list[Example]:
    """Every shape of the scenes of `seeds` as an example, the scene embedded by the backend's predictor
    (features kept as float16 numpy if `compact`, else as the float32 tensor the encoder gave)."""
    from sam_ls_backend.predictors.sam import SamImagePredictor

    predictor = SamImagePredictor(model, model_type="vit_t")
    examples = []
    for index, seed in enumerate(seeds):
        width, height = recipe.sizes[index % len(recipe.sizes)]
        image, masks = shape_scenes.shape_scene(width, height, seed=seed, shapes=recipe.shapes)
        embedding = predictor.embed(image)
        features = embedding.compact().features if compact else embedding.features.cpu().numpy()
        examples.extend(Example(features, embedding.input_size, embedding.original_size, mask)
                        for mask in masks)
    return examples


def _build(recipe: Recipe, path: Path) -> None:
    """Train, set the IoU head, and save the checkpoint and its figures, each written under a temporary
    name and renamed (the checkpoint last: its presence means complete)."""
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    model = checkpoints.random_model("vit_t", recipe.base_seed)
    train = scene_examples(model, recipe.train_seeds, recipe)
    held_out = scene_examples(model, recipe.held_out_seeds, recipe)
    embedded = time.monotonic()
    before = click_iou(model, held_out)
    trained_at = time.monotonic()
    weights = fine_tune(model, train, recipe.options)
    training_s = time.monotonic() - trained_at
    model.load_state_dict(weights, strict=False)
    after = click_iou(model, held_out)
    shift = _set_iou_head(model, recipe)
    figures = {"steps": recipe.options.steps, "training_s": round(training_s, 1),
               "embedding_s": round(embedded - started, 1), "train_examples": len(train),
               "held_out_examples": len(held_out), "held_out_iou_before": round(before, 4),
               "held_out_iou_after": round(after, 4), "iou_head_shift": round(shift, 4),
               "torch_threads": torch.get_num_threads()}
    _write_atomically(path.with_suffix(".json"), lambda target: target.write_text(json.dumps(figures, indent=1)))
    _write_atomically(path, lambda target: torch.save(model.state_dict(), target))
    logger.info("trained %s in %.0f s: %s", path, time.monotonic() - started, figures)


@torch.no_grad()
def _set_iou_head(model: torch.nn.Module, recipe: Recipe) -> float:
    """Move the IoU head's outputs by one constant so that `passing_share` of the 3 candidates of every click
    of a grid on the calibration scenes are predicted above `passing_iou`; returns the constant."""
    from sam_ls_backend.predictors.sam import SamImagePredictor

    predictor = SamImagePredictor(model, model_type="vit_t")
    predicted = []
    for index, seed in enumerate(recipe.calibration_seeds):
        width, height = recipe.sizes[index % len(recipe.sizes)]
        image, _ = shape_scenes.shape_scene(width, height, seed=seed, shapes=recipe.shapes)
        clicks = point_grid(recipe.calibration_grid) * np.array([width, height], dtype=np.float64)
        predicted.append(predictor.decode_grid(predictor.embed(image), clicks)[1].flatten().cpu().numpy())
    shift = recipe.passing_iou - float(np.quantile(np.concatenate(predicted), 1.0 - recipe.passing_share))
    model.mask_decoder.iou_prediction_head.layers[-1].bias += shift
    return shift


def _write_atomically(path: Path, write) -> None:
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
