"""Resident memory of the real server while annotators click through many distinct images.

Each image is new to the server, so every click downloads, decodes and encodes; the embedding cache is
bounded in bytes (EMBEDDING_CACHE_MB), so memory must level off once the cache is full and stay flat.

    python -m bench.bench_memory [--images 500] [--cache-mb 64]      (or `make bench-memory`)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.bench_server import MALLOC_ENV
from bench.machine import cpu_model
from tests.support.backend_process import BackendProcess
from tests.support.checkpoints import save_random_checkpoint
from tests.support.image_host import ImageHost
from tests.support.ls_bodies import keypoint, predict_body
from tests.support.scenes import scene

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="distinct images to click on (default 500)")
    parser.add_argument("--cache-mb", type=int, default=64, help="EMBEDDING_CACHE_MB of the server (default 64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        checkpoint = save_random_checkpoint("vit_t", Path(work) / "mobile_sam.pt")
        host = ImageHost()
        backend = BackendProcess({"MOBILESAM_CHECKPOINT": str(checkpoint), "LABEL_STUDIO_URL": host.url,
                                  "LABEL_STUDIO_API_KEY": host.token, "EMBEDDING_CACHE_MB": str(args.cache_mb),
                                  "WORKERS": "1", "LOG_LEVEL": "WARNING", **MALLOC_ENV},
                                 log_path=Path(work) / "backend.log").wait_ready()
        worker = worker_pid(backend.process.pid)
        samples: list[tuple[int, float, float]] = []
        started = time.perf_counter()
        try:
            for index in range(args.images):
                path = host.add_image(f"/data/upload/1/distinct-{index}.png", scene(640, 480, seed=1000 + index))
                host.files.pop(f"/data/upload/1/distinct-{index - 1}.png", None)  # keep the host's memory flat
                response = requests.post(f"{backend.url}/predict", json=predict_body(path, [keypoint(50, 50)]),
                                         timeout=300)
                response.raise_for_status()
                if (index + 1) % max(1, args.images // 10) == 0:
                    samples.append((index + 1, rss_mb(worker), time.perf_counter() - started))
            metrics = requests.get(f"{backend.url}/metrics", timeout=10).text
        finally:
            backend.stop()
            host.close()
    report(samples, args, metrics)
    return 0


def worker_pid(master: int) -> int:
    """The gunicorn worker under the master process `python _wsgi.py` started (one worker)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{master}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.2)
    raise RuntimeError("no gunicorn worker found")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def report(samples: list[tuple[int, float, float]], args: argparse.Namespace, metrics: str) -> None:
    import torch

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"server: MobileSAM (vit_t, random weights), EMBEDDING_CACHE_MB={args.cache_mb}, 1 worker\n")
    print("| distinct images | worker RSS MB | elapsed s |")
    print("|---|---|---|")
    for count, rss, elapsed in samples:
        print(f"| {count} | {rss:.0f} | {elapsed:.0f} |")
    warm = samples[len(samples) // 5] if len(samples) >= 5 else samples[0]
    growth = (samples[-1][1] - warm[1]) / warm[1] * 100
    print(f"\nRSS growth from {warm[0]} to {samples[-1][0]} images: {growth:+.1f} %")
    entries = [line for line in metrics.splitlines() if line.startswith("sam_embedding_cache_")]
    print("cache at the end: " + ", ".join(entries))


if __name__ == "__main__":
    sys.exit(main())
