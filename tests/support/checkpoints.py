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
