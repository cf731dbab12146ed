"""Reading the labeling config: where the image URL is and which BrushLabels answers."""

from __future__ import annotations

import pytest

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.outputs import output_controls
from sam_ls_backend.protocol.label_config import parse_label_config

SAM_CONFIG = ('<View><Image name="image" value="$image" zoom="true"/><BrushLabels name="tag" toName="image">'
              '<Label value="Foreground"/><Label value="Cat"/></BrushLabels><KeyPointLabels name="tag2" '
              'toName="image" smart="true"><Label value="Foreground" smart="true"/></KeyPointLabels>'
              '<RectangleLabels name="tag3" toName="image" smart="true"><Label value="Foreground"/>'
              '</RectangleLabels></View>')


def test_the_sam_config_maps_the_image_to_its_field_and_brush_control():
    config = parse_label_config(SAM_CONFIG)
    assert config.image_field("image") == "image"
    brush = config.control("image", "BrushLabels")
    assert brush.name == "tag" and brush.labels == ("Foreground", "Cat")


def test_two_images_each_with_its_own_brush():
    config = parse_label_config('<View><Image name="left" value="$a"/><Image name="right" value="$b"/>'
                                '<BrushLabels name="bl" toName="left"><Label value="x"/></BrushLabels>'
                                '<BrushLabels name="br" toName="right"><Label value="y"/></BrushLabels></View>')
    assert config.image_field("right") == "b"
    assert config.control("left", "BrushLabels").name == "bl"
    assert config.control("right", "BrushLabels").labels == ("y",)


def test_missing_brush_control_is_explained():
    config = parse_label_config('<View><Image name="image" value="$image"/></View>')
    with pytest.raises(InvalidRequest, match="no <BrushLabels"):
        output_controls(config, "image")
    with pytest.raises(InvalidRequest, match='no <Image name="other"'):
        config.image_field("other")


@pytest.mark.parametrize("xml", ["<View><Image", "not xml at all",
                                 '<!DOCTYPE x [<!ENTITY a "aaaa">]><View>&a;</View>'])
def test_bad_or_hostile_xml_is_a_client_error(xml):
    with pytest.raises(InvalidRequest, match="label_config is not valid XML"):
        parse_label_config(xml)
