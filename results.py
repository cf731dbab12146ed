"""Masks as Label Studio result regions."""

from __future__ import annotations

import uuid

import numpy as np

from brush_rle import encode_rle
from label_config import MaskControl


def to_brush_result(mask: np.ndarray, label: str | None, control: MaskControl, to_name: str,
                    score: float) -> dict:
    """A `brushlabels` region painting `mask` (H×W bool) with `label` on image `to_name`."""
    height, width = mask.shape
    labels = [label] if label else list(control.labels[:1])
    return {
        "id": uuid.uuid4().hex,
        "from_name": control.name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": labels},
        "score": round(float(score), 4),
        "readonly": False,
    }
