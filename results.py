"""Masks as Label Studio result regions: one `brushlabels` region, or one `polygonlabels` region per part.

A brush region's RLE, up to a million ints for a 12-megapixel mask, is held as its JSON text (`JsonText`),
which the server writes into the response as is: NumPy writes it ~10× faster than json.dumps would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from brush_rle import encode_rle_bytes, rle_json
from label_config import MaskControl
from polygons import PolygonOptions, mask_to_polygons, polygon_to_percent


@dataclass(frozen=True)
class JsonText:
    """A value already encoded as JSON; the server's JSON encoder writes `text` in its place."""

    text: str


def to_results(mask: np.ndarray, label: str | None, controls: Sequence[MaskControl], to_name: str, score: float,
               options: PolygonOptions) -> list[dict]:
    """The regions of one object's mask for every control that answers (brush and/or polygon)."""
    regions = []
    for control in controls:
        if control.kind == "brush":
            regions.append(to_brush_result(mask, label, control, to_name, score))
        else:
            regions += to_polygon_results(mask, label, control, to_name, score, options)
    return regions


def to_brush_result(mask: np.ndarray, label: str | None, control: MaskControl, to_name: str,
                    score: float) -> dict:
    """A `brushlabels` region painting `mask` (H×W bool) with `label` on image `to_name`."""
    return _region(mask.shape, control, to_name, score, "brushlabels",
                   {"format": "rle", "rle": JsonText(rle_json(encode_rle_bytes(mask))),
                    "brushlabels": _labels(label, control)})


def to_polygon_results(mask: np.ndarray, label: str | None, control: MaskControl, to_name: str, score: float,
                       options: PolygonOptions) -> list[dict]:
    """One closed `polygonlabels` region (percent coordinates) per part of `mask` (see polygons.py)."""
    height, width = mask.shape
    return [_region(mask.shape, control, to_name, score, "polygonlabels",
                    {"points": polygon_to_percent(polygon, width, height), "closed": True,
                     "polygonlabels": _labels(label, control)})
            for polygon in mask_to_polygons(mask, options)]


def _region(shape: tuple[int, ...], control: MaskControl, to_name: str, score: float, kind: str,
            value: dict) -> dict:
    height, width = shape
    return {
        "id": uuid.uuid4().hex,
        "from_name": control.name,
        "to_name": to_name,
        "type": kind,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": value,
        "score": round(float(score), 4),
        "readonly": False,
    }


def _labels(label: str | None, control: MaskControl) -> list[str]:
    """The prompt's label, else the control's first label."""
    return [label] if label else list(control.labels[:1])
