"""Generated test pictures, and where an array's memory lives."""

from __future__ import annotations

import numpy as np


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An H×W×3 uint8 RGB picture of a few coloured shapes on a gradient, different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                      np.full_like(xx, 40 * (seed % 6))], axis=-1).astype(np.uint8)
    for _ in range(4):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = rng.integers(min(width, height) // 10, min(width, height) // 3)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, size=3)
    return image


def memory_owner(array: np.ndarray) -> object:
    """The object that owns an array's memory (an mmap for what the backend keeps apart from the heap)."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array
