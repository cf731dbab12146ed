"""The current object of an image, as Label Studio's page needs it: requests that carry only part of an
object's prompts (Auto-Accept on sends each click alone; a rectangle labelled in NEGATIVE_LABELS comes
alone) refine the remembered object and answer its id, so the page replaces its region.

Masks are compared with `SamPredictor.predict` on the same model, given the same prompts and `mask_input`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from segment_anything import SamPredictor

from tests.support.ls_bodies import keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region
from tests.support.scenes import scene

WIDTH, HEIGHT = 320, 240
SCALE = np.array([WIDTH / 100, HEIGHT / 100])


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return scene(WIDTH, HEIGHT, seed=33)


@pytest.fixture(scope="module")
def sam(vit_t_predictor, image) -> SamPredictor:
    predictor = SamPredictor(vit_t_predictor.model)
    predictor.set_image(image)
    return predictor


@pytest.fixture
def url(image_host, image) -> str:
    return image_host.add_image("/data/upload/7/current.png", image)


def ask(client, url: str, regions: list[dict], drafts: list[dict] | None = None) -> list[dict]:
    body = predict_body(url, regions, task_id=7)
    if drafts is not None:
        body["tasks"][0]["drafts"] = drafts
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.json
    return response.json["results"][0]["result"]


def best_of_three(sam: SamPredictor, point: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """SamPredictor's answer to one click and the logits SAM's loop feeds into the next call."""
    masks, scores, logits = sam.predict(np.array([point]) * SCALE, np.array([1]), multimask_output=True)
    best = int(np.argmax(scores))
    return masks[best], logits[best][None]


def test_a_lone_negative_click_refines_the_current_object_under_its_id(make_client, url, sam):
    client, _ = make_client()
    first, second = (30, 40), (60, 55)
    (one,) = ask(client, url, [keypoint(*first)])
    (two,) = ask(client, url, [keypoint(*second, False)])  # Auto-Accept on: the accepted keypoint is gone
    _, logits = best_of_three(sam, first)
    refined, _, _ = sam.predict(np.array([first, second]) * SCALE, np.array([1, 0]), mask_input=logits,
                                multimask_output=False)
    assert two["id"] == one["id"], "the same object: the page replaces its region"
    np.testing.assert_array_equal(decode_brush_region(two), refined[0])
    assert two["value"]["brushlabels"] == ["Foreground"], "the object's label, not the negative click's"


def test_clicks_accumulated_by_the_page_keep_the_objects_id(make_client, url):
    client, _ = make_client()
    (one,) = ask(client, url, [keypoint(30, 40)])
    (two,) = ask(client, url, [keypoint(30, 40), keypoint(60, 55, False)])  # Auto-Accept off
    (three,) = ask(client, url, [keypoint(30, 40), keypoint(60, 55, False), keypoint(35, 45)])
    assert one["id"] == two["id"] == three["id"]


def test_a_positive_click_elsewhere_is_a_new_object(make_client, url):
    client, _ = make_client()
    (one,) = ask(client, url, [keypoint(30, 40)])
    (two,) = ask(client, url, [keypoint(80, 20)])
    assert one["id"] != two["id"]


def test_negative_prompts_without_an_object_answer_nothing(make_client, url):
    client, _ = make_client(NEGATIVE_LABELS="Background")
    assert ask(client, url, [keypoint(30, 40, False)]) == []
    assert ask(client, url, [rectangle(10, 10, 20, 20, label="Background")]) == []


def test_a_negative_rectangle_alone_cuts_the_current_object(make_client, url, sam):
    client, _ = make_client(NEGATIVE_LABELS="Background")
    (one,) = ask(client, url, [rectangle(10, 10, 50, 60)])
    (cut,) = ask(client, url, [rectangle(20, 20, 20, 30, label="Background")])
    assert cut["id"] == one["id"]
    expected = decode_brush_region(one)
    assert expected[48:120, 64:128].any(), "the negative rectangle must overlap the object"
    expected[48:120, 64:128] = False  # y 20..50 % of 240, x 20..40 % of 320: pixel centres inside
    np.testing.assert_array_equal(decode_brush_region(cut), expected)
    assert cut["value"]["brushlabels"] == ["Foreground"], "the object's label, never the negative one"


def test_a_click_inside_the_remembered_rectangle_refines_its_object(make_client, url, sam):
    client, _ = make_client()
    (one,) = ask(client, url, [rectangle(10, 10, 50, 60)])
    (two,) = ask(client, url, [keypoint(30, 50, False)])
    (three,) = ask(client, url, [keypoint(20, 30)])  # inside the rectangle: the same object
    box = np.array([10, 10, 60, 70]) * np.tile(SCALE, 2)
    expected, _, _ = sam.predict(np.array([(30, 50), (20, 30)]) * SCALE, np.array([0, 1]), box=box,
                                 multimask_output=False)
    assert one["id"] == two["id"] == three["id"]
    np.testing.assert_array_equal(decode_brush_region(three), expected[0])
    (other,) = ask(client, url, [keypoint(90, 90)])
    assert other["id"] != one["id"], "a click outside the rectangle is a new object"


def test_a_newer_draft_without_the_object_starts_afresh(make_client, url):
    client, _ = make_client()
    (one,) = ask(client, url, [keypoint(30, 40)])
    later = (datetime.now(UTC) + timedelta(seconds=600)).isoformat().replace("+00:00", "Z")
    earlier = (datetime.now(UTC) - timedelta(seconds=60)).isoformat().replace("+00:00", "Z")
    other_region = {"id": "someone-else", "type": "brushlabels"}
    assert ask(client, url, [keypoint(60, 55, False)], drafts=[{"updated_at": earlier, "result": []}]) != [], \
        "an older draft says nothing"
    assert ask(client, url, [keypoint(61, 56, False)],
               drafts=[{"updated_at": later, "result": [{**other_region, "id": one["id"]}]}])[0]["id"] == one["id"]
    waiting = [other_region, {"id": "k1", "type": "keypointlabels"}]  # Auto-Accept off, before ✓
    assert ask(client, url, [keypoint(62, 57, False)], drafts=[{"updated_at": later, "result": waiting}]) != []
    assert ask(client, url, [keypoint(63, 58, False)], drafts=[{"updated_at": later, "result": [other_region]}]) == []


def test_a_label_the_config_lacks_is_never_returned(make_client, url):
    client, _ = make_client()
    (region,) = ask(client, url, [keypoint(30, 40, label="Nowhere")])
    assert region["value"]["brushlabels"] == ["Foreground"], "the control's first label instead"
