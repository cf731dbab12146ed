"""`PolygonLabels`: one closed `polygonlabels` region (percent coordinates) per part of an object's mask."""

from __future__ import annotations

import numpy as np

from sam_ls_backend.outputs.base import labels_for, region
from sam_ls_backend.protocol.label_config import Control
from sam_ls_backend.protocol.polygons import PolygonOptions, mask_to_polygons, polygon_to_percent


class PolygonOutput:
    kind = "polygon"
    tag = "PolygonLabels"
    smart_is_prompt = False

    def results(self, mask: np.ndarray, label: str | None, control: Control, to_name: str, score: float,
                options: PolygonOptions) -> list[dict]:
        """The polygons of `mask` (H×W bool, see polygons.py), each a region painted with `label`."""
        height, width = mask.shape
        return [region(mask.shape, control, to_name, score, "polygonlabels",
                       {"points": polygon_to_percent(polygon, width, height), "closed": True,
                        "polygonlabels": labels_for(label, control)})
                for polygon in mask_to_polygons(mask, options)]
