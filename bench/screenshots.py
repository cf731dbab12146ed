"""The README's pictures, taken in Label Studio's real labeling page from the workflows the browser tests
drive: a click → brush, an Alt-click refining it, rectangle → polygons, several objects, a SAM 3 concept and
a video box tracked to a later frame.

Runs Label Studio 1.23.2, this backend on random-weight checkpoints (MobileSAM, a tiny SAM 3 folder for the
concept, a tiny SAM 2.1 video folder for the track) and Debian's headless Chromium on generated scenes, and
saves the image or video area of the editor as palette PNGs in docs/. Random weights answer speckled masks:
the pictures show how the workflows look in the page, not mask quality. The video folder's masks are made to
follow its scene's square (`locate_sam2_video_masks`), so the track shows where the square went.

    python -m bench.screenshots      (or `make screenshots`)
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from bench.ui_stack import UiStack, ui_stack
from tests.support.backend_process import BackendProcess
from tests.support.browser import LabelingPage
from tests.support.ls_bodies import POLYGON_CONFIG, SAM_CONFIG, TWO_LABELS_CONFIG
from tests.support.sam3_reference import CONCEPT_CONFIG
from tests.support.video_bodies import VIDEO_CONFIG
from tests.support.videos import Square, scene_frames, write_webm

DOCS = Path(__file__).resolve().parent.parent / "docs"
SIZE = (320, 240)
WIDTH_PX = 360  # pictures are scaled to this width
COLOURS = 128
VIDEO_SIZE, VIDEO_FRAMES = (320, 180), 24
VIDEO_SQUARE = Square((30, 50), (8, 2), 48)  # moves 8 px right and 2 px down a frame
VIDEO_STEPS = 2  # Step forward twice: 10 frames each, frame 21 shown



def main() -> int:
    DOCS.mkdir(exist_ok=True)
    with ui_stack() as stack:
        click_and_refine(stack)
        rectangle_polygons(stack)
        several_objects(stack)
        concept(stack)
        video_track(stack)
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


def rectangle_polygons(stack: UiStack) -> None:
    """SAM 2.1 on a tiny random-weight folder: random MobileSAM weights answer a mask whose polygons cover
    nearly the whole image (drawn as an image-wide tint), SAM 2.1's cover part of it."""
    from tests.support.hf_checkpoints import save_sam2_video_folder

    folder = save_sam2_video_folder(stack.work / "sam2")
    with extra_backend(stack, "SAM2", folder) as url:
        labeling = stack.open(POLYGON_CONFIG, SIZE, backend_url=url)
        labeling.smart_tool("rectangle")
        labeling.label("Object", block=1)  # PolygonLabels, RectangleLabels: the rectangles' block
        labeling.drag(5.0, 10.0, 45.0, 60.0)
        labeling.wait_for_answers(1)
        save(labeling, "rectangle-polygons.png")
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

    with extra_backend(stack, "SAM3", save_sam3_folder(stack.work / "sam3")) as url:
        labeling = stack.open(CONCEPT_CONFIG, SIZE, auto_accept=False, backend_url=url)
        labeling.submit_text("person")
        labeling.submit_text("0.2")
        labeling.wait_for_answers(2)
        labeling.accept_suggestions()
        save(labeling, "sam3-concept.png")
        labeling.page.close()


@contextlib.contextmanager
def extra_backend(stack: UiStack, choice: str, folder: Path) -> Iterator[str]:
    """A second backend, SAM_CHOICE=`choice` (SAM2 or SAM3) on the model folder `folder`; yields its URL."""
    env = {"SAM_CHOICE": choice, f"{choice}_MODEL_DIR": str(folder), "DEVICE": "cpu",
           "LABEL_STUDIO_URL": stack.label_studio.url, "LABEL_STUDIO_API_KEY": stack.label_studio.token}
    backend = BackendProcess(env, log_path=stack.work / f"{folder.name}.log").wait_ready(180)
    try:
        yield backend.url
    finally:
        backend.stop()


def video_track(stack: UiStack) -> None:
    """A box drawn around the square on frame 1, its label clicked, shown on a later frame."""
    from tests.support.hf_checkpoints import locate_sam2_video_masks, save_sam2_video_folder

    width, height = VIDEO_SIZE
    frames = scene_frames(VIDEO_FRAMES, width, height, [VIDEO_SQUARE])
    truth = np.zeros(frames.shape[:3], bool)
    for index in range(VIDEO_FRAMES):
        x0, y0, x1, y1 = VIDEO_SQUARE.box(index)
        truth[index, y0:y1, x0:x1] = True
    folder = save_sam2_video_folder(stack.work / "sam2-video-located", object_score_bias=4.0)
    locate_sam2_video_masks(folder, frames, truth)
    video = stack.work / "square.webm"
    write_webm(video, frames)
    with extra_backend(stack, "SAM2", folder) as url:
        project_id = stack.label_studio.create_project("sam-ls-backend video", VIDEO_CONFIG)
        task_id = stack.label_studio.import_image(project_id, video)
        stack.label_studio.connect_ml_backend(project_id, url)
        labeling = LabelingPage(stack.chromium.context.new_page(), stack.label_studio.url)
        labeling.open_video_task(project_id, task_id)
        labeling.set_toggle("auto-annotation", True)
        x0, y0, x1, y1 = VIDEO_SQUARE.box(0)
        labeling.draw_video_box(x0 * 100 / width, y0 * 100 / height, x1 * 100 / width, y1 * 100 / height)
        labeling.click_video((x0 + x1) * 50 / width, (y0 + y1) * 50 / height)
        labeling.click_label("Car")
        labeling.wait_for_answers(1)
        labeling.unselect_regions()
        for _ in range(VIDEO_STEPS):
            labeling.step_forward()
        labeling.page.mouse.move(0, 0)  # the Step forward button's tooltip goes
        labeling.page.wait_for_timeout(500)
        shot = labeling.page.screenshot(clip=labeling.video_frame_box())
        shrink(Image.open(io.BytesIO(shot))).save(DOCS / "video-track.png", optimize=True)
        labeling.page.close()


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
    shrink(Image.open(io.BytesIO(labeling.page.screenshot(clip=box)))).save(DOCS / name, optimize=True)


def shrink(shot: Image.Image) -> Image.Image:
    """A screenshot scaled to WIDTH_PX and reduced to a small palette."""
    shot = shot.convert("RGB")
    shot = shot.resize((WIDTH_PX, round(shot.height * WIDTH_PX / shot.width)), Image.Resampling.LANCZOS)
    return shot.quantize(COLOURS)


def intersection(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """The part of two page boxes ({x, y, width, height}) both cover: the image as the canvas shows it."""
    x, y = max(a["x"], b["x"]), max(a["y"], b["y"])
    right = min(a["x"] + a["width"], b["x"] + b["width"])
    bottom = min(a["y"] + a["height"], b["y"] + b["height"])
    return {"x": x, "y": y, "width": right - x, "height": bottom - y}


if __name__ == "__main__":
    sys.exit(main())
