"""The output controls masks are written to, one module each behind `Output`, and which ones answer.

Adding an output is one module with an `Output` class and one line in `OUTPUTS`; RESULT_TYPE then accepts its
kind. A request's masks go to every registered control the labeling config points at the image (RESULT_TYPE
`auto`), or to the kinds RESULT_TYPE names (`both` is brush and polygon).
"""

from __future__ import annotations

import numpy as np

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.outputs.base import Output
from sam_ls_backend.outputs.brush import BrushOutput
from sam_ls_backend.outputs.polygon import PolygonOutput
from sam_ls_backend.protocol.label_config import Control, LabelConfig
from sam_ls_backend.protocol.polygons import PolygonOptions

OUTPUTS: dict[str, Output] = {output.kind: output for output in (BrushOutput(), PolygonOutput())}
RESULT_TYPES = ("auto", "both", *OUTPUTS)


def wanted_kinds(result_type: str) -> tuple[str, ...]:
    """The output kinds RESULT_TYPE asks for, in registry order."""
    if result_type == "auto":
        return tuple(OUTPUTS)
    return ("brush", "polygon") if result_type == "both" else (result_type,)


def output_controls(config: LabelConfig, to_name: str, result_type: str = "auto") -> list[tuple[Output, Control]]:
    """The controls answering on image `to_name`: every one the config has (auto), or those RESULT_TYPE forces."""
    wanted = wanted_kinds(result_type)
    found = {kind: control for kind in wanted
             if (control := config.control(to_name, OUTPUTS[kind].tag)) is not None}
    missing = [kind for kind in wanted if kind not in found]
    if not found or (result_type != "auto" and missing):
        tags = " or ".join(f"<{OUTPUTS[kind].tag} toName=\"{to_name}\">" for kind in (missing or wanted))
        forced = "" if result_type == "auto" else f" (RESULT_TYPE={result_type})"
        raise InvalidRequest(f"the labeling config has no {tags} to put masks in{forced}")
    return [(OUTPUTS[kind], found[kind]) for kind in wanted if kind in found]


def images_with_outputs(config: LabelConfig) -> set[str]:
    """Names of the images some registered output control answers on."""
    tags = {output.tag for output in OUTPUTS.values()}
    return {to_name for to_name in config.image_fields if any(config.control(to_name, tag) for tag in tags)}


def to_results(mask: np.ndarray, label: str | None, controls: list[tuple[Output, Control]], to_name: str,
               score: float, options: PolygonOptions) -> list[dict]:
    """The regions of one object's mask for every control that answers."""
    return [region for output, control in controls
            for region in output.results(mask, label, control, to_name, score, options)]
