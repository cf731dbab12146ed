"""SAM's prompt encoder and mask decoder fine-tuned on accepted masks, the image encoder frozen; and the judge.

`fine_tune` trains copies of a SAM / MobileSAM's prompt encoder and mask decoder on examples made of an
image's features (the frozen encoder's output, computed once) and a mask an annotator accepted, the way SAM
was trained: per example and step a prompt drawn from the mask (a point inside, or a jittered box, sometimes
with a negative point outside), then a second round with a point from the first answer's error region and the
first answer's logits as `mask_input`. Losses are SAM's: focal + dice on the mask, in the decoder's 256×256
low-res frame against the mask brought to it, plus the mean squared error of the IoU head against the answer's
actual IoU, which keeps predicted IoUs honest. `click_iou` scores a model the way a served click is answered.
Frames are named in `learning/sampling.py`. CPU-friendly (one decoder call per example) and deterministic
given the seed.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from sam_ls_backend.learning.sampling import MaskPrompts, PromptDraw

log = logging.getLogger(__name__)

TRAINED = ("prompt_encoder", "mask_decoder")


@dataclass(frozen=True)
class Example:
    """One accepted mask on an embedded image."""

    features: np.ndarray  # 1×256×64×64 float16 or float32: the frozen image encoder's output
    input_size: tuple[int, int]  # (h, w) of the resized image inside the 1024 input (Embedding.input_size)
    original_size: tuple[int, int]  # (h, w) of the task image
    mask: np.ndarray  # bool H×W, original image frame: the object the annotator accepted


@dataclass(frozen=True)
class TrainOptions:
    """How `fine_tune` trains. The defaults are SAM's own training settings (meant for fine-tuning trained
    weights); from random weights none of the settings measured here raised held-out IoU within minutes
    (README, Tests)."""

    steps: int = 300
    learning_rate: float = 1e-3
    batch_size: int = 4  # examples per step
    seed: int = 0
    time_budget_s: float | None = None  # stop early when exceeded (checked between steps)
    warmup_steps: int = 10  # linear warm-up, then a cosine decay to `final_lr_share` of the rate at `steps`
    final_lr_share: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    box_share: float = 0.3  # first-round prompts that are jittered boxes; the others are points
    negative_share: float = 0.2  # point prompts that also get a negative point outside the mask
    box_jitter: float = 0.1  # std of a box edge's shift, as a share of the box's side (SAM's)
    second_round_share: float = 1.0  # examples that also get a correction round
    # Class-balanced cross-entropy + dice by default: SAM's focal 20:1 dice (focal_weight=20, focal_gamma=2,
    # focal_alpha=0.25, class_balance=False) collapses every answer to empty when starting from random weights.
    focal_weight: float = 1.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_gamma: float = 0.0
    focal_alpha: float = 0.25  # weight of the mask's cells; a negative value weighs both classes alike
    class_balance: bool = True  # instead of focal_alpha: the mask and the rest weigh half the loss each


def fine_tune(sam: torch.nn.Module, examples: Sequence[Example], options: TrainOptions,
              should_stop: Callable[[], bool] | None = None) -> dict[str, torch.Tensor]:
    """Train COPIES of sam.prompt_encoder and sam.mask_decoder (image encoder never run: features come
    from the examples); `sam` itself is unchanged. Returns the trained state dict with keys prefixed
    'prompt_encoder.' and 'mask_decoder.' (loadable into a Sam with strict=False), as CPU tensors.

    Stops after `options.steps` steps, or earlier between steps when `options.time_budget_s` is exceeded or
    `should_stop()` answers True. Raises ValueError for no examples or an example whose mask is empty or not
    of its original size.
    """
    _check(examples)
    model: Any = sam  # segment_anything's or mobile_sam's Sam (untyped)
    device = next(model.parameters()).device
    prompt_encoder, mask_decoder = copy.deepcopy(model.prompt_encoder), copy.deepcopy(model.mask_decoder)
    prompt_encoder.train()
    mask_decoder.train()
    parameters = [p for module in (prompt_encoder, mask_decoder) for p in module.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_share(step, options))
    img_size = int(model.image_encoder.img_size)
    prepared = [MaskPrompts(example.mask, example.input_size, img_size) for example in examples]
    rng = np.random.default_rng(options.seed)
    order: list[int] = []
    started = time.monotonic()
    step = 0
    with torch.inference_mode(False), torch.enable_grad():
        image_pe = prompt_encoder.get_dense_pe().detach()
        while step < options.steps:
            if options.time_budget_s is not None and time.monotonic() - started > options.time_budget_s:
                break
            if should_stop is not None and should_stop():
                break
            if len(order) < options.batch_size:
                order.extend(rng.permutation(len(examples)).tolist())
            batch, order = order[:options.batch_size], order[options.batch_size:]
            optimizer.zero_grad(set_to_none=True)
            for index in batch:
                loss = _example_loss(prompt_encoder, mask_decoder, image_pe, examples[index], prepared[index], rng,
                                     options, device)
                (loss / len(batch)).backward()
            if options.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, options.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
    log.info("fine-tuned on %d examples: %d steps in %.1f s", len(examples), step, time.monotonic() - started)
    return {f"{name}.{key}": value.detach().cpu().clone()
            for name, module in zip(TRAINED, (prompt_encoder, mask_decoder))
            for key, value in module.state_dict().items()}


def click_iou(sam: torch.nn.Module, examples: Sequence[Example],
              weights: dict[str, torch.Tensor] | None = None) -> float:
    """Mean IoU, over examples, of the mask SAM answers for ONE positive click at the mask's innermost
    point (farthest from its boundary: deterministic), multimask output, best-scored candidate kept,
    upscaled to the original frame and thresholded: exactly what a served click gets. With `weights`,
    the prompt encoder / mask decoder come from them. This is the held-out judge."""
    _check(examples)
    model: Any = sam  # segment_anything's or mobile_sam's Sam (untyped)
    prompt_encoder, mask_decoder = _decoder_parts(model, weights)
    with torch.inference_mode():
        return float(np.mean([_click_iou(model, prompt_encoder, mask_decoder, example) for example in examples]))


def _click_iou(sam: Any, prompt_encoder: Any, mask_decoder: Any, example: Example) -> float:
    """The IoU of the served answer to one click at the innermost point of `example.mask` (see click_iou)."""
    device = next(sam.parameters()).device
    transform = ResizeLongestSide(int(sam.image_encoder.img_size))
    image_pe = prompt_encoder.get_dense_pe()
    click = transform.apply_coords(innermost_point(example.mask)[None], example.original_size)
    prompt = PromptDraw(click, np.ones(1, dtype=np.int64), None)
    logits, predicted = _decode(prompt_encoder, mask_decoder, image_pe, _features(example, device), prompt,
                                None, device)
    best = int(torch.argmax(predicted[0]))
    upscaled = sam.postprocess_masks(logits[:, best:best + 1], example.input_size, example.original_size)
    answer = (upscaled[0, 0] > sam.mask_threshold).cpu().numpy()
    truth = example.mask.astype(bool)
    return float(np.logical_and(answer, truth).sum() / np.logical_or(answer, truth).sum())


def innermost_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) float64 original-frame pixel of `mask` (bool H×W) farthest from its boundary, the image's
    edge counting as boundary; the first such pixel in row order on ties."""
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    row, column = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([column, row], dtype=np.float64)


def _example_loss(prompt_encoder: Any, mask_decoder: Any, image_pe: torch.Tensor,
                  example: Example, prompts: MaskPrompts, rng: np.random.Generator, options: TrainOptions,
                  device: torch.device) -> torch.Tensor:
    """The loss of one example for one step: a drawn prompt, and (in `second_round_share` of steps) a
    correction point from its answer's errors with that answer's logits as `mask_input`."""
    features = _features(example, device)
    target, valid = prompts.target.to(device), prompts.valid.to(device)
    prompt = prompts.draw(rng, options.box_share, options.negative_share, options.box_jitter)
    logits, predicted = _decode(prompt_encoder, mask_decoder, image_pe, features, prompt, None, device)
    loss, _ = _mask_loss(logits[0], predicted[0], target, valid, options)
    if rng.random() < options.second_round_share:
        shown = logits[0, int(torch.argmax(predicted[0]))].detach()  # the answer a served click shows
        point, label = prompts.correction(rng, shown)
        refined = prompt.with_point(point, label)
        logits, predicted = _decode(prompt_encoder, mask_decoder, image_pe, features, refined,
                                    shown[None, None], device)
        second, _ = _mask_loss(logits[0], predicted[0], target, valid, options)
        loss = loss + second
    return loss


def _mask_loss(logits: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
               options: TrainOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """For K candidates (`logits` K×256×256, predicted IoUs K) against `target` (256×256 cover shares) over
    the `valid` cells: the best candidate's focal + dice loss (SAM's: only the closest of an ambiguous
    prompt's answers is pulled) plus the IoU head's squared error on every candidate; and the actual IoUs."""
    weight = valid.float()
    cells = weight.sum()
    probability = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    agreement = probability * target + (1 - probability) * (1 - target)
    focal = cross_entropy * (1 - agreement) ** options.focal_gamma
    if options.class_balance:
        inside = (target * weight).sum().clamp(min=1.0)
        outside = (cells - inside).clamp(min=1.0)
        focal = focal * (target * (cells / (2 * inside)) + (1 - target) * (cells / (2 * outside)))
    elif options.focal_alpha >= 0:
        focal = focal * (options.focal_alpha * target + (1 - options.focal_alpha) * (1 - target))
    focal = (focal * weight).sum(dim=(-2, -1)) / cells
    overlap = (probability * target * weight).sum(dim=(-2, -1))
    dice = 1 - (2 * overlap + 1) / ((probability * weight).sum(dim=(-2, -1)) + (target * weight).sum() + 1)
    mask_losses = options.focal_weight * focal + options.dice_weight * dice
    with torch.no_grad():
        answer, truth = (logits > 0) & valid, (target >= 0.5) & valid
        intersection = (answer & truth).sum(dim=(-2, -1)).float()
        union = (answer | truth).sum(dim=(-2, -1)).float().clamp(min=1.0)
        actual = intersection / union
    iou_loss = F.mse_loss(predicted, actual)
    return mask_losses.min() + options.iou_weight * iou_loss, actual


def _decode(prompt_encoder: Any, mask_decoder: Any, image_pe: torch.Tensor,
            features: torch.Tensor, prompt: PromptDraw, mask_input: torch.Tensor | None,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder call as `SamImagePredictor._decode` makes it: low-res logits 1×K×256×256 and predicted
    IoUs 1×K, K = 3 for a lone positive click (multimask), else 1. `mask_input`: 1×1×256×256 logits."""
    points, box = prompt.tensors(device)
    sparse, dense = prompt_encoder(points=points, boxes=box, masks=mask_input)
    return mask_decoder(image_embeddings=features, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                        dense_prompt_embeddings=dense, multimask_output=prompt.is_single_click)


def _decoder_parts(sam: Any,
                   weights: dict[str, torch.Tensor] | None) -> tuple[Any, Any]:
    """sam's prompt encoder and mask decoder, or copies of them holding `weights` (keys prefixed by part)."""
    if weights is None:
        return sam.prompt_encoder, sam.mask_decoder
    parts = []
    for name in TRAINED:
        part = copy.deepcopy(getattr(sam, name))
        prefix = f"{name}."
        part.load_state_dict({key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)})
        parts.append(part.eval())
    return parts[0], parts[1]


def _features(example: Example, device: torch.device) -> torch.Tensor:
    """The example's features as a 1×256×64×64 float32 tensor on `device`."""
    return torch.as_tensor(np.asarray(example.features), device=device).float()


def _lr_share(step: int, options: TrainOptions) -> float:
    """The share of the learning rate at `step`: linear warm-up, then cosine decay to `final_lr_share`."""
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    progress = min(1.0, (step - options.warmup_steps) / max(1, options.steps - options.warmup_steps))
    return options.final_lr_share + (1 - options.final_lr_share) * 0.5 * (1 + math.cos(math.pi * progress))


def _check(examples: Sequence[Example]) -> None:
    """ValueError naming the first example that cannot be trained on or judged."""
    if not examples:
        raise ValueError("no examples")
    for index, example in enumerate(examples):
        if tuple(example.mask.shape) != tuple(example.original_size):
            raise ValueError(f"example {index}: mask of shape {example.mask.shape}, image of {example.original_size}")
        if not example.mask.any():
            raise ValueError(f"example {index}: empty mask")
