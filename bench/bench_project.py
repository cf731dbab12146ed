"""A whole project pre-annotated: the predictions command against a real Label Studio project of generated images.

Starts Label Studio 1.23.2 (the tests' install, a fresh data folder), makes a project of `--tasks` generated
scenes of coloured shapes served by a local-files storage, starts the backend as `python _wsgi.py` with the
default runtime, PREANNOTATE=everything and a random-weight MobileSAM, then runs
`python -m precompute --project N --predictions --backend URL` and times it, sampling the load average.
After `--minutes` the command is stopped and what it stored so far is counted (it resumes when run again).
Prints the table with the machine and versions; the stored predictions are counted through Label Studio's API.

    python -m bench.bench_project [--tasks 1000] [--size 320x240] [--grid 32] [--filters default|off]
                                  [--batch 8] [--concurrency 2] [--minutes 25] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from PIL import Image

from bench.bench_server import MALLOC_ENV
from bench.machine import cpu_model
from tests.support.backend_process import ROOT, BackendProcess
from tests.support.checkpoints import save_random_checkpoint
from tests.support.label_studio import LABEL_STUDIO_VERSION, LabelStudio, fresh_data_dir
from tests.support.shape_scenes import shape_scene

CONFIG = """<View><Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels>
  <RectangleLabels name="box" toName="image"><Label value="Object"/></RectangleLabels>
</View>"""
FILTERS = {"default": {}, "off": {"EVERYTHING_PRED_IOU": "0", "EVERYTHING_STABILITY": "0"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--size", default="320x240", help="image width x height")
    parser.add_argument("--grid", type=int, default=32, help="EVERYTHING_POINTS_PER_SIDE")
    parser.add_argument("--filters", choices=FILTERS, default="default", help="the generator's filters, or off")
    parser.add_argument("--batch", type=int, default=8, help="tasks per /predict")
    parser.add_argument("--concurrency", type=int, default=2, help="/predict calls at a time")
    parser.add_argument("--minutes", type=float, default=25.0, help="stop the command after this long")
    parser.add_argument("--work", type=Path, help="keep (or reuse) the checkpoint and its ONNX export here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        figures = run(work, Path(scratch), args, width, height)
    report(args, width, height, figures)
    return 0


def run(work: Path, scratch: Path, args: argparse.Namespace, width: int, height: int) -> dict:
    checkpoint = work / "mobile_sam.pt"
    if not checkpoint.is_file():
        save_random_checkpoint("vit_t", checkpoint)
    files = scratch / "files"
    (files / "project").mkdir(parents=True)
    for index in range(args.tasks):
        Image.fromarray(shape_scene(width, height, seed=index)[0]).save(files / "project" / f"scene-{index}.png")
    with LabelStudio(fresh_data_dir(scratch / "data"), scratch / "label-studio.log", local_files_root=files) as ls:
        project = ls.create_project("sam-ls-backend 1000 images", CONFIG)
        ls.add_local_files_storage(project, files / "project")
        ls.import_tasks(project, [{"data": {"image": f"/data/local-files/?d=project/scene-{index}.png"}}
                                  for index in range(args.tasks)])
        env = {**MALLOC_ENV, "RUNTIME": "auto", "DEVICE": "cpu", "MOBILESAM_CHECKPOINT": str(checkpoint),
               "ONNX_CACHE_DIR": str(work), "PREANNOTATE": "everything",
               "EVERYTHING_POINTS_PER_SIDE": str(args.grid), "LABEL_STUDIO_URL": ls.url,
               "LABEL_STUDIO_API_KEY": ls.token, **FILTERS[args.filters]}
        backend = BackendProcess(env, log_path=scratch / "backend.log").wait_ready(timeout=900)
        try:
            loads: list[float] = []
            sampling = threading.Event()
            sampler = threading.Thread(target=_sample_load, args=(loads, sampling), daemon=True)
            command = [sys.executable, "-m", "precompute", "--project", str(project), "--predictions",
                       "--backend", backend.url, "--batch", str(args.batch), "--concurrency", str(args.concurrency)]
            started = time.monotonic()
            sampler.start()
            with open(scratch / "command.log", "wb") as log:
                process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "LABEL_STUDIO_URL": ls.url,
                                                                   "LABEL_STUDIO_API_KEY": ls.token},
                                           stdout=log, stderr=subprocess.STDOUT)
                try:
                    process.wait(timeout=args.minutes * 60)
                    finished = True
                except subprocess.TimeoutExpired:
                    process.terminate()
                    process.wait()
                    finished = False
            elapsed = time.monotonic() - started
            sampling.set()
        finally:
            backend.stop()
        served = (scratch / "backend.log").read_text(errors="replace")
        runtime = "ONNX Runtime" if "serving vit_t on ONNX Runtime" in served else "torch (see the backend's log)"
        stored = requests.get(f"{ls.url}/api/predictions/", params={"project": project}, timeout=300,
                              headers={"Authorization": f"Token {ls.token}"}).json()
        stored = stored.get("results", stored) if isinstance(stored, dict) else stored
        tail = (scratch / "command.log").read_text(errors="replace").strip().splitlines()[-1:]
    regions = [len(item["result"]) for item in stored]
    return {"finished": finished, "seconds": elapsed, "stored": len(stored), "tasks": len({p["task"] for p in stored}),
            "regions": regions, "loads": loads, "runtime": runtime, "command": tail[0] if tail else ""}


def _sample_load(loads: list[float], stop: threading.Event) -> None:
    while not stop.wait(10.0):
        loads.append(os.getloadavg()[0])


def report(args: argparse.Namespace, width: int, height: int, figures: dict) -> None:
    import onnxruntime
    import torch

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}, torch "
          f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, Label Studio {LABEL_STUDIO_VERSION}")
    print(f"project: {args.tasks} tasks of {width}x{height}; random-weight MobileSAM on {figures['runtime']}; "
          f"PREANNOTATE=everything, {args.grid}x{args.grid} grid, filters {args.filters}; --batch {args.batch} "
          f"--concurrency {args.concurrency}; one backend worker")
    print(f"command: {figures['command']}\n")
    loads = figures["loads"] or [os.getloadavg()[0]]
    regions = figures["regions"]
    minutes = figures["seconds"] / 60
    print("| finished | tasks with a prediction | minutes | images/s | regions per task (median, max) "
          "| load average (1 min): median, max |")
    print("|---|---|---|---|---|---|")
    print(f"| {'yes' if figures['finished'] else 'no, stopped'} | {figures['tasks']} of {args.tasks} "
          f"| {minutes:.1f} | {figures['tasks'] / figures['seconds']:.2f} "
          f"| {statistics.median(regions) if regions else 0:g}, {max(regions, default=0)} "
          f"| {statistics.median(loads):.1f}, {max(loads):.1f} |")


if __name__ == "__main__":
    sys.exit(main())
