"""LEARN=on: what a training costs, what it brings, and what annotators feel while it runs.

Starts the real server (`python _wsgi.py`, LEARN=on, RUNTIME as given) on a random-weight MobileSAM, posts
annotations of generated scenes of coloured shapes to /webhook as Label Studio posts them, and then:
- times warm clicks (1024×768) with no training running, then while *Start Training* trains in the
  background (the trainer process at the lowest priority), the two sets taking turns with the clock;
- reports the training's own figures (masks, seconds, held-out click IoU before and after) and the time per
  100 masks.

    python -m bench.bench_learning [--scenes N] [--steps N] [--runtime torch|auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

from bench.machine import cpu_model
from sam_ls_backend.compute_thread import COMPUTE
from sam_ls_backend.learning.train import TrainOptions
from tests.support.backend_process import BackendProcess
from tests.support.checkpoints import save_random_checkpoint
from tests.support.image_host import ImageHost
from tests.support.ls_bodies import annotation_webhook, brush_result, keypoint, predict_body
from tests.support.scenes import scene
from tests.support.shape_scenes import shape_scene

WIDTH, HEIGHT = 320, 240


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=24, help="annotated scenes (about 4 masks each)")
    parser.add_argument("--steps", type=int, default=0, help="LEARN_STEPS (0: the recipe's own)")
    parser.add_argument("--runtime", default="auto", help="RUNTIME of the server (default auto)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        checkpoint = COMPUTE.run(save_random_checkpoint, "vit_t", Path(work) / "mobile_sam.pt")
        host = ImageHost()
        server = BackendProcess({"MOBILESAM_CHECKPOINT": str(checkpoint), "LABEL_STUDIO_URL": host.url,
                                 "LABEL_STUDIO_API_KEY": host.token, "RUNTIME": args.runtime, "LEARN": "on",
                                 "LEARN_EVERY": "0", "LEARN_STEPS": str(args.steps), "LOG_LEVEL": "INFO"},
                                log_path=Path(work) / "backend.log").wait_ready(timeout=900)
        try:
            sent = annotate(server.url, host, args.scenes)
            click_url = host.add_image("/data/upload/1/click.png", scene(1024, 768, seed=5))
            click(server.url, click_url, 0)  # embeds the image
            idle = [click(server.url, click_url, i) for i in range(1, 16)]
            requests.post(f"{server.url}/webhook", json={"action": "START_TRAINING"}, timeout=30).raise_for_status()
            during, started = [], time.monotonic()
            while not trained(Path(work)) and time.monotonic() - started < 3600:
                during.append(click(server.url, click_url, len(during)))
                time.sleep(0.3)  # an annotator's pause between clicks
            after = [click(server.url, click_url, i) for i in range(1, 16)]
            figures = json.loads(next(Path(work).glob("*.learned.json")).read_text())
        finally:
            server.stop()
            host.close()
    report(args, sent, figures, idle, during, after)
    return 0


def annotate(url: str, host: ImageHost, scenes: int) -> int:
    """Post one annotation per scene (a brush region per shape); wait until the server kept them all."""
    sent = 0
    for index in range(scenes):
        image, masks = shape_scene(WIDTH, HEIGHT, seed=7000 + index)
        image_url = host.add_image(f"/data/upload/1/shapes-{index}.png", image)
        body = annotation_webhook([brush_result(mask, f"r{k}") for k, mask in enumerate(masks)], annotation=index + 1,
                                  task=index + 1, image_url=image_url)
        requests.post(f"{url}/webhook", json=body, timeout=30).raise_for_status()
        sent += len(masks)
    deadline = time.monotonic() + 600
    while kept(url) < sent and time.monotonic() < deadline:
        time.sleep(0.5)
    return sent


def kept(url: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("sam_learning_annotations "):
            return float(line.split()[1])
    return 0.0


def trained(folder: Path) -> bool:
    return any(json.loads(path.read_text()).get("trainings", 0) > 0 for path in folder.glob("*.learned.json"))


def click(url: str, image_url: str, index: int) -> float:
    """Seconds for one click, at a place that moves with `index`."""
    region = keypoint(20 + (index * 7) % 60, 30 + (index * 11) % 40, width=1024, height=768)
    started = time.perf_counter()
    response = requests.post(f"{url}/predict", json=predict_body(image_url, [region], task_id=1), timeout=120)
    response.raise_for_status()
    return time.perf_counter() - started


def report(args: argparse.Namespace, sent: int, figures: dict, idle: list[float], during: list[float],
           after: list[float]) -> None:
    ms = {name: 1000 * statistics.median(values) for name, values in
          (("idle", idle), ("during", during or [float("nan")]), ("after", after))}
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
          f"load average (1 min) at the end {os.getloadavg()[0]:.1f}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}; random-weight MobileSAM, "
          f"RUNTIME={args.runtime}, LEARN_STEPS={args.steps or 'default'}")
    print()
    print("| training | value |")
    print("|---|---:|")
    print(f"| masks posted (scenes) | {sent} ({args.scenes}) |")
    print(f"| trained on / held out | {figures['trained_on']} / {figures['held_out']} |")
    print(f"| training time, s | {figures['seconds']:.0f} |")
    steps = args.steps or TrainOptions().steps
    print(f"| training time per step ({TrainOptions().batch_size} masks, two rounds each), s | "
          f"{figures['seconds'] / steps:.1f} |")
    trained_on = max(figures["trained_on"], 1)
    seen = steps * TrainOptions().batch_size / trained_on
    print(f"| training time per 100 masks (each seen {seen:.0f}×), s | {100 * figures['seconds'] / trained_on:.0f} |")
    print(f"| held-out click IoU before → after | {figures['held_out_before']:.3f} → {figures['held_out_after']:.3f} |")
    print(f"| adopted | {figures['adopted']} |")
    print()
    print("| warm click 1024×768 | median ms | clicks |")
    print("|---|---:|---:|")
    for name, values in (("idle", idle), ("while training", during), ("after training", after)):
        print(f"| {name} | {1000 * statistics.median(values) if values else float('nan'):.0f} | {len(values)} |")
    print()
    print(f"while training / idle: {ms['during'] / ms['idle']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    sys.exit(main())
