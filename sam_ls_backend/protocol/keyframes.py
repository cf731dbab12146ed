"""A tracked object as the keyframes of a Label Studio VideoRectangle: few, complete, sorted, one per frame.

Label Studio draws a VideoRectangle by interpolating linearly between its keyframes and hides it after a
keyframe with `enabled: false` until the next keyframe. So the answer for one object is the annotator's own
keyframes exactly as sent, plus tracked keyframes only where interpolation between the kept ones would stray
more than the tolerance (pixels, any corner) from the tracked box. Where the object is lost, the last frame it
was seen on ends the box (`enabled: false`); the first frame it is found again on starts it anew.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sam_ls_backend.protocol.regions import VideoKeyframe

PixelBox = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
DIGITS = 6  # percent rounded to 1e-6: far below a pixel of any video


@dataclass
class _Point:
    frame: int  # 1-based
    box: np.ndarray  # x0, y0, x1, y1 in pixels
    sent: dict | None  # the annotator's keyframe, else None for a tracked one
    enabled: bool = True


def keyframe_sequence(annotated: Sequence[VideoKeyframe], tracked: Mapping[int, PixelBox | None], width: int,
                      height: int, tolerance: float, framerate: float) -> list[dict]:
    """The complete keyframe list of one object.

    `annotated`: the annotator's keyframes, sorted; `tracked`: 1-based frame -> the tracked box in pixels, or
    None where the object is lost. Tracked frames before the first annotated keyframe, on annotated frames and
    after an annotated `enabled: false` keyframe (up to the next annotated one) are not used. Without annotated
    keyframes (an object the model found itself) the list starts where the object is first found; empty when
    it never is.
    """
    fixed = {keyframe.frame: keyframe for keyframe in annotated}
    first = min(fixed) if fixed else min((f for f, box in tracked.items() if box is not None), default=None)
    if first is None:
        return []
    hidden_until = _hidden_spans(annotated)
    points: list[_Point | None] = []  # None: the object is lost on that frame
    for frame in sorted(set(fixed) | {f for f in tracked if f >= first}):
        if frame in fixed:
            keyframe = fixed[frame]
            box = (keyframe.x * width / 100, keyframe.y * height / 100,
                   (keyframe.x + keyframe.width) * width / 100, (keyframe.y + keyframe.height) * height / 100)
            points.append(_Point(frame, np.array(box), keyframe.sent, keyframe.enabled))
        elif not any(start < frame < end for start, end in hidden_until):
            found = tracked[frame]
            points.append(None if found is None else _Point(frame, np.array(found, dtype=float), None))
    kept: list[_Point] = []
    for run in _runs(points):
        kept += _thin(run, tolerance)
    return [_as_keyframe(point, width, height, framerate) for point in kept]


def _hidden_spans(annotated: Sequence[VideoKeyframe]) -> list[tuple[int, float]]:
    """(frame, next annotated frame) after each annotated `enabled: false` keyframe: the annotator hid the box."""
    spans = []
    for index, keyframe in enumerate(annotated):
        if not keyframe.enabled:
            end = annotated[index + 1].frame if index + 1 < len(annotated) else float("inf")
            spans.append((keyframe.frame, end))
    return spans


def _runs(points: list[_Point | None]) -> list[list[_Point]]:
    """Consecutive visible points; a run followed by a loss ends with its last point disabled."""
    runs: list[list[_Point]] = [[]]
    for point in points:
        if point is None:
            if runs[-1]:
                runs[-1][-1].enabled = False
                runs.append([])
            continue
        runs[-1].append(point)
        if not point.enabled:  # an annotated end of the box: interpolation does not cross it
            runs.append([])
    return [run for run in runs if run]


def _thin(run: list[_Point], tolerance: float) -> list[_Point]:
    """The points of one run Label Studio needs: its ends, the annotator's, and tracked ones where
    interpolating between the kept neighbours strays more than `tolerance` pixels."""
    kept = [run[0]]
    start = 0
    while start < len(run) - 1:
        end = start + 1
        while end + 1 < len(run) and run[end].sent is None and _fits(run, start, end + 1, tolerance):
            end += 1
        kept.append(run[end])
        start = end
    return kept


def _fits(run: list[_Point], start: int, end: int, tolerance: float) -> bool:
    """Whether interpolating from run[start] to run[end] keeps every point between within `tolerance`."""
    if end - start < 2:
        return True
    a, b = run[start], run[end]
    frames = np.array([point.frame for point in run[start + 1:end]], dtype=float)
    boxes = np.stack([point.box for point in run[start + 1:end]])
    weights = ((frames - a.frame) / (b.frame - a.frame))[:, None]
    interpolated = a.box[None] * (1 - weights) + b.box[None] * weights
    return bool(np.abs(interpolated - boxes).max() <= tolerance)


def _as_keyframe(point: _Point, width: int, height: int, framerate: float) -> dict:
    if point.sent is not None:
        return point.sent if point.enabled == point.sent.get("enabled", True) else {**point.sent,
                                                                                    "enabled": point.enabled}
    x0, y0, x1, y1 = (float(v) for v in point.box)
    return {"frame": point.frame, "enabled": point.enabled, "rotation": 0,
            "x": round(x0 * 100 / width, DIGITS), "y": round(y0 * 100 / height, DIGITS),
            "width": round((x1 - x0) * 100 / width, DIGITS), "height": round((y1 - y0) * 100 / height, DIGITS),
            "time": round(point.frame / framerate, DIGITS)}
