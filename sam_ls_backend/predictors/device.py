"""Where torch runs a model (DEVICE) and with how many threads (TORCH_THREADS), for every torch predictor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sam_ls_backend.errors import ConfigError

if TYPE_CHECKING:
    import torch



def resolve_device(name: str) -> torch.device:
    """`auto` picks the first GPU when torch sees one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"DEVICE={name} but torch sees no CUDA device")
    return torch.device(name)


def use_torch_threads(threads: int) -> None:
    """Apply TORCH_THREADS: `threads` per forward pass (0 keeps torch's default)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
