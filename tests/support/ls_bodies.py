"""Request bodies shaped exactly like Label Studio 1.23.2's (see fixtures/), for any image and regions."""

from __future__ import annotations

import copy
import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "label-studio-1.23.2"
SAM_CONFIG = json.loads((FIXTURES / "setup_request.json").read_text())["body"]["schema"]


def predict_body(image_url: str, regions: list[dict] | None, task_id: int = 1) -> dict:
    """The captured interactive /predict body with another image URL and other regions (None: task opened)."""
    body = copy.deepcopy(json.loads((FIXTURES / "predict_interactive_keypoint.json").read_text())["body"])
    body["tasks"][0]["id"] = task_id
    body["tasks"][0]["data"]["image"] = image_url
    body["params"]["context"] = None if regions is None else {"result": regions}
    return body


def keypoint(x: float, y: float, positive: bool = True, width: int = 320, height: int = 240,
             label: str = "Foreground") -> dict:
    """A smart keypoint region at (x %, y %)."""
    return {"original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": 0.3125, "keypointlabels": [label]},
            "is_positive": positive, "id": f"kp_{x}_{y}", "from_name": "tag2", "to_name": "image",
            "type": "keypointlabels", "origin": "manual"}


def rectangle(x: float, y: float, w: float, h: float, width: int = 320, height: int = 240,
              label: str = "Foreground") -> dict:
    """A smart rectangle region with top-left (x %, y %) and size (w %, h %)."""
    return {"original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
            "is_positive": True, "id": f"rect_{x}_{y}", "from_name": "tag3", "to_name": "image",
            "type": "rectanglelabels", "origin": "manual"}

# Two labels on both the brush and the smart rectangles: several objects of a task, each with its own label.
TWO_LABELS_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Cat" background="#FF0000"/><Label value="Dog" background="#00FF00"/>
  </BrushLabels>
  <RectangleLabels name="tag3" toName="image" smart="true">
    <Label value="Cat" background="#FF8800"/><Label value="Dog" background="#0088FF"/>
  </RectangleLabels>
</View>"""

# Polygons from smart rectangles: the README's polygon-only config.
POLYGON_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <PolygonLabels name="poly" toName="image"><Label value="Object" background="#FF0000"/></PolygonLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object" background="#0000FF"/></RectangleLabels>
</View>"""
