"""What every predictor offers the backend (torch SAM/MobileSAM, ONNX Runtime), as plain values.

A predictor keeps nothing per image: `embed` returns an `Embedding` and `predict` takes it back, so threads
serving different images never mix. A predictor may also offer `predict_batch` (several objects at once, each
optionally refined with its previous low-res logits); `decode_objects` falls back to `predict` per object.
A predictor that can serve PREANNOTATE=everything offers `grid_decoder()` (see `automatic.GridDecoder`).
This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from sam_ls_backend.protocol.prompts import Prompt


@dataclass(frozen=True)
class Embedding:
    """The image encoder's output for one image, with the sizes needed to map prompts and masks."""

    # SAM: one 1×256×64×64 array; SAM 2 and SAM 3: a tuple of feature maps, finest first. Torch tensors on
    # the model's device, or numpy arrays.
    features: Any
    input_size: tuple[int, int]  # (h, w) of the image resized so its long side is the encoder's input size
    original_size: tuple[int, int]  # (h, w) of the task image

    @property
    def nbytes(self) -> int:
        return sum(int(array.nbytes) for array in self.arrays)

    @property
    def arrays(self) -> tuple[Any, ...]:
        """The feature maps as a tuple, whether the model makes one or several."""
        return self.features if isinstance(self.features, tuple) else (self.features,)

    def compact(self) -> Embedding:
        """The same embedding as float16 numpy arrays: half the memory, and bytes any process can share.

        Masks decoded from it match those of the float32 original (IoU ≥ 0.999, tested).
        """
        if all(isinstance(array, np.ndarray) and array.dtype == np.float16 for array in self.arrays):
            return self
        return self._with(_float16(array) for array in self.arrays)

    def set_apart(self) -> Embedding:
        """The same values, with CPU arrays copied into memory of their own: the form a cache keeps.

        Kept in the malloc heap, each cached embedding sits between the encoder's short-lived buffers of
        later images and fragments the heap, so resident memory crept up image after image. A mapping of
        its own goes back to the system whole when the cache lets go. GPU tensors stay where they are.
        """
        return self._with(_set_apart(array) for array in self.arrays)

    def _with(self, arrays: Iterable[Any]) -> Embedding:
        arrays = tuple(arrays)
        return replace(self, features=arrays if isinstance(self.features, tuple) else arrays[0])


@dataclass(frozen=True)
class MaskResult:
    """One object's mask in the original image frame, SAM's predicted IoU, and its 256×256 logits."""

    mask: np.ndarray  # bool, H×W of the original image
    score: float
    low_res_logits: np.ndarray  # float32, 256×256


class Encoder(Protocol):
    """Runs an image encoder: what the embedding caches need of a model."""

    def embed(self, image: np.ndarray) -> Embedding:
        """Run the image encoder on an H×W×3 uint8 RGB image."""
        ...


class Predictor(Protocol):
    """Embeds images and decodes prompts against an embedding; safe to call from many threads."""

    model_type: str  # vit_t, vit_b, vit_l, vit_h, sam2, sam3

    def embed(self, image: np.ndarray) -> Embedding:
        """Run the image encoder on an H×W×3 uint8 RGB image."""
        ...

    def predict(self, embedding: Embedding, prompt: Prompt) -> MaskResult:
        """One object's mask for `prompt` on the embedded image."""
        ...


@dataclass(frozen=True)
class LoadedModels:
    """What a SAM_CHOICE serves: the predictor clicks go to, SAM 3's concept detector (a
    `predictors.sam3.ConceptSegmenter`) or None, how to load its video tracker (a
    `predictors.video.VideoTracker`) or None, and how to load SAM 3's concept tracker for videos (a
    `predictors.video_concepts.ConceptVideoTracker`) or None. Video models are loaded on the first video
    request that needs them, not at start-up: they hold more copies of the image model's weights, which a
    project without videos should not pay for."""

    predictor: Predictor
    concepts: Any = None
    video: Callable[[], Any] | None = None
    video_concepts: Callable[[], Any] | None = None


def decode_objects(predictor: Predictor, embedding: Embedding, prompts: Sequence[Prompt],
                   mask_inputs: Sequence[np.ndarray | None]) -> list[MaskResult]:
    """One mask per prompt: batched and refined when the predictor can, else one `predict` per prompt."""
    if hasattr(predictor, "predict_batch"):
        return predictor.predict_batch(embedding, prompts, mask_inputs)
    return [predictor.predict(embedding, prompt) for prompt in prompts]


def mapped_copy(array: np.ndarray, dtype: Any = None) -> np.ndarray:
    """A copy of `array` (as `dtype`, default its own) in an anonymous memory mapping of its own, for values
    kept long (see `Embedding.set_apart`); the mapping is returned to the system when the copy is freed."""
    dtype = np.dtype(dtype or array.dtype)
    count = int(np.prod(array.shape))
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1))
    kept = np.frombuffer(buffer, dtype=dtype, count=count).reshape(array.shape)
    kept[...] = array
    return kept


def _float16(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, possibly on a GPU
        array = array.detach().float().cpu().numpy()
    return mapped_copy(array, np.float16)


def _set_apart(array: Any) -> Any:
    if hasattr(array, "detach"):
        if array.device.type != "cpu" or str(array.dtype) not in ("torch.float32", "torch.float16"):
            return array  # GPU memory, or a dtype numpy lacks
        array = array.detach().numpy()
    return mapped_copy(array)
