"""Hypothesis strategies for the regions of /predict: anything JSON can carry, and well-formed smart regions
with extreme numbers (shared by the property tests of every model)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

WIDTH, HEIGHT = 128, 96  # the scene the property tests click on
EXAMPLES = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Numbers a JSON body can carry, in range and far out of it: NaN and infinities (written as bare tokens),
# integers too large for a float, subnormals.
EXTREME_NUMBERS = st.sampled_from([0, 100, -0.0, 5e-324, 1e-9, 99.999999, 100.000001, -1, 1e308, 10**400, -10**400,
                                   float("nan"), float("inf"), -float("inf")])
NUMBERS = st.one_of(st.floats(0, 100), st.floats(0, 100), st.floats(), st.integers(), EXTREME_NUMBERS)
JSON = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=10)
KINDS = st.sampled_from(["keypointlabels", "rectanglelabels", "polygonlabels", "brushlabels", "KeyPointLabels", ""])
LABELS = st.lists(st.text(max_size=12), max_size=2) | JSON


def anything_or(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """`strategy` most of the time, any JSON value now and then."""
    return st.one_of(strategy, strategy, strategy, JSON)


ANY_VALUE = st.fixed_dictionaries({}, optional={
    "x": anything_or(NUMBERS), "y": anything_or(NUMBERS), "width": anything_or(NUMBERS),
    "height": anything_or(NUMBERS), "rotation": anything_or(NUMBERS), "keypointlabels": LABELS,
    "rectanglelabels": LABELS, "positive": anything_or(st.booleans()),
})
ANY_REGION = st.fixed_dictionaries({}, optional={
    "type": anything_or(KINDS), "value": anything_or(ANY_VALUE), "to_name": anything_or(st.just("image")),
    "from_name": JSON, "id": JSON, "is_positive": anything_or(st.booleans()),
    "image_rotation": anything_or(st.sampled_from([0, 90, 360, -360])), "original_width": JSON,
})

PERCENT = st.one_of(st.floats(0, 100), st.sampled_from([0.0, 100.0, 5e-324, 99.99999999]))
SIZE = st.one_of(st.floats(1e-9, 100), st.sampled_from([5e-324, 100.0]))


# Where the positive flag sits: top-level `is_positive` (Label Studio), `value.positive` (newer tools), or nowhere.
FLAGS = st.sampled_from([({}, {}), ({"is_positive": True}, {}), ({"is_positive": False}, {}),
                         ({}, {"positive": False}), ({"is_positive": None}, {})])
POSITIVE = st.sampled_from([({}, {}), ({"is_positive": True}, {}), ({}, {"positive": True})])


def keypoints(flags: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(lambda x, y, flag, label: {
        "type": "keypointlabels", "to_name": "image", "from_name": "tag2", **flag[0],
        "value": {"x": x, "y": y, "width": 0.3, "keypointlabels": label, **flag[1]}},
        PERCENT, PERCENT, flags, st.sampled_from([["Foreground"], [], ["Other"]]))


def rectangles() -> st.SearchStrategy:
    return st.builds(lambda x, y, w, h, angle: {
        "type": "rectanglelabels", "to_name": "image", "from_name": "tag3", "is_positive": True,
        "original_width": WIDTH, "original_height": HEIGHT,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": angle, "rectanglelabels": ["Foreground"]}},
        PERCENT, PERCENT, SIZE, SIZE, st.one_of(st.just(0), st.floats(-360, 360)))


WELL_FORMED = st.one_of(
    st.tuples(st.lists(rectangles(), min_size=1, max_size=3), st.lists(keypoints(FLAGS), max_size=4)),
    st.tuples(st.lists(keypoints(POSITIVE), min_size=1, max_size=2), st.lists(keypoints(FLAGS), max_size=4)),
).map(lambda parts: parts[0] + parts[1])


# A field of a well-formed region (top level, or inside `value`) that `mutated` replaces or removes; the
# numbers twice, as they are where arithmetic can go wrong.
NUMBER_FIELDS = [("image_rotation",), ("original_width",), ("value", "x"), ("value", "y"), ("value", "width"),
                 ("value", "height"), ("value", "rotation")]
FIELDS = [("type",), ("value",), ("to_name",), ("is_positive",), ("value", "keypointlabels"),
          ("value", "rectanglelabels"), ("value", "positive"), *NUMBER_FIELDS, *NUMBER_FIELDS]


def mutated(region: dict, field: tuple[str, ...], replacement: Any) -> dict:
    """`region` with one field replaced by `replacement`, or removed when it is `...`."""
    holder = region if len(field) == 1 else region["value"]
    if replacement is ...:
        holder.pop(field[-1], None)
    else:
        holder[field[-1]] = replacement
    return region


NEAR_VALID = st.builds(mutated, keypoints(FLAGS) | rectangles(), st.sampled_from(FIELDS),
                       st.one_of(EXTREME_NUMBERS, EXTREME_NUMBERS, EXTREME_NUMBERS, JSON, st.just(...)))
ANY_RESULT = anything_or(st.lists(st.one_of(ANY_REGION, NEAR_VALID, NEAR_VALID, keypoints(FLAGS), rectangles(), JSON),
                                  max_size=5))
