"""One training: `python -m sam_ls_backend.learning.trainer`, started by a worker in a process of its own.

Settings come from the environment, as the server's. The process runs at the lowest CPU priority on one
thread, so clicks served meanwhile keep the cores; it loads only the prompt encoder and mask decoder of the
base checkpoint (the image encoder is frozen: the store holds its output), fine-tunes the decoder served now
on the store's training masks (learning/train.py), and judges both on the held-out masks by click IoU. A better
decoder becomes the next version (torch weights and its ONNX Runtime graph, each written atomically, then
`learned.json` names it); a worse one is kept aside. One line of JSON on stdout reports the figures.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import sys
import time
from typing import Any

import torch

from sam_ls_backend.learning.decoders import LearnedDecoders, LearningStatus, write_atomically
from sam_ls_backend.learning.train import Example, TrainOptions, click_iou, fine_tune
from sam_ls_backend.predictors.sam import (
    DECODER_PARTS,
    decoder_parts,
    read_decoder_weights,
    read_state_dict,
    recognise_model_type,
)
from sam_ls_backend.settings import Settings

log = logging.getLogger("sam_ls_backend.learning")

MIN_TRAINING_MASKS = 4
MIN_HELD_OUT_MASKS = 2


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.nice(19)  # the lowest CPU priority: clicks served meanwhile keep the cores
    torch.set_num_threads(1)
    from sam_ls_backend.learning.learner import learning_files, open_store  # the server's own paths and store

    settings = Settings.from_env()
    checkpoint, decoders = learning_files(settings)
    with decoders.training_lock() as mine:
        if not mine:
            print(json.dumps({"status": "busy"}), flush=True)
            return 0
        report = train_once(settings, checkpoint, decoders, open_store(settings, decoders))
    print(json.dumps(report), flush=True)
    return 0


def train_once(settings: Settings, checkpoint: Any, decoders: LearnedDecoders, store: Any) -> dict:
    """Train on the store's masks, adopt the result if it beats the served decoder; the figures as a dict."""
    started = time.perf_counter()
    store.take_new()
    training: list[Example] = []
    held_out: list[Example] = []
    for stored in store.masks():
        example = Example(features=stored.features, input_size=stored.input_size,
                          original_size=stored.original_size, mask=stored.mask)
        (held_out if stored.held_out else training).append(example)
    if len(training) < MIN_TRAINING_MASKS or len(held_out) < MIN_HELD_OUT_MASKS:
        return {"status": "too few masks", "trained_on": len(training), "held_out": len(held_out),
                "needed": [MIN_TRAINING_MASKS, MIN_HELD_OUT_MASKS]}
    sam = decoder_model(checkpoint)
    status = decoders.status()
    served = decoders.served()
    current = read_decoder_weights(served.weights) if served else None
    if current is not None:
        sam.load_state_dict(current, strict=False)
    options = TrainOptions(time_budget_s=settings.learn_time_budget)
    if settings.learn_steps:
        options = dataclasses.replace(options, steps=settings.learn_steps)
    before = click_iou(sam, held_out)
    parent = os.getppid()
    weights = fine_tune(sam, training, options, should_stop=lambda: os.getppid() != parent)  # the worker is gone
    if os.getppid() != parent:
        return {"status": "stopped: the worker that started the training has exited"}
    after = click_iou(sam, held_out, weights)
    adopted = after > before
    version = status.served + 1 if adopted else status.served
    if adopted:
        publish(decoders, version, sam, weights)
    else:
        write_atomically(decoders.rejected_path, dump_weights(weights))
    figures = LearningStatus(served=version, trainings=status.trainings + 1, held_out_before=round(before, 4),
                             held_out_after=round(after, 4), adopted=adopted, trained_on=len(training),
                             held_out=len(held_out), seconds=round(time.perf_counter() - started, 1))
    decoders.record(figures)
    return {"status": "adopted" if adopted else "kept aside", **figures.__dict__}


def publish(decoders: LearnedDecoders, version: int, sam: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Write version `version`'s weights and ONNX prompt graph (before `learned.json` names it)."""
    from sam_ls_backend.predictors.onnx_export import export_decoder

    files = decoders.decoder(version)
    sam.load_state_dict(weights, strict=False)
    staging = files.onnx.with_name(f".{files.onnx.name}.staging")
    try:
        export_decoder(sam, staging, str(getattr(sam, "model_type", "")))
        staging.replace(files.onnx)
    except Exception as error:  # the torch decoder still serves; ONNX workers keep their graph
        log.warning("the learned decoder v%d could not be exported to ONNX Runtime: %s", version, error)
        staging.unlink(missing_ok=True)
    write_atomically(files.weights, dump_weights(weights))


def decoder_model(checkpoint: Any) -> torch.nn.Module:
    """SAM's prompt encoder and mask decoder with the checkpoint's weights, in segment-anything's `Sam`; its image
    encoder is a placeholder that only knows its input size (training reads stored embeddings)."""
    from segment_anything.modeling import Sam

    state = read_state_dict(checkpoint, mmap=True)
    prompt_encoder, mask_decoder = decoder_parts(state)
    sam = Sam(image_encoder=_NoImageEncoder(), prompt_encoder=prompt_encoder, mask_decoder=mask_decoder)
    sam.model_type = recognise_model_type(state)
    return sam.eval()


class _NoImageEncoder(torch.nn.Module):
    """Stands where SAM's image encoder goes: training reads the encoder's stored output instead."""

    img_size = 1024

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the image encoder is not loaded for training: embeddings come from the store")


def dump_weights(weights: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in weights.items() if k.startswith(DECODER_PARTS)},
               buffer)
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
