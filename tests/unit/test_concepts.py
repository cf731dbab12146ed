"""SAM 3 concept prompts read from Label Studio regions: typed text, thresholds, example rectangles, clicks."""

from __future__ import annotations

import pytest

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.pipelines.concepts import concept_label
from sam_ls_backend.protocol.concepts import concept_prompts
from sam_ls_backend.protocol.label_config import Control
from sam_ls_backend.protocol.regions import read_regions
from tests.support.ls_bodies import keypoint, rectangle


def textarea(text, to_name="image"):
    return {"id": "t", "from_name": "concept", "to_name": to_name, "type": "textarea", "value": {"text": text}}


def negative(region):
    return {**region, "is_positive": False}


def split(regions, negative_labels=frozenset()):
    """Concept prompts and the keypoints left for the tracker, as the backend reads a request."""
    read = read_regions(regions, negative_labels)
    return concept_prompts(read), list(read.keypoints)


def test_typed_text_is_the_concept_and_clicks_are_left_for_the_tracker():
    concepts, clicks = split([textarea(["  red   car "]), keypoint(10, 20)])
    assert [(c.x, c.y, c.positive) for c in clicks] == [(10, 20, True)]
    assert [(c.to_name, c.text, c.threshold, c.boxes) for c in concepts] == [("image", "red car", None, ())]


def test_a_number_typed_is_a_threshold_and_the_last_typed_wins():
    concepts, _ = split([textarea(["person"]), textarea(["0.25"]), textarea(["0.4"])])
    assert (concepts[0].text, concepts[0].threshold) == ("person", 0.4)


def test_each_submission_is_a_line_and_a_new_concept_drops_the_earlier_threshold():
    """Label Studio's page sends every submission of the TextArea so far in one region, newest last."""
    concepts, _ = split([textarea(["person", "0.5"])])
    assert (concepts[0].text, concepts[0].threshold) == ("person", 0.5)
    concepts, _ = split([textarea(["person", "0.5", "red  car"])])
    assert (concepts[0].text, concepts[0].threshold) == ("red car", None)


def test_rectangles_are_examples_and_counter_examples_in_order():
    regions = [rectangle(10, 10, 20, 20, label="car"), negative(rectangle(50, 50, 10, 10, label="car"))]
    [concept], clicks = split(regions)
    assert clicks == [] and concept.text is None and concept.label == "car"
    assert concept.boxes == ((10, 10, 30, 30), (50, 50, 60, 60)) and concept.box_labels == (1, 0)


def test_negative_labels_make_counter_examples():
    [concept], _ = split([rectangle(10, 10, 20, 20, label="Background")], frozenset({"Background"}))
    assert concept.box_labels == (0,) and concept.label is None


def test_one_concept_per_image():
    concepts, _ = split([textarea(["cat"], "left"), textarea(["dog"], "right")])
    assert {(c.to_name, c.text) for c in concepts} == {("left", "cat"), ("right", "dog")}


@pytest.mark.parametrize("region, message", [
    (textarea("x" * 201), "at most 200"),
    (textarea([3]), "list of strings"),
    ({"type": "textarea", "value": {"text": ["cat"]}}, "to_name"),
    ("not a region", "must be an object"),
    (rectangle(10, 10, 0, 20), "zero width"),
])
def test_bad_regions_are_named(region, message):
    with pytest.raises(InvalidRequest, match=message):
        split([region])


def test_the_painted_label_follows_the_rectangle_then_the_words_typed():
    controls = [Control("tag", "BrushLabels", ("person", "car"))]
    assert concept_label("anything", "car", controls) == "car"
    assert concept_label("Car", None, controls) == "car"
    assert concept_label("red car", None, controls) == "car"
    assert concept_label("bicycle", None, controls) == "person"
