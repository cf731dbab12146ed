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
from sam_ls_backend.errors import ConfigError
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

    mask_threshold = 0.0  # logits above this are the mask, as in Sam2Processor.post_process_masks

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

    def grid_decoder(self) -> HfPromptPredictor:
        """What automatic mask generation decodes with (`decode_grid`, `upscale`): SAM 2.1 itself. SAM 3's
        pre-annotation is its concepts (PREANNOTATE=concepts)."""
        if self.model_type != "sam2":
            raise ConfigError(f"PREANNOTATE=everything needs MobileSAM, SAM or SAM 2.1, not {self.model_type}: "
                              "SAM 3 pre-annotates with PREANNOTATE=concepts")
        return self

    @on_compute_thread
    def decode_grid(self, embedding: Embedding, points: Any) -> tuple[Any, Any]:
        """SAM 2.1's three candidates for each of N single positive clicks at `points` (N×2 float64 pixels x, y
        of the original image), in one decoder call: low-res logits N×3×256×256 float32 and predicted IoUs N×3
        (torch tensors on the model's device). The clicks are normalised by the processor, as for `predict`."""
        import torch

        height, width = embedding.original_size
        clicks = [[[float(x), float(y)]] for x, y in np.asarray(points, dtype=np.float64)]
        inputs = self.processor(original_sizes=[[height, width]], input_points=[clicks],
                                input_labels=[[[1]] * len(clicks)], return_tensors="pt")
        device = self.model.device
        maps = [torch.as_tensor(array, device=device).to(self.model.dtype) for array in embedding.arrays]
        with torch.inference_mode():
            output = self.model(image_embeddings=maps, input_points=inputs["input_points"].to(device),
                                input_labels=inputs["input_labels"].to(device), multimask_output=True)
        return output.pred_masks[0].float(), output.iou_scores[0].float()

    @on_compute_thread
    def upscale(self, embedding: Embedding, low_res: Any) -> Any:
        """Low-res logits (N×256×256) as logits in the original image frame (N×H×W float32), as
        `Sam2Processor.post_process_masks` makes them (bilinear, straight to the image size)."""
        import torch

        with torch.inference_mode():
            return self.processor.post_process_masks([low_res[None]], [list(embedding.original_size)],
                                                     binarize=False)[0][0]
