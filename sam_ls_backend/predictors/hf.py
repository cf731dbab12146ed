"""SAM 2.1 and SAM 3's tracker behind the same stateless predictor as SAM: clicks and boxes in, one mask out.

Both load through Hugging Face `transformers` (`Sam2Model`, `Sam3TrackerModel`) from a local model folder,
never from the network. The arithmetic is the processor's own (resize, coordinate normalisation, mask
upscaling), so a mask from here equals what `Sam2Processor.post_process_masks` makes of the model's answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from sam_ls_backend.compute_thread import on_compute_thread
from sam_ls_backend.predictors.base import Embedding, LoadedModels, MaskResult
from sam_ls_backend.predictors.files import ModelFile
from sam_ls_backend.predictors.transformers_folder import load_pretrained
from sam_ls_backend.protocol.prompts import Prompt
from sam_ls_backend.settings import Settings

log = logging.getLogger(__name__)

def load_sam2(settings: Settings, folder: ModelFile) -> LoadedModels:
    """SAM_CHOICE=SAM2: SAM 2 / 2.1 from its local Hugging Face folder, ready for clicks; its video tracker
    (`Sam2VideoModel`, from the same folder) loads on the first video request."""
    from sam_ls_backend.predictors.video import load_video_tracker

    return LoadedModels(load_prompt_predictor(settings, folder, "Sam2Model", "Sam2Processor", "sam2"),
                        video=partial(load_video_tracker, settings, folder, "Sam2VideoModel", "Sam2VideoProcessor",
                                      "sam2"))


def load_prompt_predictor(settings: Settings, folder: ModelFile, model_class: str, processor_class: str,
                          model_type: str) -> HfPromptPredictor:
    """A promptable SAM (`transformers.<model_class>`) from its local folder, ready for clicks."""
    model, processor = load_pretrained(settings, folder, model_class, processor_class)
    return HfPromptPredictor(model, processor, model_type)


class HfPromptPredictor:
    """Thread-safe SAM 2 / SAM 3 tracker inference: `embed` an image, then `predict` prompts on the embedding."""

    def __init__(self, model: Any, processor: Any, model_type: str) -> None:
        self.model = model
        self.processor = processor
        self.model_type = model_type
        self._encoder_lock = threading.Lock()  # one image at a time through the encoder, as for SAM

    @on_compute_thread
    def embed(self, image: np.ndarray) -> Embedding:
        """Run the image encoder on an H×W×3 uint8 RGB image; keeps the feature maps the decoder reads."""
        import torch

        inputs = self.processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)
        with self._encoder_lock, torch.inference_mode():
            maps = self.model.get_image_embeddings(pixels)
        return Embedding(features=tuple(maps), input_size=tuple(pixels.shape[-2:]),
                         original_size=(int(image.shape[0]), int(image.shape[1])))

    @on_compute_thread
    def predict(self, embedding: Embedding, prompt: Prompt, mask_input: np.ndarray | None = None) -> MaskResult:
        """Decode one object's mask; a lone click asks for three candidates and keeps the best, as SAM 2 does.

        `mask_input` (the previous answer's 256×256 logits) refines that answer, like SAM's `mask_input`.
        """
        import torch

        height, width = embedding.original_size
        coords, labels, box = prompt.in_pixels(width, height)
        prompts: dict[str, Any] = {}
        if coords is not None and labels is not None:
            prompts["input_points"] = [[coords.tolist()]]
            prompts["input_labels"] = [[labels.tolist()]]
        if box is not None:
            prompts["input_boxes"] = [[box.tolist()]]
        inputs = self.processor(original_sizes=[[height, width]], return_tensors="pt", **prompts)
        device = self.model.device
        arguments = {name: inputs[name].to(device) for name in ("input_points", "input_labels", "input_boxes")
                     if name in inputs}
        if mask_input is not None:
            arguments["input_masks"] = torch.as_tensor(mask_input, dtype=self.model.dtype, device=device)[None, None]
        maps = [torch.as_tensor(array, device=device).to(self.model.dtype) for array in embedding.arrays]
        multimask = prompt.is_single_click
        with torch.inference_mode():
            output = self.model(image_embeddings=maps, multimask_output=multimask, **arguments)
        scores = output.iou_scores[0, 0].float()
        best = int(torch.argmax(scores)) if multimask else 0
        low_res = output.pred_masks[0, 0, best].float()
        mask = self.processor.post_process_masks([low_res[None, None].cpu()], [[height, width]])[0][0, 0]
        return MaskResult(mask=mask.numpy(), score=float(scores[best]), low_res_logits=low_res.cpu().numpy())

    def predict_batch(self, embedding: Embedding, prompts: Sequence[Prompt],
                      mask_inputs: Sequence[np.ndarray | None]) -> list[MaskResult]:
        """One mask per prompt, each refined by its previous logits when given."""
        return [self.predict(embedding, prompt, mask) for prompt, mask in zip(prompts, mask_inputs)]
