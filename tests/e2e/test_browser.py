"""The annotator's workflows in Label Studio's real labeling page, against this backend as a real process.

Label Studio 1.23.2 (`label_studio.py`), the backend (`_wsgi.py` with a random-weight MobileSAM) and Debian's
headless Chromium driven by Playwright (`browser.py`) share one module: each test opens a task in the page,
switches on Auto-Annotation and Auto-Accept, draws with a smart tool, and checks what the editor then holds
against what the backend answered and what `segment_anything.SamPredictor` computes for the prompt the page
sent, and what the canvas paints (read back from its Konva layers). Two more backends join for their tests:
SAM 3 (a typed concept) and SAM 2.1 (polygons that cover part of the image, and a video box tracked on its
label click and shown on a later frame). The last test checks that no page tried to leave loopback. A failing
test leaves a screenshot and the editor's state in tests/e2e/artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image

from tests.support.backend_process import BackendProcess
from tests.support.browser import Chromium, Exchange, LabelingPage, is_loopback, logged_in_chromium
from tests.support.label_studio import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    LabelStudio,
)
from tests.support.ls_bodies import POLYGON_CONFIG, SAM_CONFIG, TWO_LABELS_CONFIG, predict_body
from tests.support.recording_backend import RecordingBackend
from tests.support.reference import reference_answer, reference_mask
from tests.support.sam3_reference import CONCEPT_CONFIG, concept_reference
from tests.support.scenes import scene
from tests.support.video_bodies import VIDEO_CONFIG
from tests.support.video_oracle import interpolated_box
from tests.support.videos import Square, scene_frames, write_webm

ARTIFACTS = Path(__file__).parent / "artifacts"
BACKEND_START_TIMEOUT_S = 180.0
WIDTH, HEIGHT = 320, 240
IMAGE_SEED = 11
VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FRAMES = 160, 96, 12
VIDEO_SQUARE = Square((10, 20), (5, 1), 24)  # moves 5 px right and 1 px down a frame
POLYGON_MIN_AREA = 64  # the backend's default: smaller parts are dropped, smaller holes filled

NEGATIVE_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Foreground" background="#FF0000"/></BrushLabels>
  <RectangleLabels name="tag3" toName="image" smart="true">
    <Label value="Foreground" background="#0000FF"/><Label value="Background" background="#888888"/>
  </RectangleLabels>
</View>"""



@dataclass(frozen=True)
class Stack:
    """Label Studio, the backend and the browser shared by the module's tests."""

    label_studio: LabelStudio
    backend_url: str
    chromium: Chromium
    work: Path

    def project(self, config: str, backend_url: str | None = None) -> tuple[int, int, np.ndarray]:
        """A project with `config`, a task showing the module's image, and this backend (or the one at
        `backend_url`) connected as interactive; returns (project id, task id, image).

        Every project shows the same picture: the backend and SamPredictor then encode it once for the module.
        """
        image = scene(WIDTH, HEIGHT, seed=IMAGE_SEED)
        path = self.work / "image.png"
        if not path.exists():
            Image.fromarray(image).save(path)
        ls = self.label_studio
        project_id = ls.create_project("sam-ls-backend browser", config)
        task_id = ls.import_image(project_id, path)
        ls.connect_ml_backend(project_id, backend_url or self.backend_url)
        return project_id, task_id, image


@pytest.fixture(scope="module")
def stack(label_studio: LabelStudio, vit_t_checkpoint: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("browser")
    env = {"SAM_CHOICE": "MobileSAM", "MOBILESAM_CHECKPOINT": str(vit_t_checkpoint), "DEVICE": "cpu",
           "NEGATIVE_LABELS": "Background",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
    backend = BackendProcess(env, log_path=work / "backend.log")
    try:
        backend.wait_ready(BACKEND_START_TIMEOUT_S)
        with logged_in_chromium(label_studio.url, ADMIN_EMAIL, ADMIN_PASSWORD) as chromium:
            yield Stack(label_studio, backend.url, chromium, work)
    finally:
        backend.stop()


@pytest.fixture
def labeling(stack: Stack, request: pytest.FixtureRequest) -> Iterator[LabelingPage]:
    """A fresh page of the shared browser; on a failure, its screenshot and editor state go to tests/e2e/artifacts/."""
    page = stack.chromium.context.new_page()
    failed_before = request.session.testsfailed
    labeling_page = LabelingPage(page, stack.label_studio.url)
    yield labeling_page
    if request.session.testsfailed > failed_before:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        labeling_page.save_artifacts(ARTIFACTS, name)
    page.close()


def open_for_smart_tools(labeling: LabelingPage, project_id: int, task_id: int, auto_accept: bool = True) -> None:
    labeling.open_task(project_id, task_id)
    labeling.set_toggle("auto-annotation", True)
    labeling.set_toggle("auto-accept", auto_accept)


def brush_mask(region: dict[str, Any]) -> np.ndarray:
    """The H×W bool mask of a brush region, decoded with Label Studio's SDK."""
    height, width = region["original_height"], region["original_width"]
    rgba = np.reshape(decode_rle(region["value"]["rle"]), (height, width, 4))
    return rgba[:, :, 3] > 0


def of_type(regions: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [region for region in regions if region["type"] == kind]


def box_in_pixels(region: dict[str, Any]) -> np.ndarray:
    """A rectangle region's (x0, y0, x1, y1) in pixels of the image."""
    value, width, height = region["value"], region["original_width"], region["original_height"]
    return np.array([value["x"] * width / 100, value["y"] * height / 100,
                     (value["x"] + value["width"]) * width / 100, (value["y"] + value["height"]) * height / 100])


def test_smart_keypoint_click_paints_the_backends_mask(stack: Stack, labeling: LabelingPage,
                                                       vit_t_checkpoint: Path) -> None:
    """A smart keypoint click leaves one brush region in the editor whose pixels are the backend's answer (as
    relayed to the page, and as the backend answers the same regions posted to it directly), which is
    SamPredictor's mask for the keypoint the page sent; the keypoint itself is gone (accepted)."""
    project_id, task_id, image = stack.project(SAM_CONFIG)
    open_for_smart_tools(labeling, project_id, task_id)
    labeling.smart_tool("key-point")
    labeling.label("Foreground", block=1)  # BrushLabels, KeyPointLabels, RectangleLabels: the keypoints' block
    labeling.click(37.5, 50.0)
    (exchange,) = labeling.wait_for_answers(1)

    (sent,) = exchange.regions
    assert sent["type"] == "keypointlabels" and sent["is_positive"] is True
    assert sent["value"]["keypointlabels"] == ["Foreground"]
    assert (sent["value"]["x"], sent["value"]["y"]) == pytest.approx((37.5, 50.0), abs=1.0)
    (answered,) = exchange.result
    (held,) = labeling.regions()
    assert held["type"] == "brushlabels" and held["value"]["brushlabels"] == ["Foreground"]
    mask = brush_mask(held)
    assert mask.shape == (HEIGHT, WIDTH)
    assert np.array_equal(mask, brush_mask(answered)), "the editor holds the backend's mask, pixel for pixel"
    image_url = stack.label_studio.get_task(task_id)["data"]["image"]
    direct = requests.post(f"{stack.backend_url}/predict", json=predict_body(image_url, exchange.regions, task_id),
                           timeout=120)
    assert direct.status_code == 200, direct.text[:2000]
    (again,) = direct.json()["results"][0]["result"]
    assert np.array_equal(mask, brush_mask(again)), "the backend answers the page's regions with the same mask"
    point = np.array([[sent["value"]["x"] * WIDTH / 100, sent["value"]["y"] * HEIGHT / 100]])
    expected, _ = reference_mask(vit_t_checkpoint, image, point, np.array([1]))
    assert expected.any(), "pick a click that segments something"
    assert np.array_equal(mask, expected), f"{int((mask != expected).sum())} pixels differ from SamPredictor's"


def test_smart_rectangle_on_a_polygon_project_gives_polygons(stack: Stack, labeling: LabelingPage,
                                                             vit_t_checkpoint: Path) -> None:
    """On a PolygonLabels project a smart rectangle leaves the backend's polygons in the editor: the label's,
    closed, covering SamPredictor's mask for the rectangle the page sent; the rectangle itself is gone."""
    project_id, task_id, image = stack.project(POLYGON_CONFIG)
    open_for_smart_tools(labeling, project_id, task_id)
    labeling.smart_tool("rectangle")
    labeling.label("Object", block=1)  # PolygonLabels, RectangleLabels: the rectangles' block
    labeling.drag(12.5, 20.0, 52.5, 75.0)
    (exchange,) = labeling.wait_for_answers(1)

    (sent,) = exchange.regions
    assert sent["type"] == "rectanglelabels" and sent["value"]["rectanglelabels"] == ["Object"]
    answered = exchange.result
    held = labeling.regions()
    assert held and all(region["type"] == "polygonlabels" for region in held), [r["type"] for r in held]
    assert [r["value"]["polygonlabels"] for r in held] == [["Object"]] * len(held)
    assert all(r["value"]["closed"] for r in held)
    assert len(held) == len(answered)
    for region, answer in zip(held, answered):
        np.testing.assert_allclose(region["value"]["points"], answer["value"]["points"], atol=1e-9)

    expected, _ = reference_mask(vit_t_checkpoint, image, box=box_in_pixels(sent))
    assert 0.05 < expected.mean() < 0.95, "pick a rectangle whose mask is neither empty nor everything"
    outline = without_specks_and_holes(expected, POLYGON_MIN_AREA)
    drawn = polygons_mask(held)
    iou = (drawn & outline).sum() / (drawn | outline).sum()
    assert iou > 0.9, f"the polygons cover SamPredictor's mask for the rectangle sent with IoU {iou:.3f} only"
    assert_drawn(labeling, held)  # random MobileSAM weights: the polygons cover nearly the whole image


def without_specks_and_holes(mask: np.ndarray, area: int) -> np.ndarray:
    """`mask` without its 8-connected parts and its 4-connected holes of fewer than `area` pixels: what polygons
    without small parts and with small holes filled can outline."""
    cleaned = mask.copy()
    for value, connectivity in ((True, 8), (False, 4)):
        count, labels, stats, _ = cv2.connectedComponentsWithStats((cleaned == value).astype(np.uint8),
                                                                   connectivity=connectivity)
        for index in range(1, count):
            if stats[index, cv2.CC_STAT_AREA] < area:
                cleaned[labels == index] = not value
    return cleaned


def polygons_mask(regions: list[dict[str, Any]]) -> np.ndarray:
    """The HEIGHT×WIDTH pixels whose centres lie inside polygon regions (vertices in percent of the image)."""
    canvas = np.zeros((HEIGHT, WIDTH), np.uint8)
    rings = [np.round((np.array(r["value"]["points"]) * np.array([WIDTH, HEIGHT]) / 100 - 0.5) * 16).astype(np.int32)
             for r in regions]
    cv2.fillPoly(canvas, rings, 1, shift=4)  # 4 fractional bits: vertices off the pixel-centre grid
    return canvas.astype(bool)


def assert_drawn(labeling: LabelingPage, regions: list[dict[str, Any]]) -> np.ndarray:
    """The canvas paints the polygon regions where they are (IoU > 0.85 with their pixels on the canvas, read
    back from the regions' Konva layers: the strokes and their antialiasing add a fringe), and nothing once
    they are hidden; returns the painted pixels (HEIGHT×WIDTH bool)."""
    painted, on_canvas = (np.array(rows) for rows in labeling.drawn_polygons(WIDTH, HEIGHT))
    assert on_canvas.mean() > 0.8, "the editor shows most of the image"
    inside = polygons_mask(regions) & on_canvas
    iou = (painted & inside).sum() / max((painted | inside).sum(), 1)
    assert iou > 0.85, f"the canvas paints the polygons' pixels with IoU {iou:.3f} only"
    labeling.hide_regions()
    assert not np.array(labeling.drawn_polygons(WIDTH, HEIGHT)[0]).any(), "hidden polygons are still painted"
    return painted


def test_several_rectangles_give_one_region_each_with_its_label(stack: Stack, labeling: LabelingPage,
                                                                vit_t_checkpoint: Path) -> None:
    """Two smart rectangles drawn with different labels leave two brush regions, one per rectangle, each
    painted with its rectangle's label and equal to SamPredictor's mask for that rectangle. The first region
    is hidden before the second drag: the random-weight masks cover most of the image, and a drag from and to
    a visible region would select it (see the next test)."""
    project_id, task_id, image = stack.project(TWO_LABELS_CONFIG)
    open_for_smart_tools(labeling, project_id, task_id)
    labeling.smart_tool("rectangle")
    drawn = {"Cat": (5.0, 10.0, 45.0, 60.0), "Dog": (55.0, 40.0, 95.0, 90.0)}
    for count, (label, corners) in enumerate(drawn.items(), start=1):
        labeling.hide_regions()
        labeling.label(label, block=1)  # BrushLabels, RectangleLabels: the rectangles' block
        labeling.drag(*corners)
        labeling.wait_for_answers(count)
    exchanges: list[Exchange] = labeling.log.exchanges
    assert [[r["value"]["rectanglelabels"] for r in e.regions] for e in exchanges] == [[["Cat"]], [["Dog"]]]

    held = labeling.regions()
    assert [r["type"] for r in held] == ["brushlabels"] * 2
    assert [r["id"] for r in held] == [e.result[0]["id"] for e in exchanges], "one region per answer, in order"
    for exchange, region in zip(exchanges, held):
        (sent,) = exchange.regions
        label = sent["value"]["rectanglelabels"][0]
        assert region["value"]["brushlabels"] == [label]
        expected, _ = reference_mask(vit_t_checkpoint, image, box=box_in_pixels(sent))
        assert np.array_equal(brush_mask(region), expected), f"{label}: not SamPredictor's mask for its rectangle"


def test_a_rectangle_dragged_on_an_accepted_region_selects_it_and_takes_its_label(
        stack: Stack, labeling: LabelingPage) -> None:
    """Label Studio's page, measured: a smart rectangle dragged from and to points of an accepted brush region
    still reaches the backend with its own label, but selects that region, and the answer is accepted with
    the selected region's label instead of the one the backend gave (the page applies the image's active
    labels to an accepted suggestion). If this fails, Label Studio changed: update BROWSER_FINDINGS.md."""
    project_id, task_id, _ = stack.project(TWO_LABELS_CONFIG)
    open_for_smart_tools(labeling, project_id, task_id)
    labeling.smart_tool("rectangle")
    labeling.label("Cat", block=1)
    labeling.drag(5.0, 10.0, 95.0, 90.0)
    (first,) = labeling.wait_for_answers(1)
    (cat,) = first.result
    start, end = corners_on(brush_mask(cat))
    labeling.label("Dog", block=1)
    labeling.drag(*start, *end)
    second = labeling.wait_for_answers(2)[1]
    assert [r["value"]["rectanglelabels"] for r in second.regions] == [["Dog"]]
    (dog,) = second.result
    assert dog["value"]["brushlabels"] == ["Dog"], "the backend answered with the rectangle's label"
    assert labeling.selected_region_ids() == [cat["id"]]
    held = {r["id"]: r["value"]["brushlabels"] for r in labeling.regions()}
    assert held == {cat["id"]: ["Cat"], dog["id"]: ["Cat"]}


def test_an_answer_with_an_accepted_regions_id_replaces_that_region(stack: Stack, labeling: LabelingPage) -> None:
    """Label Studio's page, measured with a stand-in backend: with Auto-Accept on, each click reaches the
    backend alone (the accepted keypoint is deleted), and an answer whose region has the id of a region the
    annotation holds replaces that region instead of adding one; a new id adds a region. This is what lets a
    backend refine an object across clicks. If this fails, Label Studio changed: update BROWSER_FINDINGS.md."""
    answers = iter([("object-1", 20), ("object-1", 35), ("object-2", 10)])

    def respond(body: dict[str, Any]) -> list[dict[str, Any]]:
        region_id, radius = next(answers)
        yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
        mask = (xx - WIDTH // 3) ** 2 + (yy - HEIGHT // 2) ** 2 < radius ** 2
        rle = [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)]
        return [{"id": region_id, "from_name": "tag", "to_name": "image", "type": "brushlabels",
                 "original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0,
                 "value": {"format": "rle", "rle": rle, "brushlabels": ["Foreground"]}, "score": 0.5}]

    recorder = RecordingBackend(respond)
    try:
        project_id, task_id, _ = stack.project(SAM_CONFIG, backend_url=recorder.url)
        open_for_smart_tools(labeling, project_id, task_id)
        labeling.smart_tool("key-point")
        for count, (x, y, negative) in enumerate([(33.0, 50.0, False), (80.0, 20.0, True), (80.0, 80.0, False)], 1):
            labeling.label("Foreground", block=1)
            labeling.click(x, y, negative=negative)
            labeling.wait_for_answers(count)
            held = labeling.regions()
            if count == 1:
                first = brush_mask(held[0])
            if count == 2:
                assert [r["id"] for r in held] == ["object-1"], "the same id replaced the accepted region"
                assert brush_mask(held[0]).sum() > first.sum(), "with the second answer's pixels"
        assert [r["id"] for r in held] == ["object-1", "object-2"], "a new id added a region"
        sent = [[(r["type"], r["is_positive"]) for r in body["params"]["context"]["result"]]
                for body in recorder.interactive_bodies()]
        assert sent == [[("keypointlabels", True)], [("keypointlabels", False)], [("keypointlabels", True)]]
    finally:
        recorder.close()


def corners_on(mask: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Two pixel centres (x %, y %) of `mask`, each inside a 3×3 patch of it and 10 % away from the image's
    edges, the second at least 15 % of the image right of and below the first."""
    solid = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    margin = np.zeros_like(solid)
    margin[HEIGHT // 10:-HEIGHT // 10, WIDTH // 10:-WIDTH // 10] = True  # away from the image's edges
    solid &= margin
    rows, columns = np.nonzero(solid)
    for row, column in zip(rows, columns):
        for d_row, d_column in ((r, c) for r in range(HEIGHT * 15 // 100, HEIGHT // 2, 3)
                                for c in range(WIDTH * 15 // 100, WIDTH // 2, 3)):
            if row + d_row < HEIGHT and column + d_column < WIDTH and solid[row + d_row, column + d_column]:
                return ((column + 0.5) * 100 / WIDTH, (row + 0.5) * 100 / HEIGHT), \
                    ((column + d_column + 0.5) * 100 / WIDTH, (row + d_row + 0.5) * 100 / HEIGHT)
    raise AssertionError("the first mask has no two solid points to drag between")


def clicks_of(exchanges: list[Exchange]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each exchange's keypoints as SamPredictor's (point coords in pixels, labels)."""
    found = []
    for exchange in exchanges:
        points = [r for r in exchange.regions if r["type"] == "keypointlabels"]
        coords = np.array([[p["value"]["x"] * WIDTH / 100, p["value"]["y"] * HEIGHT / 100] for p in points])
        found.append((coords, np.array([int(p["is_positive"]) for p in points])))
    return found


def refined_by_sam(checkpoint: Path, image: np.ndarray, rounds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """SamPredictor's interactive loop over rounds of clicks: each round adds its clicks to the earlier ones
    and is decoded with the previous round's logits as `mask_input`; the last round's mask."""
    coords, labels = np.zeros((0, 2)), np.zeros(0, np.int64)
    logits = None
    for new_coords, new_labels in rounds:
        coords, labels = np.concatenate([coords, new_coords]), np.concatenate([labels, new_labels])
        mask, _, logits = reference_answer(checkpoint, image, coords, labels, mask_input=logits)
    return mask


@pytest.mark.parametrize("auto_accept", [True, False], ids=["auto-accept", "accept-with-tick"])
def test_an_alt_click_refines_the_object_and_the_editor_keeps_one_region(
        stack: Stack, labeling: LabelingPage, vit_t_checkpoint: Path, auto_accept: bool) -> None:
    """A click, then Alt-clicks on its mask: with Auto-Accept on each click reaches the backend alone; with
    it off the clicks accumulate until ✓, and the Alt-click after ✓ comes alone. Either way the backend
    answers the object's region id, the page replaces the region, and the editor ends with ONE region whose
    pixels are SamPredictor's for all the clicks, each round decoded from the previous round's logits.
    The region is hidden before each Alt-click, as the regions panel's eye does: a click on a visible
    region selects it and sends nothing (random weights paint most of the image)."""
    project_id, task_id, image = stack.project(SAM_CONFIG)
    open_for_smart_tools(labeling, project_id, task_id, auto_accept=auto_accept)
    labeling.smart_tool("key-point")
    labeling.label("Foreground", block=1)
    labeling.click(37.5, 50.0)
    (first,) = labeling.wait_for_answers(1)
    object_id = first.result[0]["id"]
    for count, point in ((2, (70.0, 40.0)), (3, (55.0, 70.0))):
        if count == 3 and not auto_accept:
            labeling.accept_suggestions()
        labeling.hide_regions()
        labeling.label("Foreground", block=1)
        labeling.click(*point, negative=True)
        exchange = labeling.wait_for_answers(count)[-1]
        assert [r["id"] for r in exchange.result] == [object_id], "the object's id: its region is replaced"
    if not auto_accept:
        labeling.accept_suggestions()

    exchanges = labeling.log.exchanges
    sent = [[(r["type"], r["is_positive"]) for r in e.regions] for e in exchanges]
    positive, negative = ("keypointlabels", True), ("keypointlabels", False)
    if auto_accept:
        assert sent == [[positive], [negative], [negative]], "each click alone"
        rounds = clicks_of(exchanges)
    else:
        assert sent == [[positive], [positive, negative], [negative]], "accumulated until ✓, then alone"
        rounds = [clicks_of(exchanges)[0], (clicks_of(exchanges)[1][0][1:], np.array([0])), clicks_of(exchanges)[2]]
    (held,) = labeling.regions()
    assert held["id"] == object_id and held["value"]["brushlabels"] == ["Foreground"]
    expected = refined_by_sam(vit_t_checkpoint, image, rounds)
    assert np.array_equal(brush_mask(held), expected), "not SamPredictor's refined mask"
    assert not np.array_equal(expected, brush_mask(first.result[0])), "pick clicks that change the mask"


def test_a_click_inside_the_rectangle_refines_its_object(stack: Stack, labeling: LabelingPage,
                                                          vit_t_checkpoint: Path) -> None:
    """A smart rectangle's answer is accepted (the rectangle deleted); a later click inside the rectangle
    (its region hidden, so that the click reaches the canvas) comes alone and is decoded with the remembered
    box: the editor keeps one region, the object's, whose pixels are SamPredictor's for the box and the click."""
    project_id, task_id, image = stack.project(SAM_CONFIG)
    open_for_smart_tools(labeling, project_id, task_id)
    labeling.smart_tool("rectangle")
    labeling.label("Foreground", block=2)  # BrushLabels, KeyPointLabels, RectangleLabels: the rectangles' block
    labeling.drag(12.5, 20.0, 52.5, 75.0)
    (first,) = labeling.wait_for_answers(1)
    (rectangle_sent,) = first.regions
    box = box_in_pixels(rectangle_sent)
    labeling.hide_regions()
    labeling.smart_tool("key-point")
    labeling.label("Foreground", block=1)
    labeling.click(30.0, 45.0)
    second = labeling.wait_for_answers(2)[1]

    assert [r["type"] for r in second.regions] == ["keypointlabels"], "the click comes alone"
    (held,) = labeling.regions()
    assert held["id"] == first.result[0]["id"]
    ((coords, labels),) = clicks_of([second])
    expected, _ = reference_mask(vit_t_checkpoint, image, coords, labels, box=box)
    assert np.array_equal(brush_mask(held), expected), "not SamPredictor's mask for the box and the click"
    assert not np.array_equal(expected, brush_mask(first.result[0])), "pick a click that changes the mask"


def test_a_rectangle_labelled_in_negative_labels_cuts_the_object(stack: Stack, labeling: LabelingPage,
                                                                  vit_t_checkpoint: Path) -> None:
    """The page's only negative rectangle: one labelled in NEGATIVE_LABELS (here `Background`). Sent alone, it
    cuts its area out of the object just answered, under the object's id and label: the editor keeps one
    region, SamPredictor's mask for the first rectangle without the pixels whose centres the second covers."""
    project_id, task_id, image = stack.project(NEGATIVE_CONFIG)
    open_for_smart_tools(labeling, project_id, task_id)
    labeling.smart_tool("rectangle")
    labeling.label("Foreground", block=1)
    labeling.drag(12.5, 20.0, 52.5, 75.0)
    (first,) = labeling.wait_for_answers(1)
    labeling.hide_regions()  # a drag on the accepted region would select it
    labeling.label("Background", block=1)
    labeling.drag(20.0, 30.0, 35.0, 60.0)
    second = labeling.wait_for_answers(2)[1]

    (negative,) = second.regions
    assert negative["value"]["rectanglelabels"] == ["Background"] and "is_positive" not in negative
    (held,) = labeling.regions()
    assert held["id"] == first.result[0]["id"] and held["value"]["brushlabels"] == ["Foreground"]
    expected, _ = reference_mask(vit_t_checkpoint, image, box=box_in_pixels(first.regions[0]))
    x0, y0, x1, y1 = box_in_pixels(negative)
    columns = slice(int(np.ceil(x0 - 0.5)), int(np.floor(x1 - 0.5)) + 1)
    rows = slice(int(np.ceil(y0 - 0.5)), int(np.floor(y1 - 0.5)) + 1)
    assert expected[rows, columns].any(), "the negative rectangle must overlap the object"
    expected[rows, columns] = False
    assert np.array_equal(brush_mask(held), expected)


@dataclass(frozen=True)
class Sam3:
    """A second backend, SAM 3 on a tiny random-weight folder, and the thresholds its test types."""

    url: str
    folder: Path
    default: float  # its SCORE_THRESHOLD: what a concept typed without a threshold is filtered with
    typed: str  # a threshold the annotator types, lower than the default


@pytest.fixture(scope="module")
def sam3(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sam3]:
    """Random weights score every candidate close together: SCORE_THRESHOLD and the typed threshold are
    picked among the candidates' scores for "person" and "car" on the module's image, so that each keeps
    some candidates of both, not all, and the typed one keeps more."""
    from tests.support.hf_checkpoints import save_sam3_folder

    work = tmp_path_factory.mktemp("sam3")
    folder = save_sam3_folder(work / "sam3")
    image = scene(WIDTH, HEIGHT, seed=IMAGE_SEED)
    scores = [[score for score, _ in concept_reference(folder, image, text, 0.0)] for text in ("person", "car")]
    default = min(float(np.quantile(found, 0.8)) for found in scores)
    typed = f"{min(float(np.quantile(found, 0.4)) for found in scores):.6f}"
    env = {"SAM_CHOICE": "SAM3", "SAM3_MODEL_DIR": str(folder), "DEVICE": "cpu", "SCORE_THRESHOLD": repr(default),
           "LABEL_STUDIO_URL": stack.label_studio.url, "LABEL_STUDIO_API_KEY": stack.label_studio.token}
    backend = BackendProcess(env, log_path=work / "backend.log")
    try:
        backend.wait_ready(BACKEND_START_TIMEOUT_S)
        yield Sam3(backend.url, folder, default, typed)
    finally:
        backend.stop()


def test_a_concept_typed_in_the_textarea_gives_one_region_per_instance(
        stack: Stack, sam3: Sam3, labeling: LabelingPage) -> None:
    """SAM 3 with Auto-Accept off, as the README recommends for concepts: "person" typed in the TextArea
    answers one region per instance scoring above SCORE_THRESHOLD, each with its score, painted `person`;
    a threshold typed next answers more of them (the same ids for those kept: the page replaces them); a new
    concept starts again from SCORE_THRESHOLD, with ids of its own. ✓ leaves the last answer's regions,
    SAM 3's masks (transformers' Sam3Model and post-processing) pixel for pixel."""
    project_id, task_id, image = stack.project(CONCEPT_CONFIG, backend_url=sam3.url)
    open_for_smart_tools(labeling, project_id, task_id, auto_accept=False)
    steps = [("person", "person", sam3.default), (sam3.typed, "person", float(sam3.typed)),
             ("car", "car", sam3.default)]
    answers = []
    for count, (typed, concept, threshold) in enumerate(steps, start=1):
        labeling.submit_text(typed)
        exchange = labeling.wait_for_answers(count)[-1]
        (sent,) = exchange.regions
        assert sent["type"] == "textarea" and sent["value"]["text"] == [step[0] for step in steps[:count]]
        expected = concept_reference(sam3.folder, image, concept, threshold)
        assert [round(r["score"], 4) for r in exchange.result] == [round(score, 4) for score, _ in expected]
        assert {tuple(r["value"]["brushlabels"]) for r in exchange.result} <= {(concept,)}
        assert len(labeling.suggestions()) == len(expected), "the answer is the pending set"
        answers.append(exchange.result)
    person, lower, car = ([r["id"] for r in answer] for answer in answers)
    assert 0 < len(person) < len(lower), "the typed threshold keeps more instances"
    assert lower[:len(person)] == person, "the instances kept keep their ids"
    assert car and not set(car) & set(lower), "a new concept's instances are new regions"

    labeling.accept_suggestions()
    held = of_type(labeling.regions(), "brushlabels")
    assert [r["id"] for r in held] == car
    for region, (_, mask) in zip(held, concept_reference(sam3.folder, image, "car", sam3.default)):
        assert np.array_equal(brush_mask(region), mask)


@dataclass(frozen=True)
class Sam2:
    """A third backend, SAM_CHOICE=SAM2 on the tiny random-weight `sam2_video` folder the video tests use
    (its object-score head biased, so that objects stay found), and a short VP9 WebM of a moving square."""

    url: str
    video: Path


@pytest.fixture(scope="module")
def sam2(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sam2]:
    from tests.support.hf_checkpoints import save_sam2_video_folder

    work = tmp_path_factory.mktemp("sam2-video")
    folder = save_sam2_video_folder(work / "sam2.1-hiera-tiny", object_score_bias=4.0)
    video = work / "square.webm"
    write_webm(video, scene_frames(VIDEO_FRAMES, VIDEO_WIDTH, VIDEO_HEIGHT, [VIDEO_SQUARE]))
    env = {"SAM_CHOICE": "SAM2", "SAM2_MODEL_DIR": str(folder), "DEVICE": "cpu",
           "LABEL_STUDIO_URL": stack.label_studio.url, "LABEL_STUDIO_API_KEY": stack.label_studio.token}
    backend = BackendProcess(env, log_path=work / "backend.log")
    try:
        backend.wait_ready(BACKEND_START_TIMEOUT_S)
        yield Sam2(backend.url, video)
    finally:
        backend.stop()


def test_the_polygons_of_a_smart_rectangle_are_drawn_where_they_are(
        stack: Stack, sam2: Sam2, labeling: LabelingPage) -> None:
    """The page draws the polygons it holds, and only there. SAM 2.1's tiny random-weight model answers
    polygons covering part of the image (MobileSAM's random weights cover nearly all of it, where a faint
    image-wide tint was mistaken for nothing drawn): the canvas paints their inside, not their outside."""
    project_id, task_id, _ = stack.project(POLYGON_CONFIG, backend_url=sam2.url)
    open_for_smart_tools(labeling, project_id, task_id)
    labeling.smart_tool("rectangle")
    labeling.label("Object", block=1)
    labeling.drag(5.0, 10.0, 45.0, 60.0)
    (exchange,) = labeling.wait_for_answers(1)

    held = labeling.regions()
    assert [r["type"] for r in held] == ["polygonlabels"] * len(exchange.result) and len(held) > 1
    for region, answer in zip(held, exchange.result):
        assert region["id"] == answer["id"]
        np.testing.assert_allclose(region["value"]["points"], answer["value"]["points"], atol=1e-9)
    painted = assert_drawn(labeling, held)
    assert 0.1 < painted.mean() < 0.9, f"pick a rectangle whose polygons cover part of the image: {painted.mean():.2f}"


def test_a_video_box_tracked_on_its_label_click_is_shown_on_a_later_frame(
        stack: Stack, sam2: Sam2, labeling: LabelingPage) -> None:
    """A VideoRectangle drawn on frame 1 sends nothing; selected, then its label clicked (Label Studio
    1.23.2's one trigger), it reaches the SAM 2.1 backend alone, and the answer's keyframes replace the
    region's: the drawn keyframe first, tracked ones after it. Stepped forward to a later frame, the player
    draws the box there where the keyframes put it. Random weights: the track's geometry is not checked here
    (test_e2e_video.py and tests/integration/test_video.py compare it with transformers' video API)."""
    ls = stack.label_studio
    project_id = ls.create_project("sam-ls-backend browser video", VIDEO_CONFIG)
    task_id = ls.import_image(project_id, sam2.video)
    ls.connect_ml_backend(project_id, sam2.url)
    labeling.open_video_task(project_id, task_id)
    labeling.set_toggle("auto-annotation", True)
    x0, y0, x1, y1 = VIDEO_SQUARE.box(0)
    to_x, to_y = 100 / VIDEO_WIDTH, 100 / VIDEO_HEIGHT
    labeling.draw_video_box(x0 * to_x, y0 * to_y, x1 * to_x, y1 * to_y)
    (drawn,) = of_type(labeling.regions(), "videorectangle")
    assert labeling.log.exchanges == [], "drawing alone sends nothing"
    (keyframe,) = drawn["value"]["sequence"]
    assert keyframe["frame"] == 1 and keyframe["enabled"]
    labeling.click_video(keyframe["x"] + keyframe["width"] / 2, keyframe["y"] + keyframe["height"] / 2)
    assert labeling.selected_region_ids() == [drawn["id"]]
    labeling.click_label("Car")
    (exchange,) = labeling.wait_for_answers(1)

    (sent,) = exchange.regions
    assert sent["id"] == drawn["id"] and sent["type"] == "videorectangle"
    assert sent["value"]["labels"] == ["Car"] and sent["value"]["sequence"] == [keyframe]
    (answered,) = exchange.result
    assert answered["id"] == drawn["id"] and answered["value"]["labels"] == ["Car"]
    sequence = answered["value"]["sequence"]
    assert sequence[0] == keyframe, "the annotator's keyframe comes back as drawn"
    assert len(sequence) > 1 and all(k["frame"] > 1 for k in sequence[1:]), "tracked keyframes follow it"
    (held,) = of_type(labeling.regions(), "videorectangle")
    assert held["id"] == drawn["id"] and held["value"]["labels"] == ["Car"]
    assert [k["frame"] for k in held["value"]["sequence"]] == [k["frame"] for k in sequence], \
        "the region's keyframes are the answer's"

    later = labeling.step_forward()
    assert 1 < later <= VIDEO_FRAMES
    shown = labeling.shown_video_box(drawn["id"])
    expected = interpolated_box(sequence, later, VIDEO_WIDTH, VIDEO_HEIGHT)
    assert expected is not None, "random weights lost the object: raise the folder's object_score_bias"
    assert shown is not None and shown["visible"] and shown["opacity"] == 1, f"no box drawn on frame {later}"
    shown_px = (shown["x"] / to_x, shown["y"] / to_y, (shown["x"] + shown["width"]) / to_x,
                (shown["y"] + shown["height"]) / to_y)
    np.testing.assert_allclose(shown_px, expected, atol=0.5, err_msg=f"the box drawn on frame {later}")
    assert stack.chromium.refused == [], "the labeling page tried to reach beyond loopback"


def test_the_page_stays_on_loopback(stack: Stack, labeling: LabelingPage) -> None:
    """No page of this module tried to load anything off loopback; one that tries is refused and recorded."""
    assert stack.chromium.refused == [], "the labeling page tried to reach beyond loopback"
    labeling.page.goto(f"{stack.label_studio.url}/projects/")
    outcome = labeling.page.evaluate(
        "() => fetch('http://192.0.2.1/probe').then(() => 'loaded', e => 'refused: ' + e)")
    assert outcome.startswith("refused"), outcome
    assert stack.chromium.refused == ["http://192.0.2.1/probe"]
    assert not is_loopback("http://192.0.2.1/probe") and is_loopback(stack.label_studio.url)
    stack.chromium.refused.clear()
