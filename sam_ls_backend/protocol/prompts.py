"""From the smart regions an annotator drew to SAM prompts: one `Prompt` per object, the only contract predictors see.

Grouping: each positive rectangle is one object together with the keypoints inside it; keypoints outside
every rectangle make one more object when at least one of them is positive, and otherwise (only negative
clicks left over) they refine every rectangle's object. Negative rectangles are not SAM prompts: their area
is cut out of every object on the image. A request of negative prompts only (Label Studio's page sends an
Alt-click or a rectangle labelled in NEGATIVE_LABELS alone) is one negative-only prompt per image, which the
refinement history (embeddings/refinement.py) applies to the object it refines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.protocol.regions import Box, Keypoint, Rectangle, Regions, read_regions

Point = tuple[float, float]


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
    def is_negative_only(self) -> bool:
        """No box and no positive click: negative clicks and/or negative boxes, which refine an object."""
        return self.box is None and 1 not in self.point_labels

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


def prompts_from_regions(regions: Any, negative_labels: frozenset[str] = frozenset()) -> list[Prompt]:
    """Group `context.result` regions into objects; raises `InvalidRequest` naming the faulty region."""
    return group_prompts(read_regions(regions, negative_labels))


def group_prompts(regions: Regions) -> list[Prompt]:
    """The objects the keypoints and rectangles of a request describe; typed text is not a SAM prompt."""
    keypoints, rectangles = regions.keypoints, regions.rectangles
    if not keypoints and not rectangles:
        raise InvalidRequest("context.result holds no keypointlabels or rectanglelabels region to segment from")
    positive = [rect for rect in rectangles if rect.positive]
    negative: dict[str, list[Box]] = {}
    for rect in rectangles:
        if not rect.positive:
            negative.setdefault(rect.to_name, []).append(rect.box)
    if not keypoints and not positive:
        return [Prompt(None, to_name, negative_boxes=tuple(boxes)) for to_name, boxes in negative.items()]
    return [replace(prompt, negative_boxes=tuple(negative.get(prompt.to_name, ())))
            for prompt in _group(keypoints, positive)]


def _group(keypoints: Sequence[Keypoint], rectangles: Sequence[Rectangle]) -> list[Prompt]:
    """Each rectangle with its inner keypoints; free keypoints as one object, or as refinements."""
    inside: dict[int, list[Keypoint]] = {i: [] for i in range(len(rectangles))}
    free: list[Keypoint] = []
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


def _prompt(points: Sequence[Keypoint], rect: Rectangle | None) -> Prompt:
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
