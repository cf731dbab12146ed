"""LEARN=on's inputs: masks read back from annotation webhooks (against Label Studio's SDK and COCO's rasteriser),
and the annotation store (SQLite and Redis) keeping, replacing, dropping and bounding them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.learning.annotations import annotation_masks, deleted_annotations
from sam_ls_backend.learning.store import SqliteStore, image_key
from sam_ls_backend.outputs import output_controls, to_results
from sam_ls_backend.predictors.base import Embedding
from sam_ls_backend.protocol.brush_rle import decode_rle, encode_rle
from sam_ls_backend.protocol.label_config import parse_label_config
from sam_ls_backend.protocol.polygons import PolygonOptions

FIXTURE = Path(__file__).parents[1] / "support" / "fixtures" / "label-studio-1.23.2" / "webhook_annotation_created.json"
CONFIG = """<View><Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="Object"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels>
  <KeyPointLabels name="point" toName="image" smart="true"><Label value="Object"/></KeyPointLabels>
</View>"""


def webhook(results: list[dict], annotation: int = 7, task: int = 3, action: str = "ANNOTATION_CREATED") -> dict:
    """A webhook body shaped as Label Studio 1.23.2 sends it (the captured one, with these results)."""
    body = json.loads(FIXTURE.read_text())["body"]
    body["action"] = action
    body["annotation"].update(id=annotation, result=results)
    body["task"].update(id=task, data={"image": "/data/upload/1/scene.png"})
    body["project"]["label_config"] = CONFIG
    return body


def shapes(height: int = 120, width: int = 160) -> list[np.ndarray]:
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - 50) ** 2 + (xx - 60) ** 2 < 30**2
    ring = disc & ((yy - 50) ** 2 + (xx - 60) ** 2 > 12**2)  # a hole: two hole-free polygons
    box = (yy > 80) & (yy < 110) & (xx > 100) & (xx < 150)
    return [disc, ring, box]


def regions(mask: np.ndarray) -> list[dict]:
    controls = output_controls(parse_label_config(CONFIG), "image")
    return to_results(mask, "Object", controls, "image", 0.9, PolygonOptions(0.0, 10_000, 1))


def test_decode_rle_reads_the_sdks_rle_of_any_rgba_stream_literal_tokens_included():
    """Label Studio's page paints RGBA strokes: the SDK's encoder then writes literal tokens too."""
    from label_studio_sdk.converter.brush import encode_rle as sdk_encode_rle

    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) < 0.4
    rgba = np.zeros((37, 53, 4), dtype=np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (37, 53, 3))  # colours vary pixel by pixel: literal runs
    rgba[..., 3] = mask * rng.integers(1, 256, (37, 53))
    assert (decode_rle(sdk_encode_rle(rgba.ravel()), 53, 37) == mask).all()
    assert (decode_rle(encode_rle(mask), 53, 37) == mask).all()


@pytest.mark.parametrize("damage", ["size", "truncated"])
def test_decode_rle_refuses_an_rle_of_the_wrong_size_or_cut_short(damage):
    rle = encode_rle(shapes()[0])
    with pytest.raises(ValueError):
        decode_rle(rle, 161, 120) if damage == "size" else decode_rle(rle[: len(rle) // 2], 160, 120)


def test_brush_regions_come_back_as_the_masks_the_sdk_decodes():
    from tests.support.reference import decode_brush_region

    sent = [region for mask in shapes() for region in regions(mask) if region["type"] == "brushlabels"]
    for region in sent:
        region["value"]["rle"] = json.loads(region["value"]["rle"].data)
    found = annotation_masks(webhook(sent))
    assert [m.key for m in found.masks] == [f"7/{r['id']}" for r in sent]
    for mask, region in zip(found.masks, sent):
        assert (mask.mask == decode_brush_region(region)).all()
    assert found.task == 3 and found.masks[0].image_url == "/data/upload/1/scene.png"


def test_polygon_regions_come_back_as_cocos_rasteriser_fills_them():
    """Each polygon region is one mask: the pixels pycocotools fills for the same polygon (and together, for
    unsimplified polygons, the mask they were made from)."""
    from tests.support.polygon_readers import coco_raster

    sent = [region for mask in shapes() for region in regions(mask) if region["type"] == "polygonlabels"]
    assert len(sent) >= 4  # the ring needs two hole-free pieces
    found = annotation_masks(webhook(sent))
    assert len(found.masks) == len(sent) and not found.skipped
    for mask, region in zip(found.masks, sent):
        points = np.array(region["value"]["points"]) / 100.0 * np.array([160, 120])
        oracle = coco_raster([points], 120, 160)
        assert mask.mask.sum() > 50
        assert (mask.mask == oracle).all(), f"{(mask.mask != oracle).sum()} pixels differ from COCO's fill"
    assert (np.logical_or.reduce([m.mask for m in found.masks[:1]]) == shapes()[0]).all()


def test_unreadable_regions_are_skipped_one_by_one_with_their_reason():
    good = regions(shapes()[2])[0]
    good["value"]["rle"] = json.loads(good["value"]["rle"].data)
    wrong_size = copy.deepcopy(good) | {"id": "b", "original_width": 161}
    empty = copy.deepcopy(good) | {"id": "c"}
    empty["value"]["rle"] = encode_rle(np.zeros((120, 160), bool))
    foreign = copy.deepcopy(good) | {"id": "d", "from_name": "elsewhere"}
    flat = {"type": "polygonlabels", "id": "e", "from_name": "poly", "to_name": "image", "original_width": 160,
            "original_height": 120, "value": {"points": [[1, 1], [2, 2]], "polygonlabels": ["Object"]}}
    nan = copy.deepcopy(flat) | {"id": "f"}
    nan["value"] = {"points": [[1, 1], [50, "x"], [9, 40]]}
    keypoint = {"type": "keypointlabels", "id": "g", "from_name": "point", "to_name": "image", "value": {"x": 1}}
    found = annotation_masks(webhook([good, wrong_size, empty, foreign, flat, nan, keypoint]))
    assert [m.key for m in found.masks] == [f"7/{good['id']}"]
    assert len(found.skipped) == 5
    assert any("values" in why for why in found.skipped) and any("empty" in why for why in found.skipped)


@pytest.mark.parametrize("broken", ["annotation", "task", "config"])
def test_a_body_without_annotation_task_or_config_is_refused(broken):
    body = webhook([])
    if broken == "annotation":
        body["annotation"] = {"result": []}
    elif broken == "task":
        del body["task"]
    else:
        body["project"] = {}
    with pytest.raises(InvalidRequest):
        annotation_masks(body)


def test_deleted_annotations_are_read_from_either_body_shape():
    assert deleted_annotations({"annotation": {"id": 4}}) == [4]
    assert deleted_annotations({"annotations": [{"id": 4}, {"id": "x"}, {"id": 9}]}) == [4, 9]


def embedding(seed: int, size: tuple[int, int] = (120, 160)) -> Embedding:
    features = np.random.default_rng(seed).standard_normal((1, 256, 64, 64)).astype(np.float32)
    return Embedding(features, (768, 1024), size)


def sqlite_store(tmp_path: Path, max_masks: int = 100, held_out: int = 3) -> SqliteStore:
    return SqliteStore(tmp_path / "store.sqlite", max_masks, held_out)


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """A factory of stores of one kind, sharing their data (as workers do): SQLite file or Redis server."""
    if request.param == "sqlite":
        yield lambda max_masks=100, held_out=3: sqlite_store(tmp_path, max_masks, held_out)
        return
    from sam_ls_backend.learning.redis_store import RedisStore
    from tests.support.redis_server import RedisServer

    server = RedisServer()
    try:
        yield lambda max_masks=100, held_out=3: RedisStore(server.url, "test", max_masks, held_out)
    finally:
        server.stop()


def test_the_store_keeps_masks_with_their_images_embedding_and_holds_every_nth_out(make_store):
    store = make_store()
    masks = shapes()
    image = image_key("/data/upload/1/scene.png")
    new = store.replace_annotation(1, [(f"1/{i}", image, m) for i, m in enumerate(masks)], {image: embedding(0)})
    assert new == 3 and store.count() == 3 and store.new_masks() == 3 and store.image_size(image) == (120, 160)
    kept = list(make_store().masks())  # another worker's view of the same store
    assert [k.key for k in kept] == ["1/0", "1/1", "1/2"]
    assert all((k.mask == m).all() for k, m in zip(kept, masks))
    assert [k.held_out for k in kept] == [False, False, True]  # every 3rd by arrival
    assert kept[0].features.dtype == np.float16 and kept[0].features.shape == (1, 256, 64, 64)
    assert np.allclose(kept[0].features, embedding(0).features, atol=1e-2)
    assert kept[0].input_size == (768, 1024) and kept[0].original_size == (120, 160)


def test_an_update_replaces_the_annotations_masks_and_an_unchanged_mask_is_not_new(make_store):
    store = make_store()
    image = image_key("u")
    disc, ring, box = shapes()
    store.replace_annotation(1, [("1/a", image, disc), ("1/b", image, ring)], {image: embedding(0)})
    assert store.take_new() == 2 and store.new_masks() == 0
    assert store.replace_annotation(1, [("1/a", image, disc), ("1/b", image, ring)], {}) == 0  # sent twice
    assert store.replace_annotation(1, [("1/a", image, disc), ("1/c", image, box)], {}) == 1  # b gone, c new
    assert [k.key for k in store.masks()] == ["1/a", "1/c"] and store.new_masks() == 1
    assert store.drop_annotations([1]) == 2 and store.count() == 0 and store.image_size(image) is None


def test_the_store_is_bounded_oldest_out_and_forgets_images_no_mask_needs(make_store):
    store = make_store(max_masks=2)
    disc = shapes()[0]
    for index in range(4):
        image = image_key(f"image-{index}")
        store.replace_annotation(index, [(f"{index}/r", image, disc)], {image: embedding(index)})
    assert [k.key for k in store.masks()] == ["2/r", "3/r"]
    assert store.image_size(image_key("image-0")) is None and store.image_size(image_key("image-3")) == (120, 160)


def test_a_mask_whose_image_changed_size_is_not_trained_on(make_store):
    store = make_store()
    image = image_key("resized")
    store.replace_annotation(1, [("1/a", image, shapes()[0])], {image: embedding(0, size=(240, 320))})
    assert list(store.masks()) == []
