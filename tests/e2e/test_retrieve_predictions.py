"""PREANNOTATE=everything in a real Label Studio 1.23.2: *Retrieve predictions* stores one prediction per task
and a task opened without one gets its prediction, each equal to what SamAutomaticMaskGenerator finds with the
same checkpoint and parameters, as brush, polygon and rectangle regions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from tests.support.backend_process import BackendProcess
from tests.support.label_studio import LabelStudio
from tests.support.reference import decode_brush_region
from tests.support.shape_scenes import shape_scene

TASKS = 4
WIDTH, HEIGHT = 96, 72
CONFIG = """<View><Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels>
  <RectangleLabels name="box" toName="image"><Label value="Object"/></RectangleLabels>
  <KeyPointLabels name="point" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>"""
# Random weights keep no mask at the generator's default filters: these are off, so each image has masks.
GRID = {"EVERYTHING_POINTS_PER_SIDE": "2", "EVERYTHING_PRED_IOU": "0", "EVERYTHING_STABILITY": "0"}


@pytest.fixture(scope="module")
def backend_url(label_studio: LabelStudio, vit_t_checkpoint: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"SAM_CHOICE": "MobileSAM", "MOBILESAM_CHECKPOINT": str(vit_t_checkpoint), "DEVICE": "cpu",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "PREANNOTATE": "everything", "EMBEDDING_PRECISION": "float32", **GRID}
    backend = BackendProcess(env, log_path=tmp_path_factory.mktemp("backend") / "backend.log")
    try:
        backend.wait_ready(180.0)
        yield backend.url
    finally:
        backend.stop()


def call(ls: LabelStudio, method: str, path: str, **kwargs) -> dict:
    response = requests.request(method, f"{ls.url}{path}", headers={"Authorization": f"Token {ls.token}"},
                                timeout=300, **kwargs)
    assert response.ok, f"{method} {path} -> {response.status_code}: {response.text[:2000]}"
    return response.json()


def generator_masks(checkpoint: Path, image: np.ndarray) -> list[np.ndarray]:
    """SamAutomaticMaskGenerator's masks with the backend's parameters, on the same checkpoint."""
    from mobile_sam import sam_model_registry
    from segment_anything import SamAutomaticMaskGenerator

    model = sam_model_registry["vit_t"]()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    found = SamAutomaticMaskGenerator(model.eval(), points_per_side=2, pred_iou_thresh=0,
                                      stability_score_thresh=0).generate(image)
    return [mask["segmentation"] for mask in found]


def test_retrieve_and_open_store_the_generators_masks(label_studio: LabelStudio, backend_url: str,
                                                     vit_t_checkpoint: Path) -> None:
    ls = label_studio
    assert ls.local_files_root is not None
    folder = ls.local_files_root / "retrieve"
    folder.mkdir()
    images = [shape_scene(WIDTH, HEIGHT, seed=index)[0] for index in range(TASKS)]
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"scene-{index}.png")
    project = ls.create_project("sam-ls-backend retrieve", CONFIG)
    ls.add_local_files_storage(project, folder)
    task_ids = ls.import_tasks(project, [{"data": {"image": f"/data/local-files/?d=retrieve/scene-{index}.png"}}
                                         for index in range(TASKS)])
    ls.connect_ml_backend(project, backend_url)

    # Data Manager -> Retrieve predictions on the first three tasks.
    call(ls, "POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
         json={"selectedItems": {"all": False, "included": task_ids[:3]}})
    # The fourth is opened by an annotator, with "use predictions to prelabel tasks" on.
    call(ls, "PATCH", f"/api/projects/{project}/", json={"evaluate_predictions_automatically": True})
    call(ls, "GET", f"/api/tasks/{task_ids[3]}/")

    for task_id, image in zip(task_ids, images):
        predictions = call(ls, "GET", "/api/predictions/", params={"task": task_id})
        predictions = predictions.get("results", predictions) if isinstance(predictions, dict) else predictions
        (prediction,) = [p for p in predictions if p["task"] == task_id]  # one prediction per task
        assert prediction["model_version"] == "MobileSAM-vit_t"
        result = prediction["result"]
        expected = generator_masks(vit_t_checkpoint, image)
        brushes = [r for r in result if r["type"] == "brushlabels"]
        assert expected and [decode_brush_region(r).tobytes() for r in brushes] == [m.tobytes() for m in expected]
        boxes = [r for r in result if r["type"] == "rectanglelabels"]
        assert len(boxes) == len(expected) and all(r["from_name"] == "box" for r in boxes)
        assert any(r["type"] == "polygonlabels" for r in result)
        assert all(isinstance(r["score"], float) for r in result)


def test_the_command_sends_batches_to_a_running_backend(label_studio: LabelStudio, backend_url: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m precompute --project N --predictions --backend URL`: the backend (or its load balancer) answers,
    the command stores, and a second run finds nothing left to do."""
    from sam_ls_backend.precompute import main

    ls = label_studio
    assert ls.local_files_root is not None
    folder = ls.local_files_root / "command"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(shape_scene(WIDTH, HEIGHT, seed=10 + index)[0]).save(folder / f"scene-{index}.png")
    project = ls.create_project("sam-ls-backend command", CONFIG)
    ls.add_local_files_storage(project, folder)
    task_ids = ls.import_tasks(project, [{"data": {"image": f"/data/local-files/?d=command/scene-{index}.png"}}
                                         for index in range(3)])
    monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls.token)
    arguments = ["--project", str(project), "--predictions", "--backend", backend_url, "--batch", "2"]
    assert main(arguments) == 0
    assert "3 predicted" in capsys.readouterr().out
    assert main(arguments) == 0
    assert "0 predicted" in capsys.readouterr().out
    for task_id in task_ids:
        found = call(ls, "GET", "/api/predictions/", params={"task": task_id})
        found = found.get("results", found) if isinstance(found, dict) else found
        (prediction,) = [p for p in found if p["task"] == task_id]
        assert prediction["model_version"] == "MobileSAM-vit_t" and prediction["result"]
