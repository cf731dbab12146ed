"""What a project's labeling config tells the backend: which task field holds each image, where masks go."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from xml.etree.ElementTree import Element

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from errors import InvalidRequest

MAX_CONFIG_CHARS = 1_000_000


@dataclass(frozen=True)
class MaskControl:
    """A `BrushLabels` (or `PolygonLabels`) tag: where result regions for one image are written."""

    name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a labeling config the backend needs, by `Image` name."""

    image_fields: dict[str, str]  # Image name -> task data key ("$image" -> "image")
    brush_controls: dict[str, MaskControl]  # Image name -> its BrushLabels

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
    brushes: dict[str, MaskControl] = {}
    for tag in root.iter():
        kind = str(tag.tag).lower()
        name = tag.get("name")
        if not name:
            continue
        if kind == "image":
            value = tag.get("value", "")
            if value.startswith("$") and len(value) > 1:
                images[name] = value[1:]
        elif kind == "brushlabels":
            control = MaskControl(name=name, labels=_labels(tag))
            for target in _targets(tag):
                brushes.setdefault(target, control)
    return LabelConfig(image_fields=images, brush_controls=brushes)


def _targets(tag: Element) -> list[str]:
    """`toName` may list several tags, comma-separated."""
    return [name.strip() for name in tag.get("toName", "").split(",") if name.strip()]


def _labels(tag: Element) -> tuple[str, ...]:
    return tuple(label.get("value", "") for label in tag.iter() if str(label.tag).lower() == "label")
