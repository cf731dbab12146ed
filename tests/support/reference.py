"""What `segment_anything.SamPredictor` answers for a prompt: the ground truth our masks must equal."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor


def reference_mask(checkpoint: Path, image: np.ndarray, point_coords: np.ndarray | None = None,
                   point_labels: np.ndarray | None = None, box: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """SamPredictor's mask (H×W bool) and score; a lone positive click takes the best of three candidates."""
    mask, score, _ = reference_answer(checkpoint, image, point_coords, point_labels, box)
    return mask, score


def reference_answer(checkpoint: Path, image: np.ndarray, point_coords: np.ndarray | None = None,
                     point_labels: np.ndarray | None = None, box: np.ndarray | None = None,
                     mask_input: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """SamPredictor's mask, score and low-res logits (1×256×256, the next round's `mask_input`), as SAM's
    interactive loop calls it: a lone positive click takes the best of three candidates."""
    predictor = _predictor_on(str(checkpoint), image.tobytes(), image.shape)
    single_click = box is None and mask_input is None and point_labels is not None and list(point_labels) == [1]
    masks, scores, logits = predictor.predict(point_coords=point_coords, point_labels=point_labels, box=box,
                                              mask_input=mask_input, multimask_output=single_click)
    best = int(np.argmax(scores)) if single_click else 0
    return masks[best], float(scores[best]), logits[best][None]


@lru_cache(maxsize=4)
def _predictor_on(checkpoint: str, pixels: bytes, shape: tuple[int, ...]) -> SamPredictor:
    """A SamPredictor with the image set: tests ask several prompts of one image, the encoder runs once."""
    predictor = SamPredictor(_model(checkpoint))
    predictor.set_image(np.frombuffer(pixels, dtype=np.uint8).reshape(shape))
    return predictor


@lru_cache(maxsize=2)
def _model(checkpoint: str) -> torch.nn.Module:
    """The official builder for the checkpoint's architecture, with the checkpoint's weights."""
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if any(key.startswith("image_encoder.layers.") for key in state_dict):
        from mobile_sam import sam_model_registry
        model = sam_model_registry["vit_t"]()
    else:
        from segment_anything import sam_model_registry
        width = state_dict["image_encoder.pos_embed"].shape[-1]
        model = sam_model_registry[{768: "vit_b", 1024: "vit_l", 1280: "vit_h"}[width]]()
    model.load_state_dict(state_dict)
    return model.eval()


def decode_brush_region(region: dict) -> np.ndarray:
    """The H×W bool mask of a `brushlabels` region, decoded with Label Studio's own SDK."""
    from label_studio_sdk.converter.brush import decode_rle

    height, width = region["original_height"], region["original_width"]
    rgba = np.reshape(decode_rle(region["value"]["rle"]), (height, width, 4))
    return rgba[:, :, 3] > 0
