"""Outside readers of polygons (pycocotools, OpenCV), shapely checks, and the masks the polygon tests draw.

Polygons are in Label Studio's continuous pixel frame (pixel (row r, column c) covers [c, c+1) × [r, r+1)),
as a COCO export carries them after multiplying the percent points by the image size.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from pycocotools import mask as coco_mask
from shapely.geometry import Polygon
from shapely.strtree import STRtree


def coco_raster(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The pixels COCO's own rasteriser fills: one RLE per polygon (`frPyObjects`), merged by union."""
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = coco_mask.frPyObjects([np.asarray(p, dtype=np.float64).ravel().tolist() for p in polygons],
                                 height, width)
    with warnings.catch_warnings():  # pycocotools 2.0.11 under NumPy 2: a DeprecationWarning about `copy`
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(coco_mask.merge(rles, intersect=False)).astype(bool)


def opencv_raster(polygons: list[np.ndarray], height: int, width: int, scale: int | None = None) -> np.ndarray:
    """The pixels OpenCV's `fillPoly` fills, each polygon on its own (fillPoly applies the even-odd rule across
    the polygons of one call) and then united.

    fillPoly fills closed spans on the pixel-centre grid (a vertex is rounded to the nearest centre and the
    pixels on an edge are filled), so at scale 1 any polygon gains about half a pixel all round (measured:
    even an exact square's outline fills one more column and row). At `scale` > 1 it fills a finer grid and a
    pixel is in when at least half of its cells are. By default the grid is 8× finer for polygons of up to 4
    megapixels (at 4× a line one pixel wide read back at IoU 0.92, at 8× exactly) and 4× beyond, where an 8×
    canvas would take gigabytes."""
    out = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        x0, y0 = np.floor(np.asarray(polygon).min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(np.asarray(polygon).max(axis=0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        grid = scale or (8 if (y1 - y0) * (x1 - x0) <= 4_000_000 else 4)
        canvas = np.zeros(((y1 - y0) * grid, (x1 - x0) * grid), dtype=np.uint8)
        points = (np.asarray(polygon, dtype=np.float64) - (x0, y0)) * grid - 0.5  # to pixel-centre coordinates
        cv2.fillPoly(canvas, [np.round(points * 256).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=8)
        if grid > 1:
            cells = canvas.reshape(y1 - y0, grid, x1 - x0, grid).sum(axis=(1, 3), dtype=np.int32)
            canvas = 2 * cells >= grid * grid
        out[y0:y1, x0:x1] |= canvas.astype(bool)
    return out


READERS = {"pycocotools": coco_raster, "opencv": opencv_raster}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    return cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)[:3]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every background region it encloses (4-connected, not touching the border) filled."""
    padded = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    _, labels = cv2.connectedComponents(padded, connectivity=4)
    return labels[1:-1, 1:-1] != labels[0, 0]


def hole_areas(part: np.ndarray, described: np.ndarray) -> list[tuple[int, bool]]:
    """(area, filled in `described`) for each hole of `part` (4-connected background it encloses)."""
    padded = np.pad(~part, 1, constant_values=True).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(padded, connectivity=4)
    covered = np.bincount(labels[1:-1, 1:-1].ravel(), weights=described.ravel(), minlength=count)
    outside = labels[0, 0]
    return [(int(stats[label, cv2.CC_STAT_AREA]), bool(covered[label] == stats[label, cv2.CC_STAT_AREA]))
            for label in range(1, count) if label != outside]


def thick_overlaps(polygons: list[Polygon], tolerance: float) -> list[tuple[int, int, float]]:
    """Pairs of polygons whose overlap is thicker than 2 × `tolerance` (not a sliver of simplification)."""
    tree = STRtree(polygons)
    bad = []
    for i, polygon in enumerate(polygons):
        for j in tree.query(polygon):
            if j <= i:
                continue
            common = polygon.intersection(polygons[j])
            if common.area > 1e-9 and not common.buffer(-tolerance - 1e-6).is_empty:
                bad.append((i, int(j), common.area))
    return bad


def shapely_polygon(points: np.ndarray) -> Polygon:
    return Polygon(np.asarray(points, dtype=np.float64))


# ---- masks ---------------------------------------------------------------------------------------------------


def disc(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    ys, xs = np.ogrid[0:shape[0], 0:shape[1]]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


def blob_with_holes(height: int, width: int, holes: int, seed: int = 0) -> np.ndarray:
    """A centred ellipse with `holes` random round holes (they may overlap and merge)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:height, :width]
    mask = ((yy - height / 2) / (0.45 * height)) ** 2 + ((xx - width / 2) / (0.45 * width)) ** 2 <= 1
    radius = min(height, width) / (4 * np.sqrt(max(holes, 1)))
    for _ in range(holes):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        r = rng.uniform(0.4, 1.0) * radius
        mask &= (yy - cy) ** 2 + (xx - cx) ** 2 > r * r
    return mask


def blobs(height: int, width: int, parts: int, holes: int, seed: int) -> np.ndarray:
    """Random discs (up to `parts` of them, overlapping ones merge) with random holes punched."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=bool)
    size = min(height, width)
    for _ in range(parts):
        mask |= disc(mask.shape, rng.uniform(0, width), rng.uniform(0, height),
                     rng.uniform(0.02, 0.5 / np.sqrt(parts)) * size + 1)
    for _ in range(holes):
        mask &= ~disc(mask.shape, rng.uniform(0, width), rng.uniform(0, height),
                      rng.uniform(0.01, 0.2 / np.sqrt(max(holes, 1))) * size + 0.5)
    return mask


def rings(height: int, width: int, count: int, seed: int) -> np.ndarray:
    """Concentric annuli around a random centre, with an island in the middle: islands inside holes."""
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    ys, xs = np.ogrid[0:height, 0:width]
    distance = np.hypot(xs - cx, ys - cy)
    step = rng.uniform(3, max(4.0, min(height, width) / (4 * count)))
    return (distance // step).astype(int) % 2 == 0


def speckled(height: int, width: int, density: float, seed: int) -> np.ndarray:
    """A blob whose pixels are kept at random with probability `density`: ragged edges, many small holes."""
    rng = np.random.default_rng(seed)
    base = disc((height, width), width / 2, height / 2, 0.45 * min(height, width))
    noise = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 1.0)
    return base & (noise < np.quantile(noise, density))


def lines(height: int, width: int, count: int, seed: int) -> np.ndarray:
    """One-pixel-wide straight lines at random angles (8-connected), crossing one another."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((height, width), dtype=np.uint8)
    for _ in range(count):
        a = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        b = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(canvas, a, b, 1, thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_8)
    return canvas.astype(bool)


def checkerboard(height: int, width: int, cell: int, seed: int) -> np.ndarray:
    """Squares of `cell` pixels alternating, touching at their corners (one 8-connected part), shifted."""
    rng = np.random.default_rng(seed)
    dy, dx = rng.integers(0, cell, size=2)
    ys, xs = np.ogrid[0:height, 0:width]
    return ((ys + dy) // cell + (xs + dx) // cell) % 2 == 0


def border_pixels(height: int, width: int, seed: int) -> np.ndarray:
    """Single pixels on the image border and a blob touching two borders."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=bool)
    mask[0, rng.integers(0, width, size=5)] = True
    mask[rng.integers(0, height, size=5), width - 1] = True
    mask[height - 1, 0] = mask[0, 0] = True
    corner = disc(mask.shape, width, height, rng.uniform(0.2, 0.6) * min(height, width))
    return mask | corner
