"""Load test: concurrent annotators against the real server on loopback, for a bounded time.

Starts the backend (`python _wsgi.py`, gunicorn) on 127.0.0.1 with a random-weight MobileSAM checkpoint, serves
task images from a loopback server playing Label Studio, and computes with `SamPredictor`, before the run, the
mask every (image, prompt) must get. Then it warms up, and N clients send a mix of valid clicks on several
images, task opens and bad requests until the time is up. Every valid answer's mask is decoded with Label
Studio's SDK and compared with the expected one. Prints throughput, latency percentiles, answers by status,
unexpected answers, wrong masks and the server worker's memory (RSS) after warm-up and at the end.

    python -m bench.load [--duration S] [--clients N]      (or `make load`)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import requests

from bench.bench_server import MALLOC_ENV
from bench.machine import cpu_model
from tests.support.backend_process import BackendProcess
from tests.support.checkpoints import save_random_checkpoint
from tests.support.image_host import ImageHost
from tests.support.ls_bodies import keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region, reference_mask
from tests.support.scenes import scene

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("load")

IMAGES = {"/data/upload/1/load-640x480.png": (640, 480), "/data/upload/1/load-480x640.png": (480, 640),
          "/data/upload/1/load-1024x768.png": (1024, 768), "/data/upload/1/load-333x517.png": (333, 517)}
# (regions, point coords in percent, point labels, box in percent): what Label Studio sends, and what SAM takes.
PROMPTS = [
    ([keypoint(45, 55)], [[45, 55]], [1], None),
    ([keypoint(30, 40), keypoint(70, 60, positive=False)], [[30, 40], [70, 60]], [1, 0], None),
    ([rectangle(20, 25, 50, 45)], None, None, [20, 25, 70, 70]),
]
# Bad requests and the status each must get.
BAD = [
    (b'{"tasks": [', 400),
    (json.dumps(predict_body(next(iter(IMAGES)), [keypoint(float("nan"), 10)])).encode(), 400),
    (json.dumps(predict_body("", [keypoint(10, 10)])).encode(), 400),
    (json.dumps(predict_body(next(iter(IMAGES)), [{**keypoint(10, 10), "type": "ellipselabels"}])).encode(), 400),
    (json.dumps(predict_body("/data/upload/1/missing.png", [keypoint(10, 10)])).encode(), 502),
    (json.dumps(predict_body("http://127.0.0.1:1/x.png", [keypoint(10, 10)])).encode(), 403),  # not allowed
]
MIX = (("click", 0.70), ("open", 0.15), ("bad", 0.15))
REQUEST_TIMEOUT_S = 120


@dataclass
class Tally:
    """What the clients saw; shared, so every update holds the lock."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind, _ in MIX})
    statuses: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    wrong_masks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Verdicts:
    """Whether an answer's mask is the expected one, decoded once per distinct (case, RLE) for the whole run."""

    def __init__(self, expected: list[np.ndarray]) -> None:
        self.expected = expected
        self.known: dict[tuple[int, bytes], bool] = {}
        self.lock = threading.Lock()

    def right(self, index: int, results: list[dict]) -> bool:
        key = (index, json.dumps([region["value"]["rle"] for region in results]).encode())
        with self.lock:
            verdict = self.known.get(key)
        if verdict is None:
            verdict = len(results) == 1 and np.array_equal(decode_brush_region(results[0]), self.expected[index])
            with self.lock:
                self.known[key] = verdict
        return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of measured load (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of the same load before measuring")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as work:
        checkpoint = save_random_checkpoint("vit_t", Path(work) / "mobile_sam.pt")
        host = ImageHost()
        images = {path: scene(w, h, seed=i) for i, (path, (w, h)) in enumerate(IMAGES.items())}
        for path, image in images.items():
            host.add_image(path, image)
        cases = [(path, prompt) for path in images for prompt in PROMPTS]
        log.info("computing the expected mask of %d (image, prompt) cases with SamPredictor", len(cases))
        verdicts = Verdicts([expected_mask(checkpoint, images[path], prompt) for path, prompt in cases])
        env = {"MOBILESAM_CHECKPOINT": str(checkpoint), "LABEL_STUDIO_URL": host.url,
               "LABEL_STUDIO_API_KEY": host.token, "THREADS": str(args.clients), "LOG_LEVEL": "WARNING", **MALLOC_ENV}
        backend = BackendProcess(env, log_path=Path(work) / "backend.log").wait_ready()
        try:
            (worker,) = worker_pids(backend.process.pid)
            warm = Tally()
            for index in range(len(cases)):  # the first click on each image runs the encoder
                check_click(backend.url, index, cases, verdicts, warm)
            log.info("warming up for %g s", args.warmup)
            run(backend.url, cases, verdicts, args.clients, args.warmup, warm)
            if warm.unexpected or warm.wrong_masks:
                log.warning("during warm-up: %s unexpected answers, %d wrong masks", dict(warm.unexpected),
                            warm.wrong_masks)
            rss_start = rss_mib(worker)
            log.info("measuring for %g s with %d clients", args.duration, args.clients)
            started = time.monotonic()
            tally = run(backend.url, cases, verdicts, args.clients, args.duration, Tally())
            elapsed = time.monotonic() - started
            rss_end = rss_mib(worker)
            alive = worker_pids(backend.process.pid) == {worker}
        finally:
            backend.stop()
            host.close()
    report(args, tally, verdicts, elapsed, rss_start, rss_end, alive)
    return 0 if not tally.unexpected and not tally.wrong_masks and alive else 1


def expected_mask(checkpoint: Path, image: np.ndarray, prompt: tuple) -> np.ndarray:
    """SamPredictor's mask for `prompt` (percent coordinates) on `image`."""
    _, points, labels, box = prompt
    scale = np.array([image.shape[1], image.shape[0]]) / 100.0
    return reference_mask(checkpoint, image, None if points is None else np.array(points) * scale,
                          None if labels is None else np.array(labels),
                          None if box is None else np.array(box) * np.tile(scale, 2))[0]


def run(url: str, cases: list, verdicts: Verdicts, clients: int, seconds: float, tally: Tally) -> Tally:
    """`clients` threads sending the mix until `seconds` have passed; each finishes its request in flight."""
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(url, cases, verdicts, deadline, tally, seed))
               for seed in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


def client(url: str, cases: list, verdicts: Verdicts, deadline: float, tally: Tally, seed: int) -> None:
    """One annotator: picks a kind of request by the mix's weights, again and again until the deadline."""
    rng = random.Random(seed)
    kinds, weights = zip(*MIX)
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        if kind == "click":
            check_click(url, rng.randrange(len(cases)), cases, verdicts, tally)
        elif kind == "open":
            path = rng.choice(list(IMAGES))
            send(url, json.dumps(predict_body(path, None)).encode(), "open", 200, tally)
        else:
            body, status = rng.choice(BAD)
            send(url, body, "bad", status, tally)


def check_click(url: str, index: int, cases: list, verdicts: Verdicts, tally: Tally) -> None:
    """A valid click whose mask must be the expected one for its (image, prompt)."""
    path, (regions, *_) = cases[index]
    answer = send(url, json.dumps(predict_body(path, regions)).encode(), "click", 200, tally)
    if answer is not None and not verdicts.right(index, answer["results"][0]["result"]):
        with tally.lock:
            tally.wrong_masks += 1


def send(url: str, body: bytes, kind: str, status: int, tally: Tally) -> dict | None:
    """POST /predict; records latency and status, and anything but `status` with a JSON body as unexpected."""
    started = time.perf_counter()
    try:
        response = requests.post(f"{url}/predict", data=body, headers={"Content-Type": "application/json"},
                                 timeout=REQUEST_TIMEOUT_S)
        got, answer = response.status_code, response.json()
    except (requests.RequestException, ValueError) as error:
        got, answer = type(error).__name__, None
    elapsed = time.perf_counter() - started
    with tally.lock:
        tally.latencies[kind].append(elapsed)
        tally.statuses[got] += 1
        if got != status or not isinstance(answer, dict):
            tally.unexpected[f"{kind}: {got} (expected {status})"] += 1
            return None
    return answer


def worker_pids(master: int) -> set[int]:
    """The gunicorn workers of the server process `master` (its children)."""
    children: set[int] = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        children |= {int(pid) for pid in (task / "children").read_text().split()}
    return children


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")



def report(args: argparse.Namespace, tally: Tally, verdicts: Verdicts, elapsed: float, rss_start: float,
           rss_end: float, alive: bool) -> None:
    """The table: machine and versions, throughput, latency percentiles per kind, statuses, checks, memory."""
    total = sum(len(values) for values in tally.latencies.values())
    rows = [
        ("machine", f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"),
        ("versions", f"Python {platform.python_version()}, torch {version('torch')}, gunicorn {version('gunicorn')}, "
                     f"Flask {version('flask')}, numpy {version('numpy')}, Pillow {version('pillow')}"),
        ("load", f"{args.clients} clients for {elapsed:.0f} s after {args.warmup:g} s of warm-up; MobileSAM (vit_t), "
                 f"{len(IMAGES)} images, {len(PROMPTS)} prompts each; mix "
                 + ", ".join(f"{kind} {share:.0%}" for kind, share in MIX)),
        ("throughput", f"{total / elapsed:.1f} requests/s ({total} requests)"),
    ]
    for kind, values in [("all", [v for each in tally.latencies.values() for v in each]),
                         *tally.latencies.items()]:
        if values:
            p50, p95, p99 = np.percentile(np.array(values) * 1000, [50, 95, 99])
            rows.append((f"latency {kind}", f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms (n={len(values)})"))
    rows += [
        ("statuses", ", ".join(f"{status}: {count}" for status, count in sorted(tally.statuses.items(), key=str))),
        ("unexpected answers", str(sum(tally.unexpected.values())) + "".join(
            f"; {what} ×{count}" for what, count in tally.unexpected.items())),
        ("wrong masks", f"{tally.wrong_masks} (distinct answers seen and decoded: {len(verdicts.known)})"),
        ("worker RSS", f"{rss_start:.0f} MiB after warm-up, {rss_end:.0f} MiB at the end "
                       f"({(rss_end - rss_start) / rss_start:+.1%})"),
        ("worker", "the same process throughout" if alive else "REPLACED: the worker died during the run"),
    ]
    print("| | |\n|---|---|")
    print("\n".join(f"| {name} | {value} |" for name, value in rows))


if __name__ == "__main__":
    sys.exit(main())
