"""Our masks are exactly SamPredictor's, for every prompt kind, decoded from Label Studio's RLE."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.ls_bodies import keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region, reference_mask
from tests.support.scenes import scene


@pytest.fixture(scope="module")
def client(make_client):
    """One backend for the module: its cache holds each image's embedding across prompts, as in use."""
    return make_client()[0]


PROMPTS = {
    "one click": ([keypoint(50, 50)], [[0.5, 0.5]], [1], None),
    "clicks positive and negative": ([keypoint(30, 40), keypoint(70, 60, False), keypoint(35, 45)],
                                     [[0.3, 0.4], [0.7, 0.6], [0.35, 0.45]], [1, 0, 1], None),
    "rectangle": ([rectangle(20, 10, 50, 60)], None, None, [0.2, 0.1, 0.7, 0.7]),
    "rectangle with clicks inside": ([rectangle(20, 10, 50, 60), keypoint(40, 40), keypoint(60, 20, False)],
                                     [[0.4, 0.4], [0.6, 0.2]], [1, 0], [0.2, 0.1, 0.7, 0.7]),
}


@pytest.mark.parametrize("size", [(320, 240), (201, 333)], ids=["landscape", "portrait-odd"])
@pytest.mark.parametrize("kind", PROMPTS)
def test_mask_equals_sam_predictor(kind, size, client, image_host, vit_t_checkpoint):
    width, height = size
    image = scene(width, height, seed=width)
    url = image_host.add_image(f"/data/upload/1/parity-{width}x{height}.png", image)
    regions, points, labels, box = PROMPTS[kind]
    response = client.post("/predict", json=predict_body(url, regions))
    assert response.status_code == 200, response.json
    (region,) = response.json["results"][0]["result"]
    assert region["type"] == "brushlabels" and region["value"]["format"] == "rle"
    assert (region["original_width"], region["original_height"]) == (width, height)
    scale = np.array([width, height])
    expected, score = reference_mask(
        vit_t_checkpoint, image,
        None if points is None else np.array(points) * scale,
        None if labels is None else np.array(labels),
        None if box is None else np.array(box) * np.tile(scale, 2))
    ours = decode_brush_region(region)
    assert ours.shape == (height, width)
    assert 0 < expected.sum() < expected.size, "a degenerate reference mask would prove nothing"
    np.testing.assert_array_equal(ours, expected)
    assert region["score"] == pytest.approx(score, abs=1e-4)


def test_several_rectangles_give_one_region_each_matching_sam(client, image_host, vit_t_checkpoint):
    image = scene(320, 240, seed=7)
    url = image_host.add_image("/data/upload/1/three-boxes.png", image)
    boxes = [(5, 5, 30, 30), (40, 20, 25, 50), (70, 60, 25, 35)]
    regions = [rectangle(*box, label=f"L{i}") for i, box in enumerate(boxes)]
    body = predict_body(url, regions)
    labels = "".join(f'<Label value="L{i}"/>' for i in range(3))  # a region's label is one its control has
    body["label_config"] = body["label_config"].replace('<Label value="Foreground"/></BrushLabels>',
                                                        f'<Label value="Foreground"/>{labels}</BrushLabels>')
    response = client.post("/predict", json=body)
    regions = response.json["results"][0]["result"]
    assert [r["value"]["brushlabels"] for r in regions] == [["L0"], ["L1"], ["L2"]]
    assert len({r["id"] for r in regions}) == 3
    for region, (x, y, w, h) in zip(regions, boxes):
        expected, _ = reference_mask(vit_t_checkpoint, image,
                                     box=np.array([x, y, x + w, y + h]) * np.array([3.2, 2.4, 3.2, 2.4]))
        np.testing.assert_array_equal(decode_brush_region(region), expected)


def test_sam_vit_b_checkpoint_is_recognised_and_matches(tmp_path):
    """A SAM ViT-B checkpoint (random weights) loads through SAM_CHOICE=SAM with its type recognised."""
    from sam_ls_backend.predictors.registry import load_predictor
    from sam_ls_backend.protocol.prompts import prompts_from_regions
    from sam_ls_backend.settings import Settings
    from tests.support.checkpoints import save_random_checkpoint

    checkpoint = save_random_checkpoint("vit_b", tmp_path / "sam_vit_b.pth")
    predictor = load_predictor(Settings.from_env({}, SAM_CHOICE="SAM", SAM_CHECKPOINT=str(checkpoint), RUNTIME="torch"))
    assert predictor.model_type == "vit_b"
    image = scene(160, 120, seed=3)
    (prompt,) = prompts_from_regions([keypoint(25, 25), keypoint(75, 75, False)])
    ours = predictor.predict(predictor.embed(image), prompt)
    expected, score = reference_mask(checkpoint, image, np.array([[40.0, 30.0], [120.0, 90.0]]), np.array([1, 0]))
    np.testing.assert_array_equal(ours.mask, expected)
    assert ours.score == pytest.approx(score)
