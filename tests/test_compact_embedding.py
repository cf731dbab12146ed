"""Embeddings kept as float16 numpy arrays decode to the same masks as the float32 originals."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import scene
from prompts import Prompt


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_compact_halves_the_bytes_and_keeps_the_sizes(vit_t_predictor):
    embedding = vit_t_predictor.embed(scene(320, 240, seed=31))
    compact = embedding.compact()
    assert compact.features.dtype == np.float16 and compact.features.shape == (1, 256, 64, 64)
    assert compact.nbytes * 2 == embedding.nbytes
    assert (compact.input_size, compact.original_size) == (embedding.input_size, embedding.original_size)


@pytest.fixture(scope="module")
def embedding(vit_t_predictor):
    return vit_t_predictor.embed(scene(640, 480, seed=32))


@pytest.mark.parametrize("prompt", [
    Prompt("x", "image", points=((50.0, 50.0),), point_labels=(1,)),
    Prompt("x", "image", points=((30.0, 30.0), (70.0, 60.0)), point_labels=(1, 0)),
    Prompt("x", "image", box=(10.0, 20.0, 60.0, 90.0)),
    Prompt("x", "image", points=((40.0, 50.0),), point_labels=(0,), box=(20.0, 20.0, 80.0, 80.0)),
], ids=["click", "clicks", "box", "box+negative"])
def test_masks_from_float16_match_float32(vit_t_predictor, embedding, prompt):
    full = vit_t_predictor.predict(embedding, prompt)
    half = vit_t_predictor.predict(embedding.compact(), prompt)
    assert 0 < full.mask.sum() < full.mask.size
    print(f"IoU {iou(full.mask, half.mask):.6f}, {int((full.mask != half.mask).sum())} pixels differ")
    assert iou(full.mask, half.mask) >= 0.999
    assert half.score == pytest.approx(full.score, abs=1e-2)
