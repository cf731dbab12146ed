"""What a project's labeling config tells the backend: which task field holds each image, which controls point at it.

Every control tag with a `name` and a `toName` is recorded with its labels and whether it is smart
(`smart="true"` or `smartOnly="true"`: Label Studio then offers it as an Auto-Annotation tool, whose regions are
sent to the backend as prompts). Which controls receive masks is the output registry's business (outputs/),
which regions are prompts is the region reader's (regions.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from xml.etree.ElementTree import Element

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from sam_ls_backend.errors import InvalidRequest

MAX_CONFIG_CHARS = 1_000_000
DEFAULT_FRAMERATE = 24.0  # Label Studio's <Video> framerate when the tag sets none


@dataclass(frozen=True)
class Control:
    """A control tag of the config (`BrushLabels`, `PolygonLabels`, ...): its name and its labels."""

    name: str
    tag: str  # as written in the config, e.g. BrushLabels
    labels: tuple[str, ...]
    smart: bool = False  # smart="true" or smartOnly="true": an Auto-Annotation (prompting) tool
    # What SAM 3 looks for under each label (PREANNOTATE=concepts): the <Label concept="..."> attribute, which
    # Label Studio keeps and ignores, else the label's value. Same order as `labels`.
    concepts: tuple[str, ...] = ()

    def concept_of(self, label: str) -> str:
        """The SAM 3 phrase for `label`: its `concept` attribute, else the label itself."""
        return dict(zip(self.labels, self.concepts)).get(label) or label


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a labeling config the backend needs, by `Image` name."""

    image_fields: dict[str, str]  # Image name -> task data key ("$image" -> "image")
    controls: dict[str, tuple[Control, ...]]  # Image (or Video) name -> the controls pointing at it, in order
    video_fields: dict[str, str] = field(default_factory=dict)  # Video name -> task data key
    framerates: dict[str, float] = field(default_factory=dict)  # Video name -> its framerate attribute

    def image_field(self, to_name: str) -> str:
        """The task data key holding the image the regions are drawn on."""
        if to_name not in self.image_fields:
            raise InvalidRequest(f"the labeling config has no <Image name=\"{to_name}\"> with a $field value")
        return self.image_fields[to_name]

    def control(self, to_name: str, tag: str, smart: bool | None = None) -> Control | None:
        """The first control of kind `tag` (any case) that points at image `to_name`; with `smart` given, the
        first that is (True) or is not (False) a smart tool."""
        return next((c for c in self.controls.get(to_name, ())
                     if c.tag.lower() == tag.lower() and (smart is None or c.smart == smart)), None)


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
    videos: dict[str, str] = {}
    framerates: dict[str, float] = {}
    controls: dict[str, list[Control]] = {}
    for tag in root.iter():
        kind = str(tag.tag)
        name = tag.get("name")
        if not name:
            continue
        if kind.lower() == "image":
            value = tag.get("value", "")
            if value.startswith("$") and len(value) > 1:
                images[name] = value[1:]
        elif kind.lower() == "video":
            value = tag.get("value", "")
            if value.startswith("$") and len(value) > 1:
                videos[name] = value[1:]
                framerates[name] = _framerate(tag.get("framerate"))
        elif tag.get("toName"):
            control = Control(name=name, tag=kind, labels=_labels(tag), smart=_is_smart(tag), concepts=_concepts(tag))
            for target in _targets(tag):
                controls.setdefault(target, []).append(control)
    return LabelConfig(image_fields=images, controls={name: tuple(found) for name, found in controls.items()},
                       video_fields=videos, framerates=framerates)


def _framerate(raw: str | None) -> float:
    """A `<Video>` tag's framerate attribute; Label Studio's default when absent or not a positive number."""
    try:
        rate = float(raw) if raw is not None else DEFAULT_FRAMERATE
    except ValueError:
        return DEFAULT_FRAMERATE
    return rate if math.isfinite(rate) and rate > 0 else DEFAULT_FRAMERATE


def _targets(tag: Element) -> list[str]:
    """`toName` may list several tags, comma-separated."""
    return [name.strip() for name in tag.get("toName", "").split(",") if name.strip()]


def _labels(tag: Element) -> tuple[str, ...]:
    return tuple(label.get("value", "") for label in tag.iter() if str(label.tag).lower() == "label")


def _concepts(tag: Element) -> tuple[str, ...]:
    return tuple(" ".join((label.get("concept") or label.get("value") or "").split())
                 for label in tag.iter() if str(label.tag).lower() == "label")


def _is_smart(tag: Element) -> bool:
    return any(tag.get(name, "").strip().lower() == "true" for name in ("smart", "smartOnly"))
