"""learning/sampling.py: the mask brought to the decoder's low-res frame agrees with segment-anything's own
upscaling, and prompts are drawn where SAM's training draws them, in the input frame a served click uses."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from sam_ls_backend.learning.sampling import LOW_RES, MaskPrompts, low_res_target
from tests.support.shape_scenes import shape_scene

SIZES = [(320, 240), (201, 333), (640, 480), (97, 1000)]


def _input_size(width: int, height: int) -> tuple[int, int]:
    return ResizeLongestSide.get_preprocess_shape(height, width, 1024)


def _original_pixel(point: np.ndarray, width: int, height: int) -> tuple[int, int]:
    """An input-frame point back in the original frame (ResizeLongestSide.apply_coords undone), rounded."""
    input_height, input_width = _input_size(width, height)
    return round(point[0] * width / input_width), round(point[1] * height / input_height)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_the_low_res_target_upscaled_by_sam_is_the_mask(size):
    """Upscaled as SAM upscales its logits (Sam.postprocess_masks: to 1024, crop, to the original), the low-res
    target gives the mask back: the frames agree, for landscape, portrait and odd sizes."""
    width, height = size
    _, masks = shape_scene(width, height, seed=width + height)
    upscaler = SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024))
    for mask in masks:
        target, valid = low_res_target(mask, _input_size(width, height))
        assert target.shape == valid.shape == (LOW_RES, LOW_RES)
        logits = (target - 0.5)[None, None]
        upscaled = Sam.postprocess_masks(upscaler, logits, _input_size(width, height), (height, width))[0, 0] > 0
        answer = upscaled.numpy()
        assert (answer & mask).sum() / (answer | mask).sum() > 0.9
        assert not target[~valid].any()


def test_the_valid_cells_are_the_resized_image():
    _, valid = low_res_target(np.ones((240, 320), dtype=bool), (768, 1024))
    assert valid[:192].all() and not valid[192:].any()


def test_points_lie_inside_and_outside_the_mask_and_boxes_around_it():
    width, height = 320, 240
    _, masks = shape_scene(width, height, seed=7)
    mask = masks[0]
    prompts = MaskPrompts(mask, _input_size(width, height))
    rng = np.random.default_rng(0)
    rows, columns = np.nonzero(mask)
    bounds = np.array([[columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]], dtype=np.float64)
    exact = ResizeLongestSide(1024).apply_boxes(bounds, (height, width))[0]
    kinds = set()
    for _ in range(200):
        prompt = prompts.draw(rng, box_share=0.3, negative_share=0.5, box_jitter=0.1)
        if prompt.box is not None:
            kinds.add("box")
            assert len(prompt.labels) == 0
            assert np.all(np.abs(prompt.box - exact) <= 20.0) and prompt.box[0] < prompt.box[2]
            continue
        kinds.add(tuple(prompt.labels))
        for point, label in zip(prompt.points, prompt.labels):
            x, y = _original_pixel(point, width, height)
            assert mask[y, x] == bool(label)
    assert kinds == {"box", (1,), (1, 0)}
    unjittered = prompts.draw(np.random.default_rng(0), box_share=1.0, negative_share=0.0, box_jitter=0.0)
    assert np.allclose(unjittered.box, exact)


def test_a_correction_comes_from_the_answers_errors():
    width, height = 320, 240
    _, masks = shape_scene(width, height, seed=7)
    mask = masks[0]
    prompts = MaskPrompts(mask, _input_size(width, height))
    rng = np.random.default_rng(1)
    nothing = torch.full((LOW_RES, LOW_RES), -5.0)
    for _ in range(20):  # nothing found: a positive point on the mask
        point, label = prompts.correction(rng, nothing)
        assert label == 1 and prompts.target[int(point[1]) // 4, int(point[0]) // 4] >= 0.5
    everything = torch.full((LOW_RES, LOW_RES), 5.0)
    for _ in range(20):  # everything found: a negative point off the mask, inside the image
        point, label = prompts.correction(rng, everything)
        cell = prompts.target[int(point[1]) // 4, int(point[0]) // 4]
        assert label == 0 and cell < 0.5 and prompts.valid[int(point[1]) // 4, int(point[0]) // 4]
    exact = torch.where(prompts.target >= 0.5, 5.0, -5.0)
    point, label = prompts.correction(rng, exact)  # nothing wrong: another positive point inside
    x, y = _original_pixel(point, width, height)
    assert label == 1 and mask[y, x]
