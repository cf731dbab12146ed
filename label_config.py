"""What a project's labeling config tells the backend: which task field holds each image, where masks go.

Masks go to the `BrushLabels` and/or `PolygonLabels` tags pointing at the image the prompts were drawn on;
RESULT_TYPE can force one kind (or both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal
from xml.etree.ElementTree import Element

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from errors import InvalidRequest

MAX_CONFIG_CHARS = 1_000_000
MaskKind = Literal["brush", "polygon"]
TAGS: dict[MaskKind, str] = {"brush": "BrushLabels", "polygon": "PolygonLabels"}


@dataclass(frozen=True)
class MaskControl:
    """A `BrushLabels` or `PolygonLabels` tag: where result regions for one image are written."""

    name: str
    labels: tuple[str, ...]
    kind: MaskKind = "brush"


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a labeling config the backend needs, by `Image` name."""

    image_fields: dict[str, str]  # Image name -> task data key ("$image" -> "image")
    brush_controls: dict[str, MaskControl]  # Image name -> its BrushLabels
    polygon_controls: dict[str, MaskControl] = field(default_factory=dict)  # Image name -> its PolygonLabels

    @property
    def masked_images(self) -> set[str]:
        """Names of the images some BrushLabels or PolygonLabels answers on."""
        return set(self.brush_controls) | set(self.polygon_controls)

    def image_field(self, to_name: str) -> str:
        """The task data key holding the image the regions are drawn on."""
        if to_name not in self.image_fields:
            raise InvalidRequest(f"the labeling config has no <Image name=\"{to_name}\"> with a $field value")
        return self.image_fields[to_name]

    def brush_control(self, to_name: str) -> MaskControl:
        """The BrushLabels tag that answers on image `to_name`."""
        if to_name not in self.brush_controls:
            raise InvalidRequest(f"the labeling config has no <BrushLabels toName=\"{to_name}\"> to put masks in")
        return self.brush_controls[to_name]

    def mask_controls(self, to_name: str, result_type: str = "auto") -> list[MaskControl]:
        """The controls answering on image `to_name`: every one the config has (auto), or those RESULT_TYPE forces."""
        found = {kind: controls[to_name] for kind, controls in
                 (("brush", self.brush_controls), ("polygon", self.polygon_controls)) if to_name in controls}
        wanted: tuple[MaskKind, ...] = ("brush", "polygon") if result_type in ("auto", "both") else (result_type,)
        missing = [kind for kind in wanted if kind not in found]
        if not found or (result_type != "auto" and missing):
            tags = " or ".join(f"<{TAGS[kind]} toName=\"{to_name}\">" for kind in (missing or wanted))
            forced = "" if result_type == "auto" else f" (RESULT_TYPE={result_type})"
            raise InvalidRequest(f"the labeling config has no {tags} to put masks in{forced}")
        return [found[kind] for kind in wanted if kind in found]


@lru_cache(maxsize=64)
def parse_label_config(xml: str) -> LabelConfig:
    """Parse once per distinct config (Label Studio sends the same XML with every request)."""
    if len(xml) > MAX_CONFIG_CHARS:
        raise InvalidRequest(f"label_config is longer than {MAX_CONFIG_CHARS} characters")
    try:
        root = ElementTree.fromstring(xml)
    except (ElementTree.ParseError, DefusedXmlException) as error:
        raise InvalidRequest(f"label_config is not valid XML: {error}") from None
    images: dict[str, str] = {}
    controls: dict[MaskKind, dict[str, MaskControl]] = {"brush": {}, "polygon": {}}
    for tag in root.iter():
        kind = str(tag.tag).lower()
        name = tag.get("name")
        if not name:
            continue
        if kind == "image":
            value = tag.get("value", "")
            if value.startswith("$") and len(value) > 1:
                images[name] = value[1:]
        elif kind in ("brushlabels", "polygonlabels"):
            mask_kind: MaskKind = "brush" if kind == "brushlabels" else "polygon"
            control = MaskControl(name=name, labels=_labels(tag), kind=mask_kind)
            for target in _targets(tag):
                controls[mask_kind].setdefault(target, control)
    return LabelConfig(image_fields=images, brush_controls=controls["brush"], polygon_controls=controls["polygon"])


def _targets(tag: Element) -> list[str]:
    """`toName` may list several tags, comma-separated."""
    return [name.strip() for name in tag.get("toName", "").split(",") if name.strip()]


def _labels(tag: Element) -> tuple[str, ...]:
    return tuple(label.get("value", "") for label in tag.iter() if str(label.tag).lower() == "label")
