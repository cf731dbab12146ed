"""SAM 3 concept segmentation: a noun phrase and example boxes in, every matching instance out, with scores.

`Sam3Model` and `Sam3Processor` load from the local SAM 3 folder (`SAM3_MODEL_DIR`). The image encoder
runs once per image (its feature maps are cached like SAM's embeddings); each concept then costs the text
encoder and the detector. `detect` keeps every candidate the detector proposed, so that a new confidence
threshold is answered by `instances` without running the model again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from sam_ls_backend.compute_thread import on_compute_thread
from sam_ls_backend.lru import LRU
from sam_ls_backend.predictors.base import Embedding, LoadedModels
from sam_ls_backend.predictors.files import ModelFile
from sam_ls_backend.predictors.hf import load_prompt_predictor
from sam_ls_backend.predictors.transformers_folder import load_pretrained
from sam_ls_backend.predictors.video import load_video_tracker
from sam_ls_backend.predictors.video_concepts import load_concept_video_tracker
from sam_ls_backend.settings import Settings

log = logging.getLogger(__name__)

MAX_CANDIDATES = 100  # instances kept per concept, best first; SAM 3 proposes 200 queries
MASK_THRESHOLD = 0.5  # on the sigmoid of the mask logits, as Sam3Processor binarises
REMEMBERED_TEXTS = 256  # encoded concepts kept: annotators reuse a few concepts across many images


def load_sam3(settings: Settings, folder: ModelFile) -> LoadedModels:
    """SAM_CHOICE=SAM3: the tracker for clicks and the concept detector, sharing one vision backbone; the box
    tracker and the concept tracker for videos, loaded on first use."""
    tracker = load_prompt_predictor(settings, folder, "Sam3TrackerModel", "Sam3TrackerProcessor", "sam3")
    concepts = load_concept_segmenter(settings, folder)
    share_backbone(concepts, tracker)
    video = partial(load_video_tracker, settings, folder, "Sam3TrackerVideoModel", "Sam3TrackerVideoProcessor",
                    "sam3")
    video_concepts = partial(load_concept_video_tracker, settings, folder, concepts)
    return LoadedModels(tracker, concepts, video, video_concepts)


def load_concept_segmenter(settings: Settings, folder: ModelFile) -> ConceptSegmenter:
    """SAM 3's detector and processor from SAM3_MODEL_DIR (start-up only: takes seconds)."""
    model, processor = load_pretrained(settings, folder, "Sam3Model", "Sam3Processor")
    return ConceptSegmenter(model, processor)


def share_backbone(concepts: ConceptSegmenter, tracker: Any) -> bool:
    """Let SAM 3's tracker use the detector's vision backbone when the weights are the same (they are in the
    published checkpoint): one copy of the ViT instead of two."""
    import torch

    mine, theirs = concepts.model.vision_encoder.backbone, tracker.model.vision_encoder.backbone
    ours, others = mine.state_dict(), theirs.state_dict()
    if ours.keys() != others.keys() or not all(torch.equal(ours[name], others[name]) for name in ours):
        log.info("SAM 3's tracker has a vision backbone of its own: both are kept")
        return False
    tracker.model.vision_encoder.backbone = mine
    return True


@dataclass(frozen=True)
class Detections:
    """Every candidate instance of one concept on one image, best first (at most MAX_CANDIDATES)."""

    scores: np.ndarray  # (K,) SAM 3's confidence: instance score × presence score
    mask_logits: np.ndarray  # (K, h, w) float32, the detector's low-resolution masks
    original_size: tuple[int, int]  # (h, w) of the task image

    @property
    def nbytes(self) -> int:
        return int(self.scores.nbytes + self.mask_logits.nbytes)


@dataclass(frozen=True)
class Instance:
    """One detected object: its mask in the task image's frame and its confidence."""

    mask: np.ndarray  # bool, H×W
    score: float


class ConceptSegmenter:
    """Thread-safe SAM 3 concept detection on cached image features."""

    model_type = "sam3"

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self._encoder_lock = threading.Lock()
        self._positions: dict[tuple, tuple[Any, ...]] = {}  # feature shapes -> their position encodings
        self._texts: LRU[str, tuple[Any, Any]] = LRU(REMEMBERED_TEXTS)  # concept -> (text features, mask)
        self._positions_lock = threading.Lock()

    @on_compute_thread
    def embed(self, image: np.ndarray) -> Embedding:
        """Run SAM 3's vision encoder on an H×W×3 uint8 RGB image; keeps its feature pyramid."""
        import torch

        inputs = self.processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)
        with self._encoder_lock, torch.inference_mode():
            output = self.model.get_vision_features(pixel_values=pixels)
        return Embedding(features=tuple(output.fpn_hidden_states), input_size=tuple(pixels.shape[-2:]),
                         original_size=(int(image.shape[0]), int(image.shape[1])))

    @on_compute_thread
    def detect(self, embedding: Embedding, text: str, boxes: Sequence[Sequence[float]],
               box_labels: list[int]) -> Detections:
        """Every instance of `text` on the embedded image; `boxes` (pixels, x0 y0 x1 y1) are examples (label 1)
        or counter-examples (label 0), as SAM 3's geometric prompts."""
        import torch
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        height, width = embedding.original_size
        device = self.model.device
        maps = tuple(torch.as_tensor(a, device=device).to(self.model.dtype) for a in embedding.arrays)
        vision = Sam3VisionEncoderOutput(fpn_hidden_states=maps, fpn_position_encoding=self._positions_for(maps))
        text_features, attention_mask = self._encoded(text)
        arguments: dict[str, Any] = {}
        if boxes:
            inputs = self.processor(input_boxes=[[list(box) for box in boxes]], input_boxes_labels=[list(box_labels)],
                                    original_sizes=[[height, width]], return_tensors="pt")
            arguments = {name: inputs[name].to(device) for name in ("input_boxes", "input_boxes_labels")}
        with torch.inference_mode():
            output = self.model(vision_embeds=vision, text_embeds=text_features, attention_mask=attention_mask,
                                **arguments)
        scores = (output.pred_logits[0].float().sigmoid() * output.presence_logits[0].float().sigmoid()).cpu()
        order = torch.argsort(scores, descending=True)[:MAX_CANDIDATES]
        logits = output.pred_masks[0][order.to(device)].float().cpu().numpy()
        return Detections(scores=scores[order].numpy(), mask_logits=logits, original_size=embedding.original_size)

    def _positions_for(self, maps: tuple[Any, ...]) -> tuple[Any, ...]:
        """The pyramid's position encodings: they depend on the maps' shapes only (not on the image), so they are
        computed once per shape, also for features that came from another process through the shared cache."""
        import torch

        shapes = tuple(tuple(m.shape) for m in maps)
        with self._positions_lock:
            found = self._positions.get(shapes)
        if found is None:
            encode = self.model.vision_encoder.neck.position_encoding
            with torch.inference_mode():
                found = tuple(encode(m.shape, m.device, m.dtype) for m in maps)
            with self._positions_lock:
                self._positions[shapes] = found
        return found

    def _encoded(self, text: str) -> tuple[Any, Any]:
        """The text encoder's output for a concept, computed once per concept (least recently used out)."""
        return self._texts.get_or_compute(text, lambda: self._encode(text))

    def _encode(self, text: str) -> tuple[Any, Any]:
        import torch

        inputs = self.processor(text=text, return_tensors="pt")
        mask = inputs["attention_mask"].to(self.model.device)
        with torch.inference_mode():
            features = self.model.get_text_features(input_ids=inputs["input_ids"].to(self.model.device),
                                                    attention_mask=mask)
        return features, mask

    @on_compute_thread
    def instances(self, detections: Detections, threshold: float) -> list[Instance]:
        """The detections scoring above `threshold`, with masks upscaled to the image as Sam3Processor does."""
        import torch
        import torch.nn.functional as F

        found = []
        for score, logits in zip(detections.scores, detections.mask_logits):
            if score <= threshold:
                break  # best first
            probabilities = torch.from_numpy(logits).sigmoid()[None, None]
            upscaled = F.interpolate(probabilities, size=detections.original_size, mode="bilinear",
                                     align_corners=False)[0, 0]
            found.append(Instance(mask=(upscaled > MASK_THRESHOLD).numpy(), score=float(score)))
        return found
