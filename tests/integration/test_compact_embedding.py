"""Embeddings kept as float16 numpy arrays decode to the same masks as the float32 originals."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from sam_ls_backend import backend as model
from sam_ls_backend.protocol.prompts import Prompt
from tests.support.ls_bodies import keypoint, predict_body
from tests.support.reference import decode_brush_region
from tests.support.scenes import memory_owner, scene


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_compact_halves_the_bytes_and_keeps_the_sizes(vit_t_predictor):
    embedding = vit_t_predictor.embed(scene(320, 240, seed=31))
    compact = embedding.compact()
    assert compact.features.dtype == np.float16 and compact.features.shape == (1, 256, 64, 64)
    assert compact.nbytes * 2 == embedding.nbytes
    assert (compact.input_size, compact.original_size) == (embedding.input_size, embedding.original_size)


def test_what_the_cache_keeps_has_the_same_values_in_a_mapping_of_its_own(vit_t_predictor):
    """Cached embeddings live outside the malloc heap, so they cannot fragment it (resident memory stays flat)."""
    embedding = vit_t_predictor.embed(scene(160, 120, seed=33))
    kept, compact = embedding.set_apart(), embedding.compact()
    assert kept.features.dtype == np.float32
    np.testing.assert_array_equal(kept.features, embedding.features.numpy())
    assert isinstance(memory_owner(kept.features), mmap.mmap)
    assert isinstance(memory_owner(compact.features), mmap.mmap)
    assert (kept.input_size, kept.original_size) == (embedding.input_size, embedding.original_size)


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


@pytest.mark.parametrize("precision, first_kept_as", [("mixed", "float16"), ("float32", "float32")])
def test_an_image_nobody_clicks_on_any_more_is_kept_in_float16_by_default(
        precision, first_kept_as, make_client, image_host, monkeypatch):
    monkeypatch.setattr(model, "EXACT_RECENT_IMAGES", 1)  # 1 instead of 8: two images show it
    client, backend = make_client(EMBEDDING_PRECISION=precision)
    urls = [image_host.add_image(f"/data/upload/1/kept-{precision}-{i}.png", scene(320, 240, seed=41 + i))
            for i in range(2)]

    def click(url: str) -> np.ndarray:
        response = client.post("/predict", json=predict_body(url, [keypoint(40, 55)]))
        assert response.status_code == 200, response.json
        return decode_brush_region(response.json["results"][0]["result"][0])

    def kept_as(url: str) -> str:
        """The dtype the cache holds the image's embedding in (a lookup: the image becomes the most recent)."""
        return str(backend.cache.get(backend.embeddings.digest(url)).features.dtype).split(".")[-1]

    first = click(urls[0])
    assert kept_as(urls[0]) == "float32"
    click(urls[1])  # the annotator moves on: the first image is no longer among the most recent
    assert kept_as(urls[1]) == "float32"
    assert kept_as(urls[0]) == first_kept_as
    again = click(urls[0])
    assert 0 < first.sum() < first.size
    assert iou(first, again) >= 0.999
