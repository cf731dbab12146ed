"""LEARN=on end to end in one server: annotations posted to /webhook as Label Studio posts them, *Start Training*,
the trainer process, and the adopted decoder served by the next click.

A random-weight MobileSAM answers every click with the same blob. From random weights, learning shapes that
generalise to new scenes takes longer than a test can (README, Tests); what a short training does learn is
objects annotated again: here one scene of coloured shapes is annotated in five tasks (as several annotators,
or the same part on a production line, would), every fifth mask is held out, and the held-out click IoU on
those objects must rise. The served answer after training is compared with segment-anything's own
SamPredictor on a MobileSAM with the learned weights loaded from the adopted file.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.support.ls_bodies import annotation_webhook, brush_result, keypoint, predict_body
from tests.support.shape_scenes import shape_scene

SCENE_SEED, SHAPES, TASKS = 500, 4, 5
WIDTH, HEIGHT = 320, 240
TRAINING = {"LEARN": "on", "LEARN_STEPS": "60", "LEARN_EVERY": "0", "LEARN_HELD_OUT": "5", "RUNTIME": "torch"}


@pytest.fixture(scope="module")
def scenes(image_host) -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """(URL Label Studio would send, image, shape masks) of each annotated task: one scene, TASKS times."""
    image, masks = shape_scene(WIDTH, HEIGHT, seed=SCENE_SEED, shapes=SHAPES)
    assert len(masks) == SHAPES
    url = image_host.add_image(f"/data/upload/9/learn-{SCENE_SEED}.png", image)
    return [(url, image, masks)] * TASKS


@pytest.fixture
def learning_client(tmp_path, vit_t_checkpoint, image_host):
    """A server on its own copy of the random-weight checkpoint (the learned files go beside it)."""
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.predictors.registry import load_predictor
    from sam_ls_backend.server import create_app
    from sam_ls_backend.settings import Settings

    def make(**overrides: str):
        checkpoint = tmp_path / "models" / "mobile_sam.pt"
        if not checkpoint.exists():
            checkpoint.parent.mkdir()
            shutil.copy(vit_t_checkpoint, checkpoint)
        settings = Settings.from_env({}, MOBILESAM_CHECKPOINT=str(checkpoint), LABEL_STUDIO_URL=image_host.url,
                                     LABEL_STUDIO_API_KEY=image_host.token, **{**TRAINING, **overrides})
        backend = SamBackend(settings, load_predictor(settings))
        return create_app(settings, backend).test_client(), backend

    return make


def post_annotations(client, scenes, masks_of=lambda masks: masks) -> int:
    """One annotation per scene holding a brush region per shape; how many masks were sent."""
    sent = 0
    for index, (url, _, masks) in enumerate(scenes):
        results = [brush_result(mask, f"r{k}") for k, mask in enumerate(masks_of(masks))]
        body = annotation_webhook(results, annotation=100 + index, task=10 + index, image_url=url)
        response = client.post("/webhook", json=body)
        assert response.status_code == 200 and response.json["status"] == "queued", response.json
        sent += len(results)
    return sent


def click_at_innermost_point(client, url: str, mask: np.ndarray) -> tuple[dict, tuple[int, int]]:
    import cv2

    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    region = keypoint(100 * (x + 0.5) / WIDTH, 100 * (y + 0.5) / HEIGHT, width=WIDTH, height=HEIGHT)
    answer = client.post("/predict", json=predict_body(url, [region], task_id=77)).json
    return answer, (int(x), int(y))


def test_start_training_learns_from_the_annotations_and_the_next_click_uses_the_new_decoder(
        learning_client, scenes, image_host):
    from segment_anything import SamPredictor

    from sam_ls_backend.predictors.sam import read_decoder_weights
    from tests.support.reference import decode_brush_region

    client, backend = learning_client()
    assert backend.model_version == "MobileSAM-vit_t"
    sent = post_annotations(client, scenes)
    assert backend.learner.wait_idle(120)
    assert backend.learner.store.count() == sent == SHAPES * TASKS
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert response.json == {"status": "started", "action": "START_TRAINING"}
    assert backend.learner.wait_idle(600), "the training did not end within 10 minutes"

    status = backend.learner.decoders.status()
    assert status.adopted and status.served == 1 and status.trainings == 1
    assert status.held_out_before < 0.1 and status.held_out_after > status.held_out_before + 0.1, status
    assert status.trained_on + status.held_out == sent and status.held_out == sent // 5
    assert client.get("/versions").json["model_version"] == "MobileSAM-vit_t+learned-v1"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "sam_learning_version_served 1.0" in metrics and f"sam_learning_annotations {float(sent)}" in metrics
    assert 'sam_learning_held_out_iou{decoder="after"}' in metrics

    # The next click is the learned decoder's answer: SamPredictor on a MobileSAM with the adopted weights.
    url, image, masks = scenes[0]
    answer, (x, y) = click_at_innermost_point(client, url, masks[0])
    assert answer["model_version"] == "MobileSAM-vit_t+learned-v1"
    served = decode_brush_region(answer["results"][0]["result"][0])
    model = backend.predictor.model
    learned = read_decoder_weights(backend.learner.served.weights)
    reference = SamPredictor(_with_weights(model, learned))
    reference.set_image(image)
    candidates, scores, _ = reference.predict(np.array([[x + 0.5, y + 0.5]]), np.array([1]), multimask_output=True)
    assert (served == candidates[int(np.argmax(scores))]).all()
    base = SamPredictor(model)  # the checkpoint's own decoder answers otherwise: the blob
    base.set_image(image)
    base_masks, base_scores, _ = base.predict(np.array([[x + 0.5, y + 0.5]]), np.array([1]), multimask_output=True)
    assert (served != base_masks[int(np.argmax(base_scores))]).mean() > 0.05

    # A worker on the default runtime of a CPU (ONNX Runtime) serves the same decoder from its exported graph.
    onnx_client, onnx_backend = learning_client(RUNTIME="onnx")
    assert onnx_backend.predictor.runtime == "onnxruntime" and onnx_backend.learner.served.version == 1
    onnx_answer, _ = click_at_innermost_point(onnx_client, url, masks[0])
    assert onnx_answer["model_version"] == "MobileSAM-vit_t+learned-v1"
    onnx_mask = decode_brush_region(onnx_answer["results"][0]["result"][0])
    assert (onnx_mask & served).sum() / (onnx_mask | served).sum() >= 0.999


def test_a_training_on_nonsense_masks_is_kept_aside_and_the_checkpoints_decoder_still_serves(
        learning_client, scenes):
    client, backend = learning_client()
    rng = np.random.default_rng(0)
    post_annotations(client, scenes, lambda masks: [rng.random(m.shape) < 0.3 for m in masks])
    assert backend.learner.wait_idle(120)
    client.post("/webhook", json={"action": "START_TRAINING"})
    assert backend.learner.wait_idle(600)
    status = backend.learner.decoders.status()
    assert status.trainings == 1 and not status.adopted and status.served == 0, status
    assert backend.learner.decoders.rejected_path.is_file() and backend.learner.served is None
    assert client.get("/versions").json["model_version"] == "MobileSAM-vit_t"


def test_learn_every_starts_a_training_by_itself_and_deleted_annotations_leave_the_store(learning_client, scenes):
    client, backend = learning_client(LEARN_EVERY="8", LEARN_STEPS="2")
    post_annotations(client, scenes[:3])
    assert backend.learner.wait_idle(300)
    assert backend.learner.counts["trainings_started"] >= 1
    assert backend.learner.decoders.status().trainings >= 1 or backend.learner.store.count() < 8
    kept = backend.learner.store.count()
    response = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 100}]})
    assert response.json["status"] == "dropped" and response.json["masks"] == len(scenes[0][2])
    assert backend.learner.store.count() == kept - len(scenes[0][2])


def test_bad_annotations_are_skipped_counted_and_never_trained_twice(learning_client, scenes, image_host):
    client, backend = learning_client()
    url, _, masks = scenes[0]
    good = brush_result(masks[0], "a")
    wrong_size = brush_result(np.ones((HEIGHT, WIDTH + 1), bool), "b")
    empty = brush_result(np.zeros((HEIGHT, WIDTH), bool), "c")
    body = annotation_webhook([good, wrong_size, empty], annotation=1, task=1, image_url=url)
    for _ in range(2):  # the same annotation twice
        assert client.post("/webhook", json=body).status_code == 200
    missing = annotation_webhook([good], annotation=2, task=2, image_url=image_host.url + "/data/upload/9/none.png")
    client.post("/webhook", json=missing)
    assert backend.learner.wait_idle(120)
    assert backend.learner.store.count() == 1 and backend.learner.store.new_masks() == 1
    assert backend.learner.counts["kept"] == 1
    assert backend.learner.counts["skipped"] == 2 * 2 + 1  # two bad regions, twice; the image not fetched
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 200  # read later
    assert client.post("/webhook", json=[1, 2]).status_code == 400


def test_learn_on_refuses_models_it_cannot_fine_tune():
    from sam_ls_backend.errors import ConfigError
    from sam_ls_backend.learning.learner import learning_files
    from sam_ls_backend.settings import Settings

    for choice in ("SAM2", "SAM3", "ONNX"):
        with pytest.raises(ConfigError, match="cannot learn"):
            learning_files(Settings.from_env({}, SAM_CHOICE=choice, LEARN="on"))


def _with_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    import copy

    learned = copy.deepcopy(model)
    learned.load_state_dict(weights, strict=False)
    return learned.eval()
