"""Boxes from masks: the tight box in Label Studio's percent frame, and which RectangleLabels receives it."""

from __future__ import annotations

import numpy as np
import pytest

from sam_ls_backend.errors import ConfigError, InvalidRequest
from sam_ls_backend.outputs import images_with_outputs, output_controls
from sam_ls_backend.outputs.rectangle import RectangleOutput, mask_box
from sam_ls_backend.protocol.label_config import Control, parse_label_config
from sam_ls_backend.protocol.polygons import PolygonOptions
from sam_ls_backend.settings import Settings

OPTIONS = PolygonOptions(1.0, 200, 64)
DETECTION = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="car"/><Label value="dog"/></RectangleLabels>
  <RectangleLabels name="prompt" toName="image" smart="true"><Label value="car"/></RectangleLabels>
  <KeyPointLabels name="point" toName="image" smartOnly="true"><Label value="car"/></KeyPointLabels>
</View>"""
PROMPTS_ONLY = """<View><Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="car"/></BrushLabels>
  <RectangleLabels name="prompt" toName="image" smart="true"><Label value="car"/></RectangleLabels>
  <RectangleLabels name="only" toName="image" smartOnly="true"><Label value="car"/></RectangleLabels>
</View>"""


def random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        y, x = rng.integers(0, height), rng.integers(0, width)
        mask[y:y + rng.integers(1, height), x:x + rng.integers(1, width)] = True
    return mask


@pytest.mark.parametrize("seed", range(20))
def test_the_box_holds_exactly_the_mask_pixels(seed):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(1, 90)), int(rng.integers(1, 90))
    mask = random_mask(rng, height, width)
    ys, xs = np.nonzero(mask)
    assert mask_box(mask) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    (region,) = RectangleOutput().results(mask, "dog", Control("box", "RectangleLabels", ("car", "dog")), "image",
                                          0.5, OPTIONS)
    value = region["value"]
    assert region["type"] == "rectanglelabels" and region["from_name"] == "box" and region["to_name"] == "image"
    assert value["rectanglelabels"] == ["dog"] and value["rotation"] == 0 and region["score"] == 0.5
    assert (region["original_width"], region["original_height"]) == (width, height)
    # Back to pixel edges: every set pixel inside, and each edge touches a set pixel.
    x0, y0 = value["x"] * width / 100, value["y"] * height / 100
    x1, y1 = x0 + value["width"] * width / 100, y0 + value["height"] * height / 100
    assert (x0, y0, x1, y1) == pytest.approx((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))


def test_an_empty_mask_has_no_box():
    assert mask_box(np.zeros((5, 7), dtype=bool)) is None
    assert RectangleOutput().results(np.zeros((5, 7), dtype=bool), None, Control("box", "RectangleLabels", ("a",)),
                                     "image", 0.1, OPTIONS) == []


def test_a_rectangle_without_smart_receives_boxes_a_smart_one_prompts():
    config = parse_label_config(DETECTION)
    ((output, control),) = output_controls(config, "image")
    assert output.kind == "rectangle" and control.name == "box" and not control.smart
    assert config.control("image", "RectangleLabels", smart=True).name == "prompt"
    assert config.control("image", "KeyPointLabels").smart  # smartOnly="true" is smart too
    assert images_with_outputs(config) == {"image"}


def test_smart_rectangles_alone_are_no_output():
    config = parse_label_config(PROMPTS_ONLY)
    assert [output.kind for output, _ in output_controls(config, "image")] == ["brush"]
    with pytest.raises(InvalidRequest, match="RectangleLabels"):
        output_controls(config, "image", "rectangle")
    prompts = parse_label_config(PROMPTS_ONLY.replace('<BrushLabels name="tag" toName="image"><Label value="car"/>'
                                                      '</BrushLabels>', ""))
    assert images_with_outputs(prompts) == set()


def test_result_type_accepts_rectangle_and_preannotate_its_kinds():
    assert Settings.from_env({"RESULT_TYPE": "Rectangle"}).result_type == "rectangle"
    assert Settings.from_env({"PREANNOTATE": "Everything"}).preannotate == "everything"
    assert Settings.from_env({}).preannotate == "off"
    with pytest.raises(ConfigError, match="PREANNOTATE"):
        Settings.from_env({"PREANNOTATE": "all"})
    with pytest.raises(ConfigError, match="EVERYTHING_PRED_IOU"):
        Settings.from_env({"EVERYTHING_PRED_IOU": "1.5"})
