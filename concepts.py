"""SAM 3 concept prompts from Label Studio regions: a typed noun phrase and example rectangles, per image.

An annotator types a concept ("person") in a `TextArea` (its value arrives in the interactive context as a
`textarea` region) or draws a smart rectangle, whose label names the concept when nothing was typed.
Positive rectangles are examples of the concept (SAM 3 finds more like them), negative ones counter-examples
(SAM 3 drops what looks like them). A number between 0 and 1 typed in the TextArea is a confidence
threshold: it filters the instances already found without running the model again. Keypoints are not
concept prompts: SAM 3's tracker segments one object from them, as SAM does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from errors import InvalidRequest
from prompts import MAX_REGIONS, Box, rectangles_from_regions

MAX_CONCEPT_CHARS = 200


@dataclass(frozen=True)
class ConceptPrompt:
    """What one request asks of SAM 3 on one image, in percent of the image; text or label names the concept."""

    to_name: str
    text: str | None = None  # typed in this request's TextArea
    threshold: float | None = None  # typed in this request's TextArea
    label: str | None = None  # the first positive rectangle's label
    boxes: tuple[Box, ...] = ()  # (x0 %, y0 %, x1 %, y1 %)
    box_labels: tuple[int, ...] = ()  # 1 = an example of the concept, 0 = a counter-example


def split_concept_regions(regions: Any, negative_labels: frozenset[str] = frozenset()) -> tuple[
        list[ConceptPrompt], list[dict]]:
    """Concept prompts (one per image) from textareas and rectangles, and the keypoint regions left for clicks."""
    if not isinstance(regions, list):
        raise InvalidRequest("context.result must be a list of regions")
    if len(regions) > MAX_REGIONS:
        raise InvalidRequest(f"context.result has {len(regions)} regions; at most {MAX_REGIONS} are accepted")
    texts: dict[str, list[str]] = {}
    rectangles: list[dict] = []
    clicks: list[dict] = []
    for index, region in enumerate(regions):
        if not isinstance(region, dict):
            raise InvalidRequest(f"context.result[{index}] must be an object")
        kind = region.get("type")
        if kind == "textarea":
            to_name, text = _typed_text(region, f"context.result[{index}]")
            if text:
                texts.setdefault(to_name, []).append(text)
        elif kind == "rectanglelabels":
            rectangles.append(region)
        elif kind == "keypointlabels":
            clicks.append(region)
    boxes: dict[str, list[tuple[Box, int, str | None]]] = {}
    for rect in rectangles_from_regions(rectangles, negative_labels):
        boxes.setdefault(rect.to_name, []).append((rect.box, int(rect.positive), rect.label))
    concepts = [_concept(to_name, texts.get(to_name, []), boxes.get(to_name, []))
                for to_name in dict.fromkeys([*texts, *boxes])]
    return concepts, clicks


def _concept(to_name: str, texts: list[str], boxes: list[tuple[Box, int, str | None]]) -> ConceptPrompt:
    """The last typed phrase and the last typed threshold win; boxes keep the annotator's order."""
    phrases = [text for text in texts if _threshold(text) is None]
    thresholds = [value for value in map(_threshold, texts) if value is not None]
    return ConceptPrompt(
        to_name=to_name,
        text=phrases[-1] if phrases else None,
        threshold=thresholds[-1] if thresholds else None,
        label=next((label for _, positive, label in boxes if positive and label), None),
        boxes=tuple(box for box, _, _ in boxes),
        box_labels=tuple(positive for _, positive, _ in boxes),
    )


def _typed_text(region: dict, where: str) -> tuple[str, str]:
    """The image a TextArea answers on and the text typed in it (lines joined, trimmed)."""
    to_name = _to_name(region, where)
    value = region.get("value")
    lines = value.get("text") if isinstance(value, dict) else None
    if isinstance(lines, str):
        lines = [lines]
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise InvalidRequest(f"{where}.value.text must be a list of strings")
    text = " ".join(" ".join(lines).split())
    if len(text) > MAX_CONCEPT_CHARS:
        raise InvalidRequest(f"{where}: a concept of {len(text)} characters; at most {MAX_CONCEPT_CHARS}")
    return to_name, text


def _threshold(text: str) -> float | None:
    """A confidence threshold typed as a number between 0 and 1, else None (the text is a concept)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def _to_name(region: dict, where: str = "a region") -> str:
    to_name = region.get("to_name")
    if not isinstance(to_name, str) or not to_name:
        raise InvalidRequest(f"{where}.to_name must name the Image the region is on")
    return to_name
