"""From the smart regions an annotator drew in Label Studio to SAM prompts, one `Prompt` per object.

Label Studio sends keypoints and rectangles in percent (0–100) of the original image: a keypoint's (x, y)
is its centre, a rectangle's (x, y) its top-left corner, rotated by `rotation` degrees (clockwise on screen)
about that corner in pixels, so a rotated rectangle's bounding box depends on the image's aspect ratio.
Grouping: each positive rectangle is one object together with the keypoints inside it; keypoints outside
every rectangle make one more object when at least one of them is positive, and otherwise (only negative
clicks left over) they refine every rectangle's object. Negative rectangles (`is_positive: false`, or a
label listed in NEGATIVE_LABELS) are not SAM prompts: their area is cut out of every object on the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from errors import InvalidRequest

Point = tuple[float, float]
Box = tuple[float, float, float, float]

MAX_REGIONS = 1000


@dataclass(frozen=True)
class Prompt:
    """One object to segment, in percent of the image (Label Studio's frame), with the label to paint."""

    label: str | None
    to_name: str
    points: tuple[Point, ...] = ()  # (x %, y %) centres
    point_labels: tuple[int, ...] = ()  # 1 = positive click, 0 = negative click
    box: Box | None = None  # (x0 %, y0 %, x1 %, y1 %), axis-aligned
    negative_boxes: tuple[Box, ...] = ()  # areas cut out of the mask afterwards, same frame as `box`

    @property
    def is_single_click(self) -> bool:
        """One positive click and nothing else: ambiguous, so SAM's multimask answer is the right one."""
        return self.box is None and self.point_labels == (1,)

    def in_pixels(self, width: int, height: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Point coords (N×2, x/y pixels), point labels (N,) and box (4,) of an image of this size."""
        scale = np.array([width / 100.0, height / 100.0])
        coords = labels = box = None
        if self.points:
            coords = np.asarray(self.points, dtype=np.float64) * scale
            labels = np.asarray(self.point_labels, dtype=np.int64)
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64) * np.tile(scale, 2)
        return coords, labels, box

    def cut_negative_boxes(self, mask: np.ndarray) -> np.ndarray:
        """`mask` (H×W bool) without the pixels whose centres lie inside a negative box."""
        if not self.negative_boxes:
            return mask
        height, width = mask.shape
        mask = mask.copy()
        for x0, y0, x1, y1 in self.negative_boxes:
            columns = slice(*_pixel_span(x0, x1, width))
            rows = slice(*_pixel_span(y0, y1, height))
            mask[rows, columns] = False
        return mask


def _pixel_span(low: float, high: float, size: int) -> tuple[int, int]:
    """First and past-the-last pixel whose centre (i + 0.5) lies within [low %, high %] of `size` pixels."""
    return math.ceil(low * size / 100.0 - 0.5), math.floor(high * size / 100.0 - 0.5) + 1


@dataclass(frozen=True)
class _Keypoint:
    x: float
    y: float
    positive: bool
    label: str | None
    to_name: str


@dataclass(frozen=True)
class _Rectangle:
    box: Box
    positive: bool
    label: str | None
    to_name: str

    def contains(self, point: _Keypoint) -> bool:
        x0, y0, x1, y1 = self.box
        return x0 <= point.x <= x1 and y0 <= point.y <= y1

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


def prompts_from_regions(regions: Any, negative_labels: frozenset[str] = frozenset()) -> list[Prompt]:
    """Group `context.result` regions into objects; raises `InvalidRequest` naming the faulty region.

    Keypoints and rectangles whose label is in `negative_labels` count as negative.
    """
    if not isinstance(regions, list):
        raise InvalidRequest("context.result must be a list of regions")
    if len(regions) > MAX_REGIONS:
        raise InvalidRequest(f"context.result has {len(regions)} regions; at most {MAX_REGIONS} are accepted")
    keypoints: list[_Keypoint] = []
    rectangles: list[_Rectangle] = []
    for index, region in enumerate(regions):
        parsed = _parse_region(region, f"context.result[{index}]", negative_labels)
        if isinstance(parsed, _Keypoint):
            keypoints.append(parsed)
        elif isinstance(parsed, _Rectangle):
            rectangles.append(parsed)
    if not keypoints and not rectangles:
        raise InvalidRequest("context.result holds no keypointlabels or rectanglelabels region to segment from")
    positive = [rect for rect in rectangles if rect.positive]
    if not keypoints and not positive:
        raise InvalidRequest("negative rectangles only cut area out of objects: add a positive keypoint or "
                             "rectangle for the object")
    negative: dict[str, list[Box]] = {}
    for rect in rectangles:
        if not rect.positive:
            negative.setdefault(rect.to_name, []).append(rect.box)
    return [replace(prompt, negative_boxes=tuple(negative.get(prompt.to_name, ())))
            for prompt in _group(keypoints, positive)]


def rectangles_from_regions(regions: Sequence[dict], negative_labels: frozenset[str] = frozenset()) -> list[
        "_Rectangle"]:
    """The rectangles among `regions` (box in percent, positive or not, label, image), checked as for SAM."""
    parsed = (_parse_region(region, f"context.result[{index}]", negative_labels)
              for index, region in enumerate(regions))
    return [rect for rect in parsed if isinstance(rect, _Rectangle)]


def _group(keypoints: Sequence[_Keypoint], rectangles: Sequence[_Rectangle]) -> list[Prompt]:
    """Each rectangle with its inner keypoints; free keypoints as one object, or as refinements."""
    inside: dict[int, list[_Keypoint]] = {i: [] for i in range(len(rectangles))}
    free: list[_Keypoint] = []
    for point in keypoints:
        holders = [i for i, rect in enumerate(rectangles) if rect.contains(point)]
        if holders:
            inside[min(holders, key=lambda i: rectangles[i].area)].append(point)
        else:
            free.append(point)
    free_positive = any(point.positive for point in free)
    prompts = []
    for i, rect in enumerate(rectangles):
        points = inside[i] if free_positive else inside[i] + free
        prompts.append(_prompt(points, rect))
    if free_positive or not rectangles:
        prompts.append(_prompt(free, None))
    return prompts


def _prompt(points: Sequence[_Keypoint], rect: _Rectangle | None) -> Prompt:
    """The label comes from the rectangle, else from the first positive click."""
    label = rect.label if rect is not None else None
    if label is None:
        label = next((p.label for p in points if p.positive and p.label), None)
    to_name = rect.to_name if rect is not None else points[0].to_name
    return Prompt(
        label=label,
        to_name=to_name,
        points=tuple((p.x, p.y) for p in points),
        point_labels=tuple(int(p.positive) for p in points),
        box=rect.box if rect is not None else None,
    )


def _parse_region(region: Any, where: str, negative_labels: frozenset[str]) -> _Keypoint | _Rectangle | None:
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
        return _Keypoint(x, y, positive, label, to_name)
    width = _number(value.get("width"), f"{where}.value.width", 0, 100)
    height = _number(value.get("height"), f"{where}.value.height", 0, 100)
    if width <= 0 or height <= 0:
        raise InvalidRequest(f"{where}: rectangle has zero width or height")
    angle = _number(value.get("rotation", 0) or 0, f"{where}.value.rotation", -360, 360)
    if angle % 360 == 0:
        return _Rectangle((x, y, min(x + width, 100.0), min(y + height, 100.0)), positive, label, to_name)
    aspect = _aspect_ratio(region, where)
    return _Rectangle(_bounding_box(x, y, width, height, angle, aspect), positive, label, to_name)


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
