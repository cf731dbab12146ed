"""Click latency as the annotator feels it: in Label Studio's real labeling page, from the click to the
region being drawn, split into the backend's share, Label Studio's and the page's.

Starts Label Studio 1.23.2, the backend (`python _wsgi.py`, random-weight MobileSAM: the same compute as
trained weights) and Debian's headless Chromium (tests/support/browser.py); for each image size opens a task
with Auto-Annotation and Auto-Accept on, clicks with the smart keypoint tool, and measures in the page
(`performance.now()`): from the click's `pointerdown` to the animation frame in which the editor holds the
new region. The page's interactive-annotating request (Playwright's resource timing) gives the round trip
through Label Studio; the backend's own request log (`ms=` of each `POST /predict`) gives its share.

    python -m bench.bench_ui [--repeats N]      (or `make bench-ui`)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from bench.machine import cpu_model
from bench.ui_stack import UiStack, ui_stack
from tests.support.backend_process import BackendProcess
from tests.support.label_studio import LABEL_STUDIO_VERSION
from tests.support.ls_bodies import SAM_CONFIG

SIZES = ((1024, 768), (4000, 3000))
CLICKS = [(20.0 + 7.0 * (i % 9), 25.0 + 6.0 * (i % 8)) for i in range(64)]
LOGGED_PREDICT = re.compile(r"POST /predict status=200 ms=(\d+) .*interactive=True")

WATCH_CLICKS = """() => {
  window.__clicks = [];
  document.addEventListener('pointerdown', () => window.__clicks.push(performance.now()), true);
}"""
REGION_DRAWN = """(count) => new Promise(resolve => {
  const check = () => Htx.annotationStore.selected.regions.filter(r => r.type === 'brushregion').length >= count
    ? resolve(performance.now() - window.__clicks[window.__clicks.length - 1])
    : requestAnimationFrame(check);
  check();
})"""


@dataclass
class Click:
    """One click's milliseconds: to the region drawn, the page's request round trip, the backend's share."""

    total: float
    round_trip: float
    backend: float


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8, help="measured clicks per image size (default 8)")
    args = parser.parse_args()
    with ui_stack() as stack:
        rows = [(size, measure(stack, size, args.repeats)) for size in SIZES]
    print_table(rows)
    return 0


def measure(stack: UiStack, size: tuple[int, int], repeats: int) -> list[Click]:
    """`repeats` clicks on a task showing a `size` image, after one unmeasured click that embeds the image."""
    labeling = stack.open(SAM_CONFIG, size)
    page = labeling.page
    page.evaluate(WATCH_CLICKS)
    labeling.smart_tool("key-point")
    timings: dict[int, float] = {}
    page.on("requestfinished", lambda request: _round_trip(request, timings))
    totals: list[float] = []
    for index, point in enumerate(CLICKS[: repeats + 1]):
        labeling.hide_regions()  # a click on a region selects it instead of placing a keypoint
        labeling.label("Foreground", block=1)
        labeling.click(*point)
        totals.append(page.evaluate(REGION_DRAWN, index + 1))
        labeling.wait_for_answers(index + 1)
    page.close()
    logged = _backend_ms(stack.backend)[-len(totals):]  # this page's clicks are the last ones logged
    # The first click computed the image's embedding: left out.
    return [Click(totals[i], timings[i], logged[i]) for i in range(1, len(totals))]


def chromium_version() -> str:
    """`chromium --version`, e.g. "Chromium 120.0.6099.224 built on Debian ..."."""
    try:
        return subprocess.run(["chromium", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "Chromium (version unknown)"


def _round_trip(request: Any, timings: dict[int, float]) -> None:
    """The page's interactive-annotating request, from sending it to the last byte of the answer (ms)."""
    if request.method == "POST" and "/interactive-annotating" in request.url:
        timings[len(timings)] = request.timing["responseEnd"]


def _backend_ms(backend: BackendProcess) -> list[float]:
    """Every successful /predict's milliseconds as the backend logged them, in order."""
    return [float(ms) for ms in LOGGED_PREDICT.findall(backend.log_path.read_text(errors="replace"))]


def print_table(rows: list[tuple[tuple[int, int], list[Click]]]) -> None:
    from importlib.metadata import version

    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, Label Studio "
          f"{LABEL_STUDIO_VERSION}, Playwright {version('playwright')}, {chromium_version()}, random-weight MobileSAM")
    print(f"Load average at the end: {os.getloadavg()[0]:.1f}. Medians over the clicks after the first (the "
          "first embeds the image), milliseconds:\n")
    print("| image | clicks | click → region drawn | backend | Label Studio (round trip − backend) | page |")
    print("|---|---:|---:|---:|---:|---:|")
    for (width, height), clicks in rows:
        total = statistics.median(c.total for c in clicks)
        backend = statistics.median(c.backend for c in clicks)
        label_studio = statistics.median(c.round_trip - c.backend for c in clicks)
        page = statistics.median(c.total - c.round_trip for c in clicks)
        print(f"| {width}×{height} | {len(clicks)} | {total:.0f} | {backend:.0f} | {label_studio:.0f} | {page:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
