"""Task videos read with PyAV: frame times from the packets (variable frame rates too), frames decoded on demand
in any order, Label Studio's frame numbers mapped by time, and files that are not whole videos refused."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sam_ls_backend.media.video import InvalidVideo, VideoFile
from tests.support.videos import write_webm

av = pytest.importorskip("av")

VFR_MS = (0, 40, 80, 200, 240)  # a variable-rate video: two frames dropped after 80 ms


def shade(index: int) -> int:
    return 40 * index + 20


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "vfr.webm"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=1000)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"lossless": "1"}
        for index, ms in enumerate(VFR_MS):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), shade(index), np.uint8), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_variable_frame_rate_maps_label_studio_frames_by_time(vfr_video: Path) -> None:
    video = VideoFile(vfr_video, 100)
    try:
        assert video.times == pytest.approx([ms / 1000 for ms in VFR_MS]) and len(video) == 5
        assert (video.width, video.height) == (32, 32)
        for index in (4, 0, 3, 1, 2):  # forward, back to the start, forward again
            assert abs(int(video.frame(index)[5, 5, 0]) - shade(index)) <= 2, index
        # At 25 frames/s Label Studio counts frames 1, 2, 3, (4, 5 show the third), 6, 7.
        assert video.label_studio_frames(25) == [1, 2, 3, 6, 7]
        assert [video.index_of_label_studio_frame(frame, 25) for frame in range(1, 8)] == [0, 1, 2, 2, 2, 3, 4]
        assert video.index_of_label_studio_frame(9, 25) is None
    finally:
        video.close()


def test_too_many_frames_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "long.webm"
    write_webm(path, np.zeros((6, 16, 16, 3), np.uint8))
    with pytest.raises(InvalidVideo, match="VIDEO_MAX_FRAMES=5") as raised:
        VideoFile(path, 5)
    assert raised.value.status == 413


@pytest.mark.parametrize("kind, says", [("image", "is an image"), ("truncated", "breaks off"),
                                        ("text", "not in a format")])
def test_files_that_are_not_whole_videos_are_refused(kind: str, says: str, tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "file"
    if kind == "image":
        Image.new("RGB", (8, 8)).save(path, format="PNG")
    elif kind == "truncated":
        data = write_webm(tmp_path / "whole.webm", np.random.default_rng(0).integers(0, 255, (20, 32, 32, 3),
                                                                                     dtype=np.uint8))
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("not a video at all\n" * 100)
    with pytest.raises(InvalidVideo, match=says) as raised:
        VideoFile(path, 100)
    assert raised.value.status == 422
