"""SAM 2.1 and SAM 3 through the server, on tiny random-weight model folders loaded the way a user's are.

Every mask is compared with what `transformers` itself answers for the same folder, image and prompt when
run from pixels (processor in, processor post-processing out): equal pixel for pixel.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import requests
import torch

from tests.support.ls_bodies import keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region
from tests.support.sam3_reference import CONCEPT_CONFIG, concept_reference, middle_threshold, textarea
from tests.support.scenes import scene

transformers = pytest.importorskip("transformers")

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tests.support.hf_checkpoints import save_sam2_folder, save_sam3_folder

    root = tmp_path_factory.mktemp("hf-models")
    return {"SAM2": save_sam2_folder(root / "sam2.1-hiera-tiny"), "SAM3": save_sam3_folder(root / "sam3")}


@pytest.fixture(scope="module")
def backends(folders, image_host):
    """A Flask test client per SAM_CHOICE, built the way `_wsgi.build_app` builds it."""
    from sam_ls_backend.app import build_app
    from sam_ls_backend.settings import Settings

    made = {}
    for choice in ("SAM2", "SAM3"):
        settings = Settings.from_env({}, SAM_CHOICE=choice, SAM2_MODEL_DIR=str(folders["SAM2"]),
                                     SAM3_MODEL_DIR=str(folders["SAM3"]), LABEL_STUDIO_URL=image_host.url,
                                     LABEL_STUDIO_API_KEY=image_host.token)
        made[choice] = (build_app(settings).test_client(), settings)
    return made


def concept_body(url: str, regions: list[dict], task_id: int = 1) -> dict:
    body = predict_body(url, regions, task_id)
    body["label_config"] = CONCEPT_CONFIG
    return body


def post(client, body: dict) -> list[dict]:
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"][0]["result"]


@torch.inference_mode()
def prompt_reference(folder, choice: str, image: np.ndarray, points=None, labels=None, box=None) -> np.ndarray:
    """transformers' own answer from pixels: processor in, model, post_process_masks, best of three for a click."""
    model_class, processor_class = ((transformers.Sam2Model, transformers.Sam2Processor) if choice == "SAM2"
                                    else (transformers.Sam3TrackerModel, transformers.Sam3TrackerProcessor))
    model = model_class.from_pretrained(folder, local_files_only=True).eval()
    processor = processor_class.from_pretrained(folder, local_files_only=True)
    prompt = {}
    if points is not None:
        prompt.update(input_points=[[points]], input_labels=[[labels]])
    if box is not None:
        prompt["input_boxes"] = [[box]]
    inputs = processor(images=image, return_tensors="pt", **prompt)
    single_click = box is None and labels == [1]
    output = model(**inputs, multimask_output=single_click)
    masks = processor.post_process_masks(output.pred_masks, inputs["original_sizes"])[0][0]
    best = int(torch.argmax(output.iou_scores[0, 0])) if single_click else 0
    return masks[best].numpy()


def pixels(box_percent, width, height):
    x0, y0, x1, y1 = box_percent
    return [x0 * width / 100, y0 * height / 100, x1 * width / 100, y1 * height / 100]


# With SAM 3, rectangles are concept examples (tested below), so only clicks reach its tracker.
@pytest.mark.parametrize("choice, case", [("SAM2", "click"), ("SAM2", "click+negative"), ("SAM2", "box"),
                                          ("SAM2", "box+click"), ("SAM3", "click"), ("SAM3", "click+negative")])
def test_clicks_and_boxes_match_transformers(backends, folders, image_host, choice, case):
    image = scene(96, 72, seed=3)
    url = image_host.add_image(f"/data/upload/1/{choice}-{case}.png", image)
    width, height = 96, 72
    regions, points, labels, box = [], None, None, None
    if "click" in case:
        regions.append(keypoint(40, 50, width=width, height=height, label="Foreground"))
        points, labels = [[40 * width / 100, 50 * height / 100]], [1]
    if "negative" in case:
        regions.append(keypoint(70, 30, positive=False, width=width, height=height))
        points.append([70 * width / 100, 30 * height / 100])
        labels.append(0)
    if "box" in case:
        regions.append(rectangle(10, 20, 60, 70, width=width, height=height))
        box = pixels((10, 20, 70, 90), width, height)
    client, _ = backends[choice]
    result = post(client, predict_body(url, regions))
    assert len(result) == 1
    expected = prompt_reference(folders[choice], choice, image, points, labels, box)
    assert np.array_equal(decode_brush_region(result[0]), expected)


def test_sam2_segments_several_objects_at_once(backends, folders, image_host):
    image = scene(96, 72, seed=19)
    url = image_host.add_image("/data/upload/1/sam2-two.png", image)
    client, _ = backends["SAM2"]
    boxes = [(10, 20, 30, 40), (50, 10, 40, 50)]
    result = post(client, predict_body(url, [rectangle(*box, width=96, height=72) for box in boxes]))
    assert len(result) == 2
    for region, (x, y, w, h) in zip(result, boxes):
        expected = prompt_reference(folders["SAM2"], "SAM2", image, box=pixels((x, y, x + w, y + h), 96, 72))
        assert np.array_equal(decode_brush_region(region), expected)


@torch.inference_mode()
def test_sam2_refines_a_growing_click_set_with_its_previous_answer(backends, folders, image_host):
    """The second round of clicks is decoded with the first round's logits as mask input, as SAM 2 refines."""
    image = scene(96, 72, seed=15)
    url = image_host.add_image("/data/upload/1/sam2-refine.png", image)
    client, _ = backends["SAM2"]
    first = [keypoint(40, 50, width=96, height=72)]
    second = first + [keypoint(60, 40, positive=False, width=96, height=72)]
    post(client, predict_body(url, first, task_id=21))
    [region] = post(client, predict_body(url, second, task_id=21))
    model = transformers.Sam2Model.from_pretrained(folders["SAM2"], local_files_only=True).eval()
    processor = transformers.Sam2Processor.from_pretrained(folders["SAM2"], local_files_only=True)
    one = processor(images=image, input_points=[[[[38.4, 36.0]]]], input_labels=[[[1]]], return_tensors="pt")
    answer = model(**one, multimask_output=True)
    previous = answer.pred_masks[0, 0, int(torch.argmax(answer.iou_scores[0, 0]))]
    two = processor(images=image, input_points=[[[[38.4, 36.0], [57.6, 28.8]]]], input_labels=[[[1, 0]]],
                    return_tensors="pt")
    refined = model(**two, input_masks=previous[None, None], multimask_output=False)
    expected = processor.post_process_masks(refined.pred_masks, two["original_sizes"])[0][0, 0].numpy()
    fresh = prompt_reference(folders["SAM2"], "SAM2", image, [[38.4, 36.0], [57.6, 28.8]], [1, 0])
    assert not np.array_equal(expected, fresh), "pick clicks where the mask input changes the answer"
    assert np.array_equal(decode_brush_region(region), expected)


def test_sam2_answers_polygons_too(backends, image_host):
    url = image_host.add_image("/data/upload/1/sam2-polygon.png", scene(96, 72, seed=16))
    client, _ = backends["SAM2"]
    body = predict_body(url, [keypoint(40, 50, width=96, height=72)])
    body["label_config"] = body["label_config"].replace("BrushLabels", "PolygonLabels")
    result = post(client, body)
    assert result and all(region["type"] == "polygonlabels" and len(region["value"]["points"]) >= 3
                          for region in result)


def test_sam2_click_reuses_the_embedding(backends, image_host, folders):
    client, _ = backends["SAM2"]
    url = image_host.add_image("/data/upload/1/sam2-warm.png", scene(80, 64, seed=5))
    first = client.post("/predict", json=predict_body(url, [keypoint(30, 40)]))
    second = client.post("/predict", json=predict_body(url, [keypoint(35, 45)]))
    assert first.status_code == second.status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert _metric(metrics, "sam_embedding_cache_hits") >= 1


def test_concept_returns_every_instance_above_the_threshold(backends, folders, image_host):
    image = scene(90, 60, seed=7)
    url = image_host.add_image("/data/upload/1/concept.png", image)
    client, _ = backends["SAM3"]
    threshold = middle_threshold(folders["SAM3"], image, "person")
    expected = concept_reference(folders["SAM3"], image, "person", float(threshold))
    result = post(client, concept_body(url, [textarea("person"), textarea(threshold)], task_id=11))
    assert len(result) == len(expected) > 0
    assert [round(r["score"], 4) for r in result] == [round(score, 4) for score, _ in expected]
    for region, (_, mask) in zip(result, expected):
        assert region["value"]["brushlabels"] == ["person"]
        assert np.array_equal(decode_brush_region(region), mask)


def test_score_threshold_is_the_default_for_concepts(folders, image_host):
    from sam_ls_backend.app import build_app
    from sam_ls_backend.settings import Settings

    image = scene(90, 60, seed=6)
    url = image_host.add_image("/data/upload/1/default-threshold.png", image)
    threshold = middle_threshold(folders["SAM3"], image, "person")
    settings = Settings.from_env({}, SAM_CHOICE="SAM3", SAM3_MODEL_DIR=str(folders["SAM3"]),
                                 SCORE_THRESHOLD=threshold, LABEL_STUDIO_URL=image_host.url,
                                 LABEL_STUDIO_API_KEY=image_host.token)
    result = post(build_app(settings).test_client(), concept_body(url, [textarea("person")]))
    assert len(result) == len(concept_reference(folders["SAM3"], image, "person", float(threshold))) > 0


def test_typed_threshold_refilters_without_running_the_detector(backends, folders, image_host):
    image = scene(90, 60, seed=8)
    url = image_host.add_image("/data/upload/1/threshold.png", image)
    client, _ = backends["SAM3"]
    scores = sorted(score for score, _ in concept_reference(folders["SAM3"], image, "car", 0.0))
    high, low = f"{scores[-3]:.7f}", f"{np.quantile(scores, 0.3):.7f}"
    runs = _detector_runs(client)
    strict = post(client, concept_body(url, [textarea("car"), textarea(high)], task_id=12))
    after_first = _detector_runs(client)
    loose = post(client, concept_body(url, [textarea(low)], task_id=12))  # the concept typed before stays
    assert after_first == runs + 1 and _detector_runs(client) == after_first
    assert 0 < len(strict) < len(loose)
    assert all(region["score"] > float(low) - 1e-4 for region in loose)
    assert all(region["value"]["brushlabels"] == ["car"] for region in loose)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert _metric(metrics, 'sam_requests_total{kind="concept",route="/predict",status="200"}') >= 2


def test_positive_and_negative_boxes_refine_the_concept(backends, folders, image_host):
    image = scene(90, 60, seed=9)
    url = image_host.add_image("/data/upload/1/boxes.png", image)
    client, _ = backends["SAM3"]
    negative = copy.deepcopy(rectangle(60, 10, 30, 40, width=90, height=60, label="person"))
    negative["is_positive"] = False
    boxes = {"boxes": [pixels((5, 10, 45, 60), 90, 60), pixels((60, 10, 90, 50), 90, 60)], "box_labels": [1, 0]}
    threshold = middle_threshold(folders["SAM3"], image, "person", **boxes)
    regions = [textarea("person"), textarea(threshold),
               rectangle(5, 10, 40, 50, width=90, height=60, label="person"), negative]
    result = post(client, concept_body(url, regions, task_id=13))
    expected = concept_reference(folders["SAM3"], image, "person", float(threshold), **boxes)
    assert len(result) == len(expected) > 0
    without_boxes = concept_reference(folders["SAM3"], image, "person", float(threshold))
    assert [score for score, _ in expected] != [score for score, _ in without_boxes]
    assert [round(r["score"], 4) for r in result] == [round(score, 4) for score, _ in expected]
    for region, (_, mask) in zip(result, expected):
        assert np.array_equal(decode_brush_region(region), mask)


def test_a_rectangle_label_names_the_concept(backends, folders, image_host):
    image = scene(90, 60, seed=10)
    url = image_host.add_image("/data/upload/1/label.png", image)
    client, _ = backends["SAM3"]
    boxes = {"boxes": [pixels((5, 10, 45, 60), 90, 60)], "box_labels": [1]}
    threshold = middle_threshold(folders["SAM3"], image, "car", **boxes)
    result = post(client, concept_body(url, [rectangle(5, 10, 40, 50, width=90, height=60, label="car"),
                                             textarea(threshold)], task_id=14))
    expected = concept_reference(folders["SAM3"], image, "car", float(threshold), **boxes)
    assert len(result) == len(expected) > 0
    assert [round(r["score"], 4) for r in result] == [round(score, 4) for score, _ in expected]
    assert all(region["value"]["brushlabels"] == ["car"] for region in result)


def test_sam3_clicks_go_to_the_tracker(backends, folders, image_host):
    image = scene(96, 72, seed=11)
    url = image_host.add_image("/data/upload/1/tracker.png", image)
    client, _ = backends["SAM3"]
    result = post(client, concept_body(url, [keypoint(40, 50, width=96, height=72, label="person")], task_id=15))
    expected = prompt_reference(folders["SAM3"], "SAM3", image, [[40 * 96 / 100, 50 * 72 / 100]], [1])
    assert len(result) == 1 and np.array_equal(decode_brush_region(result[0]), expected)


def test_sam3_tracker_and_detector_share_one_vision_backbone(folders):
    """The published checkpoint gives both the same ViT: one copy is kept, unless the weights differ."""
    from sam_ls_backend.predictors.hf import load_prompt_predictor
    from sam_ls_backend.predictors.registry import model_spec
    from sam_ls_backend.predictors.sam3 import load_concept_segmenter, share_backbone
    from sam_ls_backend.settings import Settings

    settings = Settings.from_env({}, SAM_CHOICE="SAM3", SAM3_MODEL_DIR=str(folders["SAM3"]))
    folder = model_spec("SAM3").main_file(settings)

    def load_tracker():
        return load_prompt_predictor(settings, folder, "Sam3TrackerModel", "Sam3TrackerProcessor", "sam3")

    concepts, tracker = load_concept_segmenter(settings, folder), load_tracker()
    assert share_backbone(concepts, tracker)
    assert tracker.model.vision_encoder.backbone is concepts.model.vision_encoder.backbone
    altered, other = load_concept_segmenter(settings, folder), load_tracker()
    with torch.no_grad():
        next(altered.model.vision_encoder.backbone.parameters()).add_(1.0)
    assert not share_backbone(altered, other)
    assert other.model.vision_encoder.backbone is not altered.model.vision_encoder.backbone


def test_concept_features_from_another_process_are_enough(folders):
    """A replica that gets an image's features from the shared cache detects without ever running its encoder."""
    from sam_ls_backend.predictors.base import Embedding
    from sam_ls_backend.predictors.registry import model_spec
    from sam_ls_backend.predictors.sam3 import load_concept_segmenter
    from sam_ls_backend.settings import Settings

    settings = Settings.from_env({}, SAM_CHOICE="SAM3", SAM3_MODEL_DIR=str(folders["SAM3"]))
    folder = model_spec("SAM3").main_file(settings)
    image = scene(70, 50, seed=20)
    encoded = load_concept_segmenter(settings, folder).embed(image)
    shared = Embedding(features=tuple(a.cpu().numpy() for a in encoded.arrays), input_size=encoded.input_size,
                       original_size=encoded.original_size)
    fresh = load_concept_segmenter(settings, folder)
    found = fresh.detect(shared, "dog", [], [])
    expected = concept_reference(folders["SAM3"], image, "dog", 0.0)
    assert np.allclose(found.scores, [score for score, _ in expected], atol=1e-5)


def test_opening_a_task_warms_sam3_concept_features(folders, image_host):
    """With SAM 3, a task opened (a /predict without context) embeds its image for concepts in the background,
    so the first concept typed runs no image encoder."""
    import time

    from sam_ls_backend.app import load_backend
    from sam_ls_backend.server import create_app
    from sam_ls_backend.settings import Settings

    settings = Settings.from_env({}, SAM_CHOICE="SAM3", SAM3_MODEL_DIR=str(folders["SAM3"]),
                                 LABEL_STUDIO_URL=image_host.url, LABEL_STUDIO_API_KEY=image_host.token)
    backend = load_backend(settings)
    client = create_app(settings, backend).test_client()
    url = image_host.add_image("/data/upload/1/warm-concepts.png", scene(64, 48, seed=18))
    opened = client.post("/predict", json=concept_body(url, None, task_id=31))
    assert opened.status_code == 200 and opened.get_json()["results"] == [[]]
    deadline = time.monotonic() + 60
    while backend.concept_embeddings.sources()["encoder"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    post(client, concept_body(url, [textarea("cat")], task_id=31))
    assert backend.concept_embeddings.sources() == {"memory": 1, "shared": 0, "encoder": 1}


def test_a_threshold_with_no_concept_is_a_clear_400(backends, image_host):
    url = image_host.add_image("/data/upload/1/noconcept.png", scene(40, 30, seed=12))
    client, _ = backends["SAM3"]
    response = client.post("/predict", json=concept_body(url, [textarea("0.4")], task_id=16))
    assert response.status_code == 400
    assert "concept" in response.get_json()["error"]


def test_sam2_ignores_text_and_says_what_it_needs(backends, image_host):
    url = image_host.add_image("/data/upload/1/sam2-text.png", scene(40, 30, seed=13))
    client, _ = backends["SAM2"]
    response = client.post("/predict", json=concept_body(url, [textarea("person")]))
    assert response.status_code == 400
    assert "keypointlabels" in response.get_json()["error"]


def test_the_server_never_asks_the_hub(folders, image_host, tmp_path):
    """Started with the hub allowed and pointed at a recording server, a SAM 3 backend loads, answers a concept
    and a click, and never sends the hub a request (no weights, no config, no CLIP vocabulary)."""
    from tests.support.backend_process import BackendProcess
    from tests.support.fake_server import FakeServer

    hub = FakeServer()
    try:
        env = {"SAM_CHOICE": "SAM3", "SAM3_MODEL_DIR": str(folders["SAM3"]), "HF_HUB_OFFLINE": "0",
               "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
               "LABEL_STUDIO_URL": image_host.url, "LABEL_STUDIO_API_KEY": image_host.token}
        backend = BackendProcess(env, log_path=tmp_path / "backend.log")
        try:
            backend.wait_ready()
            url = image_host.add_image("/data/upload/1/offline.png", scene(60, 40, seed=14))
            for regions in ([textarea("dog")], [keypoint(30, 30, width=60, height=40)]):
                response = requests.post(f"{backend.url}/predict", json=concept_body(url, regions), timeout=60)
                assert response.status_code == 200, response.text
        finally:
            backend.stop()
        assert hub.connections == 0 and hub.seen == []
    finally:
        hub.close()


def test_no_concept_request_is_a_500(backends, image_host):
    """Whatever textarea, rectangle and keypoint regions hold, SAM 3 answers 200 or a 4xx naming the problem."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as examples
    from hypothesis import strategies as st

    from tests.support.region_strategies import ANY_REGION, JSON

    url = image_host.add_image("/data/upload/1/hostile-concepts.png", scene(48, 36, seed=17))
    client, _ = backends["SAM3"]
    text = st.one_of(st.lists(st.text(max_size=30), max_size=3), st.text(max_size=300), JSON,
                     st.sampled_from([["0.2"], ["1e400"], ["nan"], ["-0.5"], [" "], ["car"]]))
    typed = st.fixed_dictionaries({"type": st.just("textarea")}, optional={
        "to_name": st.sampled_from(["image", "elsewhere", "", None]), "value": st.one_of(
            st.fixed_dictionaries({"text": text}), JSON)})

    @examples(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
    @given(st.lists(st.one_of(typed, ANY_REGION), max_size=4))
    def check(regions):
        response = client.post("/predict", json=concept_body(url, regions, task_id=99))
        assert response.status_code in (200, 400, 413, 422), response.get_data(as_text=True)[:300]
        if response.status_code != 200:
            assert response.get_json()["error"]

    check()


def _detector_runs(client) -> float:
    return _metric(client.get("/metrics").get_data(as_text=True), "sam_decoder_seconds_count")


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
