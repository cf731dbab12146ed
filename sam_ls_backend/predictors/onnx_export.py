"""SAM / MobileSAM as the two ONNX graphs that `onnx_sam.py` serves, and the torch export that writes them.

The prompt graph holds the prompt encoder, the mask decoder, the choice between the single mask and the
best of three, and SAM's upscaling to the original image size. The image sizes are runtime inputs and the
number of points is a dynamic axis, so one file serves every image size, aspect ratio and prompt.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn
from torch.nn import functional as F

from sam_ls_backend.predictors.onnx_graph import (
    DECODER_GRAPH,
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    EMBEDDING_SHAPE,
    ENCODER_GRAPH,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    GRAPH_KEY,
    IMAGE_SIZE,
    MODEL_TYPE_KEY,
    WEIGHTS_KEY,
)
from sam_ls_backend.predictors.sam import weights_fingerprint

OPSET = 17
EXTERNAL_DATA_BYTES = 1_800_000_000  # beyond this, weights go to a `<file>.data` beside the graph (protobuf's 2 GB)


class PromptGraph(nn.Module):
    """Prompt encoder + mask decoder + upscaling of one SAM model, with plain tensors in and out.

    Inputs (coordinates in the 1024-input frame, as `SamPredictor` transforms them):
      image_embeddings float32 1×256×64×64; point_coords float32 1×N×2 (x, y); point_labels float32 1×N
      (1 positive, 0 negative, -1 padding, 2 / 3 a box's top-left / bottom-right corner); mask_input float32
      1×1×256×256 (a previous answer's logits) used when has_mask_input float32 (1,) is 1; multimask bool
      (1,): best of the three candidate masks by predicted IoU, else the single-mask output; input_size and
      original_size int64 (2,) = (h, w) of the resized and of the original image.
    Outputs: mask bool 1×1×H×W (original frame), score float32 1×1, low_res_logits float32 1×1×256×256.
    """

    def __init__(self, sam: Any) -> None:
        super().__init__()
        self.prompt_encoder: Any = sam.prompt_encoder  # segment_anything modules (untyped)
        self.mask_decoder: Any = sam.mask_decoder
        self.mask_threshold = float(sam.mask_threshold)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor, multimask: torch.Tensor,
                input_size: torch.Tensor, original_size: torch.Tensor):
        logits, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self.embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self.embed_mask(mask_input, has_mask_input),
        )
        best_of_three = torch.argmax(iou[:, 1:], dim=1) + 1
        chosen = torch.where(multimask, best_of_three, torch.zeros_like(best_of_three))
        low_res = torch.index_select(logits, 1, chosen)
        score = torch.index_select(iou, 1, chosen)
        mask = self.upscale(low_res, input_size, original_size) > self.mask_threshold
        return mask, score, low_res

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SAM's point and box-corner embeddings, selected by label arithmetic instead of masked writes."""
        encoder = self.prompt_encoder
        embedding = encoder.pe_layer.forward_with_coords(coords + 0.5, (IMAGE_SIZE, IMAGE_SIZE))
        labels = labels.unsqueeze(-1)
        embedding = embedding * (labels != -1) + encoder.not_a_point_embed.weight * (labels == -1)
        for label, table in enumerate(encoder.point_embeddings):
            embedding = embedding + table.weight * (labels == label)
        return embedding

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """SAM's dense prompt: the previous logits through the mask encoder, or the no-mask embedding."""
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        given = self.prompt_encoder.mask_downscaling(mask_input)
        return given * has_mask_input + no_mask * (1 - has_mask_input)

    def upscale(self, low_res: torch.Tensor, input_size: torch.Tensor, original_size: torch.Tensor) -> torch.Tensor:
        """SAM's postprocessing: to the square model input, crop the padding away, then to the original size."""
        masks = F.interpolate(low_res, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        masks = masks[..., :input_size[0], :input_size[1]]
        # The sizes stay tensors: the exporter traces them into the graph as run-time inputs.
        size = (original_size[0], original_size[1])
        return F.interpolate(masks, size, mode="bilinear", align_corners=False)  # type: ignore[arg-type]


def export_decoder(sam: Any, path: Path, model_type: str) -> None:
    """Write the prompt graph of `sam` to `path`, stamped with the model type and the weights' fingerprint."""
    example = (
        torch.zeros(EMBEDDING_SHAPE),
        torch.tensor([[[300.0, 200.0], [0.0, 0.0]]]),
        torch.tensor([[1.0, -1.0]]),
        torch.zeros(1, 1, 256, 256),
        torch.tensor([0.0]),
        torch.tensor([True]),
        torch.tensor([768, 1024]),
        torch.tensor([480, 640]),
    )
    dynamic = {"point_coords": {1: "points"}, "point_labels": {1: "points"}, "mask": {2: "height", 3: "width"}}
    _export(PromptGraph(sam), example, path, DECODER_INPUTS, DECODER_OUTPUTS, dynamic,
            {GRAPH_KEY: DECODER_GRAPH, MODEL_TYPE_KEY: model_type, WEIGHTS_KEY: weights_fingerprint(sam)})


def export_encoder(sam: Any, path: Path, model_type: str) -> None:
    """Write `sam`'s image encoder to `path`: normalised, zero-padded 1×3×1024×1024 pixels in, embeddings out."""
    _export(sam.image_encoder, (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),), path, ENCODER_INPUTS, ENCODER_OUTPUTS,
            {}, {GRAPH_KEY: ENCODER_GRAPH, MODEL_TYPE_KEY: model_type, WEIGHTS_KEY: weights_fingerprint(sam)})


def _export(module: nn.Module, example: tuple, path: Path, inputs: tuple, outputs: tuple, dynamic: dict,
            metadata: dict[str, str]) -> None:
    """Export with the TorchScript exporter, then stamp the metadata `onnx_sam.open_graph` checks.

    `dynamo=False`: the TorchScript exporter needs no onnxscript, and the dynamo exporter failed on SAM's
    decoder. The module is put in eval mode first: the exporter restores the mode it found, and a module in
    training mode would leave the shared SAM model in training mode after the export.
    """
    module.eval()
    raw_dir = Path(tempfile.mkdtemp(prefix=".raw-", dir=path.parent))
    try:
        raw = raw_dir / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on SAM's shape arithmetic; validation checks it
            torch.onnx.export(module, example, str(raw), input_names=list(inputs), output_names=list(outputs),
                              dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)
        model = onnx.load(str(raw))
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        large = sum(len(tensor.raw_data) for tensor in model.graph.initializer) > EXTERNAL_DATA_BYTES
        onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                        location=f"{path.name}.data")
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)
