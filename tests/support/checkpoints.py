"""Random-weight checkpoints of the real architectures, saved the way official checkpoints are.

No weights can be downloaded here; compute cost and code paths do not depend on weight values.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_random_checkpoint(model_type: str, path: Path, seed: int = 0) -> Path:
    """Build `model_type` with seeded random weights and save its state dict to `path`."""
    torch.save(random_model(model_type, seed).state_dict(), path)
    return path


SMOOTH_MASK_AREA = 0.3  # the part of a generated scene a click in its middle covers in a smooth-mask MobileSAM
CONSTANT_CHANNEL, CONSTANT_LEVEL = 0, 3.0  # the mask upscaler's channel made constant (GELU(3) ≈ 3), its level


def save_smooth_mask_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random MobileSAM whose answers are a few large regions instead of speckle (see `_make_masks_smooth`)."""
    model = random_model("vit_t", seed)
    _make_masks_smooth(model)
    torch.save(model.state_dict(), path)
    return path


def random_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    """`model_type` with seeded random weights (those `save_random_checkpoint` saves), in eval mode."""
    from sam_ls_backend.predictors.sam import MODEL_BUILDERS  # the official registries' builders

    torch.manual_seed(seed)
    model = MODEL_BUILDERS[model_type]()
    if model_type == "vit_t":
        _make_masks_blob_like(model)
    return model.eval()


@torch.no_grad()
def _make_masks_blob_like(model: torch.nn.Module) -> None:
    """In a random MobileSAM, output slot 2 gives large blobs; copying it to the others makes every answer so.

    Speckled masks of thousands of tiny parts are valid for parity but useless for seeing where a mask lies.
    """
    decoder = model.mask_decoder
    for slot in (0, 1, 3):
        decoder.mask_tokens.weight[slot] = decoder.mask_tokens.weight[2]
        decoder.output_hypernetworks_mlps[slot].load_state_dict(decoder.output_hypernetworks_mlps[2].state_dict())


@torch.no_grad()
def _make_masks_smooth(model: torch.nn.Module, area: float = SMOOTH_MASK_AREA) -> None:
    """Make a random MobileSAM answer a few large regions that follow the picture, not speckle.

    Not an object detector, and the click hardly matters: the mask upscaler's transposed convolutions get one
    kernel for the four output pixels of each input pixel (so they add no pixel-sized pattern), and every
    mask token's hypernetwork answers one fixed weighing of the upscaler's channels whatever the prompt. The
    logits are then a fixed mix of the image embedding's channels, which is smooth within the flat shapes of
    a generated scene and changes at their edges. One upscaler channel is made a constant and weighed so that
    a click in the middle of `tests.support.scenes.scene(1024, 768, seed=2)` covers about `area` of it (see
    `_level`): the mask is the part of the mix above that level. A click costs the compute it always does (no
    weight is removed); only the masks' shape changes (at 4000×3000, an RLE of about 63 KB instead of 808 KB).
    """
    decoder = model.mask_decoder
    for layer in decoder.output_upscaling:
        if isinstance(layer, torch.nn.ConvTranspose2d):
            layer.weight.copy_(layer.weight[:, :, :1, :1].clone().expand_as(layer.weight))
    last = decoder.output_upscaling[-2]  # the transposed convolution before the final GELU
    last.weight[:, CONSTANT_CHANNEL] = 0
    last.bias[CONSTANT_CHANNEL] = CONSTANT_LEVEL
    heads = [mlp.layers[-1] for mlp in decoder.output_hypernetworks_mlps]
    weighing = torch.randn(heads[0].bias.shape, generator=torch.Generator().manual_seed(0))
    for head in heads:
        head.weight.zero_()
        head.bias.copy_(weighing)
        head.bias[CONSTANT_CHANNEL] = 0
    level = _level(_middle_click_logits(model).flatten(), area)
    for head in heads:
        head.bias[CONSTANT_CHANNEL] = -level / float(torch.nn.functional.gelu(torch.tensor(CONSTANT_LEVEL)))


def _level(logits: torch.Tensor, area: float) -> float:
    """A level with about `area` of `logits` above it, in the widest gap between their values near there: the
    logits of a flat shape are all one value, and a level close to it would make torch and ONNX Runtime, whose
    last bits differ, answer different masks."""
    low, high = torch.quantile(logits, torch.tensor([1 - area - 0.05, 1 - area + 0.05]))
    values = torch.unique(logits[(logits >= low) & (logits <= high)])  # sorted
    widest = int(torch.argmax(values[1:] - values[:-1]))
    return float(values[widest] + values[widest + 1]) / 2


def _middle_click_logits(model: torch.nn.Module) -> torch.Tensor:
    """segment_anything's logits (1024×768 frame) of a click in the middle of a generated 1024×768 scene."""
    import numpy as np
    from segment_anything import SamPredictor

    from tests.support.scenes import scene

    predictor = SamPredictor(model)
    predictor.set_image(scene(1024, 768, seed=2))
    logits, _, _ = predictor.predict(point_coords=np.array([[512.0, 384.0]]), point_labels=np.array([1]),
                                     multimask_output=False, return_logits=True)
    return torch.from_numpy(logits[0])
