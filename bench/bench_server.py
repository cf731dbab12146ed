"""Click latency of the real server over HTTP, against the Label Studio tutorial's way of serving SAM.

Starts the backend (`python _wsgi.py`, gunicorn) on a random-weight MobileSAM checkpoint, serves task images
from a loopback server that plays Label Studio, sends Label Studio-shaped /predict requests, and prints
medians and ratios measured in this one run. Random weights cost the same compute as trained ones.

    python -m bench.bench_server [--repeats N]      (or `make bench`)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import requests

from bench.machine import cpu_model
from sam_ls_backend.compute_thread import COMPUTE, on_compute_thread
from tests.support.backend_process import BackendProcess
from tests.support.checkpoints import save_random_checkpoint
from tests.support.image_host import ImageHost
from tests.support.ls_bodies import keypoint, predict_body
from tests.support.scenes import scene

ROOT = Path(__file__).resolve().parent.parent

# glibc malloc settings the Docker image uses: the encoder's large buffers are not handed back to the kernel.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
              "MALLOC_ARENA_MAX": "1"}  # what the Makefile and the Docker image set
OPENED_WAIT_S = 3.0
# An interleaving annotator's pause before each click (uniform, seeded per annotator): see `interleaved`.
THINK_S = (0.3, 0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="clicks per measured case (default 10)")
    args = parser.parse_args()
    if any(os.environ.get(name) != value for name, value in MALLOC_ENV.items()):
        # glibc reads these at start-up: run again with them, so in-process cases get what the server gets.
        command = [sys.executable, "-m", "bench.bench_server", *sys.argv[1:]]
        os.execve(sys.executable, command, {**os.environ, **MALLOC_ENV})
    with tempfile.TemporaryDirectory() as work:
        # All torch work of this process runs on the compute thread, as in the server (see compute_thread.py).
        checkpoint = COMPUTE.run(save_random_checkpoint, "vit_t", Path(work) / "mobile_sam.pt")
        host = ImageHost()
        backend = BackendProcess({"MOBILESAM_CHECKPOINT": str(checkpoint), "LABEL_STUDIO_URL": host.url,
                                  "LABEL_STUDIO_API_KEY": host.token, "THREADS": "8", "LOG_LEVEL": "WARNING",
                                  **MALLOC_ENV}, log_path=Path(work) / "backend.log").wait_ready()
        try:
            rows, answer = measure(backend.url, host, checkpoint, args.repeats)
        finally:
            backend.stop()
            host.close()
    report(rows, answer)
    return 0


def measure(url: str, host: ImageHost, checkpoint: Path, repeats: int) -> tuple[dict[str, list[float]], str]:
    """Every case of the table in seconds per click (cases compared in a ratio are measured alternately), and
    what the warm 4000x3000 click answers."""
    images = {"1024x768": scene(1024, 768, seed=1), "4000x3000": scene(4000, 3000, seed=2)}
    paths = {name: host.add_image(f"/data/upload/1/warm-{name}.png", image) for name, image in images.items()}
    for path in paths.values():
        click(url, path, 0)  # the first click pays download, decode and encoder
    bare, tutorial = COMPUTE.run(in_process, checkpoint, images["4000x3000"])
    rows: dict[str, list[float]] = {name: [] for name in (
        "warm click 1024x768", "warm click 4000x3000", BARE, TUTORIAL_WARM)}
    for i in range(repeats):
        rows["warm click 1024x768"].append(click(url, paths["1024x768"], i))
        rows["warm click 4000x3000"].append(click(url, paths["4000x3000"], i))
        rows[BARE].append(timed(bare))
        rows[TUTORIAL_WARM].append(timed(lambda: tutorial(images["4000x3000"])))
    rows[FIRST] = []
    rows[WARM_PAUSED] = []  # the same idle time before it: what a pause alone costs on this machine
    for i in range(max(3, repeats // 3)):
        rows[FIRST].append(first_click_after_open(url, host, scene(4000, 3000, seed=10 + i), i))
        time.sleep(OPENED_WAIT_S)
        rows[WARM_PAUSED].append(click(url, paths["4000x3000"], i))
    four = [scene(1024, 768, seed=20 + i) for i in range(4)]
    four_paths = [host.add_image(f"/data/upload/1/annotator-{i}.png", image) for i, image in enumerate(four)]
    for path in four_paths:
        click(url, path, 0)
    rows[INTERLEAVED] = interleaved([lambda i, p=path: click(url, p, i) for path in four_paths], repeats)
    lock = threading.Lock()

    def tutorial_locked(image: np.ndarray) -> None:
        with lock:  # one shared SamPredictor: without the lock, annotators get each other's masks
            tutorial(image)

    rows[TUTORIAL_INTERLEAVED] = interleaved([lambda i, image=image: tutorial_locked(image) for image in four],
                                             repeats)
    return rows, describe_answer(url, paths["4000x3000"])


BARE = "bare decoder + upscale 4000x3000 (in process)"
FIRST = f"first click 4000x3000, task opened {OPENED_WAIT_S:g} s before"
WARM_PAUSED = f"warm click 4000x3000 after {OPENED_WAIT_S:g} s idle"
TUTORIAL_WARM = "baseline: tutorial warm click 4000x3000"
THINK = f"think {THINK_S[0]:g}-{THINK_S[1]:g} s"
INTERLEAVED = f"4 annotators interleaving 1024x768, {THINK}"
TUTORIAL_INTERLEAVED = f"baseline: tutorial, 4 annotators interleaving 1024x768, {THINK}"


def click(url: str, path: str, index: int) -> float:
    """One smart keypoint click; the point moves a little each time, as an annotator's would."""
    body = predict_body(path, [keypoint(40 + index % 20, 50 + index % 10)])
    started = time.perf_counter()
    response = requests.post(f"{url}/predict", json=body, timeout=300)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    assert response.json()["results"][0]["result"], "a click must yield a region"
    return elapsed


def describe_answer(url: str, path: str) -> str:
    """The size of a click's answer and of its brush RLE: what the server encodes and sends besides the mask."""
    response = requests.post(f"{url}/predict", json=predict_body(path, [keypoint(40, 50)]), timeout=300)
    response.raise_for_status()
    rle = response.json()["results"][0]["result"][0]["value"]["rle"]
    return f"{len(response.content) / 1e6:.2f} MB of JSON, an RLE of {len(rle):,} bytes"


def first_click_after_open(url: str, host: ImageHost, image: np.ndarray, index: int) -> float:
    """Open a task (/predict without context, as Label Studio does), wait, then click."""
    path = host.add_image(f"/data/upload/1/opened-{index}.png", image)
    requests.post(f"{url}/predict", json=predict_body(path, None), timeout=60).raise_for_status()
    time.sleep(OPENED_WAIT_S)
    return click(url, path, index)


def interleaved(annotators: list[Callable[[int], object]], repeats: int) -> list[float]:
    """Each annotator (a thread) clicks `repeats` times on its own image, pausing a think time before every click;
    seconds per click, without the think time.

    Clicking back to back, a thread that releases a lock often takes it again at once (Python locks are not
    fair), so the tutorial backend would serve one annotator's clicks in a row and its cache of one image would
    never miss. Annotators pause between clicks: THINK_S, uniform, seeded by the annotator's index, so both
    backends get the same pauses; the first pause staggers the annotators' starts.
    """
    latencies: list[float] = []
    lock = threading.Lock()

    def annotator(index: int, act: Callable[[int], object]) -> None:
        pauses = random.Random(index)
        for i in range(repeats):
            time.sleep(pauses.uniform(*THINK_S))
            elapsed = timed(partial(act, i))
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=annotator, args=(index, act)) for index, act in enumerate(annotators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def in_process(checkpoint: Path, image: np.ndarray) -> tuple[Callable[[], object], Callable[[np.ndarray], None]]:
    """The bare decoder + upscale on `image`, and the tutorial backend's click, both in this process."""
    import torch
    from label_studio_sdk.converter.brush import mask2rle
    from segment_anything import SamPredictor

    from sam_ls_backend.predictors.registry import load_predictor
    from sam_ls_backend.protocol.prompts import Prompt
    from sam_ls_backend.settings import Settings

    predictor = load_predictor(Settings.from_env({}, MOBILESAM_CHECKPOINT=str(checkpoint)))
    prompt = Prompt(label="Foreground", to_name="image", points=((40.0, 50.0),), point_labels=(1,))
    embedding = predictor.embed(image)
    tutorial = SamPredictor(predictor.model)
    state = {"image": None}

    @on_compute_thread
    @torch.inference_mode()
    def tutorial_click(image: np.ndarray) -> None:
        """set_image when the image changes (a cache of one), predict, F.interpolate upscale, SDK mask2rle."""
        if state["image"] is not image:
            tutorial.set_image(image)
            state["image"] = image
        height, width = image.shape[:2]
        masks, scores, _ = tutorial.predict(point_coords=np.array([[0.4 * width, 0.5 * height]]),
                                            point_labels=np.array([1]), multimask_output=True)
        mask2rle((masks[int(np.argmax(scores))] * 255).astype(np.uint8))

    return (lambda: predictor.predict(embedding, prompt)), tutorial_click


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def report(rows: dict[str, list[float]], answer: str) -> None:
    """The table: machine, versions, medians, then the issue's targets as ratios of this run's medians."""
    import label_studio_sdk
    import torch

    median = {name: statistics.median(times) * 1000 for name, times in rows.items()}
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"label-studio-sdk {label_studio_sdk.__version__ if hasattr(label_studio_sdk, '__version__') else '?'}")
    print(f"model: MobileSAM (vit_t), random weights; torch threads {torch.get_num_threads()}\n")
    width = max(map(len, rows))
    print(f"| {'case':<{width}} | {'median ms':>9} | {'p90 ms':>7} | {'n':>3} |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 9}|{'-' * 5}|")
    for name, times in rows.items():
        p90 = float(np.percentile(times, 90)) * 1000
        print(f"| {name:<{width}} | {median[name]:>9.0f} | {p90:>7.0f} | {len(times):>3} |")
    print(f"\nwarm click 4000x3000 answers {answer}.")
    print(f"interleaving: each of 4 threads clicks its own image, pausing {THINK_S[0]:g}-{THINK_S[1]:g} s (uniform, "
          "seeded per thread, the same for both backends) before every click; latency excludes the pause.")
    print(f"idle: the first click follows {OPENED_WAIT_S:g} s without requests, and so does the warm click measured "
          "after it, to show what the pause alone costs (a virtual machine's cores can be slow to wake).")
    warm_big = median["warm click 4000x3000"]
    checks = [
        ("warm click 4000x3000 / bare decoder + upscale", warm_big / median[BARE], "<= 1.5"),
        ("tutorial warm click / ours, 4000x3000", median[TUTORIAL_WARM] / warm_big, ">= 2"),
        ("first click after open / warm click, 4000x3000", median[FIRST] / warm_big, "<= 1.5"),
        ("first click after open / warm click after as long idle", median[FIRST] / median[WARM_PAUSED], "-"),
        ("tutorial / ours, 4 annotators interleaving",
         median[TUTORIAL_INTERLEAVED] / median[INTERLEAVED], ">= 5"),
    ]
    print(f"\n| {'ratio':<{width}} | {'value':>9} | {'target':>7} |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 9}|")
    for name, value, target in checks:
        print(f"| {name:<{width}} | {value:>9.2f} | {target:>7} |")


if __name__ == "__main__":
    sys.exit(main())
