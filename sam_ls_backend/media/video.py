"""Task videos read with PyAV, lazily: a frame is decoded when it is asked for, never the whole video at once.

Opening a video demuxes it once without decoding (packets only) to learn every frame's presentation time:
that gives the exact number of frames and maps Label Studio's frame numbers (time × the `<Video>` tag's
framerate) to decoded frames, also for variable frame rates. Frames come upright (a phone video's display
rotation applied) as H×W×3 uint8 RGB arrays. A file that is not a video, has no frames, more frames than
VIDEO_MAX_FRAMES, or breaks off while decoding raises `InvalidVideo` (422, 413 for too many frames).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from sam_ls_backend.errors import InvalidImage

TOO_LARGE = 413
# Decoding forward is cheaper than seeking back to a keyframe and decoding again, up to this many frames.
READ_AHEAD_FRAMES = 64
# A file whose frames stop more than this many frames short of the duration its header declares is cut off.
TRUNCATED_FRAMES = 2


class InvalidVideo(InvalidImage):
    """The task's video cannot be read, or is beyond the configured limits (422, or 413)."""


class VideoFile:
    """One downloaded video: its frame times, size and upright frames. Not thread-safe; close() when done."""

    def __init__(self, path: Path, max_frames: int) -> None:
        import av

        self.path = path
        try:
            self._container = av.open(str(path), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
            raise InvalidVideo(f"task video is not in a format the backend can read ({type(error).__name__})") \
                from None
        try:
            format_name = self._container.format.name
            if format_name.endswith("_pipe") or format_name == "image2":
                raise InvalidVideo(f"task video is an image ({format_name}), not a video")
            if not self._container.streams.video:
                raise InvalidVideo("task video has no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            self.times = self._frame_times(max_frames)
            self._decoded: Iterator | None = None
            self._next = 0  # index of the frame the running decoder yields next
            first = self.frame(0)
        except BaseException:
            self.close()
            raise
        self.height, self.width = int(first.shape[0]), int(first.shape[1])

    def __len__(self) -> int:
        return len(self.times)

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` (0-based, in presentation order) as an upright H×W×3 uint8 RGB array."""
        if not 0 <= index < len(self.times):
            raise IndexError(f"frame {index} of a {len(self.times)}-frame video")
        if self._decoded is None or not self._next <= index <= self._next + READ_AHEAD_FRAMES:
            self._seek(index)
        import av

        assert self._decoded is not None
        try:
            for frame in self._decoded:
                found = self._index_of_pts(frame.pts)
                if found is None or found < index:
                    continue
                self._next = found + 1
                if found == index:
                    return upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                break
        except (av.error.FFmpegError, ValueError) as error:
            raise InvalidVideo(f"task video could not be decoded at frame {index + 1}: {type(error).__name__}") \
                from None
        self._decoded = None
        raise InvalidVideo(f"task video breaks off: frame {index + 1} of {len(self.times)} could not be decoded "
                           "(a truncated or damaged file)")

    def index_at(self, seconds: float) -> int:
        """The frame shown at `seconds` from the start: the last whose presentation time is not after it."""
        return max(0, bisect.bisect_right(self.times, seconds + 1e-6) - 1)

    def index_of_label_studio_frame(self, frame: int, framerate: float) -> int | None:
        """The frame Label Studio's player shows as `frame` (1-based, counted at the `<Video>` tag's framerate:
        frame n is at (n - 1) / framerate seconds); None past the video's end."""
        seconds = (frame - 1) / framerate
        if seconds > self.times[-1] + 1.0 / framerate:
            return None
        return self.index_at(seconds)

    def label_studio_frames(self, framerate: float) -> list[int]:
        """Label Studio's frame number (1-based) of every frame, by its presentation time."""
        return [round(seconds * framerate) + 1 for seconds in self.times]

    def close(self) -> None:
        self._decoded = None
        self._container.close()

    def _seek(self, index: int) -> None:
        """Restart decoding at the keyframe at or before frame `index`."""
        pts = self._pts[index]
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._decoded = self._container.decode(self._stream)
        self._next = 0

    def _index_of_pts(self, pts: int | None) -> int | None:
        if pts is None:
            return None
        position = bisect.bisect_left(self._pts, pts)
        return position if position < len(self._pts) and self._pts[position] == pts else None

    def _frame_times(self, max_frames: int) -> list[float]:
        """Seconds from the first frame of every frame, in presentation order, from the packets alone."""
        import av

        stream = self._stream
        if stream.frames and stream.frames > max_frames:
            raise too_many_frames(stream.frames, max_frames)
        pts: list[int] = []
        try:
            for packet in self._container.demux(stream):
                if packet.pts is not None and packet.size:
                    pts.append(packet.pts)
                    if len(pts) > max_frames:
                        raise too_many_frames(None, max_frames)
        except (av.error.FFmpegError, ValueError) as error:
            raise InvalidVideo(f"task video could not be read: {type(error).__name__}") from None
        if not pts:
            raise InvalidVideo("task video has no frames")
        self._pts = sorted(set(pts))
        base = stream.time_base or Fraction(1, 1)
        times = [float((value - self._pts[0]) * base) for value in self._pts]
        self._check_complete(times)
        return times

    def _check_complete(self, times: list[float]) -> None:
        """A file whose frames end well before the duration its header declares was cut off (a broken upload)."""
        declared = self._container.duration  # microseconds, from the header, when the format records it
        rate = self._stream.average_rate
        if not declared or not rate:
            return
        missing = declared / 1e6 - (times[-1] + 1 / float(rate))
        if missing > TRUNCATED_FRAMES / float(rate):
            raise InvalidVideo(f"task video breaks off: its header declares {declared / 1e6:.2f} s, its frames end at "
                               f"{times[-1] + 1 / float(rate):.2f} s (a truncated or damaged file)")


def too_many_frames(count: int | None, max_frames: int) -> InvalidVideo:
    has = f"{count} frames" if count else f"more than {max_frames} frames"
    return InvalidVideo(f"task video has {has}; VIDEO_MAX_FRAMES={max_frames} is the most the backend tracks",
                        status=TOO_LARGE)


def upright(image: np.ndarray, rotation: int | float) -> np.ndarray:
    """`image` turned by its display rotation (degrees counter-clockwise, as PyAV reports it) to how players
    show it."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image
