"""Multi-round refinement: when a click extends the previous request's prompts on the same image, SAM gets
the previous answer's low-res logits as `mask_input`, as SAM's own interactive loop does.

A request extends the previous one on an image when every point and box of the previous request is still
there (Label Studio resends all of an interaction's regions with each click). A click object (points, no
rectangle) then gets the logits of the previous click object whose points it contains: one click more →
the previous answer; no change → the same `mask_input` as last time (the same answer). Rectangle objects
are decoded from their box and points alone, as SamPredictor answers a box with clicks: the box already
bounds the object. Anything else (a point removed or moved, another image) is a reset: decoding starts
fresh. The history is per image key, bounded in bytes (least recently used out), and thread-safe.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from sam_ls_backend.lru import LRU
from sam_ls_backend.predictors.base import MaskResult, mapped_copy
from sam_ls_backend.protocol.prompts import Prompt

MAX_OBJECTS = 32  # requests with more objects than this are not remembered
LOGITS_BYTES = 256 * 256 * 4


@dataclass(frozen=True)
class _Object:
    prompt: Prompt
    mask_input: np.ndarray | None  # what it was decoded with
    logits: np.ndarray  # what it answered


@dataclass(frozen=True)
class _Round:
    elements: frozenset
    objects: tuple[_Object, ...]

    @property
    def nbytes(self) -> int:
        return 2 * LOGITS_BYTES * len(self.objects)  # its answers and, at most, the inputs it was given


class RefinementHistory:
    """The last round of prompts and answers per image key; thread-safe, at most `max_bytes` of logits."""

    def __init__(self, max_bytes: int) -> None:
        self._rounds: LRU[Hashable, _Round] = LRU(max_bytes, cost=lambda entry: entry.nbytes)

    def mask_inputs(self, key: Hashable, prompts: Sequence[Prompt]) -> list[np.ndarray | None]:
        """The `mask_input` for each prompt: previous logits when the request extends the last round, else None."""
        last = self._rounds.get(key)
        if last is None or not last.elements <= _elements(prompts):
            return [None] * len(prompts)
        return [_previous_logits(prompt, last.objects) for prompt in prompts]

    def remember(self, key: Hashable, prompts: Sequence[Prompt], mask_inputs: Sequence[np.ndarray | None],
                 answers: Sequence[MaskResult]) -> None:
        """Keep this round as the one the next request on `key` may extend."""
        if len(prompts) > MAX_OBJECTS:
            self._rounds.pop(key)
            return
        # Copies in memory of their own: kept for many clicks, logits left in the malloc heap fragment it.
        objects = tuple(_Object(p, m, mapped_copy(a.low_res_logits)) for p, m, a in zip(prompts, mask_inputs, answers))
        self._rounds.put(key, _Round(_elements(prompts), objects))


def _elements(prompts: Sequence[Prompt]) -> frozenset:
    """Every point (with its label), box and negative box of a request, as comparable values."""
    found: set = set()
    for prompt in prompts:
        found.update(("point", point, label) for point, label in zip(prompt.points, prompt.point_labels))
        if prompt.box is not None:
            found.add(("box", prompt.box))
        found.update(("negative box", box) for box in prompt.negative_boxes)
    return frozenset(found)


def _previous_logits(prompt: Prompt, previous: Sequence[_Object]) -> np.ndarray | None:
    """The logits of the previous click object this click object extends (a subset of its points), if any."""
    if prompt.box is not None:
        return None
    points = set(zip(prompt.points, prompt.point_labels))
    for old in previous:
        old_points = set(zip(old.prompt.points, old.prompt.point_labels))
        if old.prompt.box is None and old_points <= points:
            return old.mask_input if old_points == points else old.logits
    return None
