"""The one reader of the regions Label Studio sends in `context.result`: every field checked, in one pass.

Label Studio sends keypoints and rectangles in percent (0–100) of the original image: a keypoint's (x, y)
is its centre, a rectangle's (x, y) its top-left corner, rotated by `rotation` degrees (clockwise on screen)
about that corner in pixels, so a rotated rectangle's bounding box depends on the image's aspect ratio.
A region is negative when it says `is_positive: false` or its label is listed in NEGATIVE_LABELS. A TextArea
answer on an image is typed text (SAM 3 concepts and thresholds). A VideoRectangle is an object on a video:
its keyframes (`value.sequence`, frames 1-based, boxes in percent of the frame) are kept as sent, sorted by
frame, one per frame (the last sent wins). Regions of other types are skipped.
A faulty region is the client's error (`InvalidRequest`), named by its index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sam_ls_backend.errors import InvalidRequest

Box = tuple[float, float, float, float]

MAX_REGIONS = 1000
MAX_TEXT_CHARS = 200
MAX_KEYFRAMES = 100_000
MAX_FRAME = 10**9


@dataclass(frozen=True)
class Keypoint:
    """A smart keypoint: its centre in percent of the image."""

    x: float
    y: float
    positive: bool
    label: str | None
    to_name: str


@dataclass(frozen=True)
class Rectangle:
    """A smart rectangle as an axis-aligned box in percent of the image (a rotated one: its bounding box)."""

    box: Box
    positive: bool
    label: str | None
    to_name: str

    def contains(self, point: Keypoint) -> bool:
        x0, y0, x1, y1 = self.box
        return x0 <= point.x <= x1 and y0 <= point.y <= y1

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


@dataclass(frozen=True)
class TypedText:
    """What was typed in a TextArea answering on an image: its lines joined, whitespace collapsed, and each
    line (each submission: Label Studio's page sends every submission so far, newest last) on its own."""

    text: str
    to_name: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class VideoKeyframe:
    """One keyframe of a VideoRectangle: its frame (1-based) and box (percent, rotated by `rotation` degrees
    about its top-left corner), `enabled` false where the box ends; `sent` is the keyframe exactly as sent."""

    frame: int
    x: float
    y: float
    width: float
    height: float
    rotation: float
    enabled: bool
    sent: dict = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class VideoRectangle:
    """A VideoRectangle region: one object on a video, its keyframes sorted by frame, one per frame."""

    id: str
    from_name: str
    to_name: str
    label: str | None
    frames_count: int | None
    keyframes: tuple[VideoKeyframe, ...]


@dataclass(frozen=True)
class Regions:
    """The prompting regions of one request, each kind in the annotator's order."""

    keypoints: tuple[Keypoint, ...] = ()
    rectangles: tuple[Rectangle, ...] = ()
    texts: tuple[TypedText, ...] = ()
    video_rectangles: tuple[VideoRectangle, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keypoints or self.rectangles or self.texts or self.video_rectangles)


def read_regions(regions: Any, negative_labels: frozenset[str] = frozenset()) -> Regions:
    """Read `context.result`; raises `InvalidRequest` naming the faulty region."""
    if not isinstance(regions, list):
        raise InvalidRequest("context.result must be a list of regions")
    if len(regions) > MAX_REGIONS:
        raise InvalidRequest(f"context.result has {len(regions)} regions; at most {MAX_REGIONS} are accepted")
    keypoints: list[Keypoint] = []
    rectangles: list[Rectangle] = []
    texts: list[TypedText] = []
    videos: list[VideoRectangle] = []
    for index, region in enumerate(regions):
        where = f"context.result[{index}]"
        if isinstance(region, dict) and region.get("type") == "textarea":
            typed = _typed_text(region, where)
            if typed.text:
                texts.append(typed)
            continue
        if isinstance(region, dict) and region.get("type") == "videorectangle":
            videos.append(read_video_rectangle(region, where))
            continue
        parsed = _parse_region(region, where, negative_labels)
        if isinstance(parsed, Keypoint):
            keypoints.append(parsed)
        elif isinstance(parsed, Rectangle):
            rectangles.append(parsed)
    return Regions(tuple(keypoints), tuple(rectangles), tuple(texts), tuple(videos))


def read_video_rectangle(region: dict, where: str) -> VideoRectangle:
    """One VideoRectangle region (from `context.result`, or from a draft or annotation), checked."""
    region_id = region.get("id")
    if not isinstance(region_id, str) or not region_id:
        raise InvalidRequest(f"{where}.id must name the region (its answer replaces that region's keyframes)")
    names = {}
    for key in ("from_name", "to_name"):
        name = region.get(key)
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.{key} must name the {'VideoRectangle' if key == 'from_name' else 'Video'}")
        names[key] = name
    value = region.get("value")
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}.value must be an object")
    label = _label(value, "labels", where)
    frames_count = value.get("framesCount")
    if frames_count is not None:
        frames_count = int(_number(frames_count, f"{where}.value.framesCount", 1, MAX_FRAME))
    sequence = value.get("sequence")
    if not isinstance(sequence, list) or not sequence:
        raise InvalidRequest(f"{where}.value.sequence must be a non-empty list of keyframes")
    if len(sequence) > MAX_KEYFRAMES:
        raise InvalidRequest(f"{where}.value.sequence has {len(sequence)} keyframes; at most {MAX_KEYFRAMES}")
    by_frame = {}
    for position, item in enumerate(sequence):
        keyframe = _keyframe(item, f"{where}.value.sequence[{position}]", frames_count)
        by_frame[keyframe.frame] = keyframe
    return VideoRectangle(region_id, names["from_name"], names["to_name"], label, frames_count,
                          tuple(by_frame[frame] for frame in sorted(by_frame)))


def _keyframe(item: Any, where: str, frames_count: int | None) -> VideoKeyframe:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object")
    frame = item.get("frame")
    if isinstance(frame, float) and frame.is_integer():
        frame = int(frame)
    if isinstance(frame, bool) or not isinstance(frame, int) or not 1 <= frame <= MAX_FRAME:
        raise InvalidRequest(f"{where}.frame must be a frame number from 1, not {frame!r}")
    if frames_count is not None and frame > frames_count:
        raise InvalidRequest(f"{where}.frame is {frame}, past the video's framesCount {frames_count}")
    x = _number(item.get("x"), f"{where}.x", -100, 200)
    y = _number(item.get("y"), f"{where}.y", -100, 200)
    width = _number(item.get("width"), f"{where}.width", 0, 200)
    height = _number(item.get("height"), f"{where}.height", 0, 200)
    rotation = _number(item.get("rotation", 0) or 0, f"{where}.rotation", -360, 360)
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidRequest(f"{where}.enabled must be true or false")
    return VideoKeyframe(frame, x, y, width, height, rotation, enabled, dict(item))


def box_in_pixels(keyframe: VideoKeyframe, width: int, height: int) -> tuple[float, float, float, float] | None:
    """A keyframe's box as (x0, y0, x1, y1) pixels of a width×height frame (a rotated box: its bounding box),
    clipped to the frame; None when nothing of it is on the frame."""
    if keyframe.rotation % 360 == 0:
        box = (keyframe.x, keyframe.y, keyframe.x + keyframe.width, keyframe.y + keyframe.height)
    else:
        box = _bounding_box(keyframe.x, keyframe.y, keyframe.width, keyframe.height, keyframe.rotation,
                            width / height)
    x0, y0, x1, y1 = (min(max(v, 0.0), 100.0) for v in box)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0 * width / 100, y0 * height / 100, x1 * width / 100, y1 * height / 100)


def _parse_region(region: Any, where: str, negative_labels: frozenset[str]) -> Keypoint | Rectangle | None:
    """One region, checked field by field; regions of other types are ignored (not SAM prompts)."""
    if not isinstance(region, dict):
        raise InvalidRequest(f"{where} must be an object")
    kind = region.get("type")
    if kind not in ("keypointlabels", "rectanglelabels"):
        return None
    value = region.get("value")
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}.value must be an object")
    rotation = region.get("image_rotation", 0)
    if rotation not in (0, None) and _number(rotation, f"{where}.image_rotation", -360, 360) % 360 != 0:
        raise InvalidRequest(f"{where}: rotated images (image_rotation={rotation}) are not supported")
    to_name = region.get("to_name")
    if not isinstance(to_name, str) or not to_name:
        raise InvalidRequest(f"{where}.to_name must name the Image the region is on")
    label = _label(value, kind, where)
    positive = _is_positive(region, value, where) and label not in negative_labels
    x = _number(value.get("x"), f"{where}.value.x", 0, 100)
    y = _number(value.get("y"), f"{where}.value.y", 0, 100)
    if kind == "keypointlabels":
        return Keypoint(x, y, positive, label, to_name)
    width = _number(value.get("width"), f"{where}.value.width", 0, 100)
    height = _number(value.get("height"), f"{where}.value.height", 0, 100)
    if width <= 0 or height <= 0:
        raise InvalidRequest(f"{where}: rectangle has zero width or height")
    angle = _number(value.get("rotation", 0) or 0, f"{where}.value.rotation", -360, 360)
    if angle % 360 == 0:
        return Rectangle((x, y, min(x + width, 100.0), min(y + height, 100.0)), positive, label, to_name)
    aspect = _aspect_ratio(region, where)
    return Rectangle(_bounding_box(x, y, width, height, angle, aspect), positive, label, to_name)


def _aspect_ratio(region: dict, where: str) -> float:
    """Image width / height from the region's original size: a rotation turns pixels, not percent units."""
    width = _number(region.get("original_width"), f"{where}.original_width (needed for a rotated rectangle)",
                    1, 1e6)
    height = _number(region.get("original_height"), f"{where}.original_height (needed for a rotated rectangle)",
                     1, 1e6)
    return width / height


def _bounding_box(x: float, y: float, width: float, height: float, degrees: float, aspect: float) -> Box:
    """Axis-aligned box (percent) around a rectangle rotated about its top-left corner, clipped to the image.

    The rotation is done in units of image height percent (x scaled by `aspect`) so that it turns pixels.
    """
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(0.0, 0.0), (width * aspect, 0.0), (width * aspect, height), (0.0, height)]
    xs = [x + (dx * cos - dy * sin) / aspect for dx, dy in corners]
    ys = [y + dx * sin + dy * cos for dx, dy in corners]
    clip = lambda v: min(max(v, 0.0), 100.0)  # noqa: E731
    return (clip(min(xs)), clip(min(ys)), clip(max(xs)), clip(max(ys)))


def _is_positive(region: dict, value: dict, where: str) -> bool:
    """`is_positive` at the top level (Label Studio), or `value.positive` (newer tools); missing = positive."""
    flag = region.get("is_positive", value.get("positive", True))
    if flag is None:
        return True
    if not isinstance(flag, bool):
        raise InvalidRequest(f"{where}.is_positive must be true or false")
    return flag


def _label(value: dict, kind: str, where: str) -> str | None:
    labels = value.get(kind, [])
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise InvalidRequest(f"{where}.value.{kind} must be a list of label names")
    return labels[0] if labels else None


def _number(raw: Any, where: str, low: float, high: float) -> float:
    """A finite number within [low, high]; anything else is the client's error."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise InvalidRequest(f"{where} must be a number")
    try:
        value = float(raw)
    except OverflowError:  # an integer of hundreds of digits, which JSON allows: out of range like infinity
        value = math.inf
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(f"{where} must be between {low:g} and {high:g}, not {raw!r}")
    return value


def _typed_text(region: dict, where: str) -> TypedText:
    """The image a TextArea answers on and the text typed in it (lines joined, trimmed)."""
    to_name = region.get("to_name")
    if not isinstance(to_name, str) or not to_name:
        raise InvalidRequest(f"{where}.to_name must name the Image the region is on")
    value = region.get("value")
    lines = value.get("text") if isinstance(value, dict) else None
    if isinstance(lines, str):
        lines = [lines]
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise InvalidRequest(f"{where}.value.text must be a list of strings")
    text = " ".join(" ".join(lines).split())
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidRequest(f"{where}: a concept of {len(text)} characters; at most {MAX_TEXT_CHARS}")
    return TypedText(text, to_name, tuple(line for line in (" ".join(raw.split()) for raw in lines) if line))
