"""The masks an annotation holds, read from the body of Label Studio's annotation webhooks.

Label Studio posts `ANNOTATION_CREATED` / `ANNOTATION_UPDATED` with the annotation (its `result` list), the task
(its `data`, so the image URL) and the project (its `label_config`). Each `brushlabels` region of a
`BrushLabels` control and each `polygonlabels` region of a `PolygonLabels` control on an image becomes one mask
in the original image frame; other regions (keypoints, rectangles, text) hold no mask and are passed over.
A region that cannot be read (an RLE of the wrong size, a polygon of fewer than three points, an empty mask) is
skipped with its reason, so one bad region does not cost the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.protocol.brush_rle import decode_rle
from sam_ls_backend.protocol.label_config import LabelConfig, parse_label_config

MASK_TAGS = {"brushlabels": "brushlabels", "polygonlabels": "polygonlabels"}  # region type -> control tag
MAX_SIDE = 20000  # pixels: a larger original size is not an image Label Studio shows


@dataclass(frozen=True)
class AcceptedMask:
    """One object an annotator accepted: a region of an annotation, as a mask of its task's image."""

    key: str  # "<annotation id>/<region id>": the same region of an updated annotation keeps its key
    image_url: str
    mask: np.ndarray  # bool H×W, original image frame


@dataclass
class AnnotationMasks:
    """What one annotation webhook carries: its id, task and masks, and why regions were skipped."""

    annotation: int
    task: int | None
    masks: list[AcceptedMask] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def annotation_masks(body: dict) -> AnnotationMasks:
    """The masks of an ANNOTATION_CREATED / ANNOTATION_UPDATED body; InvalidRequest when it has no annotation id,
    task data or labeling config (the whole body is unusable)."""
    annotation, task, project = body.get("annotation"), body.get("task"), body.get("project")
    annotation_id = _id(annotation.get("id")) if isinstance(annotation, dict) else None
    if annotation_id is None:
        raise InvalidRequest("the webhook body has no 'annotation' object with an integer 'id'")
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise InvalidRequest("the webhook body has no 'task' object with 'data'")
    xml = project.get("label_config") if isinstance(project, dict) else None
    if not isinstance(xml, str) or not xml.strip():
        raise InvalidRequest("the webhook body has no 'project' with a 'label_config'")
    config = parse_label_config(xml)
    found = AnnotationMasks(annotation_id, _id(task.get("id")))
    results = annotation.get("result")  # type: ignore[union-attr]
    for index, region in enumerate(results if isinstance(results, list) else []):
        if not isinstance(region, dict) or region.get("type") not in MASK_TAGS:
            continue
        try:
            found.masks.append(_read_region(found.annotation, index, region, task["data"], config))
        except ValueError as why:
            found.skipped.append(f"region {index} of annotation {found.annotation}: {why}")
    return found


def deleted_annotations(body: dict) -> list[int]:
    """The annotation ids of an ANNOTATION_DELETED / ANNOTATIONS_DELETED body."""
    listed = body.get("annotations")
    if not isinstance(listed, list):
        listed = [body.get("annotation")]
    ids = [_id(item.get("id")) for item in listed if isinstance(item, dict)]
    return [found for found in ids if found is not None]


def _read_region(annotation: int, index: int, region: dict, data: dict, config: LabelConfig) -> AcceptedMask:
    kind, to_name = region["type"], region.get("to_name")
    controls = config.controls.get(to_name, ()) if isinstance(to_name, str) else ()
    if not any(c.name == region.get("from_name") and c.tag.lower() == MASK_TAGS[kind] for c in controls):
        raise ValueError(f"it is not a region of a {kind} control of the labeling config's images")
    url = data.get(config.image_fields.get(to_name, ""))  # type: ignore[arg-type]
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"the task has no image URL for {to_name!r}")
    width, height = _id(region.get("original_width")) or 0, _id(region.get("original_height")) or 0
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise ValueError("it has no valid original_width and original_height")
    value = region.get("value")
    if not isinstance(value, dict):
        raise ValueError("it has no 'value' object")
    mask = _brush_mask(value, width, height) if kind == "brushlabels" else _polygon_mask(value, width, height)
    if not mask.any():
        raise ValueError("its mask is empty")
    region_id = region.get("id")
    return AcceptedMask(f"{annotation}/{region_id if isinstance(region_id, str) and region_id else index}",
                        url.strip(), mask)


def _brush_mask(value: dict, width: int, height: int) -> np.ndarray:
    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
        raise ValueError("its brush value holds no RLE")
    if not all(isinstance(byte, int) and 0 <= byte <= 255 for byte in rle):
        raise ValueError("its RLE is not a list of bytes")
    return decode_rle(rle, width, height)


def _polygon_mask(value: dict, width: int, height: int) -> np.ndarray:
    """The pixels whose centres lie inside the polygon (even-odd rule), its points in percent of the image on
    pixel edges (see polygons.py): the pixels COCO's rasteriser fills."""
    points = value.get("points")
    if not isinstance(points, list) or len(points) < 3:
        raise ValueError("its polygon has fewer than 3 points")
    try:
        vertices = np.array([[float(x), float(y)] for x, y in points], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("its polygon points are not [x, y] number pairs") from None
    if not np.isfinite(vertices).all():
        raise ValueError("its polygon points are not finite")
    return fill_polygon(np.clip(vertices, 0.0, 100.0) / 100.0 * np.array([width, height]), width, height)


def fill_polygon(vertices: np.ndarray, width: int, height: int) -> np.ndarray:
    """H×W bool: the pixels whose centre (c + 0.5, r + 0.5) is inside the ring `vertices` (N×2 pixel x, y).

    Scanlines through the pixel centres: each edge crossing a row's centre line gives an x; sorted along the
    row, consecutive pairs of crossings bound the inside spans, which are painted with one cumulative sum.
    """
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    rows = np.arange(max(int(np.floor(y0.min() - 0.5)), 0), min(int(np.ceil(y0.max())), height))
    centres = rows + 0.5
    crossing = (y0[:, None] <= centres) != (y1[:, None] <= centres)  # edges × rows, half-open in y
    edge, row = np.nonzero(crossing)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = x0[edge] + (centres[row] - y0[edge]) / (y1[edge] - y0[edge]) * (x1[edge] - x0[edge])
    order = np.lexsort((xs, row))
    row, xs = row[order], xs[order]
    starts = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(np.int64)
    ends = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(np.int64)
    steps = np.zeros((rows.size, width + 1), dtype=np.int32)
    np.add.at(steps, (row[0::2], starts), 1)
    np.add.at(steps, (row[1::2], ends), -1)
    mask = np.zeros((height, width), dtype=bool)
    mask[rows] = np.cumsum(steps, axis=1)[:, :width] > 0
    return mask


def _id(value: Any) -> int | None:
    """`value` if it is a non-negative integer (an id, a size), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
