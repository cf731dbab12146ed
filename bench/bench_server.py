"""Click latency of the real server over HTTP, against the Label Studio tutorial's way of serving SAM.

Starts two backends (`python _wsgi.py`, gunicorn) on one random-weight MobileSAM checkpoint, RUNTIME=torch and
the default (RUNTIME=auto: on a CPU, ONNX Runtime from graphs the server exports on its first start), serves
task images from a loopback server that plays Label Studio, sends Label Studio-shaped /predict requests to
both in turn, and prints medians and ratios measured in this one run, side by side. Random weights cost the
same compute as trained ones, but a random MobileSAM's mask is speckled (an 808 KB RLE at 4000x3000), the
worst case for the answer's encoding; a second pair of servers serves the same model with its masks made
smooth regions (`tests/support/checkpoints.py`: `save_smooth_mask_checkpoint`), whose answers are sized as an
object's mask is, for the warm 4000x3000 click of a typical answer.

    python -m bench.bench_server [--repeats N]      (or `make bench`)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import requests

from bench.machine import cpu_model
from sam_ls_backend.compute_thread import COMPUTE, on_compute_thread
from tests.support.backend_process import BackendProcess
from tests.support.checkpoints import save_random_checkpoint, save_smooth_mask_checkpoint
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


CHECKPOINT_NAME: list[str] = []  # --checkpoint's file name, for the report

# The two servers of the table, side by side: torch, and the default (RUNTIME=auto: ONNX Runtime on a CPU).
RUNTIMES = {"torch": "torch", "default": "auto"}
SMOOTH = "smooth"  # suffix of the servers, rows and files of the smooth-mask model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="clicks per measured case (default 10)")
    parser.add_argument("--checkpoint", type=Path,
                        help="a MobileSAM checkpoint to serve instead of random weights (whose masks are speckled: "
                             "a trained one answers an object's mask, whose RLE costs what a real answer's does)")
    args = parser.parse_args()
    if any(os.environ.get(name) != value for name, value in MALLOC_ENV.items()):
        # glibc reads these at start-up: run again with them, so in-process cases get what the server gets.
        command = [sys.executable, "-m", "bench.bench_server", *sys.argv[1:]]
        os.execve(sys.executable, command, {**os.environ, **MALLOC_ENV})
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        # All torch work of this process runs on the compute thread, as in the server (see compute_thread.py).
        checkpoint = Path(work) / "mobile_sam.pt"
        smooth = Path(work) / "smooth" / "mobile_sam.pt"
        smooth.parent.mkdir()
        if args.checkpoint:
            CHECKPOINT_NAME.append(args.checkpoint.name)
            shutil.copy(args.checkpoint, checkpoint)  # its exported graphs go to the work folder, not beside it
        else:
            COMPUTE.run(save_random_checkpoint, "vit_t", checkpoint)
        COMPUTE.run(save_smooth_mask_checkpoint, smooth)
        host = ImageHost()
        backends: dict[str, BackendProcess] = {}
        startup: dict[str, float] = {}
        try:
            for suffix, served in (("", checkpoint), (f" {SMOOTH}", smooth)):
                for name, runtime in RUNTIMES.items():
                    started = time.perf_counter()
                    backends[name + suffix] = BackendProcess(
                        {"MOBILESAM_CHECKPOINT": str(served), "LABEL_STUDIO_URL": host.url, "RUNTIME": runtime,
                         "LABEL_STUDIO_API_KEY": host.token, "THREADS": "8", "LOG_LEVEL": "INFO", **MALLOC_ENV},
                        log_path=Path(work) / f"backend-{name}{suffix.replace(' ', '-')}.log").wait_ready(timeout=900)
                    if not suffix:
                        startup[name] = time.perf_counter() - started
            startup["default, graphs exported"] = timed(lambda: restart(backends, "default"))
            rows, answers = measure({name: backend.url for name, backend in backends.items()}, host,
                                    {"": checkpoint, SMOOTH: smooth}, args.repeats)
            served_with = {name: served_by(Path(work) / f"backend-{name}.log") for name in RUNTIMES}
        finally:
            for backend in backends.values():
                backend.stop()
            host.close()
    report(rows, answers, startup, served_with, load_at_start)
    return 0


def restart(backends: dict[str, BackendProcess], name: str) -> None:
    """Stop a server and start it again with the same environment (its graphs are cached by now)."""
    old = backends[name]
    old.stop()
    log = old.log_path.with_name(f"{old.log_path.stem}-again.log")
    backends[name] = BackendProcess(old.env, log_path=log).wait_ready(timeout=900)


def served_by(log: Path) -> str:
    """What a server's logs (first start, and a restart if any) say it loaded, exported and serves with."""
    logs = [log, log.with_name(f"{log.stem}-again.log")]
    text = "\n".join(path.read_text(errors="replace") for path in logs if path.exists())
    said = [line.split(": ", 1)[-1] for line in text.splitlines()
            if any(key in line for key in ("serving", "exported and checked", "loaded vit_t"))]
    return "; ".join(dict.fromkeys(said))


def measure(urls: dict[str, str], host: ImageHost, checkpoints: dict[str, Path],
            repeats: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """Every case of the table in seconds per click, per server; the servers take turns case by case, so a
    busy machine slows both alike. Also what the default's warm 4000x3000 click answers, per mask kind."""
    images = {"1024x768": scene(1024, 768, seed=1), "4000x3000": scene(4000, 3000, seed=2)}
    paths = {name: host.add_image(f"/data/upload/1/warm-{name}.png", image) for name, image in images.items()}
    for url in urls.values():
        for path in paths.values():
            click(url, path, 0)  # the first click pays download, decode and encoder
    parts = {kind: COMPUTE.run(in_process, checkpoint, images["4000x3000"]) for kind, checkpoint in checkpoints.items()}
    rows: dict[str, dict[str, list[float]]] = {}

    def add(case: str, name: str, seconds: float) -> None:
        rows.setdefault(case, {}).setdefault(name, []).append(seconds)

    for i in range(repeats):
        for name in RUNTIMES:
            add("warm click 1024x768", name, click(urls[name], paths["1024x768"], i))
            for kind in checkpoints:
                server = f"{name} {kind}".strip()
                app_seconds: list[float] = []
                add(warm_case(kind), name, click(urls[server], paths["4000x3000"], i, app_seconds))
                add(app_case(kind), name, app_seconds[0])
        for kind, part in parts.items():
            for name, call in part.bare.items():
                add(bare_case(kind), name, timed(call))
            add(rle_case(kind), "default", timed(part.rle))
            add(json_case(kind), "default", timed(part.json))
        add(TUTORIAL_WARM, "torch", timed(lambda: parts[""].tutorial(images["4000x3000"])))
    for i in range(max(3, repeats // 3)):
        for name in RUNTIMES:
            url = urls[name]
            for wait in (0.0, OPENED_WAIT_S):
                image = scene(4000, 3000, seed=100 * i + 10 * int(wait) + len(name))
                add(first_case(wait), name, first_click_after_open(url, host, image, f"{name}-{i}-{wait:g}", wait))
            time.sleep(OPENED_WAIT_S)
            add(WARM_PAUSED, name, click(url, paths["4000x3000"], i))
    for name in RUNTIMES:
        url = urls[name]
        four = [scene(1024, 768, seed=20 + i) for i in range(4)]
        four_paths = [host.add_image(f"/data/upload/1/annotator-{name}-{i}.png", image) for i, image in enumerate(four)]
        for path in four_paths:
            click(url, path, 0)
        rows.setdefault(INTERLEAVED, {})[name] = interleaved(
            [lambda i, p=path, u=url: click(u, p, i) for path in four_paths], repeats)
    lock = threading.Lock()

    def tutorial_locked(image: np.ndarray) -> None:
        with lock:  # one shared SamPredictor: without the lock, annotators get each other's masks
            parts[""].tutorial(image)

    four = [scene(1024, 768, seed=20 + i) for i in range(4)]
    rows[TUTORIAL_INTERLEAVED] = {"torch": interleaved(
        [lambda i, image=image: tutorial_locked(image) for image in four], repeats)}
    answers = {kind: describe_answer(urls[f"default {kind}".strip()], paths["4000x3000"]) for kind in checkpoints}
    return rows, answers


def mask_kind(kind: str) -> str:
    """How the rows of a model's masks are told apart: the random weights' speckled masks (or --checkpoint's),
    and the smooth ones."""
    if kind:
        return f", {kind} mask"
    return f", {CHECKPOINT_NAME[0]}'s mask" if CHECKPOINT_NAME else ", speckled mask"


def warm_case(kind: str) -> str:
    return "warm click 4000x3000" + mask_kind(kind)


def app_case(kind: str) -> str:
    return "  of which: the server's own time (Server-Timing)" + mask_kind(kind)


def bare_case(kind: str) -> str:
    return "bare decoder + upscale 4000x3000 (in process)" + mask_kind(kind)


def rle_case(kind: str) -> str:
    return "  of which: brush RLE of the answer's mask" + mask_kind(kind)


def json_case(kind: str) -> str:
    return "  of which: the RLE's JSON text" + mask_kind(kind)


def first_case(wait: float) -> str:
    return f"first click 4000x3000, task opened {wait:g} s before"


WARM_PAUSED = f"warm click 4000x3000 after {OPENED_WAIT_S:g} s idle"
TUTORIAL_WARM = "baseline: tutorial warm click 4000x3000"
THINK = f"think {THINK_S[0]:g}-{THINK_S[1]:g} s"
INTERLEAVED = f"4 annotators interleaving 1024x768, {THINK}"
TUTORIAL_INTERLEAVED = f"baseline: tutorial, 4 annotators interleaving 1024x768, {THINK}"


def click(url: str, path: str, index: int, app_seconds: list[float] | None = None) -> float:
    """One smart keypoint click; the point moves a little each time, as an annotator's would. Seconds until the
    whole answer is read; `app_seconds` gets the server's own time (its Server-Timing header)."""
    body = predict_body(path, [keypoint(40 + index % 20, 50 + index % 10)])
    started = time.perf_counter()
    response = requests.post(f"{url}/predict", json=body, timeout=300)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    if app_seconds is not None:
        app_seconds.append(float(response.headers["Server-Timing"].removeprefix("app;dur=")) / 1000)
    assert response.json()["results"][0]["result"], "a click must yield a region"
    return elapsed


def describe_answer(url: str, path: str) -> str:
    """The size of a click's answer and of its brush RLE: what the server encodes and sends besides the mask."""
    response = requests.post(f"{url}/predict", json=predict_body(path, [keypoint(40, 50)]), timeout=300)
    response.raise_for_status()
    rle = response.json()["results"][0]["result"][0]["value"]["rle"]
    return f"{len(response.content) / 1e6:.2f} MB of JSON, an RLE of {len(rle):,} bytes"


def first_click_after_open(url: str, host: ImageHost, image: np.ndarray, key: str, wait: float) -> float:
    """Open a task (/predict without context, as Label Studio does), wait `wait` s, then click."""
    path = host.add_image(f"/data/upload/1/opened-{key}.png", image)
    requests.post(f"{url}/predict", json=predict_body(path, None), timeout=60).raise_for_status()
    time.sleep(wait)
    return click(url, path, 0)


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


@dataclass(frozen=True)
class InProcess:
    """The parts of a warm 4000x3000 click timed in this process, and the tutorial backend's click."""

    bare: dict[str, Callable[[], object]]  # per server: its predictor's decoder + upscale alone
    rle: Callable[[], object]  # the default's answer's mask to brush RLE
    json: Callable[[], object]  # that RLE to its JSON text
    tutorial: Callable[[np.ndarray], None]


def in_process(checkpoint: Path, image: np.ndarray) -> InProcess:
    """The bare decoders + upscale on `image` (torch, and the default runtime's from the graphs the server
    exported), the RLE and JSON of the answer, and the tutorial backend's click, all in this process."""
    import torch
    from label_studio_sdk.converter.brush import mask2rle
    from segment_anything import SamPredictor

    from sam_ls_backend.predictors.registry import load_predictor
    from sam_ls_backend.protocol.brush_rle import encode_rle_bytes, rle_json
    from sam_ls_backend.protocol.prompts import Prompt
    from sam_ls_backend.settings import Settings

    predictors = {name: load_predictor(Settings.from_env({}, MOBILESAM_CHECKPOINT=str(checkpoint), RUNTIME=runtime))
                  for name, runtime in RUNTIMES.items()}
    assert getattr(predictors["default"], "runtime", "") == "onnxruntime", "the server exported the graphs"
    prompt = Prompt(label="Foreground", to_name="image", points=((40.0, 50.0),), point_labels=(1,))
    embeddings = {name: predictor.embed(image) for name, predictor in predictors.items()}
    mask = predictors["default"].predict(embeddings["default"], prompt).mask
    rle = encode_rle_bytes(mask)
    tutorial = SamPredictor(predictors["torch"].model)  # type: ignore[attr-defined]
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

    bare = {name: (lambda p=predictor, e=embeddings[name]: p.predict(e, prompt))
            for name, predictor in predictors.items()}
    return InProcess(bare, lambda: encode_rle_bytes(mask), lambda: rle_json(rle), tutorial_click)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def report(rows: dict[str, dict[str, list[float]]], answers: dict[str, str], startup: dict[str, float],
           served: dict[str, str], load_at_start: float) -> None:
    """The table: machine, versions, medians per server side by side, then the targets as ratios of this run."""
    import label_studio_sdk
    import onnxruntime
    import torch

    median = {case: {name: statistics.median(times) * 1000 for name, times in by.items()} for case, by in rows.items()}
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
          f"load average (1 min) at the start {load_at_start:.1f}, at the end {os.getloadavg()[0]:.1f}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, numpy {np.__version__}, label-studio-sdk "
          f"{getattr(label_studio_sdk, '__version__', '?')}")
    weights = f"weights of {CHECKPOINT_NAME[0]}" if CHECKPOINT_NAME else "random weights"
    print(f"model: MobileSAM (vit_t), {weights}; the {SMOOTH} mask rows: random weights made to answer smooth "
          f"regions; torch threads {torch.get_num_threads()}")
    for name, said in served.items():
        print(f"server '{name}' (RUNTIME={RUNTIMES[name]}): {said}")
    print("start-up to /health: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in startup.items()) + "\n")
    kinds = ("", SMOOTH)
    order = ["warm click 1024x768"] + [case for kind in kinds for case in
                                       (warm_case(kind), app_case(kind), bare_case(kind), rle_case(kind),
                                        json_case(kind))]
    cases = order + [case for case in rows if case not in order]
    width = max(map(len, rows))
    print(f"| {'case':<{width}} | {'torch ms':>9} | {'default ms':>10} | {'n':>3} |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 12}|{'-' * 5}|")
    for case in cases:
        by = median[case]
        cells = [f"{by[name]:.0f}" if name in by else "-" for name in RUNTIMES]
        count = max(len(times) for times in rows[case].values())
        print(f"| {case:<{width}} | {cells[0]:>9} | {cells[1]:>10} | {count:>3} |")
    for kind in kinds:
        print(f"\nwarm click 4000x3000 of the default{mask_kind(kind)}, answers {answers[kind]}.")
    print(f"interleaving: each of 4 threads clicks its own image, pausing {THINK_S[0]:g}-{THINK_S[1]:g} s (uniform, "
          "seeded per thread, the same for every backend) before every click; latency excludes the pause.")
    print("The servers take turns case by case; the 4 annotators run on one server after the other.")
    for kind in kinds:
        warm, app, bare = (median[case]["default"] for case in (warm_case(kind), app_case(kind), bare_case(kind)))
        rle, json_text = median[rle_case(kind)]["default"], median[json_case(kind)]["default"]
        print(f"default warm 4000x3000 click{mask_kind(kind)}, beyond its bare decoder: {warm - bare:.0f} ms = "
              f"RLE {rle:.0f} + JSON {json_text:.0f} + the server's other work {app - bare - rle - json_text:.0f} + "
              f"HTTP (click minus Server-Timing) {warm - app:.0f}")
    first = {wait: median[first_case(wait)] for wait in (0.0, OPENED_WAIT_S)}
    warm = median[warm_case("")]
    checks = [(f"warm click 4000x3000 / bare decoder + upscale{mask_kind(kind)}",
               [median[warm_case(kind)][n] / median[bare_case(kind)][n] for n in RUNTIMES], "<= 1.2")
              for kind in kinds]
    checks += [
        ("tutorial warm click / ours, 4000x3000", [median[TUTORIAL_WARM]["torch"] / warm[n] for n in RUNTIMES],
         ">= 2"),
        ("first click (opened 0 s before) / warm click", [first[0.0][n] / warm[n] for n in RUNTIMES], "-"),
        ("first click (opened 3 s before) / warm click", [first[OPENED_WAIT_S][n] / warm[n] for n in RUNTIMES],
         "<= 1.5"),
        ("first click (opened 3 s before) / warm after as long idle",
         [first[OPENED_WAIT_S][n] / median[WARM_PAUSED][n] for n in RUNTIMES], "-"),
        ("tutorial / ours, 4 annotators interleaving",
         [median[TUTORIAL_INTERLEAVED]["torch"] / median[INTERLEAVED][n] for n in RUNTIMES], ">= 5"),
        ("torch / default, first click opened 0 s before", [first[0.0]["torch"] / first[0.0]["default"]], "-"),
        ("torch / default, warm click 4000x3000", [warm["torch"] / warm["default"]], "-"),
    ]
    print(f"\n| {'ratio':<{width}} | {'torch':>9} | {'default':>10} | {'target':>7} |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 12}|{'-' * 9}|")
    for name, values, target in checks:
        cells = [f"{value:.2f}" for value in values] + ["-"] * (2 - len(values))
        if len(values) == 1:
            cells = ["-", cells[0]]
        print(f"| {name:<{width}} | {cells[0]:>9} | {cells[1]:>10} | {target:>7} |")


if __name__ == "__main__":
    sys.exit(main())
