"""`RectangleLabels` as an output: the tight axis-aligned box of each object's mask, for detection projects.

A `RectangleLabels` is also the smart rectangle annotators prompt with. The two are told apart by the
labeling config: a control with `smart="true"` (or `smartOnly="true"`) is a prompting tool and never receives
boxes; a `RectangleLabels` without it is an ordinary drawing tool and, pointing at the image, receives them.
"""

from __future__ import annotations

import numpy as np

from sam_ls_backend.outputs.base import labels_for, region
from sam_ls_backend.protocol.label_config import Control
from sam_ls_backend.protocol.polygons import PolygonOptions


class RectangleOutput:
    kind = "rectangle"
    tag = "RectangleLabels"
    smart_is_prompt = True  # a smart RectangleLabels is a prompt, not an output

    def results(self, mask: np.ndarray, label: str | None, control: Control, to_name: str, score: float,
                options: PolygonOptions) -> list[dict]:
        """One `rectanglelabels` region around `mask` (H×W bool), in percent of the image; none for an empty mask."""
        box = mask_box(mask)
        if box is None:
            return []
        height, width = mask.shape
        x0, y0, x1, y1 = box
        return [region(mask.shape, control, to_name, score, "rectanglelabels",
                       {"x": 100.0 * x0 / width, "y": 100.0 * y0 / height,
                        "width": 100.0 * (x1 - x0) / width, "height": 100.0 * (y1 - y0) / height,
                        "rotation": 0, "rectanglelabels": labels_for(label, control)})]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) in pixel edges (x1, y1 exclusive) holding every set pixel of an H×W mask."""
    columns = np.flatnonzero(mask.any(axis=0))
    if not len(columns):
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1
