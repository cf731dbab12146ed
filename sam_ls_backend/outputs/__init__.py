"""The output controls masks are written to, one module each behind `Output`, and which ones answer.

Adding an output is one module with an `Output` class and one line in `OUTPUTS`; RESULT_TYPE then accepts its
kind. A request's masks go to every registered control the labeling config points at the image (RESULT_TYPE
`auto`), or to the kinds RESULT_TYPE names (`both` is brush and polygon). A smart `RectangleLabels` is a prompt
(the annotator's tool), so only a `RectangleLabels` without `smart="true"` receives boxes (`smart_is_prompt`).
"""

from __future__ import annotations

import numpy as np

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.outputs.base import Output
from sam_ls_backend.outputs.brush import BrushOutput
from sam_ls_backend.outputs.polygon import PolygonOutput
from sam_ls_backend.outputs.rectangle import RectangleOutput
from sam_ls_backend.protocol.label_config import Control, LabelConfig
from sam_ls_backend.protocol.polygons import PolygonOptions

OUTPUTS: dict[str, Output] = {output.kind: output for output in (BrushOutput(), PolygonOutput(), RectangleOutput())}
RESULT_TYPES = ("auto", "both", *OUTPUTS)


def wanted_kinds(result_type: str) -> tuple[str, ...]:
    """The output kinds RESULT_TYPE asks for, in registry order."""
    if result_type == "auto":
        return tuple(OUTPUTS)
    return ("brush", "polygon") if result_type == "both" else (result_type,)


def output_controls(config: LabelConfig, to_name: str, result_type: str = "auto") -> list[tuple[Output, Control]]:
    """The controls answering on image `to_name`: every one the config has (auto), or those RESULT_TYPE forces."""
    wanted = wanted_kinds(result_type)
    found = {kind: control for kind in wanted if (control := output_control(config, to_name, kind)) is not None}
    missing = [kind for kind in wanted if kind not in found]
    if not found or (result_type != "auto" and missing):
        tags = " or ".join(f"<{OUTPUTS[kind].tag} toName=\"{to_name}\">" for kind in (missing or wanted))
        forced = "" if result_type == "auto" else f" (RESULT_TYPE={result_type})"
        raise InvalidRequest(f"the labeling config has no {tags} to put masks in{forced}")
    return [(OUTPUTS[kind], found[kind]) for kind in wanted if kind in found]


def output_control(config: LabelConfig, to_name: str, kind: str) -> Control | None:
    """The control of output `kind` on image `to_name`: the first of its tag, or of its non-smart ones when a
    smart control of that tag is a prompt."""
    output = OUTPUTS[kind]
    return config.control(to_name, output.tag, smart=False if output.smart_is_prompt else None)


def images_with_outputs(config: LabelConfig) -> set[str]:
    """Names of the images some registered output control answers on."""
    return {to_name for to_name in config.image_fields
            if any(output_control(config, to_name, kind) for kind in OUTPUTS)}


def to_results(mask: np.ndarray, label: str | None, controls: list[tuple[Output, Control]], to_name: str,
               score: float, options: PolygonOptions) -> list[dict]:
    """The regions of one object's mask for every control that answers."""
    return [region for output, control in controls
            for region in output.results(mask, label, control, to_name, score, options)]
