"""Which controls answer a click, through the backend: the labeling config decides, RESULT_TYPE can force one."""

from __future__ import annotations

import numpy as np
import pytest

from sam_ls_backend.protocol.polygons import remove_small_regions
from tests.support.polygon_readers import READERS, iou

BOTH_CONFIG = ('<View><Image name="image" value="$image"/>'
               '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels>'
               '<PolygonLabels name="poly" toName="image"><Label value="Foreground"/></PolygonLabels>'
               '<KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Foreground"/></KeyPointLabels>'
               '</View>')


@pytest.fixture(scope="module")
def polygon_image(image_host) -> str:
    from tests.support.scenes import scene

    return image_host.add_image("/data/upload/5/polygons.png", scene(320, 240, seed=33))


def predict(client, url: str, config: str | None = None) -> tuple[int, dict]:
    from tests.support.ls_bodies import keypoint, predict_body

    body = predict_body(url, [keypoint(40, 50), keypoint(70, 30, False)])
    if config is not None:
        body["label_config"] = config
    response = client.post("/predict", json=body)
    return response.status_code, response.json


@pytest.mark.parametrize("result_type, types", [
    ("auto", {"brushlabels", "polygonlabels"}),
    ("both", {"brushlabels", "polygonlabels"}),
    ("brush", {"brushlabels"}),
    ("polygon", {"polygonlabels"}),
])
def test_the_config_decides_which_controls_answer_and_result_type_can_force_one(
        make_client, polygon_image, result_type, types):
    from tests.support.reference import decode_brush_region

    client, _ = make_client(RESULT_TYPE=result_type)
    status, body = predict(client, polygon_image, BOTH_CONFIG)
    assert status == 200, body
    regions = body["results"][0]["result"]
    assert {r["type"] for r in regions} == types
    if types == {"brushlabels", "polygonlabels"}:
        (brush,) = [r for r in regions if r["type"] == "brushlabels"]
        mask = remove_small_regions(decode_brush_region(brush), 64)
        polygons = [np.array(region["value"]["points"]) * np.array([3.2, 2.4]) for region in regions[1:]]
        for name, read in READERS.items():
            assert iou(read(polygons, *mask.shape), mask) > 0.95, f"{name}: the polygons describe the brush mask"


def test_a_forced_control_the_config_lacks_is_a_client_error(make_client, polygon_image):
    client, _ = make_client(RESULT_TYPE="polygon")
    status, body = predict(client, polygon_image)  # the captured config has only BrushLabels
    assert status == 400 and 'no <PolygonLabels toName="image">' in body["error"]
    assert "RESULT_TYPE=polygon" in body["error"]
