"""Masks as polygons Label Studio can store and export (COCO, YOLO), and small-island / small-hole cleanup.

Label Studio polygons have no holes, and a COCO or YOLO export holds exactly the polygons we send, so a part
with holes is sent as several hole-free polygons that tile it:

- The mask is cleaned first (`remove_small_regions`): islands and holes under `min_area` pixels go.
- Each 8-connected part (the `MAX_PARTS` largest) is cut along horizontal pixel-grid lines chosen so that
  every hole it keeps meets one of them (as few lines as possible, through the middle of the holes they
  share). Between two consecutive lines the part falls into pieces with no hole; a piece is traced along its
  pixels' outer edges (the "crack" boundary: pixel (row r, column c) covers [c, c+1) x [r, r+1)), so its
  ring holds exactly its pixels, and neighbouring pieces share their cut edges without overlapping. Where
  two pixels of a piece touch only at a corner, the ring passes that corner at half a pixel's distance on
  each side, so no ring touches itself.
- Each ring is simplified with Douglas-Peucker at `tolerance` pixels, keeping every vertex on a cut line
  (so shared edges stay shared and a piece never leaves its band between two cuts). An edge that gets more
  than its share (by length) of 2% of the ring's area wrong is split at its farthest exact vertex (a pixel
  of tolerance alone loses lines a pixel or two wide, and ragged edges). Where a simplified ring would cross
  or touch itself, the exact vertex farthest from the offending edge is put back until it does not.
- `max_vertices` bounds the vertices of one part's polygons together. When they do not fit, the part's
  holes are filled, smallest first, before the outline is distorted; only a part with no hole left is
  simplified with a looser tolerance (and area share), down to its bounding box. `polygon_answer` tells
  which pixels the polygons describe (the mask with the given-up holes filled) and the tolerance each part
  used, so what was given up can be measured.

Filled by COCO's rasteriser (pycocotools), an unsimplified ring reproduces its pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MAX_PARTS = 100  # the largest parts are kept; a speckled mask must not become thousands of regions
_LOOSEN = 1.5  # a part with no hole left that is over the vertex bound is simplified this much more loosely
# Douglas-Peucker bounds how far an edge strays, not how much area it gets wrong: on a line a pixel or two
# wide, or a ragged edge, a tolerance of a pixel loses most of the shape. Edges are refined until a ring's
# area error (pixels between each edge and the outline it replaces) is at most this share of its area.
_AREA_ERROR = 0.02


@dataclass(frozen=True)
class PolygonOptions:
    """How masks become polygons: tolerance in pixels, vertex bound per part, smallest part/hole in pixels."""

    tolerance: float = 1.0
    max_vertices: int = 200
    min_area: int = 64


@dataclass(frozen=True)
class PolygonAnswer:
    """The polygons of a mask and what they describe.

    `polygons[i]` outlines a piece of part `parts[i]` (0 = the largest part); `described` (H×W bool) is the
    cleaned mask of the parts sent, with the holes that did not fit the vertex bound filled;
    `tolerances[p]` is the Douglas-Peucker tolerance part p was simplified with.
    """

    polygons: list[np.ndarray]
    parts: list[int]
    described: np.ndarray
    tolerances: list[float]


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
    """Closed hole-free polygons (N×2 float pixel coordinates, x right / y down, continuous frame) tiling the
    mask's parts: one per part without holes, several per part with holes. Parts come largest first; at most
    `MAX_PARTS`. Pixel (row r, column c) covers [c, c+1) × [r, r+1)."""
    return polygon_answer(mask, options).polygons


def polygon_answer(mask: np.ndarray, options: PolygonOptions) -> PolygonAnswer:
    """`mask_to_polygons` with the part of each polygon, the pixels described and the tolerances used."""
    clean = remove_small_regions(mask.astype(bool), max(options.min_area, 1))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(clean.astype(np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda label: -int(stats[label, cv2.CC_STAT_AREA]))[:MAX_PARTS]
    given_up = np.zeros(clean.shape, dtype=bool)  # holes filled for the vertex bound, islands in them included
    done = []
    for label in order:
        left, top, width, height = (int(value) for value in stats[label, :4])
        part = labels[top:top + height, left:left + width] == label
        row, column = np.unravel_index(int(np.argmax(part)), part.shape)
        rings, filled, tolerance = _part_polygons(part, options)
        given_up[top:top + height, left:left + width] |= filled
        done.append((label, (top + row, left + column), (left, top), rings, tolerance))
    polygons: list[np.ndarray] = []
    parts: list[int] = []
    tolerances: list[float] = []
    sent = []
    for label, pixel, (left, top), rings, tolerance in done:
        if given_up[pixel]:
            continue  # an island inside another part's filled hole: that part's polygons cover it
        parts += [len(tolerances)] * len(rings)
        tolerances.append(tolerance)
        polygons += [ring + (left, top) for ring in rings]
        sent.append(label)
    described = np.isin(labels, sent) | given_up
    return PolygonAnswer(polygons, parts, described, tolerances)


def polygon_to_percent(polygon: np.ndarray, width: int, height: int) -> list[list[float]]:
    """Pixel coordinates as Label Studio's percent of the image, clipped to 0..100, rounded to 1e-4."""
    percent = np.clip(polygon / np.array([width, height]) * 100.0, 0.0, 100.0)
    return np.round(percent, 4).tolist()


def _part_polygons(part: np.ndarray, options: PolygonOptions) -> tuple[list[np.ndarray], np.ndarray, float]:
    """The hole-free rings tiling one part (h×w bool crop), the holes given up (h×w bool) and the tolerance.

    Holes are kept largest first, as many as the vertex bound allows: the count is first estimated from the
    simplified hole rings and the cut lines they need, then lowered until the real rings fit.
    """
    tolerance = max(options.tolerance, 0.0)
    # A hole costs at least 4 vertices: only the largest max_vertices / 4 are candidates.
    hole_labels, holes = _holes(part, max(options.max_vertices // 4, 0))  # (label, top, bottom, ring)
    simplified = [len(_simplify(ring, set(), tolerance, limit=0)) for *_, ring in holes]
    whole = part | (hole_labels > 0)
    (outline,) = _closure_rings(whole)
    outline_count = len(_simplify(outline, set(), tolerance, limit=0))

    def estimate(keep: int) -> int:
        rows = _cut_rows([(top, bottom) for _, top, bottom, _ in holes[:keep]])
        crossings = sum(_crossings(ring, rows) for ring in [outline] + [ring for *_, ring in holes[:keep]])
        return outline_count + sum(simplified[:keep]) + 3 * crossings

    low, high = 0, len(holes)  # the largest count whose estimate fits
    while low < high:
        middle = (low + high + 1) // 2
        if estimate(middle) <= options.max_vertices:
            low = middle
        else:
            high = middle - 1
    keep = low
    while keep > 0:
        filled = (hole_labels > 0) & ~np.isin(hole_labels, [hole[0] for hole in holes[:keep]])
        rings = _pieces(part | filled, _cut_rows([(top, bottom) for _, top, bottom, _ in holes[:keep]]),
                        tolerance)
        excess = sum(len(ring) for ring in rings) - options.max_vertices
        if excess <= 0:
            return rings, filled, tolerance
        keep = min(keep - 1, keep * options.max_vertices // (options.max_vertices + excess))
    filled = hole_labels > 0
    while tolerance <= max(part.shape):
        looser = tolerance / max(options.tolerance, 1e-9)
        ring = _simplify(outline, set(), tolerance, limit=options.max_vertices, area_error=_AREA_ERROR * looser)
        if len(ring) <= options.max_vertices:
            return [ring], filled, tolerance
        tolerance = max(tolerance * _LOOSEN, 0.5)
    (x0, y0), (x1, y1) = outline.min(axis=0), outline.max(axis=0)  # loosened past its size: its bounding box
    return [np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]])], filled, tolerance


def _holes(part: np.ndarray, most: int) -> tuple[np.ndarray, list[tuple[int, int, int, np.ndarray]]]:
    """The part's holes (4-connected background it encloses, islands in it included): a crop-sized label
    image (0: not a hole) and, largest first, the `most` largest holes' labels, first and last rows and exact
    rings."""
    padded = np.pad(~part, 1, constant_values=True).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(padded, connectivity=4)
    labels = labels[1:-1, 1:-1]
    outside = stats[:, cv2.CC_STAT_LEFT] == 0
    outside[0] = True  # label 0 is the part itself
    hole_labels = np.where(outside[labels], 0, labels)
    order = [int(label) for label in np.argsort(-stats[:, cv2.CC_STAT_AREA], kind="stable") if not outside[label]]
    candidates = order[:most]
    if not candidates:
        return hole_labels, []
    by_box: dict[tuple[int, int, int, int], list[int]] = {}
    for label in candidates:
        left, top, width, height = (int(value) for value in stats[label, :4])
        by_box.setdefault((left - 1, top - 1, width, height), []).append(label)
    grid = _closure_grid(part)
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    rings = {}
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        if parent == -1:
            continue
        x, y, w, h = cv2.boundingRect(contour)  # grid cells around the hole: its pixels' box, one cell out
        box = (x // 2, y // 2, (w - 1) // 2, (h - 1) // 2)
        if box in by_box and by_box[box]:
            rings[by_box[box].pop(0)] = _corners(contour.reshape(-1, 2), grid) / 2.0
    holes = [(label, int(stats[label, cv2.CC_STAT_TOP]) - 1,
              int(stats[label, cv2.CC_STAT_TOP] + stats[label, cv2.CC_STAT_HEIGHT]) - 2, rings[label])
             for label in candidates if label in rings]
    return hole_labels, holes


def _cut_rows(spans: list[tuple[int, int]]) -> list[int]:
    """Grid lines (y = row index: the line above that row) meeting every hole spanning rows top..bottom.

    A line y meets a hole when top <= y <= bottom + 1; the fewest lines do it (greedy interval stabbing), each
    in the middle of the rows its holes share."""
    rows: list[int] = []
    shared: tuple[int, int] | None = None  # the rows the holes of the current line share
    for start, end in sorted(((top, bottom + 1) for top, bottom in spans), key=lambda span: span[1]):
        if shared is not None and start <= shared[1]:
            shared = (max(shared[0], start), shared[1])
            continue
        if shared is not None:
            rows.append((shared[0] + shared[1]) // 2)
        shared = (start, end)
    if shared is not None:
        rows.append((shared[0] + shared[1]) // 2)
    return sorted(rows)


def _crossings(ring: np.ndarray, rows: list[int]) -> int:
    """How often `ring` crosses the horizontal lines `rows`."""
    if not rows:
        return 0
    y = ring[:, 1]
    sides = y[:, None] < np.asarray(rows, dtype=np.float64)[None, :]
    return int((sides != np.roll(sides, -1, axis=0)).sum())


def _pieces(pixels: np.ndarray, rows: list[int], tolerance: float) -> list[np.ndarray]:
    """The simplified rings of the pieces `pixels` falls into when cut along grid lines `rows`.

    Bands between consecutive lines alternate; the pieces of one parity never touch, so each parity is traced
    at once, and pieces of neighbouring bands share their edges on the line between them."""
    if not rows:
        return [_simplify(ring, set(), tolerance) for ring in _closure_rings(pixels)]
    band = np.searchsorted(np.asarray(rows), np.arange(pixels.shape[0]), side="right")
    fixed = set(rows)
    rings = []
    for parity in (0, 1):
        sub = pixels & (band % 2 == parity)[:, None]
        if sub.any():
            rings += [_simplify(ring, fixed, tolerance) for ring in _closure_rings(sub)]
    rings.sort(key=lambda ring: -abs(_area(ring)))
    return rings


def _closure_rings(pixels: np.ndarray) -> list[np.ndarray]:
    """The outer rings (M×2 float, continuous frame) of `pixels`' 8-connected components along their
    pixels' edges."""
    grid = _closure_grid(pixels)
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [_corners(contour.reshape(-1, 2), grid) / 2.0 for contour in contours]


def _closure_grid(pixels: np.ndarray) -> np.ndarray:
    """`pixels` on a grid of twice the resolution plus one, where cell (2y, 2x) is the corner (x, y) and the
    closed square of each pixel is 3×3 cells: two pixels touching at a corner share only that corner's cell,
    so a ring traced on it goes round that cell instead of through the corner."""
    height, width = pixels.shape
    grid = np.zeros((2 * height + 1, 2 * width + 1), dtype=np.uint8)
    grid[1::2, 1::2] = pixels
    return cv2.dilate(grid, np.ones((3, 3), dtype=np.uint8))


def _corners(chain: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The turning points of a traced chain of grid cells (x, y), with the inner corners it cut put back.

    The tracer steps diagonally past a cell with no background beside it (only diagonally): at an inner
    corner of the pixels' outline that cell is the corner itself and goes back in; where two pixels touch
    only at a corner (the cell's diagonal neighbours alternate), the diagonal step is kept, so the two
    passes of the ring stay half a pixel apart."""
    if len(chain) < 2:
        return chain.astype(np.float64)
    step = np.roll(chain, -1, axis=0) - chain
    diagonal = np.flatnonzero((step[:, 0] != 0) & (step[:, 1] != 0))
    if diagonal.size:
        start, move = chain[diagonal], step[diagonal]
        across = start + move * [1, 0]  # the two cells beside the step: one is on, the other off
        down = start + move * [0, 1]
        corner = np.where((grid[across[:, 1], across[:, 0]] > 0)[:, None], across, down)
        x, y = corner[:, 0], corner[:, 1]
        inside = (x > 0) & (y > 0) & (x < grid.shape[1] - 1) & (y < grid.shape[0] - 1)
        xs, ys = np.clip(x, 1, grid.shape[1] - 2), np.clip(y, 1, grid.shape[0] - 2)
        top_left, bottom_right = grid[ys - 1, xs - 1], grid[ys + 1, xs + 1]
        top_right, bottom_left = grid[ys - 1, xs + 1], grid[ys + 1, xs - 1]
        alternate = (top_left == bottom_right) & (top_right == bottom_left) & (top_left != top_right)
        saddle = inside & (x % 2 == 0) & (y % 2 == 0) & alternate
        chain = np.insert(chain, diagonal[~saddle] + 1, corner[~saddle], axis=0)
        step = np.roll(chain, -1, axis=0) - chain
    turns = np.any(step != np.roll(step, 1, axis=0), axis=1)
    return chain[turns].astype(np.float64)


def _simplify(ring: np.ndarray, fixed_rows: set[int], tolerance: float, limit: int | None = None,
              area_error: float = _AREA_ERROR) -> np.ndarray:
    """`ring` by Douglas-Peucker at `tolerance`, keeping its vertices on the lines `fixed_rows`; then each
    edge is split at its farthest exact vertex while it gets more area wrong than its share (by length) of
    `area_error` × the ring's area; then exact vertices are put back until no edge crosses or touches
    another. Over `limit` vertices before that last step, the ring is returned unrepaired: the caller will
    not use it."""
    count = len(ring)
    if tolerance <= 0 or count <= 4:
        return ring
    keep = np.zeros(count, dtype=bool)
    if fixed_rows:
        keep |= np.isin(ring[:, 1], np.fromiter(fixed_rows, dtype=np.float64))
    anchors = np.flatnonzero(keep)
    if len(anchors) == 0:
        keep[_douglas_peucker_closed(ring, tolerance)] = True
    else:
        for start, end in zip(anchors, np.roll(anchors, -1)):
            span = np.arange(start, end + 1 if end > start else end + count + 1) % count
            keep[span[_douglas_peucker_open(ring[span], tolerance)]] = True
    while keep.sum() < 3:  # a sliver Douglas-Peucker flattened: its farthest vertex makes it a triangle
        kept = np.flatnonzero(keep)
        keep[np.argmax(_distances(ring, ring[kept[0]], ring[kept[-1]]))] = True
    _refine_area(ring, keep, area_error)
    if limit is not None and keep.sum() > limit:
        return ring[keep]
    while True:
        kept = np.flatnonzero(keep)
        bad = _crossing_edges(ring[kept])
        if not bad.size:
            return ring[kept]
        before = int(keep.sum())
        for edge in bad:
            start, end = kept[edge], kept[(edge + 1) % len(kept)]
            span = np.arange(start + 1, end if end > start else end + count) % count
            if span.size:
                keep[span[np.argmax(_distances(ring[span], ring[start], ring[end]))]] = True
        if keep.sum() == before:  # only pixel-exact edges left crossing: cannot happen for a traced ring
            return ring[kept]


def _refine_area(ring: np.ndarray, keep: np.ndarray, area_error: float) -> None:
    """Mark more vertices of `ring` in `keep` until no edge gets more area wrong than its share."""
    count = len(ring)
    steps = np.hypot(*(np.roll(ring, -1, axis=0) - ring).T)
    along_ring = np.concatenate([[0.0], np.cumsum(np.concatenate([steps, steps]))])
    per_length = area_error * abs(_area(ring)) / along_ring[count]
    kept = np.flatnonzero(keep)
    pending = [(int(start), int(end) if end > start else int(end) + count)
               for start, end in zip(kept, np.roll(kept, -1))]
    while pending:
        start, end = pending.pop()
        if end - start <= 1:
            continue
        points = ring[np.arange(start, end + 1) % count]
        if _area_error(points) <= per_length * (along_ring[end] - along_ring[start]):
            continue
        middle = start + 1 + int(np.argmax(_distances(points[1:-1], points[0], points[-1])))
        keep[middle % count] = True
        pending += [(start, middle), (middle, end)]


def _area_error(points: np.ndarray) -> float:
    """The area between the chain `points` and the straight edge joining its ends."""
    direction = points[-1] - points[0]
    length = np.hypot(*direction)
    if length == 0:
        return abs(_area(points))
    relative = points - points[0]
    along = relative @ direction / length
    across = (direction[0] * relative[:, 1] - direction[1] * relative[:, 0]) / length
    return float(np.abs((across[:-1] + across[1:]) / 2 * np.diff(along)).sum())


def _douglas_peucker_open(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Indices of the vertices Douglas-Peucker keeps on an open chain (both ends kept)."""
    kept = cv2.approxPolyDP(points.astype(np.float32).reshape(-1, 1, 2), tolerance, False).reshape(-1, 2)
    return _indices_of(points, kept)


def _douglas_peucker_closed(ring: np.ndarray, tolerance: float) -> np.ndarray:
    kept = cv2.approxPolyDP(ring.astype(np.float32).reshape(-1, 1, 2), tolerance, True).reshape(-1, 2)
    return _indices_of(ring, kept)


def _indices_of(points: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Where the vertices `subset` are in `points` (all distinct: a traced ring never repeats a vertex)."""
    keys = _keys(points)
    order = np.argsort(keys)
    return order[np.searchsorted(keys[order], _keys(subset))]


def _keys(points: np.ndarray) -> np.ndarray:
    doubled = np.rint(points * 2).astype(np.int64)  # vertices lie on the half-pixel grid
    return doubled[:, 0] * (1 << 32) + doubled[:, 1]


def _distances(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    direction = end - start
    length = np.hypot(*direction)
    if length == 0:
        return np.hypot(*(points - start).T)
    return np.abs(direction[0] * (points[:, 1] - start[1]) - direction[1] * (points[:, 0] - start[0])) / length


def _crossing_edges(ring: np.ndarray) -> np.ndarray:
    """Indices of the edges (edge i joins vertex i to i+1) that cross or touch a non-adjacent edge, or fold
    back onto the next one. Exact: vertices lie on the half-pixel grid."""
    count = len(ring)
    if count < 4:
        return np.zeros(0, dtype=np.int64)
    a = np.rint(ring * 2).astype(np.int64)
    b = np.roll(a, -1, axis=0)
    bad = np.zeros(count, dtype=bool)
    turn = _cross(b - a, np.roll(b, -1, axis=0) - b)
    folds = (turn == 0) & (((b - a) * (np.roll(b, -1, axis=0) - b)).sum(axis=1) <= 0)
    bad |= folds
    bad |= np.roll(folds, 1)
    low, high = np.minimum(a, b), np.maximum(a, b)
    for first in range(0, count, 512):
        rows = np.arange(first, min(first + 512, count))
        near = ((low[rows, None, :] <= high[None, :, :]) & (low[None, :, :] <= high[rows, None, :])).all(-1)
        near &= np.arange(count)[None, :] > rows[:, None] + 1  # each pair once, adjacent edges apart
        near[rows == 0, count - 1] = False
        i, j = np.nonzero(near)
        i += first
        a1, b1, a2, b2 = a[i], b[i], a[j], b[j]
        o1 = np.sign(_cross(b1 - a1, a2 - a1))
        o2 = np.sign(_cross(b1 - a1, b2 - a1))
        o3 = np.sign(_cross(b2 - a2, a1 - a2))
        o4 = np.sign(_cross(b2 - a2, b1 - a2))
        hits = (o1 * o2 <= 0) & (o3 * o4 <= 0)  # with bounding boxes meeting, collinear edges overlap
        bad[i[hits]] = True
        bad[j[hits]] = True
    return np.flatnonzero(bad)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


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
