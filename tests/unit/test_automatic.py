"""The pieces of automatic mask generation against segment-anything's own helpers, and the minimum-area step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

from sam_ls_backend.predictors.automatic import (
    FoundMask,
    GridOptions,
    _without_small_regions,
    mask_boxes,
    stability_score,
)


@pytest.mark.parametrize("seed", range(5))
def test_stability_and_boxes_equal_segment_anythings(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 37, 53, generator=generator) * 3 + torch.linspace(-4, 4, 53)
    logits[2] = -10  # an empty mask
    mine, theirs = stability_score(logits, 0.0, 1.0), calculate_stability_score(logits, 0.0, 1.0)
    assert torch.isnan(mine[2]) and torch.equal(torch.nan_to_num(mine), torch.nan_to_num(theirs))
    masks = logits > 0
    assert torch.equal(mask_boxes(masks), batched_mask_to_box(masks))


def test_minimum_area_cleans_and_prefers_unchanged_masks():
    speckled = np.zeros((40, 40), dtype=bool)
    speckled[5:30, 5:30] = True
    speckled[35, 35] = True  # a one-pixel island, far from the square: its box grows to the corner
    clean = np.zeros((40, 40), dtype=bool)
    clean[6:30, 6:30] = True  # nearly the same square, nothing to clean
    other = np.zeros((40, 40), dtype=bool)
    other[0:4, 30:40] = True
    found = [FoundMask(speckled, 0.99, 0.99), FoundMask(clean, 0.95, 0.97), FoundMask(other, 0.9, 0.96)]
    kept = _without_small_regions(found, GridOptions(min_area=4, nms_thresh=0.7))
    # The cleaned square now duplicates the unchanged one, which wins; the unchanged masks stay as they were.
    assert [item.score for item in kept] == [0.95, 0.9]
    assert np.array_equal(kept[0].mask, clean) and np.array_equal(kept[1].mask, other)
    untouched = _without_small_regions(found[1:], GridOptions(min_area=4))
    assert untouched == found[1:]
