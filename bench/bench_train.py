"""Fine-tuning speed and effect: held-out click IoU before and after `learning.train.fine_tune`, per setting.

Takes the random-weight MobileSAM the tests use and the generated shape scenes of the tests' trained checkpoint
(`tests/support/shape_examples.py`: its training and held-out scenes), embeds them once, then trains the
prompt encoder and mask decoder with each setting asked for (the image encoder frozen) and prints the training
time and the held-out click IoU (`learning.train.click_iou`) before and after.

    python -m bench.bench_train [--steps N ...] [--batch N ...] [--lr X ...] [--second-round X ...]

Each option takes several values; every combination is run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import platform
import time

import torch

from bench.machine import cpu_model
from sam_ls_backend.learning.train import click_iou, fine_tune
from tests.support.checkpoints import random_model
from tests.support.shape_examples import RECIPE, scene_examples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[RECIPE.options.steps])
    parser.add_argument("--batch", type=int, nargs="+", default=[RECIPE.options.batch_size])
    parser.add_argument("--lr", type=float, nargs="+", default=[RECIPE.options.learning_rate])
    parser.add_argument("--second-round", type=float, nargs="+", default=[RECIPE.options.second_round_share])
    parser.add_argument("--scenes", type=int, default=len(RECIPE.train_seeds), help="training scenes")
    args = parser.parse_args()
    model = random_model("vit_t", RECIPE.base_seed)
    started = time.monotonic()
    train = scene_examples(model, RECIPE.train_seeds[:args.scenes], RECIPE)
    held_out = scene_examples(model, RECIPE.held_out_seeds, RECIPE)
    embedding_s = time.monotonic() - started
    before = click_iou(model, held_out)
    print(f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}; random-weight MobileSAM, {len(train)} training shapes on "
          f"{args.scenes} scenes, {len(held_out)} held-out shapes on {len(RECIPE.held_out_seeds)} scenes "
          f"(embedded in {embedding_s:.0f} s); held-out click IoU before: {before:.3f}")
    print("| steps | batch | learning rate | second round | training | held-out click IoU after |")
    print("|---|---|---|---|---|---|")
    for steps, batch, rate, second in itertools.product(args.steps, args.batch, args.lr, args.second_round):
        options = dataclasses.replace(RECIPE.options, steps=steps, batch_size=batch, learning_rate=rate,
                                      second_round_share=second)
        trained_at = time.monotonic()
        weights = fine_tune(model, train, options)
        minutes = (time.monotonic() - trained_at) / 60
        print(f"| {steps} | {batch} | {rate:g} | {second:g} | {minutes:.1f} min | "
              f"{click_iou(model, held_out, weights):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
