"""SAM and MobileSAM behind one stateless predictor: embed an image once, then decode any prompt against it.

Unlike `segment_anything.SamPredictor`, nothing about "the current image" is kept on the object: `embed`
returns an `Embedding` value and `predict` takes it back, so threads serving different images never mix.
The arithmetic is SamPredictor's own (same resize, normalisation, prompt transforms and upscaling), so a
mask from here equals SamPredictor's mask for the same checkpoint, image and prompt (and `mask_input`).
Objects decoded together in one batched call (DECODER_BATCH) can differ from that in a few pixels per
million, because batched matrix products round differently.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from sam_ls_backend.compute_thread import on_compute_thread
from sam_ls_backend.errors import ConfigError
from sam_ls_backend.predictors.base import Embedding, LoadedModels, MaskResult
from sam_ls_backend.predictors.device import resolve_device, use_torch_threads
from sam_ls_backend.predictors.files import ModelFile
from sam_ls_backend.predictors.sam_grid import SamGridDecoder
from sam_ls_backend.protocol.prompts import Prompt
from sam_ls_backend.settings import Settings

log = logging.getLogger(__name__)

DECODER_PARTS = ("prompt_encoder.", "mask_decoder.")  # the weights a learned decoder replaces


def load_mobile_sam(settings: Settings, checkpoint: ModelFile) -> LoadedModels:
    """SAM_CHOICE=MobileSAM: a MobileSAM (vit_t) checkpoint."""
    return LoadedModels(load_predictor(settings, checkpoint, mobile=True))


def load_sam(settings: Settings, checkpoint: ModelFile) -> LoadedModels:
    """SAM_CHOICE=SAM: a SAM ViT-B, ViT-L or ViT-H checkpoint (SAM_MODEL_TYPE, or recognised from it)."""
    return LoadedModels(load_predictor(settings, checkpoint, mobile=False))


def load_predictor(settings: Settings, checkpoint: ModelFile, mobile: bool) -> SamImagePredictor:
    """Build the model a checkpoint holds and load its weights (start-up only: takes seconds)."""
    path = checkpoint.require_file()
    use_torch_threads(settings.torch_threads)
    started = time.perf_counter()
    state_dict = read_state_dict(path)
    model_type = recognise_model_type(state_dict)
    wanted = settings.sam_model_type
    if mobile and model_type != "vit_t":
        raise ConfigError(f"SAM_CHOICE=MobileSAM but {path.name} holds a SAM {model_type} model: use SAM_CHOICE=SAM")
    if wanted != "auto" and wanted != model_type:
        raise ConfigError(f"SAM_MODEL_TYPE={wanted} but {path.name} holds a {model_type} model")
    model = MODEL_BUILDERS[model_type]()
    model.load_state_dict(state_dict)
    device = resolve_device(settings.device)
    model.to(device).eval()
    log.info("loaded %s from %s on %s in %.1f s", model_type, path, device, time.perf_counter() - started)
    batch = settings.decoder_batch == "on" or (settings.decoder_batch == "auto" and device.type == "cuda")
    return SamImagePredictor(model, model_type=model_type, batch_decoder=batch)


class SamImagePredictor:
    """Thread-safe SAM/MobileSAM inference: `embed` an image, then `predict` prompts on the embedding."""

    runtime = "torch"

    def __init__(self, model: Any, model_type: str, batch_decoder: bool = False) -> None:
        self.model: Any = model  # segment_anything.Sam or mobile_sam.Sam (untyped)
        self.model_type = model_type
        self.batch_decoder = batch_decoder
        self.device = next(model.parameters()).device
        self._transform = ResizeLongestSide(model.image_encoder.img_size)
        # One image at a time through the encoder: it already uses every core (or most of a GPU).
        self._encoder_lock = threading.Lock()
        self._grid = SamGridDecoder(model.prompt_encoder, model.mask_decoder, self.device,
                                    model.image_encoder.img_size, float(model.mask_threshold))
        # The prompt encoder and mask decoder served: the checkpoint's, or a learned pair (`use_decoder`). Read
        # once per decode, so a decode that starts before a switch finishes with the pair it started with.
        self._checkpoint_decoder = (model.prompt_encoder, model.mask_decoder)
        self._decoder = self._checkpoint_decoder

    def use_decoder(self, learned: Any) -> None:
        """Serve the prompt encoder and mask decoder of `learned` (a `learning.decoders.LearnedDecoder`: LEARN=on),
        or the checkpoint's own for None. The image encoder, and so every cached embedding, stays as it is."""
        if learned is None:
            self._decoder = self._checkpoint_decoder
            return
        prompt_encoder, mask_decoder = (copy.deepcopy(part) for part in self._checkpoint_decoder)
        pair = torch.nn.ModuleDict({"prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder})
        pair.load_state_dict(read_decoder_weights(learned.weights))
        pair.to(self.device).eval()
        self._decoder = (prompt_encoder, mask_decoder)

    @on_compute_thread
    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Embedding:
        """Run the image encoder on an H×W×3 uint8 RGB image (the expensive step: see the README's Speed)."""
        resized = self._transform.apply_image(image)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        with self._encoder_lock:
            features = self.model.image_encoder(self.model.preprocess(pixels))
        return Embedding(features=features, input_size=(int(pixels.shape[-2]), int(pixels.shape[-1])),
                         original_size=(int(image.shape[0]), int(image.shape[1])))

    def predict(self, embedding: Embedding, prompt: Prompt, mask_input: np.ndarray | None = None) -> MaskResult:
        """Decode one object's mask; a lone click asks SAM for three candidates and keeps the best.

        `mask_input` (256×256 logits, e.g. a previous answer's `low_res_logits`) is SamPredictor's `mask_input`.
        """
        return self._decode(embedding, [prompt], [mask_input])[0]

    def predict_batch(self, embedding: Embedding, prompts: Sequence[Prompt],
                      mask_inputs: Sequence[np.ndarray | None]) -> list[MaskResult]:
        """One mask per prompt. With `batch_decoder`, prompts of the same shape (point count, box or not, lone
        click or not, mask input or not) share one decoder call; otherwise each is decoded alone."""
        if not self.batch_decoder:
            return [self.predict(embedding, prompt, mask) for prompt, mask in zip(prompts, mask_inputs)]
        groups: dict[tuple, list[int]] = {}
        for index, (prompt, mask) in enumerate(zip(prompts, mask_inputs)):
            shape = (len(prompt.points), prompt.box is not None, prompt.is_single_click, mask is not None)
            groups.setdefault(shape, []).append(index)
        results: list[MaskResult | None] = [None] * len(prompts)
        for members in groups.values():
            decoded = self._decode(embedding, [prompts[i] for i in members], [mask_inputs[i] for i in members])
            for index, result in zip(members, decoded):
                results[index] = result
        return results  # type: ignore[return-value]

    @property
    def mask_threshold(self) -> float:
        """Logits above this are the mask (SAM: 0.0)."""
        return float(self.model.mask_threshold)

    def decode_grid(self, embedding: Embedding, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's three candidates for each of N single positive clicks (see `SamGridDecoder.decode_grid`)."""
        return self._grid.decode_grid(embedding, points)

    def upscale(self, embedding: Embedding, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits (N×256×256) as logits in the original image frame (N×H×W float32), as SamPredictor."""
        return self._grid.upscale(embedding, low_res)

    def grid_decoder(self) -> SamGridDecoder:
        """What automatic mask generation decodes with: this model's own prompt encoder and mask decoder."""
        return self._grid

    @on_compute_thread
    @torch.inference_mode()
    def _decode(self, embedding: Embedding, prompts: Sequence[Prompt],
                mask_inputs: Sequence[np.ndarray | None]) -> list[MaskResult]:
        """One decoder call for prompts of the same shape (see `predict_batch`), as SamPredictor.predict does it."""
        height, width = embedding.original_size
        pixels = [prompt.in_pixels(width, height) for prompt in prompts]
        points = None
        if pixels[0][0] is not None:
            coords = np.stack([self._transform.apply_coords(c, embedding.original_size) for c, _, _ in pixels])
            points = (torch.as_tensor(coords, dtype=torch.float, device=self.device),
                      torch.as_tensor(np.stack([np.asarray(labels) for _, labels, _ in pixels]), dtype=torch.int,
                                      device=self.device))
        boxes = None
        if pixels[0][2] is not None:
            box = np.stack([self._transform.apply_boxes(b, embedding.original_size)[0] for _, _, b in pixels])
            boxes = torch.as_tensor(box, dtype=torch.float, device=self.device)
        masks = None
        if mask_inputs[0] is not None:
            stacked = np.stack([np.asarray(mask) for mask in mask_inputs])[:, None]
            masks = torch.as_tensor(stacked, dtype=torch.float, device=self.device)
        prompt_encoder, mask_decoder = self._decoder
        sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=masks)
        multimask = prompts[0].is_single_click
        features = torch.as_tensor(embedding.features, device=self.device).float()
        low_res, scores = mask_decoder(
            image_embeddings=features,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        rows = torch.arange(len(prompts), device=scores.device)
        best = torch.argmax(scores, dim=1) if multimask else torch.zeros_like(rows)
        low_res = low_res[rows, best][:, None]
        scores = scores[rows, best]
        upscaled = self.model.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
        chosen = (upscaled[:, 0] > self.model.mask_threshold).cpu().numpy()
        logits = low_res[:, 0].float().cpu().numpy()
        return [MaskResult(mask=chosen[i], score=float(scores[i]), low_res_logits=logits[i])
                for i in range(len(prompts))]


def load_grid_decoder(settings: Settings, checkpoint: Path) -> SamGridDecoder:
    """The prompt encoder and mask decoder of a SAM / MobileSAM checkpoint, without its image encoder, for
    automatic mask generation on embeddings another runtime made (every SAM model type shares their shape)."""
    use_torch_threads(settings.torch_threads)
    started = time.perf_counter()
    prompt_encoder, mask_decoder = decoder_parts(read_state_dict(checkpoint, mmap=True))
    device = resolve_device(settings.device)
    for module in (prompt_encoder, mask_decoder):
        module.to(device).eval()
    log.info("loaded the prompt encoder and mask decoder of %s on %s for PREANNOTATE=everything in %.1f s",
             checkpoint, device, time.perf_counter() - started)
    return SamGridDecoder(prompt_encoder, mask_decoder, device)


def decoder_parts(state_dict: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """SAM's prompt encoder and mask decoder (the same in SAM ViT-B/L/H and MobileSAM) holding a checkpoint's
    weights, without its image encoder; ConfigError when the checkpoint does not hold them as SAM lays them out."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                   mask_in_chans=16)
    mask_decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
                               transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8))
    for name, module in (("prompt_encoder", prompt_encoder), ("mask_decoder", mask_decoder)):
        prefix = f"{name}."
        try:
            module.load_state_dict({key.removeprefix(prefix): value for key, value in state_dict.items()
                                    if key.startswith(prefix)})
        except RuntimeError as error:
            raise ConfigError(f"the checkpoint's {name} is not SAM's: {str(error)[:200]}") from None
    return prompt_encoder, mask_decoder


def read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint's weights without running any code it may carry (`weights_only`); with `mmap`, tensors
    are read from the file only when used (a reader of the decoder alone never loads the image encoder)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many kinds for a corrupt or foreign file
        raise ConfigError(f"{path} is not a readable SAM checkpoint: {error}") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not any(str(key).startswith("image_encoder.") for key in loaded):
        raise ConfigError(f"{path} does not hold SAM weights (no image_encoder.* entries)")
    return loaded


def read_decoder_weights(path: Path) -> dict[str, torch.Tensor]:
    """A learned decoder's file (LEARN=on): the prompt encoder's and mask decoder's weights, nothing else."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(weights, dict) or not all(str(key).startswith(DECODER_PARTS) for key in weights):
        raise ConfigError(f"{path} is not a learned decoder: it must hold prompt_encoder.* and mask_decoder.* only")
    return weights


def recognise_model_type(state_dict: dict[str, torch.Tensor]) -> str:
    """vit_t (MobileSAM's TinyViT) or vit_b / vit_l / vit_h, told apart by the encoder's shape."""
    if any(key.startswith("image_encoder.layers.") for key in state_dict):
        return "vit_t"
    pos_embed = state_dict.get("image_encoder.pos_embed")
    width = int(pos_embed.shape[-1]) if pos_embed is not None else 0
    by_width = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
    if width not in by_width:
        raise ConfigError(f"unrecognised SAM image encoder (embedding width {width})")
    return by_width[width]


def weights_fingerprint(sam: torch.nn.Module) -> str:
    """A hash of every weight: ties exported graphs to each other and to the checkpoint they came from."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(sam.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).data)
    return digest.hexdigest()


def _build_mobile_sam() -> torch.nn.Module:
    with warnings.catch_warnings():  # mobile_sam re-registers timm's TinyViT names and uses old timm paths
        warnings.simplefilter("ignore", (FutureWarning, UserWarning))
        from mobile_sam import sam_model_registry as mobile_registry

    return mobile_registry["vit_t"]()


def _sam_builder(model_type: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from segment_anything import sam_model_registry

        return sam_model_registry[model_type]()

    return build


MODEL_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "vit_t": _build_mobile_sam,
    "vit_b": _sam_builder("vit_b"),
    "vit_l": _sam_builder("vit_l"),
    "vit_h": _sam_builder("vit_h"),
}
