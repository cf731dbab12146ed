"""Smart regions as Label Studio 1.23.2 sends them, grouped into SAM prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.protocol.prompts import Prompt, prompts_from_regions

FIXTURES = Path(__file__).parents[1] / "support" / "fixtures" / "label-studio-1.23.2"


def captured_regions(name: str) -> list[dict]:
    return json.loads((FIXTURES / name).read_text())["body"]["params"]["context"]["result"]


def keypoint(x: float, y: float, positive: bool | None = True, label: str = "Foreground", **extra) -> dict:
    region = {"type": "keypointlabels", "to_name": "image", "from_name": "tag2",
              "value": {"x": x, "y": y, "width": 0.3, "keypointlabels": [label]}, **extra}
    if positive is not None:
        region["is_positive"] = positive
    return region


def rectangle(x: float, y: float, w: float, h: float, label: str = "Foreground", rotation: float = 0,
              positive: bool = True, size: tuple[int, int] = (320, 240)) -> dict:
    return {"type": "rectanglelabels", "to_name": "image", "from_name": "tag3", "is_positive": positive,
            "original_width": size[0], "original_height": size[1],
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]}}


def test_captured_keypoint_is_one_positive_click():
    (prompt,) = prompts_from_regions(captured_regions("predict_interactive_keypoint.json"))
    assert prompt == Prompt(label="Foreground", to_name="image", points=((50.0, 50.0),), point_labels=(1,))
    assert prompt.is_single_click


def test_captured_positive_and_negative_keypoints_make_one_object():
    (prompt,) = prompts_from_regions(captured_regions("predict_interactive_keypoint_pos_neg.json"))
    assert prompt.points == ((50.0, 50.0), (10.0, 10.0))
    assert prompt.point_labels == (1, 0)
    assert not prompt.is_single_click


def test_captured_rectangle_is_a_box_prompt():
    (prompt,) = prompts_from_regions(captured_regions("predict_interactive_rectangle.json"))
    assert prompt.box == (25.0, 25.0, 75.0, 75.0)
    assert prompt.points == ()


def test_percent_becomes_pixels_of_the_original_image():
    prompt = Prompt(label="x", to_name="image", points=((50.0, 25.0),), point_labels=(1,), box=(10, 20, 60, 80))
    coords, labels, box = prompt.in_pixels(width=640, height=480)
    np.testing.assert_allclose(coords, [[320.0, 120.0]])
    np.testing.assert_array_equal(labels, [1])
    np.testing.assert_allclose(box, [64.0, 96.0, 384.0, 384.0])


def test_missing_flag_means_positive_and_value_positive_is_accepted():
    prompts = prompts_from_regions([keypoint(10, 10, positive=None), keypoint(20, 20, positive=None)])
    assert prompts[0].point_labels == (1, 1)
    newer = keypoint(30, 30, positive=None)
    newer["value"]["positive"] = False
    assert prompts_from_regions([keypoint(10, 10), newer])[0].point_labels == (1, 0)


def test_each_rectangle_is_an_object_with_its_inner_keypoints():
    regions = [rectangle(0, 0, 40, 40, "Cat"), rectangle(50, 50, 40, 40, "Dog"),
               keypoint(10, 10, False), keypoint(60, 60, True)]
    cat, dog = prompts_from_regions(regions)
    assert (cat.label, cat.box, cat.points, cat.point_labels) == ("Cat", (0, 0, 40, 40), ((10, 10),), (0,))
    assert (dog.label, dog.box, dog.points, dog.point_labels) == ("Dog", (50, 50, 90, 90), ((60, 60),), (1,))


def test_keypoint_in_nested_rectangles_goes_to_the_smallest():
    outer, inner = prompts_from_regions([rectangle(0, 0, 90, 90), rectangle(20, 20, 10, 10), keypoint(25, 25)])
    assert outer.points == () and inner.points == ((25, 25),)


def test_free_positive_clicks_make_their_own_object():
    regions = [rectangle(0, 0, 20, 20), keypoint(80, 80), keypoint(70, 70, False)]
    box_object, click_object = prompts_from_regions(regions)
    assert box_object.points == ()
    assert click_object.box is None and click_object.point_labels == (1, 0)


def test_free_negative_clicks_refine_every_rectangle():
    first, second = prompts_from_regions([rectangle(0, 0, 20, 20), rectangle(30, 30, 20, 20), keypoint(90, 90, False)])
    assert first.points == ((90, 90),) and first.point_labels == (0,)
    assert second.points == ((90, 90),)


def test_rotated_rectangle_becomes_its_bounding_box_in_pixels_of_a_non_square_image():
    """On 320×240, (50 %, 10 %) is pixel (160, 24) and 20 % × 10 % is 64 × 24 px; turned 90° clockwise about
    that corner it spans x 136..160, y 24..88 px: percent units are not turned, pixels are."""
    (prompt,) = prompts_from_regions([rectangle(50, 10, 20, 10, rotation=90, size=(320, 240))])
    np.testing.assert_allclose(prompt.box, (42.5, 10, 50, 88 / 2.4), atol=1e-9)
    _, _, box = prompt.in_pixels(320, 240)
    np.testing.assert_allclose(box, (136, 24, 160, 88), atol=1e-9)
    (square,) = prompts_from_regions([rectangle(50, 10, 20, 10, rotation=90, size=(300, 300))])
    np.testing.assert_allclose(square.box, (40, 10, 50, 30), atol=1e-9)


def test_keypoint_in_a_rotated_rectangle_is_grouped_by_where_it_lands_in_pixels():
    """Inside the true (pixel) bounding box at x = 45 %, outside the percent-rotated one (x ≥ 40 % either way,
    but y = 35 % is past the percent box's 30 %)."""
    rect = rectangle(50, 10, 20, 10, rotation=90, size=(320, 240))
    (prompt,) = prompts_from_regions([rect, keypoint(45, 35, False)])
    assert prompt.points == ((45, 35),)


def test_keypoint_lands_on_the_pixel_of_its_percent_on_a_non_square_image():
    (prompt,) = prompts_from_regions([keypoint(25, 75)])
    coords, _, _ = prompt.in_pixels(width=400, height=200)
    np.testing.assert_allclose(coords, [[100.0, 150.0]])
    coords, _, _ = prompt.in_pixels(width=201, height=333)
    np.testing.assert_allclose(coords, [[50.25, 249.75]])


def test_rotated_rectangle_without_the_image_size_is_refused():
    region = rectangle(10, 10, 20, 20, rotation=30)
    del region["original_width"]
    with pytest.raises(InvalidRequest, match="original_width"):
        prompts_from_regions([region])


def test_negative_rectangles_are_cut_out_of_every_object_on_their_image():
    regions = [rectangle(0, 0, 50, 50, "Cat"), rectangle(20, 20, 10, 10, positive=False), keypoint(80, 80),
               keypoint(25, 25)]
    cat, clicked = prompts_from_regions(regions)
    assert cat.box == (0, 0, 50, 50) and cat.negative_boxes == ((20, 20, 30, 30),)
    assert cat.points == ((25, 25),), "a keypoint inside a negative rectangle belongs to the positive one around it"
    assert clicked.negative_boxes == ((20, 20, 30, 30),)


def test_a_label_listed_as_negative_makes_a_negative_rectangle_and_click():
    regions = [rectangle(0, 0, 50, 50), rectangle(10, 10, 10, 10, "Background"),
               keypoint(40, 40, label="Background")]
    (prompt,) = prompts_from_regions(regions, negative_labels=frozenset({"Background"}))
    assert prompt.negative_boxes == ((10, 10, 20, 20),)
    assert prompt.point_labels == (0,)


def test_cutting_a_negative_box_clears_the_pixels_whose_centres_it_covers():
    prompt = Prompt(label=None, to_name="image", points=((1, 1),), point_labels=(1,),
                    negative_boxes=((10, 20, 35, 50),))
    mask = np.ones((10, 20), dtype=bool)
    cut = prompt.cut_negative_boxes(mask)
    # x 10..35 % of 20 px = 2..7 px: centres 2.5..6.5 are columns 2..6; y 20..50 % of 10 px = 2..5: rows 2..4.
    expected = np.ones_like(mask)
    expected[2:5, 2:7] = False
    np.testing.assert_array_equal(cut, expected)
    assert mask.all(), "the answer's own mask is left as it was"


def test_other_region_types_are_ignored():
    choice = {"type": "choices", "value": {"choices": ["a"]}, "to_name": "image"}
    assert len(prompts_from_regions([choice, keypoint(5, 5)])) == 1


def test_negative_prompts_alone_are_one_negative_only_prompt_per_image():
    """Label Studio's page sends an Alt-click, or a rectangle labelled in NEGATIVE_LABELS, alone: what it
    refines is for the refinement history to find."""
    (cut,) = prompts_from_regions([rectangle(1, 1, 5, 5, positive=False)])
    assert cut.is_negative_only and cut.box is None and cut.points == () and cut.negative_boxes == ((1, 1, 6, 6),)
    (clicks,) = prompts_from_regions([keypoint(5, 5, positive=False)])
    assert clicks.is_negative_only and clicks.point_labels == (0,)
    (clicked,) = prompts_from_regions([keypoint(5, 5), keypoint(7, 7, positive=False)])
    assert not clicked.is_negative_only


@pytest.mark.parametrize("regions, message", [
    ("nope", "must be a list"),
    ([], "no keypointlabels or rectanglelabels"),
    ([{"type": "keypointlabels", "to_name": "image", "value": {"x": "1", "y": 2}}], "value.x must be a number"),
    ([keypoint(float("nan"), 5)], "value.x must be between"),
    ([keypoint(5, 101)], "value.y must be between"),
    ([keypoint(-1, 5)], "value.x must be between"),
    ([keypoint(5, 5, positive="yes")], "is_positive must be true or false"),
    ([rectangle(10, 10, 0, 5)], "zero width or height"),
    ([keypoint(5, 5, image_rotation=90)], "rotated images"),
    ([{"type": "keypointlabels", "value": {"x": 1, "y": 1}}], "to_name"),
    ([{"type": "rectanglelabels", "to_name": "image", "value": []}], "value must be an object"),
    ([7], "must be an object"),
])
def test_malformed_regions_are_refused_with_a_message_naming_the_problem(regions, message):
    with pytest.raises(InvalidRequest) as caught:
        prompts_from_regions(regions)
    assert message in caught.value.message
    assert caught.value.status == 400
