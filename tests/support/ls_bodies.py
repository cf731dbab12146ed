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

LEARNING_CONFIG = """<View><Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>"""


def annotation_webhook(results: list[dict], annotation: int, task: int, image_url: str,
                       action: str = "ANNOTATION_CREATED", config: str = LEARNING_CONFIG) -> dict:
    """The captured ANNOTATION_CREATED webhook body with another annotation, task image and config."""
    body = copy.deepcopy(json.loads((FIXTURES / "webhook_annotation_created.json").read_text())["body"])
    body["action"] = action
    body["annotation"].update(id=annotation, task=task, result=results)
    body["task"].update(id=task, data={"image": image_url})
    body["project"]["label_config"] = config
    return body


def brush_result(mask, region_id: str, label: str = "Object", from_name: str = "tag") -> dict:
    """A `brushlabels` result as Label Studio stores an annotator's brush: the mask's RLE by the SDK's encoder."""
    import numpy as np
    from label_studio_sdk.converter.brush import mask2rle

    height, width = mask.shape
    rle = mask2rle(np.asarray(mask, dtype=np.uint8) * 255) if mask.any() else [0, 0, 0, 0]
    return {"id": region_id, "from_name": from_name, "to_name": "image", "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": [int(byte) for byte in rle], "brushlabels": [label]}}
