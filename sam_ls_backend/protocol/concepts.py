"""SAM 3 concept prompts from Label Studio regions: a typed noun phrase and example rectangles, per image.

An annotator types a concept ("person") in a `TextArea` (its value arrives in the interactive context as a
`textarea` region) or draws a smart rectangle, whose label names the concept when nothing was typed.
Positive rectangles are examples of the concept (SAM 3 finds more like them), negative ones counter-examples
(SAM 3 drops what looks like them). A number between 0 and 1 typed in the TextArea is a confidence
threshold: it filters the instances already found without running the model again. Each submission of the
TextArea is one line of its value (the page sends them all, newest last): the last phrase is the concept,
and a threshold counts only when typed after it (a new concept starts from the default threshold). Keypoints are not
concept prompts: SAM 3's tracker segments one object from them, as SAM does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sam_ls_backend.protocol.regions import Box, Regions


@dataclass(frozen=True)
class ConceptPrompt:
    """What one request asks of SAM 3 on one image, in percent of the image; text or label names the concept."""

    to_name: str
    text: str | None = None  # typed in this request's TextArea
    threshold: float | None = None  # typed in this request's TextArea
    label: str | None = None  # the first positive rectangle's label
    boxes: tuple[Box, ...] = ()  # (x0 %, y0 %, x1 %, y1 %)
    box_labels: tuple[int, ...] = ()  # 1 = an example of the concept, 0 = a counter-example


def concept_prompts(regions: Regions) -> list[ConceptPrompt]:
    """One concept prompt per image that has typed text or rectangles; keypoints are left for clicks."""
    texts: dict[str, list[str]] = {}
    for typed in regions.texts:
        texts.setdefault(typed.to_name, []).extend(typed.lines or (typed.text,))
    boxes: dict[str, list[tuple[Box, int, str | None]]] = {}
    for rect in regions.rectangles:
        boxes.setdefault(rect.to_name, []).append((rect.box, int(rect.positive), rect.label))
    return [_concept(to_name, texts.get(to_name, []), boxes.get(to_name, []))
            for to_name in dict.fromkeys([*texts, *boxes])]


def _concept(to_name: str, texts: list[str], boxes: list[tuple[Box, int, str | None]]) -> ConceptPrompt:
    """The last typed phrase and the last threshold typed after it win; boxes keep the annotator's order."""
    phrase, threshold = None, None
    for text in texts:
        value = _threshold(text)
        if value is None:
            phrase, threshold = text, None
        else:
            threshold = value
    return ConceptPrompt(
        to_name=to_name,
        text=phrase,
        threshold=threshold,
        label=next((label for _, positive, label in boxes if positive and label), None),
        boxes=tuple(box for box, _, _ in boxes),
        box_labels=tuple(positive for _, positive, _ in boxes),
    )


def _threshold(text: str) -> float | None:
    """A confidence threshold typed as a number between 0 and 1, else None (the text is a concept)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None
