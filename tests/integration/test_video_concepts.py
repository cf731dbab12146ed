"""SAM 3 concepts on video tasks (PREANNOTATE=concepts): every label of the video's Labels control found and tracked
with `Sam3VideoModel`, compared with transformers' own video API (`Sam3VideoProcessor` session, `add_text_prompt`,
`propagate_in_video_iterator`, `postprocess_outputs`) given the whole decoded video and the same phrases.

The tiny random-weight SAM 3 folder is laid out as facebook/sam3 (one sam3_video folder for the detector, the
trackers and the video model). Random weights score every candidate below the published thresholds, and track
speckle over the whole frame, so the folder's config.json gets thresholds inside the spread of its scores and
its tracked masks are located on the car (tests/support/hf_checkpoints.py). The tests assert that an instance
is found and kept, its box following the car, before comparing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.video_bodies import FRAMERATE, keyframe, video_body, video_region
from tests.support.video_oracle import interpolated_box, mask_box, oracle_concepts
from tests.support.videos import Square, decode_all, scene_frames, write_webm

pytest.importorskip("transformers")
pytest.importorskip("av")

WIDTH, HEIGHT, FRAMES = 160, 96, 20  # more frames than SAM 3's hotstart delay (15): answers come out gradually
TOLERANCE = 2.0
PHRASES = ["red car", "Person"]  # Car's concept attribute, Person's value
CONFIG = ('<View><Labels name="videoLabels" toName="video" allowEmpty="true">'
          '<Label value="Car" concept="red car"/><Label value="Person"/></Labels>'
          f'<Video name="video" value="$video" framerate="{FRAMERATE}"/>'
          '<VideoRectangle name="box" toName="video"/></View>')
LABEL_OF = {"red car": "Car", "Person": "Person"}
CAR = Square((10, 20), (5, 1), 24)
WALKER = Square((120, 50), (-3, 0), 20)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "street.webm"
    data = write_webm(path, scene_frames(FRAMES, WIDTH, HEIGHT, [CAR, WALKER]), FRAMERATE)
    return {"path": path, "bytes": data, "frames": decode_all(path)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, video):
    """A tiny SAM 3 folder whose video model finds and keeps an instance, its tracked masks located on the car
    (thresholds and association set as tests/support/hf_checkpoints.py explains)."""
    from tests.support.hf_checkpoints import save_sam3_concept_video_folder

    return save_sam3_concept_video_folder(tmp_path_factory.mktemp("hf-models") / "sam3", video["frames"],
                                          car_truth(), PHRASES)


def car_truth() -> np.ndarray:
    """frames×H×W bool: where the car is."""
    truth = np.zeros((FRAMES, HEIGHT, WIDTH), bool)
    for index in range(FRAMES):
        x0, y0, x1, y1 = CAR.box(index)
        truth[index, y0:y1, x0:x1] = True
    return truth


@pytest.fixture(scope="module")
def oracle(folder, video):
    answers = oracle_concepts(folder, video["frames"], PHRASES)
    assert sorted(answers) == list(range(FRAMES))
    return answers


def shown_frames(oracle: dict) -> dict[int, list[int]]:
    """Object id -> the frames (0-based) transformers shows it on, with a non-empty mask."""
    shown: dict[int, list[int]] = {}
    for frame, found in sorted(oracle.items()):
        for position, object_id in enumerate(found["object_ids"].tolist()):
            if found["masks"][position].any():
                shown.setdefault(object_id, []).append(frame)
    return shown


def test_the_oracle_finds_and_keeps_instances(oracle) -> None:
    """Not vacuous: transformers' answer has an instance shown on most frames, whose box moves with the car."""
    shown = shown_frames(oracle)
    assert shown, "instances found"
    object_id, frames = max(shown.items(), key=lambda item: len(item[1]))
    assert len(frames) >= FRAMES - 2, "an instance kept over the video"
    assert {phrase for found in oracle.values() for phrase, ids in found["prompt_to_obj_ids"].items() if ids}
    boxes = {frame: mask_box(oracle[frame]["masks"][oracle[frame]["object_ids"].tolist().index(object_id)].numpy())
             for frame in frames}
    assert len(set(boxes.values())) >= FRAMES // 2, "boxes differ from frame to frame"
    near = [frame for frame, box in boxes.items() if box and abs(box[0] - CAR.box(frame)[0]) <= 5]
    assert len(near) >= 3 * FRAMES // 4, "the box's left edge follows the car"


def test_tracker_masks_equal_transformers_when_run_frame_by_frame(folder, video, oracle) -> None:
    """The backend's concept tracker, run one frame per call (SAM 3's hotstart buffer kept between calls),
    gives transformers' ids, masks and scores on every frame."""
    from sam_ls_backend.media.video import VideoFile
    from sam_ls_backend.predictors.files import ModelFile
    from sam_ls_backend.predictors.video_concepts import load_concept_video_tracker
    from sam_ls_backend.settings import Settings

    tracker = load_concept_video_tracker(Settings.from_env({}), ModelFile(folder, "SAM3_MODEL_DIR", "sam3"))
    seen: dict[int, tuple] = {}
    video_file = VideoFile(video["path"], 1000)
    try:
        track = tracker.begin(video_file, tuple(PHRASES))
        calls = 0
        while not track.done:
            tracker.advance(track, video_file, deadline=0.0,
                            observe=lambda frame, ids, masks, scores: seen.__setitem__(frame, (ids, masks, scores)))
            calls += 1
    finally:
        video_file.close()
    assert calls > 1 and sorted(seen) == list(range(FRAMES))
    for frame in range(FRAMES):
        ids, masks, scores = seen[frame]
        expected = oracle[frame]
        assert ids == expected["object_ids"].tolist(), f"frame {frame}"
        np.testing.assert_array_equal(masks.numpy(), expected["masks"].numpy(), err_msg=f"frame {frame}")
        np.testing.assert_array_equal(scores.numpy(), expected["scores"].numpy())


def make_client(folder, image_host, **overrides: str):
    from sam_ls_backend.app import build_app
    from sam_ls_backend.settings import Settings

    settings = Settings.from_env({}, SAM_CHOICE="SAM3", SAM3_MODEL_DIR=str(folder), LABEL_STUDIO_URL=image_host.url,
                                 LABEL_STUDIO_API_KEY=image_host.token, VIDEO_KEYFRAME_TOLERANCE=str(TOLERANCE),
                                 **({"PREANNOTATE": "concepts"} | overrides))
    return build_app(settings).test_client()


def retrieve(client, url: str, **task) -> list[dict]:
    """What Data Manager → Retrieve predictions sends for one video task (no context), with this config."""
    body = video_body(url, None, **task)
    body["label_config"] = CONFIG
    response = client.post("/predict", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    (prediction,) = response.get_json()["results"]
    return prediction["result"] if prediction else []


@pytest.fixture(scope="module")
def served(image_host, video):
    return image_host.add_bytes("/data/upload/1/street.webm", video["bytes"])


def expected_regions(oracle: dict, phrases: list[str] = PHRASES) -> dict[str, tuple[int, str, float]]:
    """Region id -> (SAM 3's object id, label, mean score over the frames it is shown) of every instance."""
    from sam_ls_backend.pipelines.video_concepts import instance_region_id

    expected = {}
    for object_id, frames in shown_frames(oracle).items():
        phrase = next(phrase for found in oracle.values() for phrase, ids in found["prompt_to_obj_ids"].items()
                      if object_id in ids)
        scores = [float(oracle[f]["scores"][oracle[f]["object_ids"].tolist().index(object_id)]) for f in frames]
        expected[instance_region_id("1.1795303561", 1, "video", tuple(phrases), object_id)] = (
            object_id, LABEL_OF[phrase], sum(scores) / len(scores))
    return expected


def check_instance(result: dict, object_id: int, oracle: dict) -> int:
    """Label Studio's interpolation of the answered keyframes is within the tolerance of the box of
    transformers' mask on every frame from the instance's first, hidden where transformers does not show it;
    returns the frames it is shown on."""
    sequence = result["value"]["sequence"]
    frames = [item["frame"] for item in sequence]
    assert frames == sorted(set(frames)), "keyframes sorted, one per frame"
    boxes = {}
    for frame, found in oracle.items():
        ids = found["object_ids"].tolist()
        boxes[frame] = mask_box(found["masks"][ids.index(object_id)].numpy()) if object_id in ids else None
    first = min(frame for frame, box in boxes.items() if box is not None)
    assert frames[0] == first + 1, "the track starts where SAM 3 first shows the instance"
    shown = 0
    for frame in range(FRAMES):
        drawn = interpolated_box(sequence, frame + 1, WIDTH, HEIGHT)
        if frame < first or boxes[frame] is None:
            assert drawn is None, f"frame {frame + 1}: hidden where transformers shows no instance"
            continue
        assert drawn is not None, f"frame {frame + 1}: shown where transformers shows the instance"
        assert np.abs(np.array(drawn) - np.array(boxes[frame])).max() <= TOLERANCE + 1e-3, f"frame {frame + 1}"
        shown += 1
    return shown


def test_retrieve_predictions_tracks_every_instance_of_every_label_like_transformers(folder, image_host, served,
                                                                                    oracle) -> None:
    results = retrieve(make_client(folder, image_host), served)
    expected = expected_regions(oracle)
    assert {result["id"] for result in results} == set(expected), "one region per instance shown"
    longest = 0
    for result in results:
        object_id, label, score = expected[result["id"]]
        assert (result["type"], result["from_name"], result["to_name"]) == ("videorectangle", "box", "video")
        assert result["value"]["labels"] == [label] and result["value"]["framesCount"] == FRAMES
        assert result["score"] == pytest.approx(score, abs=1e-4)
        longest = max(longest, check_instance(result, object_id, oracle))
    assert longest >= FRAMES - 2


def test_a_request_past_the_budget_is_continued_by_the_next(folder, image_host, served) -> None:
    """With a budget of one frame per request, asking again goes on where the last request stopped: the
    answers grow frame by frame to the one-request answer, which is then given without downloading again."""
    whole = retrieve(make_client(folder, image_host), served)
    client = make_client(folder, image_host, VIDEO_TIME_BUDGET="0.000001")
    answers = [retrieve(client, served) for _ in range(FRAMES)]
    assert answers[0] != whole and answers[-1] == whole
    last_frames = [max((item["frame"] for r in results for item in r["value"]["sequence"]), default=0)
                   for results in answers]
    assert last_frames == sorted(last_frames), "each answer reaches at least as far as the one before"
    downloads = sum(path == served for path, _ in image_host.requests)
    assert retrieve(client, served) == whole
    assert sum(path == served for path, _ in image_host.requests) == downloads, "answered without downloading"


def test_drawn_boxes_are_tracked_instead_and_preannotate_off_finds_nothing(folder, image_host, served) -> None:
    drawn = video_region("car1", [keyframe(1, CAR.box(0), WIDTH, HEIGHT)], FRAMES)
    results = retrieve(make_client(folder, image_host), served,
                       annotations=[{"id": 1, "result": [drawn], "updated_at": "2026-02-01T00:00:00Z"}])
    assert [result["id"] for result in results] == ["car1"], "the box tracker answers a task with boxes"
    assert retrieve(make_client(folder, image_host, PREANNOTATE="off"), served) == []


def test_a_concept_typed_for_the_video_is_found_and_tracked_like_transformers(folder, image_host, served,
                                                                             video) -> None:
    """Label Studio's page sends a TextArea pointed at the video like an image's (tests/e2e/test_browser_video.py):
    the phrase typed last is tracked (PREANNOTATE off), its instances labelled with the label it names."""
    oracle = oracle_concepts(folder, video["frames"], ["red car"])
    expected = expected_regions(oracle, ["red car"])
    assert expected, "transformers finds the typed concept"
    body = video_body(served, [{"id": "t1", "from_name": "concept", "to_name": "video", "type": "textarea",
                                "value": {"text": ["person", "0.3", "red car"]}, "origin": "manual"}])
    body["label_config"] = CONFIG.replace("</View>", '<TextArea name="concept" toName="video"/></View>')
    response = make_client(folder, image_host, PREANNOTATE="off").post("/predict", data=json.dumps(body),
                                                                      content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"][0]["result"]
    assert {result["id"] for result in results} == set(expected)
    for result in results:
        object_id, _, score = expected[result["id"]]
        assert result["value"]["labels"] == ["Car"] and result["score"] == pytest.approx(score, abs=1e-4)
        check_instance(result, object_id, oracle)
