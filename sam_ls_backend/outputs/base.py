"""What every output control shares: the region around a value, and the label a region is painted with.

An output control turns one object's mask into the result regions of one labeling-config tag (`BrushLabels`,
`PolygonLabels`, ...). Regions are in Label Studio's frame: percent of the original image, whose size they carry.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sam_ls_backend.protocol.label_config import Control
from sam_ls_backend.protocol.polygons import PolygonOptions


@dataclass(frozen=True)
class JsonText:
    """A value already encoded as JSON (UTF-8 bytes); the server's JSON encoder writes `data` in its place."""

    data: bytes


class Output(Protocol):
    """One kind of output control (RESULT_TYPE names it by `kind`)."""

    kind: str  # brush, polygon, rectangle
    tag: str  # the labeling config's tag, e.g. BrushLabels
    # True when a smart control of this tag is a prompting tool (RectangleLabels): only non-smart ones answer.
    smart_is_prompt: bool

    def results(self, mask: np.ndarray, label: str | None, control: Control, to_name: str, score: float,
                options: PolygonOptions) -> list[dict]:
        """The regions of one object's `mask` (H×W bool) for `control`, painted with `label`."""
        ...


def region(shape: tuple[int, ...], control: Control, to_name: str, score: float, kind: str, value: dict) -> dict:
    """A result region of type `kind` on image `to_name` (`shape` = its H×W) holding `value`."""
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


def labels_for(label: str | None, control: Control) -> list[str]:
    """The prompt's label when `control` has it, else the control's first label: Label Studio stores a label
    its config lacks anyway, and draws it without a name."""
    return [label] if label and label in control.labels else list(control.labels[:1])
