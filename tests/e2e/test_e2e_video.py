"""Video tasks end to end with a real Label Studio 1.23.2: a VideoRectangle sent through `interactive-annotating`
(as a label click sends it) comes back tracked, saves as an annotation and is found in the JSON export; Data
Manager's *Retrieve predictions* on video tasks with drawn boxes stores one tracked prediction per task.

Label Studio and the backend (`_wsgi.py`, SAM_CHOICE=SAM2 on a tiny random-weight `sam2_video` folder whose
objects stay found) run as real processes; the tracked boxes are compared with transformers' own video API on
the same uploaded file (tests/support/video_oracle.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.backend_process import BackendProcess
from tests.support.label_studio import LabelStudio
from tests.support.video_bodies import VIDEO_CONFIG, keyframe, video_region
from tests.support.video_oracle import interpolated_box, mask_box, oracle_masks
from tests.support.videos import Square, decode_all, scene_frames, write_webm

BACKEND_START_TIMEOUT_S = 180.0
WIDTH, HEIGHT, FRAMES = 160, 96, 12
TOLERANCE = 2.0
CAR = Square((10, 20), (5, 1), 24)


@dataclass(frozen=True)
class VideoProject:
    label_studio: LabelStudio
    project_id: int
    ml_id: int
    task_id: int
    video: Path
    folder: Path


@pytest.fixture(scope="module")
def video_project(label_studio: LabelStudio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VideoProject]:
    from tests.support.hf_checkpoints import save_sam2_video_folder

    work = tmp_path_factory.mktemp("label-studio-video")
    folder = save_sam2_video_folder(work / "sam2.1-hiera-tiny", object_score_bias=4.0)
    video = work / "cars.webm"
    write_webm(video, scene_frames(FRAMES, WIDTH, HEIGHT, [CAR]))
    env = {"SAM_CHOICE": "SAM2", "SAM2_MODEL_DIR": str(folder), "DEVICE": "cpu",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "VIDEO_KEYFRAME_TOLERANCE": str(TOLERANCE)}
    backend = BackendProcess(env, log_path=work / "backend.log")
    try:
        backend.wait_ready(BACKEND_START_TIMEOUT_S)
        project_id = label_studio.create_project("sam-ls-backend video e2e", VIDEO_CONFIG)
        task_id = label_studio.import_image(project_id, video)
        ml_id = label_studio.connect_ml_backend(project_id, backend.url)
        yield VideoProject(label_studio, project_id, ml_id, task_id, video, folder)
    finally:
        backend.stop()


def car_region() -> dict:
    return video_region("car1", [keyframe(1, CAR.box(0), WIDTH, HEIGHT)], FRAMES)


def assert_tracked_like_transformers(result: dict, project: VideoProject) -> None:
    oracle = oracle_masks(project.folder, decode_all(project.video), {0: [(1, CAR.box(0))]})
    assert result["id"] == "car1" and result["type"] == "videorectangle"
    assert result["value"]["labels"] == ["Car"]
    sequence = result["value"]["sequence"]
    assert sequence[0] == car_region()["value"]["sequence"][0]
    for index in range(1, FRAMES):
        shown = interpolated_box(sequence, index + 1, WIDTH, HEIGHT)
        expected = mask_box(oracle[index][1][0])
        assert shown is not None and expected is not None
        assert max(abs(a - b) for a, b in zip(shown, expected)) <= TOLERANCE + 1e-3, f"frame {index + 1}"


def test_label_click_through_label_studio_tracks_saves_and_exports(video_project: VideoProject) -> None:
    studio = video_project.label_studio
    task = studio.get_task(video_project.task_id)
    assert str(task["data"]["video"]).startswith("/data/upload/")
    answer = studio.interactive_annotating(video_project.ml_id, video_project.task_id, [car_region()])
    assert "data" in answer, f"Label Studio reported a backend failure: {answer}"
    (result,) = answer["data"]["result"]
    assert_tracked_like_transformers(result, video_project)
    created = studio.create_annotation(video_project.task_id, [result])
    exported = json.loads(studio.export(video_project.project_id, "JSON"))
    saved = [annotation for item in exported for annotation in item["annotations"] if annotation["id"] == created["id"]]
    assert [region["value"]["sequence"] for region in saved[0]["result"]] == [result["value"]["sequence"]]


def test_retrieve_predictions_stores_one_tracked_prediction_per_task(video_project: VideoProject) -> None:
    studio = video_project.label_studio
    studio.create_annotation(video_project.task_id, [car_region()])
    studio._call("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions",
                                                    "project": video_project.project_id},
                 json={"selectedItems": {"all": True, "excluded": []}})
    predictions = studio.get_task(video_project.task_id)["predictions"]
    assert len(predictions) == 1
    (result,) = predictions[0]["result"]
    assert_tracked_like_transformers(result, video_project)
