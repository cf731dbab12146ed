"""SAM's prompt encoder and mask decoder alone, decoding a grid of clicks on any runtime's embedding.

Automatic mask generation (`predictors/automatic.py`) decodes hundreds of clicks per image with all three
candidates each. The torch predictor (`sam.py`) decodes them with its model's own decoder; a predictor whose
image encoder runs elsewhere (ONNX Runtime) gets the prompt encoder and mask decoder of the same checkpoint
loaded in torch (`sam.load_grid_decoder`) and feeds them the embedding its encoder made (1×256×64×64 float32,
a torch tensor or a NumPy array).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F

from sam_ls_backend.compute_thread import on_compute_thread
from sam_ls_backend.predictors.base import Embedding


class SamGridDecoder:
    """Batched single-click decoding and SAM's upscaling (the `automatic.GridDecoder` contract), thread-safe."""

    def __init__(self, prompt_encoder: Any, mask_decoder: Any, device: torch.device, image_size: int = 1024,
                 mask_threshold: float = 0.0) -> None:
        self.prompt_encoder: Any = prompt_encoder  # segment_anything modules (untyped)
        self.mask_decoder: Any = mask_decoder
        self.device = device  # where both modules' weights are
        self.image_size = image_size  # the encoder's square input side
        self.mask_threshold = mask_threshold  # logits above this are the mask (SAM: 0.0)
        self._transform = ResizeLongestSide(image_size)

    @on_compute_thread
    @torch.inference_mode()
    def decode_grid(self, embedding: Embedding, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's three candidates for each of N single positive clicks at `points` (N×2 float64 pixels x, y of the
        original image): low-res logits N×3×256×256 float32 and predicted IoUs N×3, on the decoder's device.

        The click coordinates stay float64 until the prompt encoder, as SamAutomaticMaskGenerator passes them.
        """
        coords = self._transform.apply_coords(np.asarray(points, dtype=np.float64), embedding.original_size)
        in_points = torch.as_tensor(coords, device=self.device)[:, None, :]
        labels = torch.ones(len(points), 1, dtype=torch.int, device=self.device)
        sparse, dense = self.prompt_encoder(points=(in_points, labels), boxes=None, masks=None)
        low_res, scores = self.mask_decoder(
            image_embeddings=torch.as_tensor(embedding.features, device=self.device).float(),
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return low_res, scores

    @on_compute_thread
    @torch.inference_mode()
    def upscale(self, embedding: Embedding, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits (N×256×256) as logits in the original image frame (N×H×W float32), as SAM's
        `postprocess_masks`: to the square input, the padding cropped away, then to the original size."""
        return upscale_logits(embedding, low_res, self.image_size)


def upscale_logits(embedding: Embedding, low_res: torch.Tensor, image_size: int = 1024) -> torch.Tensor:
    """Low-res logits (N×256×256 float32) as logits in the original image frame (N×H×W float32): to the square
    `image_size` input, the padding cropped away (`embedding.input_size`), then to `embedding.original_size`."""
    masks = F.interpolate(low_res[:, None], (image_size, image_size), mode="bilinear", align_corners=False)
    masks = masks[..., :embedding.input_size[0], :embedding.input_size[1]]
    return F.interpolate(masks, embedding.original_size, mode="bilinear", align_corners=False)[:, 0]
