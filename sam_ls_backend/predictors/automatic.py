"""Automatic mask generation ("segment everything"): a grid of single clicks, filtered and deduplicated.

The procedure is the one segment-anything's `SamAutomaticMaskGenerator` defines for a whole image (no crops):
a click at the centre of every cell of an n×n grid, SAM's three candidate masks per click, decoded in batches;
a candidate is kept when its predicted IoU is above `pred_iou_thresh` and its stability score (the area where
the logit exceeds +offset over the area where it exceeds −offset) reaches `stability_thresh` (a threshold of 0
turns its filter off); duplicates are
removed by non-maximum suppression over the masks' boxes, the higher predicted IoU winning. With a minimum
area, specks and holes are removed from the winners and suppression runs again, preferring unchanged masks.

Memory stays bounded whatever the image size: candidates are upscaled to the image a chunk at a time, and only
the 256×256 logits of the survivors are kept until suppression has chosen the winners.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torchvision.ops import nms

from sam_ls_backend.predictors.base import Embedding
from sam_ls_backend.protocol.polygons import remove_small_regions

UPSCALED_BYTES = 256 * 2**20  # full-size float32 logits held at once


@dataclass(frozen=True)
class GridOptions:
    """SamAutomaticMaskGenerator's parameters for one crop, with its defaults."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_thresh: float = 0.95
    stability_offset: float = 1.0
    nms_thresh: float = 0.7
    min_area: int = 0


@dataclass(frozen=True)
class FoundMask:
    """One object found on the image."""

    mask: np.ndarray  # bool, H×W of the original image
    score: float  # SAM's predicted IoU
    stability: float


class GridDecoder(Protocol):
    """What a predictor's `grid_decoder()` returns for automatic mask generation: `sam_grid.SamGridDecoder` for
    SAM and MobileSAM on either runtime, the SAM 2.1 predictor itself (`hf.py`)."""

    mask_threshold: float

    def decode_grid(self, embedding: Embedding, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Three candidates per click at `points` (N×2 float64 pixels x, y): logits N×3×h×w, IoUs N×3."""
        ...

    def upscale(self, embedding: Embedding, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits N×h×w as logits in the original image frame, N×H×W float32."""
        ...


def point_grid(per_side: int) -> np.ndarray:
    """(per_side², 2) float64 click positions in [0, 1] (x, y): cell centres, row after row, x fastest."""
    half_cell = 1.0 / (2 * per_side)
    steps = np.linspace(half_cell, 1.0 - half_cell, per_side)
    xs = np.tile(steps[None, :], (per_side, 1))
    ys = np.tile(steps[:, None], (1, per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def generate_masks(decoder: GridDecoder, embedding: Embedding, options: GridOptions) -> list[FoundMask]:
    """Every object the grid finds on the embedded image, highest predicted IoU first."""
    height, width = embedding.original_size
    points = point_grid(options.points_per_side) * np.array([width, height], dtype=np.float64)
    low_res: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    stabilities: list[torch.Tensor] = []
    boxes: list[torch.Tensor] = []
    for start in range(0, len(points), options.points_per_batch):
        logits, predicted = decoder.decode_grid(embedding, points[start:start + options.points_per_batch])
        logits, predicted = logits.flatten(0, 1), predicted.flatten(0, 1)
        confident = predicted > options.pred_iou_thresh if options.pred_iou_thresh > 0 else torch.ones_like(
            predicted, dtype=torch.bool)
        for chunk, chunk_scores in _chunks(logits[confident], predicted[confident], height * width):
            upscaled = decoder.upscale(embedding, chunk)
            stability = stability_score(upscaled, decoder.mask_threshold, options.stability_offset)
            stable = stability >= options.stability_thresh if options.stability_thresh > 0 else torch.ones_like(
                stability, dtype=torch.bool)
            low_res.append(chunk[stable])
            scores.append(chunk_scores[stable])
            stabilities.append(stability[stable])
            boxes.append(mask_boxes(upscaled[stable] > decoder.mask_threshold))
    if not scores or not sum(len(s) for s in scores):
        return []
    all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)
    winners = nms(all_boxes.float(), all_scores, options.nms_thresh)
    kept_low_res, kept_stability = torch.cat(low_res)[winners], torch.cat(stabilities)[winners]
    found: list[np.ndarray] = []
    for chunk, _ in _chunks(kept_low_res, kept_low_res, height * width):
        masks = (decoder.upscale(embedding, chunk) > decoder.mask_threshold).cpu().numpy()
        found.extend(masks)
    results = [FoundMask(mask, float(score), float(stability))
               for mask, score, stability in zip(found, all_scores[winners], kept_stability)]
    return _without_small_regions(results, options) if options.min_area > 0 else results


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """Per mask (N×H×W logits): pixels above threshold + offset over pixels above threshold − offset."""
    inner = (logits > threshold + offset).sum(dim=(-2, -1), dtype=torch.int32)
    outer = (logits > threshold - offset).sum(dim=(-2, -1), dtype=torch.int32)
    return inner / outer


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """N×4 (x0, y0, x1, y1) with x1, y1 the last set column and row (inclusive); zeros for an empty mask."""
    if not len(masks):
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    columns, rows = masks.any(dim=-2), masks.any(dim=-1)  # N×W, N×H
    width, height = columns.shape[-1], rows.shape[-1]
    x0, y0 = columns.int().argmax(dim=-1), rows.int().argmax(dim=-1)
    x1 = width - 1 - columns.flip(-1).int().argmax(dim=-1)
    y1 = height - 1 - rows.flip(-1).int().argmax(dim=-1)
    box = torch.stack([x0, y0, x1, y1], dim=-1)
    return box * columns.any(dim=-1, keepdim=True)


def _without_small_regions(found: list[FoundMask], options: GridOptions) -> list[FoundMask]:
    """Specks and holes under `min_area` removed; suppression again, an unchanged mask beating a cleaned one."""
    cleaned = [remove_small_regions(item.mask, options.min_area) for item in found]
    changed = [not np.array_equal(mask, item.mask) for mask, item in zip(cleaned, found)]
    if not any(changed):
        return found
    boxes = mask_boxes(torch.as_tensor(np.stack(cleaned)))
    preference = torch.tensor([0.0 if was_changed else 1.0 for was_changed in changed])
    winners = nms(boxes.float(), preference, options.nms_thresh)
    return [FoundMask(cleaned[i], found[i].score, found[i].stability) for i in winners.tolist()
            if cleaned[i].any()]


def _chunks(logits: torch.Tensor, scores: Any, pixels: int) -> Iterator[tuple[torch.Tensor, Any]]:
    """Consecutive slices of at most UPSCALED_BYTES of full-size float32 logits."""
    size = max(1, UPSCALED_BYTES // (4 * pixels))
    for start in range(0, len(logits), size):
        yield logits[start:start + size], scores[start:start + size]
