"""LEARN=on with a real Label Studio 1.23.2: annotations saved in a project reach the backend through the webhook
Label Studio registers when the backend is connected, *Start Training* (Label Studio's train API) trains, every
worker then serves the learned decoder under a new `model_version`, and the next click is its answer.

The backend runs under gunicorn with two workers sharing the store and the decoder files; a random-weight
MobileSAM learns the coloured shapes of one generated scene uploaded as five tasks (see
tests/integration/test_learning.py for why one scene).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support.backend_process import BackendProcess
from tests.support.label_studio import LabelStudio
from tests.support.ls_bodies import LEARNING_CONFIG, brush_result, keypoint
from tests.support.reference import decode_brush_region
from tests.support.shape_scenes import shape_scene

SCENE_SEED, SHAPES, TASKS = 600, 4, 5
WIDTH, HEIGHT = 320, 240
TRAINING_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, vit_t_checkpoint: Path) -> Path:
    """A folder of its own holding a copy of the random-weight checkpoint: the learned files go beside it."""
    folder = tmp_path_factory.mktemp("learning-models")
    shutil.copy(vit_t_checkpoint, folder / "mobile_sam.pt")
    return folder


@pytest.fixture(scope="module")
def backend(label_studio: LabelStudio, models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"SAM_CHOICE": "MobileSAM", "MOBILESAM_CHECKPOINT": str(models / "mobile_sam.pt"), "DEVICE": "cpu",
           "RUNTIME": "torch", "WORKERS": "2", "THREADS": "4", "LEARN": "on", "LEARN_EVERY": "0",
           "LEARN_STEPS": "60", "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
    process = BackendProcess(env, log_path=tmp_path_factory.mktemp("learning-backend") / "backend.log",
                             gunicorn=True)
    try:
        process.wait_ready(180)
        yield process.url
    finally:
        process.stop()


def metric(url: str, name: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_annotations_saved_in_label_studio_train_the_decoder_every_worker_then_serves(
        label_studio: LabelStudio, backend: str, models: Path, tmp_path: Path) -> None:
    from segment_anything import SamPredictor

    from sam_ls_backend.predictors.registry import load_predictor
    from sam_ls_backend.predictors.sam import read_decoder_weights
    from sam_ls_backend.settings import Settings

    project = label_studio.create_project("learning e2e", LEARNING_CONFIG)
    image, masks = shape_scene(WIDTH, HEIGHT, seed=SCENE_SEED, shapes=SHAPES)
    assert len(masks) == SHAPES
    Image.fromarray(image).save(tmp_path / "scene.png")
    tasks = [(label_studio.import_image(project, tmp_path / "scene.png"), image, masks) for _ in range(TASKS)]
    ml = label_studio.connect_ml_backend(project, backend)
    sent = 0
    for task, _, masks in tasks:
        label_studio.create_annotation(task, [brush_result(mask, f"shape{k}") for k, mask in enumerate(masks)])
        sent += len(masks)
    deadline = time.monotonic() + 300
    while metric(backend, "sam_learning_annotations") < sent and time.monotonic() < deadline:
        time.sleep(1)
    assert metric(backend, "sam_learning_annotations") == sent, "the annotations did not all reach the backend"

    versions = requests.get(f"{backend}/versions", timeout=10).json()["versions"]
    assert versions == ["MobileSAM-vit_t"]
    label_studio.train(ml)  # the Start Training button's call
    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    while time.monotonic() < deadline:
        answers = {requests.get(f"{backend}/versions", timeout=10).json()["model_version"] for _ in range(6)}
        if answers == {"MobileSAM-vit_t+learned-v1"}:  # both workers (six requests land on each, by chance)
            break
        time.sleep(2)
    assert answers == {"MobileSAM-vit_t+learned-v1"}, f"still serving {answers} after {TRAINING_TIMEOUT_S} s"
    assert metric(backend, "sam_learning_held_out_iou{decoder=\"after\"}") > \
        metric(backend, "sam_learning_held_out_iou{decoder=\"before\"}") + 0.1

    # The next click, sent as the page sends it, is the learned decoder's answer (SamPredictor's, with its weights).
    task, image, masks = tasks[0]
    ys, xs = np.nonzero(masks[0])
    x, y = int(np.median(xs)), int(ys[np.argmin(np.abs(xs - np.median(xs)))])
    click = keypoint(100 * (x + 0.5) / WIDTH, 100 * (y + 0.5) / HEIGHT, width=WIDTH, height=HEIGHT, label="Object")
    answer = label_studio.interactive_annotating(ml, task, [click])
    (region,) = [r for r in answer["data"]["result"] if r["type"] == "brushlabels"]
    model = load_predictor(Settings.from_env({}, MOBILESAM_CHECKPOINT=str(models / "mobile_sam.pt"),
                                             RUNTIME="torch")).model
    (weights,) = models.glob("*.learned-v1.pt")
    model.load_state_dict(read_decoder_weights(weights), strict=False)
    reference = SamPredictor(model)
    reference.set_image(image)
    candidates, scores, _ = reference.predict(np.array([[x + 0.5, y + 0.5]]), np.array([1]), multimask_output=True)
    assert (decode_brush_region(region) == candidates[int(np.argmax(scores))]).all()
