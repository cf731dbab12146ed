"""A MobileSAM checkpoint whose masks follow the click, trained here: the tests' random-weight MobileSAM with
its prompt encoder and mask decoder fine-tuned by the backend's own `learning.train.fine_tune` on generated
scenes of coloured shapes (`shape_examples.RECIPE`'s training scenes, the image encoder random and frozen).

On random weights SAM answers about the same blob wherever one clicks, so SamAutomaticMaskGenerator keeps no
mask at its default filters, and comparing a "segment everything" with it would compare two empty sets.
After this training a click's mask is the shape under it, on scenes it never saw, well enough for the
generator to keep many different masks. Two read-outs are then calibrated, as the issue's recipe sets the
IoU head, so that the generator's default filters keep some answers and drop others: on a calibration scene's
grid of clicks, the mask logits are multiplied by the smallest factor that brings the median stability score
to 0.95 (the soft logits of cross-entropy training would fail the stability filter; masks thresholded at 0
are unchanged), and the IoU head (trained to predict the answers' actual IoUs, about 0.3 on a frozen random
encoder) is mapped linearly so that its median answer is 0.90 and its 10th percentile 0.80.

The training is built once per recipe (the options, the scenes, the training code's text and torch's version
name the folder) in the tests' cache beside the Label Studio environment, under its lock, written whole or not
at all: about 15 minutes on 2 cores. The calibration takes seconds and is written beside it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam_ls_backend.learning import sampling, train
from sam_ls_backend.learning.train import TrainOptions, fine_tune
from tests.support import shape_examples, shape_scenes
from tests.support.checkpoints import random_model
from tests.support.label_studio import _ensure_cached, cache_dir

log = logging.getLogger(__name__)

TRAINED = "mobile_sam.pt"  # as trained
CALIBRATED = "mobile_sam-calibrated"
LOGIT_SCALES = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)


@dataclass(frozen=True)
class TrainedRecipe:
    """What the checkpoint is trained on and how."""

    scenes: shape_examples.Recipe = field(default_factory=shape_examples.Recipe)
    options: TrainOptions = field(default_factory=lambda: TrainOptions(steps=600, seed=0))
    calibration_seed: int = 1000  # the calibration scene (320×240)
    calibration_grid: int = 8  # clicks per side of its grid

    def digest(self) -> str:
        """A short hash of the recipe, the training code and torch's version: the cache entry's name."""
        text = "\n".join([repr((self.scenes, self.options)), inspect.getsource(train), inspect.getsource(sampling),
                          torch.__version__])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


RECIPE = TrainedRecipe()


def trained_checkpoint(recipe: TrainedRecipe = RECIPE) -> Path:
    """The trained and calibrated MobileSAM's state dict, saved as official MobileSAM checkpoints are (for
    `SAM_CHOICE=MobileSAM MOBILESAM_CHECKPOINT=...`); built on first use."""
    folder = _ensure_cached(cache_dir() / f"trained-mobilesam-{recipe.digest()}",
                            lambda partial, _log: _train(partial, recipe))
    calibrated = folder / f"{CALIBRATED}-{recipe.calibration_seed}-{recipe.calibration_grid}.pt"
    if not calibrated.is_file():
        model = _load(folder / TRAINED, recipe)
        _calibrate(model, recipe)
        partial = calibrated.with_name(f"{calibrated.name}.partial-{os.getpid()}")
        torch.save(model.state_dict(), partial)
        partial.rename(calibrated)
    return calibrated


def trained_model(recipe: TrainedRecipe = RECIPE) -> torch.nn.Module:
    """The trained and calibrated MobileSAM, in eval mode."""
    return _load(trained_checkpoint(recipe), recipe)


def _load(path: Path, recipe: TrainedRecipe) -> torch.nn.Module:
    model = random_model("vit_t", recipe.scenes.base_seed)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _train(folder: Path, recipe: TrainedRecipe) -> None:
    model = random_model("vit_t", recipe.scenes.base_seed)
    examples = shape_examples.scene_examples(model, recipe.scenes.train_seeds, recipe.scenes)
    log.info("training the tests' MobileSAM on %d shapes (%d steps)", len(examples), recipe.options.steps)
    model.load_state_dict(fine_tune(model, examples, recipe.options), strict=False)
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / TRAINED)


@torch.no_grad()
def _calibrate(model: Any, recipe: TrainedRecipe) -> None:
    """Rescale `model`'s mask logits and IoU head in place (see the module's docstring), from the answers to
    a grid of clicks on the calibration scene, as SamAutomaticMaskGenerator makes them."""
    from segment_anything import SamPredictor
    from segment_anything.utils.amg import build_point_grid, calculate_stability_score

    image = shape_scenes.shape_scene(320, 240, seed=recipe.calibration_seed)[0]
    predictor = SamPredictor(model)
    predictor.set_image(image)
    points = build_point_grid(recipe.calibration_grid) * np.array([[image.shape[1], image.shape[0]]])
    coords = predictor.transform.apply_coords_torch(torch.as_tensor(points, dtype=torch.float)[:, None],
                                                    image.shape[:2])
    logits, ious, _ = predictor.predict_torch(coords, torch.ones(len(points), 1, dtype=torch.int),
                                              multimask_output=True, return_logits=True)
    logits, ious = logits.flatten(0, 1), ious.flatten()
    scale = next((factor for factor in LOGIT_SCALES
                  if float(calculate_stability_score(logits * factor, model.mask_threshold, 1.0).nan_to_num()
                           .median()) >= 0.95), LOGIT_SCALES[-1])
    median, low = float(ious.median()), float(ious.quantile(0.1))
    slope = 0.1 / max(median - low, 1e-3)
    for hypernetwork in model.mask_decoder.output_hypernetworks_mlps:  # mask = its output · upscaled features
        hypernetwork.layers[-1].weight *= scale
        hypernetwork.layers[-1].bias *= scale
    iou_head = model.mask_decoder.iou_prediction_head.layers[-1]
    iou_head.weight *= slope
    iou_head.bias *= slope
    iou_head.bias += 0.9 - slope * median
    log.info("calibrated the tests' MobileSAM: mask logits × %g, predicted IoU × %.2f %+.2f", scale, slope,
             0.9 - slope * median)
