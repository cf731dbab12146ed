"""Generated scenes of coloured shapes as training examples: what the learning tests and `bench.bench_train` train on.

Each shape of a scene is one `learning.train.Example`, its features the scene embedded by the backend's
predictor on the random-weight MobileSAM every test uses (`checkpoints.py`; the image encoder stays random and
frozen). `RECIPE` names the scenes, sizes and training options.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sam_ls_backend.learning.train import Example, TrainOptions
from tests.support import shape_scenes


@dataclass(frozen=True)
class Recipe:
    """The scenes and the training options."""

    base_seed: int = 0  # the random-weight MobileSAM: save_random_checkpoint("vit_t", seed=base_seed)
    train_seeds: tuple[int, ...] = tuple(range(1000, 1048))
    held_out_seeds: tuple[int, ...] = tuple(range(2000, 2008))
    sizes: tuple[tuple[int, int], ...] = ((320, 240), (240, 320), (400, 300))  # (width, height), in turn
    shapes: int = 5
    options: TrainOptions = field(default_factory=lambda: TrainOptions(steps=300, seed=0))


RECIPE = Recipe()


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
