"""What every polygon answer must satisfy, checked with the outside readers (pycocotools, OpenCV, shapely)."""

from __future__ import annotations

import cv2
import numpy as np

from sam_ls_backend.protocol.polygons import MAX_PARTS, PolygonOptions, polygon_answer, remove_small_regions
from tests.support.polygon_readers import (
    READERS,
    coco_raster,
    components,
    fill_holes,
    hole_areas,
    iou,
    shapely_polygon,
    thick_overlaps,
)


def rasterize(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels COCO's rasteriser fills for one polygon."""
    return coco_raster([polygon], *shape)


def check_answer(mask: np.ndarray, options: PolygonOptions) -> dict[str, list[float]]:
    """Assert what issue 17 asks of the polygons of `mask`; return each reader's IoU per part, by part size.

    - the pixels described are the cleaned mask with some holes of its parts filled, smallest first;
    - every part's polygons, filled by each reader, reproduce what they describe (IoU >= 0.95 for parts of
      1024 pixels or more), and the two readers agree, unless the tolerance is over a pixel or the vertex
      bound made it looser (those parts' IoU is returned as "loosened");
    - rings are simple (shapely), polygons overlap at most by slivers of the tolerance, and none covers a
      pixel farther than the tolerance outside its part's outline;
    - a part's polygons hold at most `max_vertices` vertices together.
    """
    answer = polygon_answer(mask, options)
    clean = remove_small_regions(mask.astype(bool), max(options.min_area, 1))
    height, width = mask.shape
    described = answer.described
    assert not (described & ~fill_holes(clean)).any(), "only holes of the parts are ever filled"
    part_count = components(clean)[0] - 1
    if part_count <= MAX_PARTS:
        assert not (clean & ~described).any(), "every part is described"
    assert len(answer.polygons) == len(answer.parts)
    assert answer.parts == sorted(answer.parts), "a part's polygons come together, largest part first"
    count, labels, stats = components(described)
    results: dict[str, list[float]] = {"large": [], "small": [], "loosened": []}
    shapes = [shapely_polygon(p) for p in answer.polygons]
    for shape, points in zip(shapes, answer.polygons):
        assert len(points) >= 3 and shape.is_valid and shape.exterior.is_simple, explain_validity(shape)
    worst = max(answer.tolerances, default=options.tolerance)
    assert not thick_overlaps(shapes, worst), "polygons of one object overlap"
    for part in sorted(set(answer.parts)):
        polygons = [p for p, owner in zip(answer.polygons, answer.parts) if owner == part]
        assert sum(len(p) for p in polygons) <= max(options.max_vertices, 4), "the vertex bound holds"
        label = _label_of(labels, polygons)
        left, top, w, h = stats[label, :4]
        reach = int(np.ceil(answer.tolerances[part])) + 1
        x0, y0 = max(left - reach, 0), max(top - reach, 0)
        x1, y1 = min(left + w + reach, width), min(top + h + reach, height)
        low = np.min([p.min(axis=0) for p in polygons], axis=0)
        high = np.max([p.max(axis=0) for p in polygons], axis=0)
        assert (low >= (x0, y0)).all() and (high <= (x1, y1)).all(), f"part {part} reaches beyond its outline"
        region = labels[y0:y1, x0:x1] == label
        shifted = [p - (x0, y0) for p in polygons]
        rasters = {name: read(shifted, y1 - y0, x1 - x0) for name, read in READERS.items()}
        size = "large" if stats[label, cv2.CC_STAT_AREA] >= 1024 else "small"
        if not (options.tolerance <= 1.0 and answer.tolerances[part] == options.tolerance):
            size = "loosened"
        side = 2 * int(np.ceil(answer.tolerances[part])) + 1
        outline = cv2.dilate(fill_holes(region).astype(np.uint8), np.ones((side, side), np.uint8)).astype(bool)
        for name, raster in rasters.items():
            score = iou(raster, region)
            results[size].append(score)
            if size == "large":
                assert score >= 0.95, f"{name} reads part {part} at IoU {score:.4f}"
            assert not (raster & ~outline).any(), f"{name}: part {part} covers pixels beyond its outline"
        if size == "large":
            agreement = iou(rasters["pycocotools"], rasters["opencv"])
            assert agreement >= 0.95, f"the readers disagree on part {part}: IoU {agreement:.4f}"
        holes = hole_areas(clean[y0:y1, x0:x1] & region, described[y0:y1, x0:x1])
        kept = [area for area, given_up in holes if not given_up]
        given_up = [area for area, given_up in holes if given_up]
        if kept:
            assert answer.tolerances[part] == options.tolerance, "the outline is loosened only with no hole left"
        if kept and given_up:
            assert min(kept) >= max(given_up), "holes are given up smallest first"
    return results


def _label_of(labels: np.ndarray, polygons: list[np.ndarray]) -> int:
    """The described component a part's polygons outline: the one most of the pixels they fill belong to."""
    height, width = labels.shape
    low = np.floor(np.min([p.min(axis=0) for p in polygons], axis=0)).astype(int).clip(0, (width, height))
    high = np.ceil(np.max([p.max(axis=0) for p in polygons], axis=0)).astype(int).clip(0, (width, height))
    window = labels[low[1]:high[1], low[0]:high[0]]
    filled = coco_raster([p - low for p in polygons], *window.shape)
    votes = window[filled]
    return int(np.bincount(votes[votes > 0]).argmax())


def explain_validity(shape) -> str:
    from shapely.validation import explain_validity as explain

    return explain(shape)
