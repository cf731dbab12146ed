"""The README's pictures, taken in Label Studio's real labeling page from the workflows the browser tests
drive: a click → brush, an Alt-click refining it, several objects, a SAM 3 concept. (Rectangle → polygons is
not among them: Label Studio 1.23.2's page held the accepted polygon region, 89 vertices, but did not draw it
in headless Chromium, selected or not; to be investigated.)

Runs Label Studio 1.23.2, this backend on random-weight checkpoints (MobileSAM, and a tiny SAM 3 folder for
the concept) and Debian's headless Chromium on generated scenes, and saves the image area of the editor as
palette PNGs in docs/. Random weights answer speckled masks: the pictures show how the workflows look in
the page, not mask quality.

    python -m bench.screenshots      (or `make screenshots`)
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image

from bench.ui_stack import UiStack, ui_stack
from tests.support.backend_process import BackendProcess
from tests.support.browser import LabelingPage
from tests.support.ls_bodies import SAM_CONFIG, TWO_LABELS_CONFIG
from tests.support.sam3_reference import CONCEPT_CONFIG

DOCS = Path(__file__).resolve().parent.parent / "docs"
SIZE = (320, 240)
WIDTH_PX = 360  # pictures are scaled to this width
COLOURS = 128



def main() -> int:
    DOCS.mkdir(exist_ok=True)
    with ui_stack() as stack:
        click_and_refine(stack)
        several_objects(stack)
        concept(stack)
    total = sum(path.stat().st_size for path in DOCS.glob("*.png"))
    print(f"{len(list(DOCS.glob('*.png')))} pictures in docs/, {total / 1024:.0f} KiB together")
    return 0


def click_and_refine(stack: UiStack) -> None:
    labeling = stack.open(SAM_CONFIG, SIZE)
    labeling.smart_tool("key-point")
    labeling.label("Foreground", block=1)
    labeling.click(37.5, 50.0)
    labeling.wait_for_answers(1)
    save(labeling, "click-brush.png")
    labeling.hide_regions()
    labeling.label("Foreground", block=1)
    labeling.click(70.0, 40.0, negative=True)
    labeling.wait_for_answers(2)
    show_regions(labeling)
    save(labeling, "refine-alt-click.png")
    labeling.page.close()


def several_objects(stack: UiStack) -> None:
    labeling = stack.open(TWO_LABELS_CONFIG, SIZE)
    labeling.smart_tool("rectangle")
    for count, (label, corners) in enumerate({"Cat": (5.0, 10.0, 45.0, 60.0),
                                              "Dog": (55.0, 40.0, 95.0, 90.0)}.items(), start=1):
        labeling.hide_regions()
        labeling.label(label, block=1)
        labeling.drag(*corners)
        labeling.wait_for_answers(count)
    show_regions(labeling)
    save(labeling, "several-objects.png")
    labeling.page.close()


def concept(stack: UiStack) -> None:
    """SAM 3 on a tiny random-weight folder, with a threshold low enough to keep some of its candidates."""
    from tests.support.hf_checkpoints import save_sam3_folder

    folder = save_sam3_folder(stack.work / "sam3")
    env = {"SAM_CHOICE": "SAM3", "SAM3_MODEL_DIR": str(folder), "DEVICE": "cpu",
           "LABEL_STUDIO_URL": stack.label_studio.url, "LABEL_STUDIO_API_KEY": stack.label_studio.token}
    backend = BackendProcess(env, log_path=stack.work / "sam3.log").wait_ready(180)
    try:
        labeling = stack.open(CONCEPT_CONFIG, SIZE, auto_accept=False, backend_url=backend.url)
        labeling.submit_text("person")
        labeling.submit_text("0.2")
        labeling.wait_for_answers(2)
        labeling.accept_suggestions()
        save(labeling, "sam3-concept.png")
        labeling.page.close()
    finally:
        backend.stop()


def show_regions(labeling: LabelingPage) -> None:
    labeling.page.evaluate("() => Htx.annotationStore.selected.regions.forEach(r => r.hidden && r.toggleHidden())")
    labeling.unselect_regions()
    labeling.page.wait_for_timeout(300)


def save(labeling: LabelingPage, name: str) -> None:
    """The image area of the editor, as drawn, scaled to WIDTH_PX and reduced to a small palette."""
    labeling.unselect_regions()
    labeling.page.wait_for_timeout(300)
    image = labeling.page.locator('img[src^="blob:"]').first.bounding_box()
    canvas = labeling.page.locator(".konvajs-content").first.bounding_box()
    assert image is not None and canvas is not None, "the task's image is not on the page"
    box = intersection(image, canvas)
    shot = Image.open(io.BytesIO(labeling.page.screenshot(clip=box))).convert("RGB")
    shot = shot.resize((WIDTH_PX, round(shot.height * WIDTH_PX / shot.width)), Image.Resampling.LANCZOS)
    shot.quantize(COLOURS).save(DOCS / name, optimize=True)


def intersection(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """The part of two page boxes ({x, y, width, height}) both cover: the image as the canvas shows it."""
    x, y = max(a["x"], b["x"]), max(a["y"], b["y"])
    right = min(a["x"] + a["width"], b["x"] + b["width"])
    bottom = min(a["y"] + a["height"], b["y"] + b["height"])
    return {"x": x, "y": y, "width": right - x, "height": bottom - y}


if __name__ == "__main__":
    sys.exit(main())
