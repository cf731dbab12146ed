"""Prompts drawn from an accepted mask the way SAM was trained, and the mask brought to the decoder's frame.

Three frames appear here. The *original* frame is the task image, H×W pixels. The *input* frame is the
image resized so its long side is the encoder's input size (1024; `input_size` = (h, w) of the resized
image, in the top-left corner of the 1024×1024 padded input). The *low-res* frame is the decoder's 256×256
logits over that padded input: a cell covers 4×4 input pixels. Prompts are given to the prompt encoder in
the input frame, converted from original pixels by segment-anything's `ResizeLongestSide`, exactly as a
served click is (`predictors/sam.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

LOW_RES = 256  # side of the decoder's logits
MAX_BOX_NOISE_INPUT_PX = 20.0  # SAM's bound on a box corner's jitter, in input pixels


@dataclass(frozen=True)
class PromptDraw:
    """One prompt in the input frame: points (N×2 float64 x, y), their labels (N int64: 1 positive, 0
    negative) and an optional box (4 float64: x0, y0, x1, y1)."""

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None

    @property
    def is_single_click(self) -> bool:
        """One positive point and nothing else: SAM answers three candidates (as a served lone click)."""
        return self.box is None and len(self.labels) == 1 and int(self.labels[0]) == 1

    def with_point(self, point: np.ndarray, label: int) -> PromptDraw:
        """This prompt and one more point (input frame)."""
        return PromptDraw(np.concatenate([self.points, point[None]]), np.append(self.labels, label), self.box)

    def tensors(self, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """(points 1×N×2 float32, labels 1×N int32) or None, and box 1×4 float32 or None: the prompt
        encoder's arguments, as `SamImagePredictor` passes them."""
        points = None
        if len(self.labels):
            points = (torch.as_tensor(self.points[None], dtype=torch.float, device=device),
                      torch.as_tensor(self.labels[None], dtype=torch.int, device=device))
        box = None if self.box is None else torch.as_tensor(self.box[None], dtype=torch.float, device=device)
        return points, box


class MaskPrompts:
    """One accepted mask made ready for training: its low-res target and a source of prompts drawn from it."""

    def __init__(self, mask: np.ndarray, input_size: tuple[int, int], img_size: int = 1024) -> None:
        """`mask`: bool H×W in the original frame (not empty); `input_size`: (h, w) of the resized image."""
        self.original_size = (int(mask.shape[0]), int(mask.shape[1]))
        self._transform = ResizeLongestSide(img_size)
        self._cell = img_size // LOW_RES  # input pixels per low-res cell side
        self._inside = np.flatnonzero(mask)
        self._mask = mask
        rows, columns = np.nonzero(mask)
        # Pixel edges, as a rectangle drawn around the object: last row / column + 1.
        self._bounds = np.array([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1], dtype=np.float64)
        self.target, self.valid = low_res_target(mask, input_size, img_size)

    def draw(self, rng: np.random.Generator, box_share: float, negative_share: float,
             box_jitter: float) -> PromptDraw:
        """A first-round prompt: a jittered box (`box_share` of draws), else a positive point uniformly inside
        the mask, with a negative point uniformly outside it in `negative_share` of those draws."""
        if rng.random() < box_share:
            return PromptDraw(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), self._jittered_box(rng, box_jitter))
        points, labels = [self._pixel(rng, self._inside)], [1]
        if rng.random() < negative_share and len(self._inside) < self._mask.size:
            points.append(self._outside_pixel(rng))
            labels.append(0)
        coords = self._transform.apply_coords(np.array(points, dtype=np.float64), self.original_size)
        return PromptDraw(coords, np.array(labels, dtype=np.int64), None)

    def correction(self, rng: np.random.Generator, logits: torch.Tensor) -> tuple[np.ndarray, int]:
        """A second-round point (input frame x, y) and its label, drawn uniformly from the error region of an
        answer (`logits`: 256×256 low-res): a missed cell gives a positive point, a wrong one a negative
        point. A perfect answer gets another positive point inside the mask."""
        answer = (logits > 0).cpu()
        truth = self.target >= 0.5
        missed, wrong = truth & ~answer & self.valid, ~truth & answer & self.valid
        errors = torch.nonzero(missed | wrong)
        if not len(errors):
            coords = self._transform.apply_coords(self._pixel(rng, self._inside)[None], self.original_size)
            return coords[0], 1
        row, column = (int(v) for v in errors[rng.integers(len(errors))])
        # The cell's centre, less the half pixel the prompt encoder adds to every point.
        centre = self._cell * np.array([column + 0.5, row + 0.5]) - 0.5
        return centre, int(bool(missed[row, column]))

    def _pixel(self, rng: np.random.Generator, flat: np.ndarray) -> np.ndarray:
        """(x, y) float64 original-frame pixel coordinates of a uniformly drawn entry of `flat` indices."""
        index = int(flat[rng.integers(len(flat))])
        return np.array([index % self.original_size[1], index // self.original_size[1]], dtype=np.float64)

    def _outside_pixel(self, rng: np.random.Generator) -> np.ndarray:
        """(x, y) of a pixel uniformly drawn outside the mask (rejection: the mask is never the whole image)."""
        height, width = self.original_size
        while True:
            x, y = int(rng.integers(width)), int(rng.integers(height))
            if not self._mask[y, x]:
                return np.array([x, y], dtype=np.float64)

    def _jittered_box(self, rng: np.random.Generator, jitter: float) -> np.ndarray:
        """The mask's bounds in the input frame, each edge moved by N(0, jitter × the box's side), at most
        MAX_BOX_NOISE_INPUT_PX input pixels (SAM's training noise), kept inside the input."""
        box = self._transform.apply_boxes(self._bounds[None], self.original_size)[0]
        sides = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        noise = np.clip(rng.normal(0.0, 1.0, 4) * jitter * sides, -MAX_BOX_NOISE_INPUT_PX, MAX_BOX_NOISE_INPUT_PX)
        moved = box + noise
        x0, x1 = sorted((moved[0], moved[2]))
        y0, y1 = sorted((moved[1], moved[3]))
        return np.array([x0, y0, x1, y1], dtype=np.float64)


def low_res_target(mask: np.ndarray, input_size: tuple[int, int],
                   img_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """`mask` (bool H×W, original frame) in the low-res frame: the share of each 256×256 cell it covers
    (float32, 0 in the padding), and which cells lie inside the resized image (bool 256×256)."""
    height, width = input_size
    scale = img_size // LOW_RES
    pixels = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    resized = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    padding = (0, img_size - width, 0, img_size - height)
    target = F.avg_pool2d(F.pad(resized, padding), scale)[0, 0].clamp(0.0, 1.0)
    inside = F.avg_pool2d(F.pad(torch.ones(1, 1, height, width), padding), scale)[0, 0] >= 0.5
    return target, inside
