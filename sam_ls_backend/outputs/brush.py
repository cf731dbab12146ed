"""`BrushLabels`: one `brushlabels` region per object, its mask as Label Studio's brush RLE.

The RLE, up to a million ints for a 12-megapixel mask, is held as its JSON text (`JsonText`, bytes), which
the server writes into the response as is (NumPy writes it much faster than json.dumps would).
"""

from __future__ import annotations

import numpy as np

from sam_ls_backend.outputs.base import JsonText, labels_for, region
from sam_ls_backend.protocol.brush_rle import encode_rle_bytes, rle_json
from sam_ls_backend.protocol.label_config import Control
from sam_ls_backend.protocol.polygons import PolygonOptions


class BrushOutput:
    kind = "brush"
    tag = "BrushLabels"
    smart_is_prompt = False

    def results(self, mask: np.ndarray, label: str | None, control: Control, to_name: str, score: float,
                options: PolygonOptions) -> list[dict]:
        """A `brushlabels` region painting `mask` (H×W bool) with `label` on image `to_name`."""
        return [region(mask.shape, control, to_name, score, "brushlabels",
                       {"format": "rle", "rle": JsonText(rle_json(encode_rle_bytes(mask))),
                        "brushlabels": labels_for(label, control)})]
