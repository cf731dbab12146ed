"""Generated scenes of flat coloured shapes on a plain background, with the visible mask of every shape.

Used as training examples (shape_examples.py) and as pictures whose
objects are known. Shapes are drawn in order, so a later shape hides what it covers of an earlier one.
"""

from __future__ import annotations

import numpy as np


def shape_scene(width: int, height: int, seed: int, shapes: int = 5) -> tuple[np.ndarray, list[np.ndarray]]:
    """An H×W×3 uint8 RGB picture and the H×W bool visible mask of each shape (empty ones left out)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[...] = rng.integers(0, 256, size=3)
    owner = np.full((height, width), -1)
    for index in range(shapes):
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        rx, ry = rng.uniform(0.06, 0.22) * width, rng.uniform(0.06, 0.22) * height
        if rng.random() < 0.5:
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
        else:
            inside = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
        image[inside] = rng.integers(0, 256, size=3)
        owner[inside] = index
    masks = [owner == index for index in range(shapes)]
    return image, [mask for mask in masks if mask.sum() >= 64]
