"""A phone video stored landscape with a display rotation: Label Studio's player shows it turned, so keyframes are
in percent of the turned frame, and tracked boxes must come back in it.

What "as shown" means comes from outside the backend: OpenCV's reader, which applies the display matrix
(CAP_PROP_ORIENTATION_AUTO), as browsers do.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.video_bodies import FRAMERATE, keyframe, video_body, video_region
from tests.support.video_oracle import box_iou, interpolated_box, mask_box, oracle_masks
from tests.support.videos import COLOURS, Square, scene_frames, write_webm

cv2 = pytest.importorskip("cv2")
pytest.importorskip("transformers")

STORED_WIDTH, STORED_HEIGHT, FRAMES = 160, 96, 10
SHOWN_WIDTH, SHOWN_HEIGHT = STORED_HEIGHT, STORED_WIDTH  # turned a quarter
CAR = Square((10, 20), (8, 3), 24)
TOLERANCE = 2.0


def colour_box(frame: np.ndarray, colour: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the pixels of `colour` (within 40 per channel) on an H×W×3 RGB frame."""
    return mask_box((np.abs(frame.astype(int) - colour) < 40).all(axis=2))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """A landscape MP4 with a 90° display rotation, and its frames as OpenCV shows them (RGB)."""
    path = tmp_path_factory.mktemp("videos") / "phone.mp4"
    data = write_webm(path, scene_frames(FRAMES, STORED_WIDTH, STORED_HEIGHT, [CAR]), FRAMERATE, rotation=90)
    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    shown = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        shown.append(frame[:, :, ::-1])
    capture.release()
    return {"path": path, "bytes": data, "shown": np.stack(shown)}


def test_frames_come_turned_as_players_show_them(rotated) -> None:
    from sam_ls_backend.media.video import VideoFile

    shown = rotated["shown"]
    assert shown.shape == (FRAMES, SHOWN_HEIGHT, SHOWN_WIDTH, 3), "OpenCV shows the video portrait"
    video = VideoFile(rotated["path"], 100)
    try:
        assert (video.width, video.height) == (SHOWN_WIDTH, SHOWN_HEIGHT)
        for index in range(FRAMES):
            frame = video.frame(index)
            assert frame.shape == shown[index].shape
            assert np.abs(frame.astype(int) - shown[index]).max() <= 3, f"frame {index}"
            box = colour_box(frame, COLOURS[0])
            assert box == colour_box(shown[index], COLOURS[0]) and box != CAR.box(index)
    finally:
        video.close()


def test_keyframes_and_tracked_boxes_are_in_the_shown_frame(rotated, image_host, tmp_path) -> None:
    """A box drawn on the turned first frame prompts the tracker there; the answered boxes follow the square
    as it moves on the turned frames (a folder with located masks), and equal transformers' answer for the
    frames OpenCV shows."""
    from sam_ls_backend.app import build_app
    from sam_ls_backend.settings import Settings
    from tests.support.hf_checkpoints import locate_sam2_video_masks, save_sam2_video_folder

    shown = rotated["shown"]
    truth = [colour_box(frame, COLOURS[0]) for frame in shown]
    assert len({box[:2] for box in truth}) == FRAMES, "the square moves on every frame"
    masks = np.zeros(shown.shape[:3], bool)
    for index, (x0, y0, x1, y1) in enumerate(truth):
        masks[index, y0:y1, x0:x1] = True
    folder = save_sam2_video_folder(tmp_path / "located", object_score_bias=4.0)
    assert locate_sam2_video_masks(folder, shown, masks) > 0.98
    oracle = oracle_masks(folder, shown, {0: [(1, truth[0])]})
    url = image_host.add_bytes("/data/upload/1/phone.mp4", rotated["bytes"])
    settings = Settings.from_env({}, SAM_CHOICE="SAM2", SAM2_MODEL_DIR=str(folder), LABEL_STUDIO_URL=image_host.url,
                                 LABEL_STUDIO_API_KEY=image_host.token, VIDEO_KEYFRAME_TOLERANCE=str(TOLERANCE))
    sent = video_region("car1", [keyframe(1, truth[0], SHOWN_WIDTH, SHOWN_HEIGHT)], FRAMES)
    response = build_app(settings).test_client().post("/predict", data=json.dumps(video_body(url, [sent])),
                                                      content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    sequence = response.get_json()["results"][0]["result"][0]["value"]["sequence"]
    for index in range(1, FRAMES):
        expected = mask_box(oracle[index][1][0])
        assert expected is not None and box_iou(expected, truth[index]) > 0.5, f"oracle located on frame {index}"
        drawn = interpolated_box(sequence, index + 1, SHOWN_WIDTH, SHOWN_HEIGHT)
        assert drawn is not None and np.abs(np.array(drawn) - np.array(expected)).max() <= TOLERANCE + 1e-3
        assert box_iou(drawn, truth[index]) > 0.5, f"answered box on the square on frame {index + 1}"
