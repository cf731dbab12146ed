"""A SAM model whose masks follow the click, made of hand-written parts, for comparing "segment everything".

On random weights SAM answers the same blob wherever one clicks, so SamAutomaticMaskGenerator keeps no mask
at its default filters (or one, with every filter off), and comparing a generator with it would prove nothing.
Here the encoder and the decoder are tiny deterministic modules behind segment-anything's own `Sam` class (its
preprocessing, upscaling and threshold are kept), so both SamAutomaticMaskGenerator and the backend's predictor
drive them through the same calls as a real checkpoint:

- the prompt encoder hands the click coordinates (the 1024-pixel input frame) to the decoder as they are;
- for a click at (x, y) the decoder answers three discs centred on it, radii RADII input pixels, their logit
  falling off with the distance at a slope that changes across the image (so the stability filter keeps some
  and drops others), and predicted IoUs that also vary with the position and with the image's brightness
  under the click (so the IoU filter keeps some and drops others, and the answer depends on the image).
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam

RADII = (48.0, 96.0, 192.0)
LOW_RES = 256
INPUT = 1024


class _Encoder(torch.nn.Module):
    """The image's brightness on a 64×64 grid, repeated on 256 channels: 1×256×64×64."""

    img_size = INPUT

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        brightness = pixels.mean(dim=1, keepdim=True)  # B×1×1024×1024, normalised
        pooled = torch.nn.functional.avg_pool2d(brightness, INPUT // 64)
        return (pooled * self.scale).expand(-1, 256, -1, -1).contiguous()


class _PromptEncoder(torch.nn.Module):
    """Clicks pass through: sparse 'embeddings' are the coordinates (B×N×2), dense ones are empty."""

    def forward(self, points, boxes, masks) -> tuple[torch.Tensor, torch.Tensor]:
        coords, _ = points
        return coords.to(torch.float32), torch.zeros(coords.shape[0], 1, 1, 1)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 1, 1, 1)


class _Decoder(torch.nn.Module):
    """Three discs around the first click of each prompt, with position- and image-dependent scores."""

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        click = sparse_prompt_embeddings[:, 0, :]  # B×2, input pixels
        x, y = click[:, 0, None, None], click[:, 1, None, None]
        cells = (torch.arange(LOW_RES, dtype=torch.float32) + 0.5) * (INPUT / LOW_RES)
        distance = torch.sqrt((cells[None, None, :] - x) ** 2 + (cells[None, :, None] - y) ** 2)  # B×256×256
        slope = 0.05 + 0.5 * (1 + torch.sin(click[:, 0] / 150.0) * torch.cos(click[:, 1] / 110.0))  # B
        logits = torch.stack([(radius - distance) * slope[:, None, None] for radius in RADII], dim=1)
        cell = (click / (INPUT / 64)).long().clamp(0, 63)
        brightness = image_embeddings[0, 0][cell[:, 1], cell[:, 0]]  # B
        scores = torch.stack([0.86 + 0.06 * torch.sin(click[:, 0] / 70.0 + k) * torch.cos(click[:, 1] / 90.0)
                              + 0.03 * torch.tanh(brightness) for k in range(len(RADII))], dim=1)
        if not multimask_output:
            return logits[:, :1], scores[:, :1]
        return logits, scores


def moving_mask_sam() -> Sam:
    """The model (segment-anything's `Sam` around the modules above), in eval mode."""
    model = Sam(image_encoder=_Encoder(), prompt_encoder=_PromptEncoder(), mask_decoder=_Decoder())  # type: ignore[arg-type]
    return model.eval()

