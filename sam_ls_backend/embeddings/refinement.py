"""Multi-round refinement and the "current object" of an image: what lets later clicks refine an object.

Every round of prompts answered on an image key (project, task, image URL, image name) is remembered with
the objects it decoded: each object's prompt, the `mask_input` it was decoded with, the low-res logits it
answered and its **object id**, the id its result regions carry. Label Studio's page replaces a region
whose id an answer repeats (instead of adding a second one), so an answer that refines a remembered object
repeats its id. How a request's objects are matched to the memory (`RefinementHistory.plan`):

- **The request extends the last round** (every point and box of it is still there: Label Studio resends
  all of an interaction's keypoints with each click while Auto-Accept is off): a click object gets the
  logits and the id of the previous click object whose points it contains (one click more: the previous
  answer as `mask_input`, as SAM's own interactive loop does; no change: the same `mask_input` as last
  time). A rectangle object keeps the id of the same rectangle; rectangles are decoded from their box and
  points alone, as SamPredictor answers a box with clicks.
- **Only negative clicks** (Auto-Accept on sends each click alone): they refine the current object (the
  last one decoded): its prompts plus these clicks, its logits as `mask_input` unless it has a box.
- **Only negative rectangles** (a label in NEGATIVE_LABELS): cut out of every object of the last round,
  each re-decoded from what it was decoded with.
- **Keypoints with a positive one, all inside a remembered rectangle**: box plus points for that object.
- Anything else is a new object with a new id. With no round remembered, negative-only prompts answer
  nothing (a mask from negatives alone is no object).

Label Studio's draft of the task (`tasks[0].drafts`, autosaved 5 s after a change) is a hint: a draft newer
than the remembered round that holds none of its ids, and no smart keypoint or rectangle either (with
Auto-Accept off the draft holds those, not the pending answer, until ✓), means the annotator removed or
rejected the objects, so the memory is not used. The history is per image key, bounded in bytes (least
recently used out), and thread-safe.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from sam_ls_backend.lru import LRU
from sam_ls_backend.predictors.base import MaskResult, mapped_copy
from sam_ls_backend.protocol.prompts import Prompt

MAX_OBJECTS = 32  # requests with more objects than this are not remembered
LOGITS_BYTES = 256 * 256 * 4


@dataclass(frozen=True)
class Planned:
    """One object to decode: its prompt (the request's, merged with remembered ones), `mask_input` and id."""

    prompt: Prompt
    mask_input: np.ndarray | None
    object_id: str


@dataclass(frozen=True)
class Draft:
    """What the request's draft says: when it was saved (epoch seconds), the region ids it holds, and
    whether it holds smart keypoints or rectangles (an interaction still waiting for ✓)."""

    saved_at: float
    region_ids: frozenset[str]
    has_smart_regions: bool = False


@dataclass(frozen=True)
class _Object:
    prompt: Prompt
    mask_input: np.ndarray | None  # what it was decoded with
    logits: np.ndarray  # what it answered
    object_id: str


@dataclass(frozen=True)
class _Round:
    elements: frozenset  # the prompts of the request as sent
    objects: tuple[_Object, ...]
    answered_at: float

    @property
    def nbytes(self) -> int:
        return 2 * LOGITS_BYTES * len(self.objects)  # its answers and, at most, the inputs it was given


def new_object_id() -> str:
    """A fresh region id, short and alphanumeric like Label Studio's own."""
    return uuid.uuid4().hex[:12]


class RefinementHistory:
    """The last round of prompts and answers per image key; thread-safe, at most `max_bytes` of logits."""

    def __init__(self, max_bytes: int) -> None:
        self._rounds: LRU[Hashable, _Round] = LRU(max_bytes, cost=lambda entry: entry.nbytes)

    def plan(self, key: Hashable, prompts: Sequence[Prompt], drafts: Sequence[Draft] = ()) -> list[Planned]:
        """The objects to decode for a request's `prompts` on `key` (see the module's docstring)."""
        last = self._rounds.get(key)
        if last is not None and last.elements <= _elements(prompts):
            return [_extending(prompt, last.objects) for prompt in prompts]
        if last is not None and _outdated(last, drafts):
            last = None
        planned: list[Planned] = []
        for prompt in prompts:
            planned += _from_memory(prompt, last.objects if last is not None else ())
        return planned

    def mask_inputs(self, key: Hashable, prompts: Sequence[Prompt]) -> list[np.ndarray | None]:
        """The `mask_input` each prompt would be decoded with when it extends the last round, else None."""
        last = self._rounds.get(key)
        if last is None or not last.elements <= _elements(prompts):
            return [None] * len(prompts)
        return [_extending(prompt, last.objects).mask_input for prompt in prompts]

    def remember(self, key: Hashable, prompts: Sequence[Prompt], planned: Sequence[Planned] | Sequence[None],
                 answers: Sequence[MaskResult]) -> None:
        """Keep this round (the request's `prompts`, the objects decoded and their answers) for the next one.

        `planned` may hold bare `mask_input`s (None, or arrays) for callers that do not track ids.
        """
        if len(answers) > MAX_OBJECTS:
            self._rounds.pop(key)
            return
        objects = []
        for index, answer in enumerate(answers):
            plan = planned[index]
            if not isinstance(plan, Planned):
                plan = Planned(prompts[index], plan, new_object_id())
            # Copies in memory of their own: kept for many clicks, logits left in the malloc heap fragment it.
            objects.append(_Object(plan.prompt, plan.mask_input, mapped_copy(answer.low_res_logits), plan.object_id))
        self._rounds.put(key, _Round(_elements(prompts), tuple(objects), time.time()))


def _elements(prompts: Sequence[Prompt]) -> frozenset:
    """Every point (with its label), box and negative box of a request, as comparable values."""
    found: set = set()
    for prompt in prompts:
        found.update(("point", point, label) for point, label in zip(prompt.points, prompt.point_labels))
        if prompt.box is not None:
            found.add(("box", prompt.box))
        found.update(("negative box", box) for box in prompt.negative_boxes)
    return frozenset(found)


def _extending(prompt: Prompt, previous: Sequence[_Object]) -> Planned:
    """A prompt of a request that extends the last round: the previous object it grows, if any."""
    points = set(zip(prompt.points, prompt.point_labels))
    for old in previous:
        old_points = set(zip(old.prompt.points, old.prompt.point_labels))
        if prompt.box is not None:
            if old.prompt.box == prompt.box:
                return Planned(prompt, None, old.object_id)
        elif old.prompt.box is None and old_points <= points:
            return Planned(prompt, old.mask_input if old_points == points else old.logits, old.object_id)
    return Planned(prompt, None, new_object_id())


def _from_memory(prompt: Prompt, remembered: Sequence[_Object]) -> list[Planned]:
    """A prompt of a request that does not extend the last round: merged with the remembered objects it refines."""
    if prompt.is_negative_only:
        if not remembered:
            return []  # a mask from negative prompts alone is no object
        if prompt.points:  # negative clicks refine the current object
            return [_merged(remembered[-1], prompt)]
        return [_merged(old, prompt) for old in remembered]  # negative rectangles cut every object
    holder = _box_holding(prompt, remembered)
    if holder is not None:
        return [_merged(holder, prompt)]
    return [Planned(prompt, None, new_object_id())]


def _box_holding(prompt: Prompt, remembered: Sequence[_Object]) -> _Object | None:
    """The smallest remembered rectangle object holding every click of a click-only prompt."""
    if prompt.box is not None or not prompt.points:
        return None
    holders = [old for old in remembered if old.prompt.box is not None
               and all(_inside(point, old.prompt.box) for point in prompt.points)]
    return min(holders, key=lambda old: _area(old.prompt.box), default=None)


def _merged(old: _Object, prompt: Prompt) -> Planned:
    """`old`'s prompt with the clicks and negative boxes of `prompt` added, decoded from what refines it."""
    merged = replace(old.prompt, points=old.prompt.points + prompt.points,
                     point_labels=old.prompt.point_labels + prompt.point_labels,
                     negative_boxes=old.prompt.negative_boxes + prompt.negative_boxes)
    if not prompt.points:  # only cut: the same decoding as last time
        return Planned(merged, old.mask_input, old.object_id)
    return Planned(merged, None if merged.box is not None else old.logits, old.object_id)


def _outdated(last: _Round, drafts: Sequence[Draft]) -> bool:
    """True when a draft saved after the round holds none of its objects' ids and no smart region."""
    ids = {old.object_id for old in last.objects}
    return any(draft.saved_at > last.answered_at and not draft.has_smart_regions
               and not ids & {_base_id(i) for i in draft.region_ids} for draft in drafts)


def _base_id(region_id: str) -> str:
    """An object's id from one of its region ids (`<object id>`, or `<object id>_<n>` for further regions)."""
    return region_id.split("#")[0].split("_")[0]


def _inside(point: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= point[0] <= x1 and y0 <= point[1] <= y1


def _area(box: tuple[float, float, float, float] | None) -> float:
    assert box is not None
    return (box[2] - box[0]) * (box[3] - box[1])
