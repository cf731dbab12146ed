"""Pre-annotating a whole project in a real Label Studio 1.23.2: the predictions command stores one prediction
per task through LS's API, skips what it already did when run again, and the boxes and polygons it stored come
out of LS's COCO and YOLO exports once an annotator accepts them."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.support.label_studio import LabelStudio
from tests.support.shape_scenes import shape_scene

TASKS = 50
WIDTH, HEIGHT = 96, 72
CONFIG = """<View><Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels>
  <RectangleLabels name="box" toName="image"><Label value="Object"/></RectangleLabels>
  <RectangleLabels name="prompt" toName="image" smart="true"><Label value="Object"/></RectangleLabels>
</View>"""


@pytest.fixture(scope="module")
def project(label_studio: LabelStudio) -> int:
    """A detection + polygon project of TASKS generated images served through a local-files storage."""
    assert label_studio.local_files_root is not None
    folder = label_studio.local_files_root / "predictions"
    folder.mkdir()
    for index in range(TASKS):
        Image.fromarray(shape_scene(WIDTH, HEIGHT, seed=index)[0]).save(folder / f"scene-{index}.png")
    project_id = label_studio.create_project("sam-ls-backend predictions", CONFIG)
    label_studio.add_local_files_storage(project_id, folder)
    tasks = [{"data": {"image": f"/data/local-files/?d=predictions/scene-{index}.png"}} for index in range(TASKS)]
    assert len(label_studio.import_tasks(project_id, tasks)) == TASKS
    return project_id


def test_a_project_is_predicted_resumed_and_exported(label_studio: LabelStudio, project: int,
                                                     vit_t_predictor) -> None:
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.precompute import LabelStudioApi
    from sam_ls_backend.predictions import in_process_predict, predict_project
    from sam_ls_backend.settings import Settings

    # The random-weight MobileSAM the server loads; it keeps no mask at the generator's default filters, so
    # they are off here and every image gets masks.
    settings = Settings.from_env({}, LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token,
                                 PREANNOTATE="everything", EVERYTHING_POINTS_PER_SIDE="4", EVERYTHING_PRED_IOU="0",
                                 EVERYTHING_STABILITY="0", MODEL_VERSION="grid-v1")
    backend = SamBackend(settings, vit_t_predictor)
    api = LabelStudioApi(backend.images, label_studio.url)
    predict = in_process_predict(backend)

    # Interrupted after 20 tasks, then started again: the second run does only the other 30.
    first = predict_project(api, predict, "grid-v1", project, batch=8, concurrency=2, limit=20)
    assert first["predicted"] == 20 and first["skipped"] == 0 and first["failed"] == 0
    second = predict_project(api, predict, "grid-v1", project, batch=8, concurrency=2)
    assert second["predicted"] == TASKS - 20 and second["skipped"] == 20 and second["failed"] == 0
    third = predict_project(api, predict, "grid-v1", project, batch=8, concurrency=2)
    assert third["predicted"] == 0 and third["skipped"] == TASKS

    stored = api.get("/api/predictions/", params={"project": project})
    stored = stored.get("results", stored) if isinstance(stored, dict) else stored
    by_task: dict[int, list[dict]] = {}
    for prediction in stored:
        by_task.setdefault(prediction["task"], []).append(prediction)
    assert len(by_task) == TASKS and all(len(found) == 1 for found in by_task.values())  # one per task
    assert {found[0]["model_version"] for found in by_task.values()} == {"grid-v1"}
    kinds = {region["type"] for found in by_task.values() for region in found[0]["result"]}
    assert kinds == {"polygonlabels", "rectanglelabels"}

    # The annotator accepts one task's prediction as it is: LS's exports then hold its boxes and polygons.
    task_id, (prediction,) = next(iter(sorted(by_task.items())))
    label_studio.create_annotation(task_id, prediction["result"])
    boxes = [r["value"] for r in prediction["result"] if r["type"] == "rectanglelabels"]
    polygons = [r["value"] for r in prediction["result"] if r["type"] == "polygonlabels"]
    assert boxes and polygons
    coco = json.loads(_member(label_studio.export(project, "COCO"), "result.json"))
    exported = sorted(a["bbox"] for a in coco["annotations"] if not a.get("segmentation"))
    expected = sorted([b["x"] * WIDTH / 100, b["y"] * HEIGHT / 100, b["width"] * WIDTH / 100,
                       b["height"] * HEIGHT / 100] for b in boxes)
    np.testing.assert_allclose(exported, expected, atol=0.01)
    assert sum(1 for a in coco["annotations"] if a.get("segmentation")) == len(polygons)
    yolo = zipfile.ZipFile(io.BytesIO(label_studio.export(project, "YOLO")))
    lines = [line.split() for name in yolo.namelist() if name.startswith("labels/") and name.endswith(".txt")
             for line in yolo.read(name).decode().splitlines() if line.strip()]
    assert len(lines) == len(boxes) + len(polygons)
    assert sum(len(line) == 5 for line in lines) == len(boxes)  # class, x centre, y centre, width, height


def _member(payload: bytes, name: str) -> bytes:
    if not zipfile.is_zipfile(io.BytesIO(payload)):
        return payload
    archive = zipfile.ZipFile(io.BytesIO(payload))
    (member,) = [member for member in archive.namelist() if member.endswith(name)]
    return archive.read(member)



def test_label_studio_accepts_a_concept_phrase_on_a_label(label_studio: LabelStudio) -> None:
    """A label's SAM 3 phrase rides in a `concept` attribute, which Label Studio's config validation accepts and
    keeps, while the label's value (what regions are stored with) stays the short name."""
    from sam_ls_backend.protocol.label_config import parse_label_config

    config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
              '<Label value="bus" concept="yellow school bus"/><Label value="car"/></BrushLabels></View>')
    project_id = label_studio.create_project("sam-ls-backend concepts", config)
    kept = label_studio._call("GET", f"/api/projects/{project_id}/")["label_config"]
    (control,) = parse_label_config(kept).controls["image"]
    assert control.labels == ("bus", "car") and control.concepts == ("yellow school bus", "car")


def test_a_project_of_exactly_a_page_multiple_of_tasks_is_read_whole(label_studio: LabelStudio) -> None:
    """Label Studio answers a page past the last with 404: a project of exactly PAGE_SIZE tasks (1 000 for the
    benchmark's project) must end at the answer's total instead of asking for that page."""
    from sam_ls_backend.media.fetch import ImageSource
    from sam_ls_backend.precompute import PAGE_SIZE, LabelStudioApi
    from sam_ls_backend.settings import Settings

    project_id = label_studio.create_project("sam-ls-backend one full page", CONFIG)
    tasks = [{"data": {"image": f"/data/upload/1/page-{index}.png"}} for index in range(PAGE_SIZE)]
    assert len(label_studio.import_tasks(project_id, tasks)) == PAGE_SIZE
    settings = Settings.from_env({}, LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token)
    api = LabelStudioApi(ImageSource(settings), label_studio.url)
    assert len({task["id"] for task in api.tasks(project_id)}) == PAGE_SIZE
