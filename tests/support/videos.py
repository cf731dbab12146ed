"""Generated videos for tests: coloured squares moving over a plain background, written as VP9 WebM with PyAV
(what Label Studio's page plays), decoded back the plain way (every frame in order) for the oracle side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

BACKGROUND = (40, 40, 40)
COLOURS = ((220, 60, 60), (60, 200, 80), (70, 90, 230), (230, 210, 60))


@dataclass(frozen=True)
class Square:
    """A square of `size` pixels whose top-left corner moves from `start` by `step` pixels per frame."""

    start: tuple[int, int]
    step: tuple[int, int]
    size: int

    def box(self, frame: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels on 0-based `frame`, x1 and y1 exclusive."""
        x, y = self.start[0] + self.step[0] * frame, self.start[1] + self.step[1] * frame
        return (x, y, x + self.size, y + self.size)


def scene_frames(count: int, width: int, height: int, squares: list[Square]) -> np.ndarray:
    """count×H×W×3 uint8 RGB frames with each square drawn in its colour."""
    frames = np.empty((count, height, width, 3), np.uint8)
    frames[:] = BACKGROUND
    for index in range(count):
        for square, colour in zip(squares, COLOURS):
            x0, y0, x1, y1 = square.box(index)
            frames[index, max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = colour
    return frames


def write_webm(path: Path, frames: np.ndarray, fps: int = 25, rotation: int = 0) -> bytes:
    """Encode RGB frames as lossless VP9 (in WebM, or in MP4 when `path` ends in .mp4); returns the file's bytes.
    `rotation` (degrees counter-clockwise) is written as the stream's display matrix, as phones record upright
    video: players turn the stored frames by it."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"lossless": "1", "cpu-used": "8", "deadline": "realtime"}
        if rotation:
            stream.set_display_rotation(rotation)
        container.start_encoding()  # the header, even for a video of no frames
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path).read_bytes()


def decode_all(path: Path) -> np.ndarray:
    """Every frame of the video, in order, as count×H×W×3 uint8 RGB (the oracle's input)."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
