"""Masks as polygons Label Studio can store and export (COCO, YOLO), and small-island / small-hole cleanup.

A mask becomes one polygon per connected part (8-connected) of at least `min_area` pixels. Label Studio
polygons have no holes, so a hole of at least `min_area` pixels is cut into its part through a zero-width
"keyhole" slit from the outline to the hole and back: filled with either the even-odd or the non-zero rule,
the polygon covers the part without the hole, and COCO / YOLO consumers read it as one simple ring. Smaller
holes are filled. Vertices lie on the centres of the boundary pixels, so a polygon's edge is within half a
pixel of the mask's; outlines are simplified with Douglas-Peucker and loosened until the vertex bound holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MAX_PARTS = 100  # the largest parts are kept; a speckled mask must not become thousands of regions


@dataclass(frozen=True)
class PolygonOptions:
    """How masks become polygons: tolerance in pixels, vertex bound per polygon, smallest part/hole in pixels."""

    tolerance: float = 1.0
    max_vertices: int = 200
    min_area: int = 64


def remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """`mask` (H×W bool) without islands, and with its holes filled, of fewer than `min_area` pixels.

    Islands are 8-connected, holes 4-connected (the background's components not touching the border).
    """
    if min_area <= 0:
        return mask
    kept = _without_small_components(mask, min_area, connectivity=8)
    background = ~kept
    return ~_without_small_components(background, min_area, connectivity=4, keep_border=True)


def mask_to_polygons(mask: np.ndarray, options: PolygonOptions) -> list[np.ndarray]:
    """One closed polygon (N×2 float pixel coordinates, x right / y down, continuous frame) per mask part.

    Parts come largest first; at most `MAX_PARTS`. Pixel (row r, column c) covers [c, c+1) × [r, r+1).
    """
    clean = remove_small_regions(mask.astype(bool), max(options.min_area, 1)).astype(np.uint8)
    contours, hierarchy = cv2.findContours(clean, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    parts = []
    for index, (_, _, first_child, parent) in enumerate(hierarchy[0]):
        if parent != -1:
            continue  # a hole: handled with its outline
        holes = []
        child = first_child
        while child != -1:
            holes.append(contours[child])
            child = hierarchy[0][child][0]
        parts.append((cv2.contourArea(contours[index]), contours[index], holes))
    parts.sort(key=lambda part: -part[0])
    return [_polygon(outline, holes, options) + 0.5 for _, outline, holes in parts[:MAX_PARTS]]


def polygon_to_percent(polygon: np.ndarray, width: int, height: int) -> list[list[float]]:
    """Pixel coordinates as Label Studio's percent of the image, clipped to 0..100, rounded to 1e-4."""
    percent = np.clip(polygon / np.array([width, height]) * 100.0, 0.0, 100.0)
    return np.round(percent, 4).tolist()


def _polygon(outline: np.ndarray, holes: list[np.ndarray], options: PolygonOptions) -> np.ndarray:
    """The outline with its holes cut in, at most `max_vertices` vertices: loosen the tolerance up to four
    times the configured one, then fill the smallest holes, then loosen further."""
    holes = sorted(holes, key=cv2.contourArea, reverse=True)
    loosest_with_holes = 4 * max(options.tolerance, 0.5)
    tolerance = options.tolerance
    while True:
        ring = _simplified(outline, tolerance)
        if ring is None:  # loosened below a triangle: the part's rotated bounding rectangle
            return cv2.boxPoints(cv2.minAreaRect(outline)).astype(np.float64)
        hole_rings = [hole for hole in (_simplified(h, tolerance) for h in holes) if hole is not None]
        if len(ring) + sum(len(hole) + 2 for hole in hole_rings) <= options.max_vertices:
            for hole in hole_rings:
                ring = _cut_in(ring, hole)
            return ring.astype(np.float64)
        if hole_rings and tolerance >= loosest_with_holes:
            holes = holes[:-1]
        else:
            tolerance = max(tolerance * 1.5, 0.5)


def _simplified(contour: np.ndarray, tolerance: float) -> np.ndarray | None:
    """A contour (K×1×2) as an M×2 ring with Douglas-Peucker `tolerance`; None when under 3 vertices remain."""
    ring = cv2.approxPolyDP(contour, tolerance, closed=True) if tolerance > 0 else contour
    ring = ring.reshape(-1, 2)
    return ring if len(ring) >= 3 else None


def _cut_in(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`ring` walking to `hole` at their closest vertices, around the hole, and back: one keyhole ring."""
    distances = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(axis=-1)
    at_ring, at_hole = np.unravel_index(int(np.argmin(distances)), distances.shape)
    around_hole = np.concatenate([hole[at_hole:], hole[: at_hole + 1]])
    return np.concatenate([ring[: at_ring + 1], around_hole, ring[at_ring:]])


def _without_small_components(mask: np.ndarray, min_area: int, connectivity: int,
                              keep_border: bool = False) -> np.ndarray:
    """`mask` without its components of fewer than `min_area` pixels (those touching the border kept if asked)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=connectivity)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    if keep_border:
        height, width = mask.shape
        left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        right = left + stats[:, cv2.CC_STAT_WIDTH]
        bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
        keep |= (left == 0) | (top == 0) | (right == width) | (bottom == height)
    keep[0] = False  # label 0 is what is not in `mask`
    return keep[labels]
