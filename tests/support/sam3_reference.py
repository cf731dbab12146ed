"""SAM 3 as transformers answers it from pixels, and the concept config: the oracle of the SAM 3 tests."""

from __future__ import annotations

import numpy as np
import torch
import transformers

CONCEPT_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="person"/><Label value="car"/></BrushLabels>'
    '<TextArea name="concept" toName="image" editable="true" rows="1" smart="true"/>'
    '<KeyPointLabels name="tag2" toName="image" smart="true"><Label value="person" smart="true"/></KeyPointLabels>'
    '<RectangleLabels name="tag3" toName="image" smart="true"><Label value="person"/><Label value="car"/>'
    '</RectangleLabels></View>')


def textarea(text: str, to_name: str = "image") -> dict:
    """What Label Studio sends for a smart TextArea's submitted text."""
    return {"id": f"txt_{text}", "from_name": "concept", "to_name": to_name, "type": "textarea",
            "value": {"text": [text]}, "origin": "manual"}


@torch.inference_mode()
def concept_reference(folder, image: np.ndarray, text: str, threshold: float, boxes=None, box_labels=None):
    """Sam3Model from pixels and Sam3Processor's instance post-processing: (score, mask) pairs, best first."""
    model = transformers.Sam3Model.from_pretrained(folder, local_files_only=True).eval()
    processor = transformers.Sam3Processor.from_pretrained(folder, local_files_only=True)
    extra = {"input_boxes": [boxes], "input_boxes_labels": [box_labels]} if boxes else {}
    inputs = processor(images=image, text=text, return_tensors="pt", **extra)
    output = model(**inputs)
    found = processor.post_process_instance_segmentation(output, threshold=threshold, mask_threshold=0.5,
                                                         target_sizes=inputs["original_sizes"].tolist())[0]
    order = torch.argsort(found["scores"], descending=True)
    return [(float(found["scores"][i]), found["masks"][i].numpy()) for i in order]


def middle_threshold(folder, image, text, **boxes) -> str:
    """A threshold, as an annotator would type it, that keeps about half of SAM 3's candidates.

    Random weights score every candidate close to 0.25, so SAM 3's default of 0.5 would keep none.
    """
    scores = [score for score, _ in concept_reference(folder, image, text, 0.0, **boxes)]
    return f"{np.quantile(scores, 0.5):.6f}"
