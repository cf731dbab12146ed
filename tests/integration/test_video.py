"""Video tasks with SAM 2.1: VideoRectangles tracked through generated videos served as Label Studio serves them.

The oracle is transformers' own video API (`Sam2VideoModel`, `Sam2VideoProcessor`, its inference session and
`propagate_in_video_iterator`) given the whole decoded video and the same box prompts (tests/support/
video_oracle.py). Tiny random-weight models lose every object after the first frame, so the model folders here
bias the object-score head (objects stay found, masks are speckled but not empty) and one folder has located
masks (a linear probe on the finest features, tests/support/hf_checkpoints.py), whose masks follow the moving
square: there, equal to the oracle also means near the truth.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.support.video_bodies import FRAMERATE, keyframe, video_body, video_region, with_sequences
from tests.support.video_oracle import box_iou, interpolated_box, mask_box, oracle_masks
from tests.support.videos import Square, decode_all, scene_frames, write_webm

pytest.importorskip("transformers")
pytest.importorskip("av")

WIDTH, HEIGHT, FRAMES = 160, 96, 14
TOLERANCE = 2.0
CAR = Square((10, 20), (5, 1), 24)
TRUCK = Square((120, 50), (-4, 0), 20)
CORRECTED_ON = 8  # 1-based frame of the correction keyframe


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """The two-square video as a VP9 WebM file, its bytes and its frames decoded the plain way."""
    path = tmp_path_factory.mktemp("videos") / "squares.webm"
    data = write_webm(path, scene_frames(FRAMES, WIDTH, HEIGHT, [CAR, TRUCK]), FRAMERATE)
    return {"path": path, "bytes": data, "frames": decode_all(path)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, video):
    from tests.support.hf_checkpoints import locate_sam2_video_masks, save_sam2_video_folder

    root = tmp_path_factory.mktemp("hf-video-models")
    located = save_sam2_video_folder(root / "located", object_score_bias=4.0)
    truth = np.zeros(video["frames"].shape[:3], bool)
    for index in range(FRAMES):
        x0, y0, x1, y1 = CAR.box(index)
        truth[index, y0:y1, x0:x1] = True
    single = scene_frames(FRAMES, WIDTH, HEIGHT, [CAR])
    assert locate_sam2_video_masks(located, single, truth) > 0.98
    return {"biased": save_sam2_video_folder(root / "biased", object_score_bias=4.0),
            "plain": save_sam2_video_folder(root / "plain"), "located": located}


def make_backend(folder: Path, image_host, **overrides: str):
    from sam_ls_backend.app import build_app
    from sam_ls_backend.settings import Settings

    settings = Settings.from_env({}, SAM_CHOICE="SAM2", SAM2_MODEL_DIR=str(folder), LABEL_STUDIO_URL=image_host.url,
                                 LABEL_STUDIO_API_KEY=image_host.token,
                                 VIDEO_KEYFRAME_TOLERANCE=str(TOLERANCE), **overrides)
    return build_app(settings).test_client()


@pytest.fixture(scope="module")
def served(image_host, video):
    return image_host.add_bytes("/data/upload/1/squares.webm", video["bytes"])


def car_and_truck(count: int = FRAMES) -> list[dict]:
    """What a label click sends: the clicked box (the car, corrected on a later frame) first, then the other
    box of the same label."""
    car = video_region("car1", [keyframe(1, CAR.box(0), WIDTH, HEIGHT),
                                keyframe(CORRECTED_ON, CAR.box(CORRECTED_ON - 1), WIDTH, HEIGHT)], count)
    truck = video_region("truck1", [keyframe(1, TRUCK.box(0), WIDTH, HEIGHT)], count)
    return [car, truck]


CAR_AND_TRUCK_PROMPTS = {0: [(1, CAR.box(0)), (2, TRUCK.box(0))], CORRECTED_ON - 1: [(1, CAR.box(CORRECTED_ON - 1))]}


@pytest.fixture(scope="module")
def biased_oracle(folders, video):
    return oracle_masks(folders["biased"], video["frames"], CAR_AND_TRUCK_PROMPTS)


def predict(client, body: dict) -> dict:
    response = client.post("/predict", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def check_against_oracle(result: dict, sent: dict, oracle: dict, position: int) -> int:
    """Assert the answer keeps the region's id and annotated keyframes and that Label Studio's interpolation of
    it is within the tolerance of the oracle mask's box on every frame; returns the frames compared."""
    sequence = result["value"]["sequence"]
    frames = [item["frame"] for item in sequence]
    assert result["id"] == sent["id"] and result["type"] == "videorectangle"
    assert (result["from_name"], result["to_name"]) == ("box", "video")
    assert result["value"]["labels"] == sent["value"]["labels"]
    assert frames == sorted(set(frames)), "keyframes sorted, one per frame"
    by_frame = {item["frame"]: item for item in sequence}
    for annotated in sent["value"]["sequence"]:
        answered = by_frame[annotated["frame"]]
        if answered != annotated:  # only where the object is lost on the next frame: the box ends there
            assert answered == {**annotated, "enabled": False}, "the annotator's keyframes come back as sent"
            assert mask_box(oracle[annotated["frame"]][1][position]) is None
    first = sent["value"]["sequence"][0]["frame"]
    assert frames[0] == first, "no keyframe before the first annotated one"
    annotated_frames = {item["frame"] for item in sent["value"]["sequence"]}
    compared = 0
    for index in range(first - 1, FRAMES):
        shown = interpolated_box(sequence, index + 1, WIDTH, HEIGHT)
        expected = mask_box(oracle[index][1][position])
        if index + 1 in annotated_frames:
            continue  # the annotator's box, not the tracked one
        if expected is None:
            assert shown is None, f"frame {index + 1}: the object is lost, the box must be hidden"
        else:
            assert shown is not None, f"frame {index + 1}: box hidden where the object was found"
            assert np.abs(np.array(shown) - np.array(expected)).max() <= TOLERANCE + 1e-3, f"frame {index + 1}"
        compared += 1
    return compared


def test_tracker_masks_equal_transformers_frame_for_frame_when_continued_frame_by_frame(folders, video,
                                                                                        biased_oracle) -> None:
    """The tracker's own masks, one frame per call (continuation at every frame), pixel for pixel the oracle's."""
    from sam_ls_backend.media.video import VideoFile
    from sam_ls_backend.predictors.files import ModelFile
    from sam_ls_backend.predictors.video import load_video_tracker
    from sam_ls_backend.settings import Settings

    tracker = load_video_tracker(Settings.from_env({}), ModelFile(folders["biased"], "SAM2_MODEL_DIR", "sam2"),
                                 "Sam2VideoModel", "Sam2VideoProcessor", "sam2")
    seen: dict[int, np.ndarray] = {}
    video_file = VideoFile(video["path"], 1000)
    try:
        track = tracker.begin(video_file, CAR_AND_TRUCK_PROMPTS, len(video_file))
        calls = 0
        while not track.done:
            tracker.advance(track, video_file, deadline=0.0,
                            observe=lambda frame, ids, masks, logits: seen.__setitem__(frame, masks.numpy()))
            calls += 1
    finally:
        video_file.close()
    assert calls == FRAMES and sorted(seen) == list(range(FRAMES))
    for index in range(FRAMES):
        expected = biased_oracle[index][1]
        assert (biased_oracle[index][2] > 0).all(), "biased objects stay found"
        assert 0 < expected.sum() < expected.size, "masks neither empty nor everything"
        np.testing.assert_array_equal(seen[index], expected, err_msg=f"frame {index}")
        assert track.boxes[1][index] == mask_box(expected[0]) and track.boxes[2][index] == mask_box(expected[1])
    assert not (biased_oracle[3][1][0] == biased_oracle[3][1][1]).all(), "the two objects' masks differ"


def test_label_click_answers_every_region_tracked_like_transformers(folders, image_host, served,
                                                                    biased_oracle) -> None:
    client = make_backend(folders["biased"], image_host)
    regions = car_and_truck()
    answer = predict(client, video_body(served, regions))
    results = answer["results"][0]["result"]
    assert [result["id"] for result in results] == ["car1", "truck1"]
    for position, (result, sent) in enumerate(zip(results, regions)):
        assert check_against_oracle(result, sent, biased_oracle, position) >= FRAMES - 2
        assert 0 < result["score"] <= 1


def test_located_masks_track_the_moving_square(folders, image_host, video, tmp_path) -> None:
    """With located masks, the oracle's masks follow the car, and so do the answered boxes."""
    single = write_webm(tmp_path / "car.webm", scene_frames(FRAMES, WIDTH, HEIGHT, [CAR]), FRAMERATE)
    url = image_host.add_bytes("/data/upload/1/car.webm", single)
    oracle = oracle_masks(folders["located"], decode_all(tmp_path / "car.webm"), {0: [(1, CAR.box(0))]})
    client = make_backend(folders["located"], image_host)
    sent = video_region("car1", [keyframe(1, CAR.box(0), WIDTH, HEIGHT)], FRAMES)
    result = predict(client, video_body(url, [sent]))["results"][0]["result"][0]
    assert check_against_oracle(result, sent, oracle, 0) == FRAMES - 1
    for index in range(1, FRAMES):
        found = mask_box(oracle[index][1][0])
        assert found is not None and box_iou(found, CAR.box(index)) > 0.5, f"oracle mask located on frame {index}"
        shown = interpolated_box(result["value"]["sequence"], index + 1, WIDTH, HEIGHT)
        assert box_iou(shown, CAR.box(index)) > 0.5, f"answered box on the car on frame {index + 1}"
    assert len(result["value"]["sequence"]) < FRAMES, "keyframes thinned"


def test_lost_objects_are_disabled_until_found(folders, image_host, served, video) -> None:
    """Unbiased random weights lose the object after its keyframe: the box ends there (enabled false)."""
    oracle = oracle_masks(folders["plain"], video["frames"], {0: [(1, CAR.box(0))]})
    lost = [index for index in range(1, FRAMES) if mask_box(oracle[index][1][0]) is None]
    assert lost, "the unbiased tiny model loses the object"
    client = make_backend(folders["plain"], image_host)
    sent = video_region("car1", [keyframe(1, CAR.box(0), WIDTH, HEIGHT)], FRAMES)
    result = predict(client, video_body(served, [sent]))["results"][0]["result"][0]
    check_against_oracle(result, sent, oracle, 0)
    assert any(not item["enabled"] for item in result["value"]["sequence"])
    again = predict(client, video_body(served, with_sequences([sent], [result])))["results"][0]["result"]
    assert again == [result], "the ended box sent back is recognised: same answer, no error"


def test_continuation_across_requests_ends_where_one_request_would(folders, image_host, served) -> None:
    """With a budget of one frame per request, each request sends back what Label Studio holds (the answered
    keyframes) and the track goes on; the last answer equals the one-request answer, and asking again
    answers from what was tracked without downloading the video."""
    regions = car_and_truck()
    whole = predict(make_backend(folders["biased"], image_host), video_body(served, regions))["results"][0]["result"]
    client = make_backend(folders["biased"], image_host, VIDEO_TIME_BUDGET="0.000001")
    current, answers = regions, []
    for _ in range(FRAMES + 2):
        answers.append(predict(client, video_body(served, current))["results"][0]["result"])
        current = with_sequences(current, answers[-1])
    finished = next(number for number, results in enumerate(answers, start=1) if results == whole)
    assert finished >= FRAMES - 1, "one frame tracked per request, each continuing the last"
    assert all(results == whole for results in answers[finished:])
    downloads = sum(path == served for path, _ in image_host.requests)
    assert predict(client, video_body(served, current))["results"][0]["result"] == whole
    assert sum(path == served for path, _ in image_host.requests) == downloads, "answered without downloading"


def test_retrieve_predictions_tracks_the_boxes_of_the_latest_annotation(folders, image_host, served,
                                                                        biased_oracle) -> None:
    client = make_backend(folders["biased"], image_host)
    regions = car_and_truck()
    stale = {"id": 1, "result": [regions[1]], "updated_at": "2026-01-01T00:00:00Z"}
    latest = {"id": 2, "result": regions, "updated_at": "2026-02-01T00:00:00Z"}
    answer = predict(client, video_body(served, None, annotations=[stale, latest]))
    results = answer["results"][0]["result"]
    assert [result["id"] for result in results] == ["car1", "truck1"]
    for position, (result, sent) in enumerate(zip(results, regions)):
        check_against_oracle(result, sent, biased_oracle, position)
    assert answer["results"][0]["model_version"]


def test_a_video_task_without_boxes_gets_no_prediction(folders, image_host, served) -> None:
    answer = predict(make_backend(folders["biased"], image_host), video_body(served, None))
    assert answer["results"] == [[]]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, video):
    from PIL import Image

    folder = tmp_path_factory.mktemp("bad-videos")
    Image.new("RGB", (8, 8)).save(folder / "image.png")
    empty = folder / "empty.webm"
    write_webm(empty, np.zeros((0, 16, 16, 3), np.uint8))
    return {"png": (folder / "image.png").read_bytes(), "truncated": video["bytes"][: len(video["bytes"]) // 2],
            "empty": empty.read_bytes(), "noise": bytes(range(256)) * 64}


def _nan_region() -> list[dict]:
    regions = car_and_truck()
    regions[0]["value"]["sequence"][0]["x"] = float("nan")
    return regions


def _past_end() -> list[dict]:
    regions = car_and_truck()
    regions[0]["value"]["sequence"].append(keyframe(FRAMES + 5, CAR.box(0), WIDTH, HEIGHT))
    return regions


def _other_control() -> list[dict]:
    regions = car_and_truck()
    regions[0]["from_name"] = "videoLabels"
    return regions


def _past_video() -> list[dict]:
    regions = car_and_truck(count=FRAMES + 100)
    regions[0]["value"]["sequence"].append(keyframe(FRAMES + 50, CAR.box(0), WIDTH, HEIGHT))
    return regions


BAD_REGIONS = {
    "NaN box": (_nan_region, 400, "sequence[0].x"),
    "keyframe past framesCount": (_past_end, 400, "past the video's framesCount"),
    "keyframe past the video's end": (_past_video, 400, "past the end of the video"),
    "region of another control": (_other_control, 400, "is not a <VideoRectangle>"),
}


@pytest.mark.parametrize("case", list(BAD_REGIONS))
def test_bad_regions_get_a_clear_error(case, folders, image_host, served, monkeypatch, tmp_path) -> None:
    make, status, says = BAD_REGIONS[case]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    client = make_backend(folders["biased"], image_host)
    response = client.post("/predict", data=json.dumps(video_body(served, make())), content_type="application/json")
    assert response.status_code == status, response.get_data(as_text=True)
    assert says in response.get_json()["error"]
    assert list(tmp_path.iterdir()) == [], "nothing left on disk"


BAD_FILES = {
    "not a video": ("png", 422, "task video"),
    "truncated": ("truncated", 422, "task video"),
    "zero frames": ("empty", 422, "task video"),
    "noise": ("noise", 422, "task video"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_videos_get_a_clear_error_and_the_worker_keeps_serving(case, folders, image_host, bad_files, served,
                                                                   monkeypatch, tmp_path) -> None:
    kind, status, says = BAD_FILES[case]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    url = image_host.add_bytes(f"/data/upload/1/bad-{kind}.webm", bad_files[kind])
    client = make_backend(folders["biased"], image_host)
    response = client.post("/predict", data=json.dumps(video_body(url, car_and_truck())),
                           content_type="application/json")
    assert response.status_code == status, response.get_data(as_text=True)
    assert says in response.get_json()["error"]
    assert list(tmp_path.iterdir()) == [], "nothing left on disk"
    assert predict(client, video_body(served, car_and_truck()))["results"][0]["result"]


def test_limits_name_their_settings(folders, image_host, served, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    client = make_backend(folders["biased"], image_host, VIDEO_MAX_FRAMES="5")
    response = client.post("/predict", data=json.dumps(video_body(served, car_and_truck())),
                           content_type="application/json")
    assert response.status_code == 413 and "VIDEO_MAX_FRAMES=5" in response.get_json()["error"]
    big = image_host.add_bytes("/data/upload/1/big.webm", b"\0" * (2 * 2**20))
    client = make_backend(folders["biased"], image_host, VIDEO_MAX_MB="1")
    response = client.post("/predict", data=json.dumps(video_body(big, car_and_truck())),
                           content_type="application/json")
    assert response.status_code == 413 and "VIDEO_MAX_MB=1" in response.get_json()["error"]
    assert list(tmp_path.iterdir()) == []


def test_enterprise_event_protocol_and_models_without_tracker_are_refused(folders, image_host, served,
                                                                         make_client) -> None:
    body = video_body(served, car_and_truck())
    body["params"]["context"] = {"event": "track", "result": car_and_truck()}
    response = make_backend(folders["biased"], image_host).post("/predict", data=json.dumps(body),
                                                                content_type="application/json")
    assert response.status_code == 422 and "context.event" in response.get_json()["error"]
    client, _ = make_client()
    response = client.post("/predict", data=json.dumps(video_body(served, car_and_truck())),
                                  content_type="application/json")
    assert response.status_code == 422
    assert "SAM_CHOICE=SAM2 or SAM3" in response.get_json()["error"]


def test_sam3_tracks_with_its_video_tracker_like_transformers(image_host, served, video, tmp_path) -> None:
    """SAM_CHOICE=SAM3: the same label click, tracked by Sam3TrackerVideoModel from SAM3_MODEL_DIR, equal to
    transformers' own Sam3TrackerVideo API for the same prompts."""
    from sam_ls_backend.app import build_app
    from sam_ls_backend.settings import Settings
    from tests.support.hf_checkpoints import save_sam3_folder

    folder = save_sam3_folder(tmp_path / "sam3", dim=128, object_score_bias=4.0)
    oracle = oracle_masks(folder, video["frames"], CAR_AND_TRUCK_PROMPTS, "Sam3TrackerVideoModel",
                          "Sam3TrackerVideoProcessor")
    assert all(0 < oracle[index][1].sum() < oracle[index][1].size for index in range(FRAMES))
    settings = Settings.from_env({}, SAM_CHOICE="SAM3", SAM3_MODEL_DIR=str(folder), LABEL_STUDIO_URL=image_host.url,
                                 LABEL_STUDIO_API_KEY=image_host.token, VIDEO_KEYFRAME_TOLERANCE=str(TOLERANCE))
    regions = car_and_truck()
    results = predict(build_app(settings).test_client(), video_body(served, regions))["results"][0]["result"]
    assert [result["id"] for result in results] == ["car1", "truck1"]
    for position, (result, sent) in enumerate(zip(results, regions)):
        assert check_against_oracle(result, sent, oracle, position) >= FRAMES - 2
