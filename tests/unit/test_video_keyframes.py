"""Keyframe lists for Label Studio's VideoRectangle, checked against Label Studio's own drawing rule (linear
interpolation between keyframes, hidden after `enabled: false`), and the reading of VideoRectangle regions."""

from __future__ import annotations

import math

import pytest

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.protocol.keyframes import keyframe_sequence
from sam_ls_backend.protocol.label_config import parse_label_config
from sam_ls_backend.protocol.regions import box_in_pixels, read_regions
from tests.support.video_bodies import VIDEO_CONFIG, keyframe, video_region
from tests.support.video_oracle import interpolated_box

WIDTH, HEIGHT = 640, 360


def annotated(*frames_and_boxes: tuple[int, tuple]) -> tuple:
    region = video_region("r1", [keyframe(frame, box, WIDTH, HEIGHT) for frame, box in frames_and_boxes], 500)
    return read_regions([region]).video_rectangles[0].keyframes


def shown_error(sequence: list[dict], tracked: dict) -> float:
    """The largest distance (pixels, any corner) between Label Studio's drawing and the tracked boxes."""
    worst = 0.0
    for frame, box in tracked.items():
        shown = interpolated_box(sequence, frame, WIDTH, HEIGHT)
        if box is None:
            assert shown is None, f"frame {frame} should be hidden"
            continue
        assert shown is not None, f"frame {frame} should be shown"
        worst = max(worst, max(abs(a - b) for a, b in zip(shown, box)))
    return worst


def test_a_straight_track_needs_only_its_ends() -> None:
    tracked = {frame: (10.0 + 3 * frame, 20.0, 60.0 + 3 * frame, 80.0) for frame in range(2, 101)}
    sequence = keyframe_sequence(annotated((1, (13, 20, 63, 80))), tracked, WIDTH, HEIGHT, 2.0, 25)
    assert [item["frame"] for item in sequence] == [1, 100]
    assert shown_error(sequence, tracked) <= 2.0 + 1e-4


@pytest.mark.parametrize("tolerance", [0.0, 1.0, 4.0, 15.0])
def test_a_curved_track_stays_within_the_tolerance(tolerance: float) -> None:
    tracked = {frame: (300 + 100 * math.sin(frame / 9), 150 + 40 * math.cos(frame / 5),
                       360 + 100 * math.sin(frame / 9), 200 + 40 * math.cos(frame / 5)) for frame in range(2, 201)}
    first = (300.0, 190.0, 360.0, 240.0)
    sequence = keyframe_sequence(annotated((1, first)), tracked, WIDTH, HEIGHT, tolerance, 25)
    frames = [item["frame"] for item in sequence]
    assert frames == sorted(set(frames)) and frames[0] == 1 and frames[-1] == 200
    assert shown_error(sequence, tracked) <= tolerance + 1e-4
    if tolerance == 0.0:
        assert len(frames) == 200
    if tolerance >= 4.0:
        assert len(frames) < 60, "few keyframes"
    for item in sequence:
        assert math.isclose(item["time"], item["frame"] / 25) and item["rotation"] == 0


def test_the_annotators_keyframes_come_back_exactly_and_anchor_the_track() -> None:
    marks = annotated((5, (100, 100, 150, 150)), (30, (200, 120, 260, 170)))
    tracked = {frame: (100.0 + frame, 100.0, 150.0 + frame, 150.0) for frame in range(1, 61)}
    sequence = keyframe_sequence(marks, tracked, WIDTH, HEIGHT, 2.0, 25)
    assert sequence[0] == marks[0].sent and marks[1].sent in sequence
    assert all(item["frame"] >= 5 for item in sequence), "frames before the first keyframe are not invented"
    beyond = {frame: box for frame, box in tracked.items() if frame > 30}
    assert shown_error(sequence, beyond) <= 2.0 + 1e-4


def test_a_lost_object_is_hidden_until_found_again() -> None:
    tracked: dict[int, tuple | None] = {frame: (100.0 + frame, 50.0, 140.0 + frame, 90.0) for frame in range(2, 41)}
    for frame in range(15, 25):
        tracked[frame] = None
    sequence = keyframe_sequence(annotated((1, (101, 50, 141, 90))), tracked, WIDTH, HEIGHT, 2.0, 25)
    by_frame = {item["frame"]: item for item in sequence}
    assert by_frame[14]["enabled"] is False and by_frame[25]["enabled"] is True
    assert shown_error(sequence, tracked) <= 2.0 + 1e-4


def test_an_object_the_model_found_starts_where_it_is_first_found() -> None:
    """SAM 3's instances have no annotated keyframe: the list starts on the first frame the object is found,
    ends where it is lost and starts again where it is found; never found, no keyframe at all."""
    tracked: dict[int, tuple | None] = dict.fromkeys(range(1, 8))
    tracked |= {frame: (200.0 - 4 * frame, 30.0, 240.0 - 4 * frame, 90.0 + frame) for frame in range(8, 60)}
    for frame in range(30, 36):
        tracked[frame] = None
    sequence = keyframe_sequence((), tracked, WIDTH, HEIGHT, 2.0, 25)
    by_frame = {item["frame"]: item for item in sequence}
    assert sequence[0]["frame"] == 8 and by_frame[29]["enabled"] is False and by_frame[36]["enabled"] is True
    assert shown_error(sequence, {frame: box for frame, box in tracked.items() if frame >= 8}) <= 2.0 + 1e-4
    assert all(interpolated_box(sequence, frame, WIDTH, HEIGHT) is None for frame in range(1, 8))
    assert len(sequence) < 10, "few keyframes"
    assert keyframe_sequence((), dict.fromkeys(range(1, 9)), WIDTH, HEIGHT, 2.0, 25) == []


def test_an_annotated_end_hides_the_track_until_the_next_annotated_keyframe() -> None:
    region = video_region("r1", [keyframe(1, (10, 10, 50, 50), WIDTH, HEIGHT),
                                 keyframe(10, (40, 10, 80, 50), WIDTH, HEIGHT, enabled=False),
                                 keyframe(20, (100, 10, 140, 50), WIDTH, HEIGHT)], 100)
    marks = read_regions([region]).video_rectangles[0].keyframes
    tracked = {frame: (10.0 + 5 * frame, 10.0, 50.0 + 5 * frame, 50.0) for frame in range(1, 31)}
    sequence = keyframe_sequence(marks, tracked, WIDTH, HEIGHT, 2.0, 25)
    assert not [item for item in sequence if 10 < item["frame"] < 20]
    assert [item for item in sequence if item["frame"] == 10] == [marks[1].sent]


def test_video_rectangles_are_read_sorted_one_per_frame() -> None:
    region = video_region("r1", [keyframe(9, (10, 10, 50, 50), WIDTH, HEIGHT),
                                 keyframe(2, (12, 10, 50, 50), WIDTH, HEIGHT),
                                 keyframe(9, (20, 10, 60, 50), WIDTH, HEIGHT)], 10)
    video = read_regions([region]).video_rectangles[0]
    assert [item.frame for item in video.keyframes] == [2, 9] and video.keyframes[1].x == 20 * 100 / WIDTH
    assert (video.id, video.label, video.frames_count) == ("r1", "Car", 10)
    assert box_in_pixels(video.keyframes[1], WIDTH, HEIGHT) == pytest.approx((20, 10, 60, 50))


@pytest.mark.parametrize("change, says", [
    (lambda r: r["value"]["sequence"][0].update(frame=11), "past the video's framesCount 10"),
    (lambda r: r["value"]["sequence"][0].update(frame=0), "frame must be a frame number"),
    (lambda r: r["value"]["sequence"][0].update(x=float("nan")), "sequence[0].x"),
    (lambda r: r["value"]["sequence"][0].update(width="wide"), "sequence[0].width must be a number"),
    (lambda r: r["value"].update(sequence=[]), "non-empty list of keyframes"),
    (lambda r: r.pop("id"), ".id must name the region"),
    (lambda r: r["value"]["sequence"][0].update(enabled="yes"), "enabled must be true or false"),
])
def test_faulty_video_rectangles_are_named(change, says: str) -> None:
    region = video_region("r1", [keyframe(1, (10, 10, 50, 50), WIDTH, HEIGHT)], 10)
    change(region)
    with pytest.raises(InvalidRequest, match="context.result\\[0\\]") as raised:
        read_regions([region])
    assert says in raised.value.message


def test_the_label_config_names_videos_and_their_framerate() -> None:
    config = parse_label_config(VIDEO_CONFIG)
    assert config.video_fields == {"video": "video"} and config.framerates == {"video": 25.0}
    assert [control.tag for control in config.controls["video"]] == ["Labels", "VideoRectangle"]
    default = parse_label_config('<View><Video name="v" value="$clip"/><VideoRectangle name="b" toName="v"/></View>')
    assert default.framerates == {"v": 24.0} and default.video_fields == {"v": "clip"}


def test_any_video_rectangle_is_read_or_named_never_crashes() -> None:
    """Whatever a videorectangle region holds, the reader returns it or raises InvalidRequest naming it."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.support.region_strategies import JSON, NUMBERS

    def anything_or(strategy):
        return st.one_of(strategy, strategy, strategy, JSON)

    keyframes = st.fixed_dictionaries({}, optional={
        name: anything_or(NUMBERS) for name in ("frame", "x", "y", "width", "height", "rotation", "time")
    } | {"enabled": anything_or(st.booleans())})
    value = st.fixed_dictionaries({}, optional={
        "sequence": anything_or(st.lists(anything_or(keyframes), max_size=4)),
        "framesCount": anything_or(NUMBERS), "labels": anything_or(st.lists(st.text(max_size=5), max_size=2))})
    region = st.fixed_dictionaries({"type": st.just("videorectangle")}, optional={
        "id": anything_or(st.text(max_size=5)), "from_name": anything_or(st.just("box")),
        "to_name": anything_or(st.just("video")), "value": anything_or(value)})

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(region)
    def check(candidate: dict) -> None:
        try:
            video = read_regions([candidate]).video_rectangles[0]
        except InvalidRequest as error:
            assert error.message.startswith("context.result[0]")
            return
        frames = [item.frame for item in video.keyframes]
        assert frames == sorted(set(frames)) and frames
        for item in video.keyframes:
            box = box_in_pixels(item, WIDTH, HEIGHT)
            assert box is None or all(math.isfinite(v) for v in box)

    check()
