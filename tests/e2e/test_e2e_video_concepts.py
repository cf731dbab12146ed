"""SAM 3 concepts on a video task end to end with a real Label Studio 1.23.2: Data Manager's *Retrieve predictions*
on a video task without boxes (the backend, `_wsgi.py` with SAM_CHOICE=SAM3 and PREANNOTATE=concepts, as a real
process) stores one prediction whose regions are SAM 3's instances tracked like transformers' own
`Sam3VideoModel` API on the uploaded file; accepted as an annotation, they are found in the JSON export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.backend_process import BackendProcess
from tests.support.label_studio import LabelStudio
from tests.support.video_bodies import FRAMERATE
from tests.support.video_oracle import interpolated_box, mask_box, oracle_concepts
from tests.support.videos import Square, decode_all, scene_frames, write_webm

pytest.importorskip("transformers")

BACKEND_START_TIMEOUT_S = 180.0
# The whole video in one request even on a busy machine (Label Studio waits up to 100 s for the backend, and
# answers the Data Manager action when the backend has answered).
TRACKING_BUDGET_S = 90.0
LABEL_STUDIO_WAIT_S = 120.0
WIDTH, HEIGHT, FRAMES = 160, 96, 20
TOLERANCE = 2.0
CAR = Square((10, 20), (5, 1), 24)
PHRASES = ["red car", "Person"]
CONFIG = ('<View><Labels name="videoLabels" toName="video">'
          '<Label value="Car" concept="red car"/><Label value="Person"/></Labels>'
          f'<Video name="video" value="$video" framerate="{FRAMERATE}"/>'
          '<VideoRectangle name="box" toName="video"/></View>')


def test_retrieve_predictions_finds_and_tracks_the_labels_concepts(label_studio: LabelStudio,
                                                                    tmp_path: Path) -> None:
    from tests.support.hf_checkpoints import save_sam3_concept_video_folder

    video = tmp_path / "street.webm"
    write_webm(video, scene_frames(FRAMES, WIDTH, HEIGHT, [CAR, Square((120, 50), (-3, 0), 20)]), FRAMERATE)
    frames = decode_all(video)
    truth = np.zeros(frames.shape[:3], bool)
    for index in range(FRAMES):
        x0, y0, x1, y1 = CAR.box(index)
        truth[index, y0:y1, x0:x1] = True
    folder = save_sam3_concept_video_folder(tmp_path / "sam3", frames, truth, PHRASES)
    oracle = oracle_concepts(folder, frames, PHRASES)
    shown = {int(object_id) for found in oracle.values()
             for object_id, mask in zip(found["object_ids"].tolist(), found["masks"]) if mask.any()}
    assert shown, "transformers finds instances"
    env = {"SAM_CHOICE": "SAM3", "SAM3_MODEL_DIR": str(folder), "DEVICE": "cpu", "PREANNOTATE": "concepts",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "VIDEO_KEYFRAME_TOLERANCE": str(TOLERANCE), "VIDEO_TIME_BUDGET": str(TRACKING_BUDGET_S)}
    backend = BackendProcess(env, log_path=tmp_path / "backend.log")
    try:
        backend.wait_ready(BACKEND_START_TIMEOUT_S)
        project_id = label_studio.create_project("sam-ls-backend video concepts e2e", CONFIG)
        task_id = label_studio.import_image(project_id, video)
        label_studio.connect_ml_backend(project_id, backend.url)
        label_studio._call("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions",
                                                              "project": project_id},
                           json={"selectedItems": {"all": True, "excluded": []}}, timeout=LABEL_STUDIO_WAIT_S)
        predictions = label_studio.get_task(task_id)["predictions"]
    finally:
        backend.stop()
    assert len(predictions) == 1
    results = predictions[0]["result"]
    assert len(results) == len(shown), "one region per instance"
    for result in results:
        assert result["type"] == "videorectangle" and result["value"]["labels"] in (["Car"], ["Person"])
        sequence = result["value"]["sequence"]
        first = sequence[0]["frame"] - 1
        candidates = [object_id for object_id in shown if _box(oracle, first, object_id) is not None]
        assert any(_tracked_like(sequence, oracle, object_id) for object_id in candidates), result["id"]
    created = label_studio.create_annotation(task_id, results)
    exported = json.loads(label_studio.export(project_id, "JSON"))
    saved = [annotation for item in exported for annotation in item["annotations"] if annotation["id"] == created["id"]]
    assert [region["value"]["sequence"] for region in saved[0]["result"]] == [r["value"]["sequence"] for r in results]


def _box(oracle: dict, frame: int, object_id: int) -> tuple | None:
    ids = oracle[frame]["object_ids"].tolist()
    return mask_box(oracle[frame]["masks"][ids.index(object_id)].numpy()) if object_id in ids else None


def _tracked_like(sequence: list[dict], oracle: dict, object_id: int) -> bool:
    """Whether Label Studio's drawing of `sequence` is within the tolerance of the box of transformers' mask
    of `object_id` on every frame, and hidden where transformers does not show it."""
    for frame in range(sequence[0]["frame"] - 1, FRAMES):
        drawn, expected = interpolated_box(sequence, frame + 1, WIDTH, HEIGHT), _box(oracle, frame, object_id)
        if (drawn is None) != (expected is None):
            return False
        if drawn is not None and np.abs(np.array(drawn) - np.array(expected)).max() > TOLERANCE + 1e-3:
            return False
    return True

