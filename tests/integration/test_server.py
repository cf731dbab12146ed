"""The protocol routes as Label Studio calls them, and every failure as a JSON error."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

from tests.support.ls_bodies import FIXTURES, keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region
from tests.support.scenes import scene


def captured(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())["body"]


@pytest.fixture(scope="module")
def served_image(image_host) -> str:
    return image_host.add_image("/data/upload/1/8628a3cd-e2e_image.png", scene(320, 240, seed=11))


def test_health_and_root(make_client):
    client, _ = make_client()
    for route in ("/health", "/"):
        body = client.get(route).json
        assert body["status"] == "UP" and body["model_class"] == "SamBackend"


def test_setup_answers_the_model_version(make_client):
    client, backend = make_client()
    response = client.post("/setup", json=captured("setup_request.json"))
    assert response.status_code == 200
    assert response.json == {"model_version": "MobileSAM-vit_t"}
    assert client.get("/versions").json["versions"] == ["MobileSAM-vit_t"]


def test_captured_interactive_keypoint_gets_a_brush_region(make_client, served_image):
    client, _ = make_client()
    response = client.post("/predict", json=captured("predict_interactive_keypoint.json"))
    assert response.status_code == 200, response.json
    (prediction,) = response.json["results"]
    (region,) = prediction["result"]
    assert region["from_name"] == "tag" and region["to_name"] == "image" and region["type"] == "brushlabels"
    assert region["value"]["brushlabels"] == ["Foreground"]
    assert decode_brush_region(region).shape == (240, 320)
    assert prediction["model_version"] == "MobileSAM-vit_t"
    assert prediction["score"] == pytest.approx(region["score"])
    timing = re.fullmatch(r"app;dur=(\d+\.\d)", response.headers["Server-Timing"])
    assert timing and float(timing.group(1)) > 0, "the backend's own time, for clients measuring their share"


def test_brush_answers_are_byte_for_byte_the_json_flask_writes(make_client, image_host):
    """Each RLE's ready-made JSON text (results.JsonText) lands where json.dumps would have written the list."""
    client, _ = make_client()
    url = image_host.add_image("/data/upload/1/json-text.png", scene(640, 480, seed=5))
    regions = [rectangle(5, 5, 40, 50), rectangle(50, 30, 45, 60)]  # two objects: two RLEs
    response = client.post("/predict", json=predict_body(url, regions))
    assert response.status_code == 200, response.json
    assert [region["type"] for region in response.json["results"][0]["result"]] == ["brushlabels"] * 2
    assert response.data == (json.dumps(response.json, separators=(",", ":"), sort_keys=True) + "\n").encode()


def test_opening_tasks_answers_no_prediction_and_warms_the_image(make_client, image_host, encoder_calls):
    """An empty list per task (Label Studio stores nothing), then the image is embedded in the background."""
    client, backend = make_client()
    url = image_host.add_image("/data/upload/1/opened.png", scene(200, 150, seed=41))
    body = captured("predict_noninteractive_dm_action.json")
    body["tasks"] = [{**body["tasks"][0], "id": i, "data": {"image": url}} for i in (1, 2, 3)]
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert response.json["results"] == [[], [], []]
    deadline = time.monotonic() + 120
    while backend.cache.stats().entries == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(encoder_calls) == 1, "three tasks showing one image are embedded once"
    click = client.post("/predict", json=predict_body(url, [keypoint(50, 50)]))
    assert click.status_code == 200 and len(click.json["results"][0]["result"]) == 1
    assert len(encoder_calls) == 1, "the first click found the embedding ready"


def test_warming_can_be_turned_off(make_client, image_host, encoder_calls):
    client, backend = make_client(WARM_MAX_TASKS="0")
    url = image_host.add_image("/data/upload/1/not-warmed.png", scene(100, 100, seed=42))
    body = predict_body(url, None)
    assert client.post("/predict", json=body).json["results"] == [[]]
    time.sleep(0.5)
    assert backend.cache.stats().entries == 0 and encoder_calls == []


def test_webhook_accepts_every_action(make_client):
    client, _ = make_client()
    assert client.post("/webhook", json=captured("webhook_annotation_created.json")).status_code == 200
    assert client.post("/webhook", json={"action": "SOMETHING_NEW"}).json["action"] == "SOMETHING_NEW"


def test_second_click_on_an_image_does_not_run_the_encoder(make_client, image_host, encoder_calls):
    client, backend = make_client()
    url = image_host.add_image("/data/upload/1/warm.png", scene(300, 200, seed=21))
    requests_before = len(image_host.requests)
    assert client.post("/predict", json=predict_body(url, [keypoint(50, 50)])).status_code == 200
    assert len(encoder_calls) == 1
    for regions in ([keypoint(40, 40), keypoint(60, 60, False)], [rectangle(10, 10, 50, 50)]):
        assert client.post("/predict", json=predict_body(url, regions)).status_code == 200
    assert len(encoder_calls) == 1
    assert len(image_host.requests) - requests_before == 1, "a warm click must not download the image again"
    stats = backend.cache.stats()
    assert (stats.misses, stats.hits) == (1, 2)


def test_two_tasks_showing_the_same_file_share_one_embedding(make_client, image_host, encoder_calls):
    client, _ = make_client()
    image = scene(256, 256, seed=22)
    first = image_host.add_image("/data/upload/1/same-a.png", image)
    second = image_host.add_image("/data/upload/2/same-b.png", image)
    client.post("/predict", json=predict_body(first, [keypoint(50, 50)], task_id=1))
    response = client.post("/predict", json=predict_body(second, [keypoint(50, 50)], task_id=2))
    assert response.status_code == 200
    assert len(encoder_calls) == 1


def test_metrics_count_requests_and_cache(make_client, served_image):
    client, _ = make_client()
    before = model_timings(client)
    client.post("/predict", json=predict_body(served_image, [keypoint(10, 10)]))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'sam_requests_total{kind="points",route="/predict",status="200"} 1.0' in text
    assert model_timings(client) == (before[0] + 1, before[1] + 1), "one encoder run, one object decoded"
    client.post("/predict", json={"tasks": []})
    client.get("/nowhere")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'sam_errors_total{kind="InvalidRequest"} 1.0' in text
    assert 'sam_errors_total{kind="NotFound"} 1.0' in text
    assert "sam_embedding_cache_misses_total 1.0" in text
    assert 'sam_embedding_lookups_total{source="encoder"} 1.0' in text


def model_timings(client) -> tuple[float, float]:
    """How many encoder runs and decoded objects the process-wide histograms have counted."""
    text = client.get("/metrics").get_data(as_text=True)
    counts = dict(re.findall(r"^(sam_(?:en|de)coder_seconds)_count (\S+)$", text, re.MULTILINE))
    return float(counts["sam_encoder_seconds"]), float(counts["sam_decoder_seconds"])


@pytest.mark.parametrize("send, status, message", [
    (lambda c: c.post("/predict", data="{not json", content_type="application/json"), 400, "not valid JSON"),
    (lambda c: c.post("/predict", data=b""), 400, "body is empty"),
    (lambda c: c.post("/predict", json=[1, 2]), 400, "must be a JSON object"),
    (lambda c: c.post("/predict", json={"tasks": []}), 400, "'tasks' must be a non-empty list"),
    (lambda c: c.post("/predict", json={"tasks": [{"id": 1}]}), 400, "'data' object"),
    (lambda c: c.post("/predict", json={"tasks": [{"data": {}}], "params": {"context": 5}}), 400, "context"),
    (lambda c: c.post("/predict", json={"tasks": [{"data": {"image": "/x"}}]}), 400, "label_config"),
    (lambda c: c.post("/predict", json=predict_body("", [keypoint(5, 5)])), 400, "no image URL in data.image"),
    (lambda c: c.post("/predict", json=predict_body("/data/upload/1/missing.png", [keypoint(5, 5)])), 502, "404"),
    (lambda c: c.post("/predict", json=predict_body("/data/upload/1/x.png", [keypoint(5, 500)])), 400, "value.y"),
    (lambda c: c.post("/setup", data="[", content_type="application/json"), 400, "not valid JSON"),
    (lambda c: c.get("/nowhere"), 404, "not found"),
    (lambda c: c.get("/predict"), 405, "method is not allowed"),
    (lambda c: c.post("/predict", data=b"x" * (2 * 2**20 + 1)), 413, "too large"),
])
def test_errors_are_json_naming_the_problem(make_client, send, status, message):
    client, _ = make_client(REQUEST_MAX_MB="2")
    response = send(client)
    assert response.status_code == status
    assert response.is_json and response.json["status"] == status
    assert message.lower() in response.json["error"].lower()
    assert "Traceback" not in response.get_data(as_text=True)


def test_a_bad_request_does_not_spoil_the_next_one(make_client, served_image):
    client, _ = make_client()
    assert client.post("/predict", json=predict_body(served_image, [keypoint(5, -3)])).status_code == 400
    assert client.post("/predict", json=predict_body(served_image, [keypoint(5, 3)])).status_code == 200


def test_a_body_not_a_config_mapping_to_brush_is_a_client_error(make_client, served_image):
    client, _ = make_client()
    body = predict_body(served_image, [keypoint(5, 5)])
    body["label_config"] = '<View><Image name="image" value="$image"/></View>'
    response = client.post("/predict", json=body)
    assert response.status_code == 400 and "BrushLabels" in response.json["error"]


def test_label_config_from_setup_is_used_when_predict_omits_it(make_client, served_image):
    client, _ = make_client()
    client.post("/setup", json=captured("setup_request.json"))
    body = predict_body(served_image, [keypoint(5, 5)])
    del body["label_config"]
    assert client.post("/predict", json=body).status_code == 200


class TestBasicAuth:
    @staticmethod
    def header(user: str, password: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    def test_every_route_but_health_needs_the_credentials(self, make_client):
        client, _ = make_client(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret")
        assert client.get("/health").status_code == 200
        for method, route in (("post", "/setup"), ("post", "/predict"), ("get", "/versions"), ("get", "/metrics"),
                              ("post", "/webhook"), ("get", "/")):
            response = getattr(client, method)(route, json={})
            assert response.status_code == 401, route
            assert response.headers["WWW-Authenticate"].startswith("Basic")
            assert "credentials" in response.json["error"]
        wrong = client.post("/setup", json=captured("setup_request.json"), headers=self.header("ls", "nope"))
        assert wrong.status_code == 401

    def test_right_credentials_pass(self, make_client):
        client, _ = make_client(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret")
        response = client.post("/setup", json=captured("setup_request.json"), headers=self.header("ls", "s3cret"))
        assert response.status_code == 200
