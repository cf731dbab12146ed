"""Property-based tests over the regions of /predict: whatever `context.result` holds, the answer is never a 500;
well-formed smart regions, however extreme their numbers, always get a mask."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.ls_bodies import keypoint, predict_body
from tests.support.reference import decode_brush_region
from tests.support.region_strategies import (
    ANY_RESULT,
    EXAMPLES,
    FLAGS,
    HEIGHT,
    NEAR_VALID,
    WELL_FORMED,
    WIDTH,
    keypoints,
    rectangles,
)
from tests.support.scenes import scene


def strict_json(text: str) -> Any:
    """`text` parsed as standard JSON, which has no NaN or Infinity (browsers' JSON.parse refuses them)."""
    def refuse(token: str) -> None:
        raise AssertionError(f"the answer holds {token}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def post(client, url: str, result: Any):
    body = predict_body(url, [])
    body["params"]["context"] = {"result": result}
    return client.post("/predict", data=json.dumps(body), content_type="application/json")


@pytest.fixture(scope="module")
def served(make_client, image_host):
    """A backend and the URL of the image every example clicks on (embedded once)."""
    client, _ = make_client()
    url = image_host.add_image("/data/upload/5/properties.png", scene(WIDTH, HEIGHT, seed=5))
    assert post(client, url, [keypoint(50, 50)]).status_code == 200
    return client, url


@settings(EXAMPLES, max_examples=80)
@given(result=ANY_RESULT)
def test_no_region_list_makes_predict_fail(served, result: Any) -> None:
    client, url = served
    response = post(client, url, result)
    assert response.status_code in (200, 400), response.get_data(as_text=True)[:500]
    answer = strict_json(response.get_data(as_text=True))
    if response.status_code == 400:
        assert answer["error"] and answer["status"] == 400
    else:
        (prediction,) = answer["results"]
        regions = prediction["result"] if isinstance(prediction, dict) else prediction  # [] for a task opened
        assert all(region["type"] == "brushlabels" for region in regions)


@settings(EXAMPLES, max_examples=100)
@given(region=NEAR_VALID, others=st.lists(keypoints(FLAGS) | rectangles(), max_size=2))
def test_a_well_formed_region_with_one_field_broken_is_a_client_error_at_worst(served, region: dict,
                                                                               others: list[dict]) -> None:
    client, url = served
    response = post(client, url, [region, *others])
    assert response.status_code in (200, 400), response.get_data(as_text=True)[:500]
    answer = strict_json(response.get_data(as_text=True))
    assert response.status_code == 200 or "context.result" in answer["error"] or "rectangle" in answer["error"]


@settings(EXAMPLES, max_examples=15)
@given(regions=WELL_FORMED)
def test_well_formed_smart_regions_always_get_a_mask(served, regions: list[dict]) -> None:
    client, url = served
    response = post(client, url, regions)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    (prediction,) = strict_json(response.get_data(as_text=True))["results"]
    assert prediction["result"], "no mask for well-formed regions"
    for region in prediction["result"]:
        assert decode_brush_region(region).shape == (HEIGHT, WIDTH)
