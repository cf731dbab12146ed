"""End to end with a real Label Studio: smart regions drawn in LS reach the backend and come back as SAM's masks.

Label Studio (see `label_studio.py`) and the backend (`_wsgi.py`) run as real processes on loopback; the test
talks to Label Studio's API only, as the annotator's browser does, and compares the brush masks LS hands back
with what `segment_anything.SamPredictor` computes for the same prompt.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from sam_ls_backend.protocol.polygons import PolygonOptions, polygon_answer, remove_small_regions
from sam_ls_backend.settings import Settings
from tests.support.backend_process import ROOT, BackendProcess
from tests.support.label_studio import LabelStudio
from tests.support.ls_bodies import SAM_CONFIG, keypoint, rectangle
from tests.support.polygon_readers import coco_raster, iou
from tests.support.redis_server import RedisServer
from tests.support.reference import decode_brush_region, reference_mask
from tests.support.scenes import scene

BACKEND_START_TIMEOUT_S = 180.0
LOCAL_FILES_SUBDIR = "e2e"

# (region builder, keyword arguments) per interaction; percentages chosen to land on whole pixels.
INTERACTIONS: dict[str, list[tuple[Callable[..., dict[str, Any]], dict[str, Any]]]] = {
    "positive_keypoint": [(keypoint, {"x": 37.5, "y": 50.0})],
    "rectangle": [(rectangle, {"x": 12.5, "y": 20.0, "w": 40.0, "h": 55.0})],
    "rectangle_and_negative_keypoint": [
        (rectangle, {"x": 12.5, "y": 20.0, "w": 40.0, "h": 55.0}),
        (keypoint, {"x": 25.0, "y": 30.0, "positive": False}),
    ],
}


@dataclass(frozen=True)
class E2EProject:
    """A Label Studio project with an uploaded image task, connected to the running backend."""

    label_studio: LabelStudio
    project_id: int
    ml_id: int
    task_id: int
    image: np.ndarray
    files_root: Path


@pytest.fixture(scope="session")
def backend_url(
    label_studio: LabelStudio, vit_t_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The backend served by `_wsgi.py` as a separate process, configured to fetch images from this LS."""
    env = {
        "SAM_CHOICE": "MobileSAM",
        "MOBILESAM_CHECKPOINT": str(vit_t_checkpoint),
        "DEVICE": "cpu",  # the reference masks are computed on the CPU
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
    }
    backend = BackendProcess(env, log_path=tmp_path_factory.mktemp("backend") / "backend.log")
    try:
        backend.wait_ready(BACKEND_START_TIMEOUT_S)
        yield backend.url
    finally:
        backend.stop()


@pytest.fixture(scope="session")
def project(label_studio: LabelStudio, backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> E2EProject:
    """The SAM project from the fixtures, one uploaded non-square image, and the backend connected to it."""
    assert label_studio.local_files_root is not None
    image = scene(320, 240, seed=1)
    image_path = tmp_path_factory.mktemp("upload") / "e2e_image.png"
    Image.fromarray(image).save(image_path)
    project_id = label_studio.create_project("sam-ls-backend e2e", SAM_CONFIG)
    task_id = label_studio.import_image(project_id, image_path)
    ml_id = label_studio.connect_ml_backend(project_id, backend_url)
    return E2EProject(label_studio, project_id, ml_id, task_id, image, label_studio.local_files_root)


@pytest.mark.parametrize("interaction", INTERACTIONS)
def test_smart_regions_come_back_as_sam_masks(project: E2EProject, vit_t_checkpoint: Path, interaction: str) -> None:
    """Each kind of smart interaction yields one brush region equal to SamPredictor's mask for that prompt."""
    regions = smart_regions(interaction, project.image)
    answer = project.label_studio.interactive_annotating(project.ml_id, project.task_id, regions)
    region = single_brush_region(answer)
    assert_is_sam_mask(region, project.image, regions, vit_t_checkpoint)


def test_predicted_region_saves_as_annotation(project: E2EProject) -> None:
    """The brush region LS returns is accepted as an annotation and reads back unchanged from the task."""
    regions = smart_regions("positive_keypoint", project.image)
    region = single_brush_region(
        project.label_studio.interactive_annotating(project.ml_id, project.task_id, regions)
    )
    created = project.label_studio.create_annotation(project.task_id, [region])
    task = project.label_studio.get_task(project.task_id)
    (saved,) = [annotation for annotation in task["annotations"] if annotation["id"] == created["id"]]
    (saved_region,) = saved["result"]
    assert saved_region["type"] == "brushlabels"
    assert saved_region["value"] == region["value"]
    assert np.array_equal(decode_brush_region(saved_region), decode_brush_region(region))


def test_local_files_task(project: E2EProject, vit_t_checkpoint: Path) -> None:
    """A task whose image is a /data/local-files URL (served through a local storage) is segmented too."""
    image = scene(240, 320, seed=2)
    relative = f"{LOCAL_FILES_SUBDIR}/local_image.png"
    (project.files_root / LOCAL_FILES_SUBDIR).mkdir(exist_ok=True)
    Image.fromarray(image).save(project.files_root / relative)
    ls = project.label_studio
    ls.add_local_files_storage(project.project_id, project.files_root / LOCAL_FILES_SUBDIR)
    image_url = f"/data/local-files/?d={relative}"
    (task_id,) = ls.import_tasks(project.project_id, [{"data": {"image": image_url}}])
    assert ls.download(image_url) == (project.files_root / relative).read_bytes(), "LS must serve the file"
    regions = smart_regions("positive_keypoint", image)
    region = single_brush_region(ls.interactive_annotating(project.ml_id, task_id, regions))
    assert_is_sam_mask(region, image, regions, vit_t_checkpoint)


def test_opening_a_task_warms_its_image_and_stores_no_prediction(
    project: E2EProject, backend_url: str, tmp_path: Path
) -> None:
    """LS asks for predictions when a task is opened: the image gets embedded, and no empty prediction is left."""
    image = scene(300, 200, seed=3)
    path = tmp_path / "opened.png"
    Image.fromarray(image).save(path)
    ls = project.label_studio
    task_id = ls.import_image(project.project_id, path)
    encoded_before = encoder_runs(backend_url)
    ls.get_task(task_id)  # what the labeling screen does when the annotator opens the task
    deadline = time.monotonic() + 120
    while encoder_runs(backend_url) == encoded_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert encoder_runs(backend_url) == encoded_before + 1, "opening the task embeds its image in the background"
    task = ls.get_task(task_id)
    assert task["predictions"] == [] and task["total_predictions"] == 0
    region = single_brush_region(ls.interactive_annotating(project.ml_id, task_id,
                                                           smart_regions("positive_keypoint", image)))
    assert decode_brush_region(region).shape == (200, 300)
    assert encoder_runs(backend_url) == encoded_before + 1, "the first click found the embedding ready"


def encoder_runs(backend_url: str) -> float:
    """How many images the backend has run through its encoder, from its /metrics."""
    text = requests.get(f"{backend_url}/metrics", timeout=10).text
    found = re.search(r'^sam_embedding_lookups_total\{source="encoder"\} (\S+)$', text, re.MULTILINE)
    assert found, "the backend's /metrics lacks its encoder counter"
    return float(found.group(1))


def test_precompute_embeds_every_task_image_once_and_resumes(
    project: E2EProject, vit_t_checkpoint: Path, tmp_path: Path
) -> None:
    """`python -m precompute` fills the shared cache from Label Studio's task list; a second run encodes nothing."""
    ls = project.label_studio
    project_id = ls.create_project("sam-ls-backend precompute", SAM_CONFIG)
    for seed in range(3):
        path = tmp_path / f"pre-{seed}.png"
        Image.fromarray(scene(160, 120, seed=60 + seed)).save(path)
        ls.import_image(project_id, path)
    redis = RedisServer()
    env = {**os.environ, "MOBILESAM_CHECKPOINT": str(vit_t_checkpoint), "LABEL_STUDIO_URL": ls.url,
           "LABEL_STUDIO_API_KEY": ls.token, "REDIS_URL": redis.url}
    try:
        runs = [subprocess.run([sys.executable, "-m", "precompute", "--project", str(project_id)], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=600) for _ in range(2)]
    finally:
        redis.stop()
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert runs[0].stdout.strip().splitlines()[-1] == "3 encoded, 0 already shared, 0 failed"
    assert runs[1].stdout.strip().splitlines()[-1] == "0 encoded, 3 already shared, 0 failed"
    assert "embedding" in runs[0].stderr, "a progress bar is shown"


def smart_regions(interaction: str, image: np.ndarray) -> list[dict[str, Any]]:
    """The regions of one named interaction, sized for `image`, shaped as LS 1.23.2 sends them."""
    height, width = image.shape[:2]
    return [build(**arguments, width=width, height=height) for build, arguments in INTERACTIONS[interaction]]


def single_brush_region(answer: dict[str, Any]) -> dict[str, Any]:
    """The one region of LS's interactive answer, checked to be a Foreground brush on the image."""
    assert "data" in answer, f"Label Studio reported a backend failure: {answer}"
    (region,) = answer["data"]["result"]
    assert region["type"] == "brushlabels"
    assert (region["from_name"], region["to_name"]) == ("tag", "image")
    assert region["value"]["brushlabels"] == ["Foreground"]
    assert region["value"]["format"] == "rle"
    return region


def assert_is_sam_mask(
    region: dict[str, Any], image: np.ndarray, regions: list[dict[str, Any]], checkpoint: Path
) -> None:
    """The region's mask has the image's size and equals SamPredictor's mask for the same prompt, pixel for pixel."""
    height, width = image.shape[:2]
    assert (region["original_width"], region["original_height"]) == (width, height)
    rgba = decode_rle(region["value"]["rle"])
    assert rgba.size == height * width * 4, "the RLE must cover H×W RGBA pixels"
    rgba = rgba.reshape(height, width, 4)
    assert set(np.unique(rgba)) <= {0, 255} and (rgba == rgba[:, :, 3:]).all(), "each pixel is 0 or 255 × 4"
    mask = decode_brush_region(region)
    expected, _ = reference_mask(checkpoint, image, *prompt_in_pixels(regions, width, height))
    assert mask.shape == (height, width)
    assert expected.any(), "the reference mask is empty: pick a prompt that segments something"
    assert np.array_equal(mask, expected), f"{int((mask != expected).sum())} of {mask.size} pixels differ"


def prompt_in_pixels(
    regions: list[dict[str, Any]], width: int, height: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Point coords (N×2), point labels (N,) and box (4,) in pixels, from percent regions (x% * W / 100)."""
    points, labels, box = [], [], None
    for region in regions:
        value = region["value"]
        x, y = value["x"] * width / 100, value["y"] * height / 100
        if region["type"] == "keypointlabels":
            points.append((x, y))
            labels.append(1 if region.get("is_positive", True) else 0)
        else:
            box = np.array([x, y, (value["x"] + value["width"]) * width / 100,
                            (value["y"] + value["height"]) * height / 100])
    if not points:
        return None, None, box
    return np.array(points, dtype=np.float64), np.array(labels), box



# No KeyPointLabels: with one, Label Studio's COCO and YOLO exporters switch to keypoint (pose) output and
# leave polygons out of the YOLO labels (label_studio_sdk's converter, as shipped with 1.23.2).
POLYGON_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <PolygonLabels name="poly" toName="image"><Label value="Object" background="#FF0000"/></PolygonLabels>
  <RectangleLabels name="tag3" toName="image" smart="true"><Label value="Object"/></RectangleLabels>
</View>"""


def test_polygon_results_save_and_export_as_coco_and_yolo(
    label_studio: LabelStudio, backend_url: str, vit_t_checkpoint: Path, tmp_path: Path
) -> None:
    """A PolygonLabels project gets polygons of SamPredictor's mask; saved as an annotation they come out of LS's
    COCO and YOLO exports with the bounds the backend gave them."""
    width, height = 320, 240
    path = tmp_path / "polygon.png"
    image = scene(width, height, seed=4)
    Image.fromarray(image).save(path)
    ls = label_studio
    project_id = ls.create_project("sam-ls-backend polygons", POLYGON_CONFIG)
    task_id = ls.import_image(project_id, path)
    ml_id = ls.connect_ml_backend(project_id, backend_url)
    regions = [rectangle(x=12.5, y=20.0, w=40.0, h=55.0, width=width, height=height, label="Object")]
    answer = ls.interactive_annotating(ml_id, task_id, regions)
    assert "data" in answer, f"Label Studio reported a backend failure: {answer}"
    polygons = answer["data"]["result"]
    assert polygons and all(r["type"] == "polygonlabels" and r["from_name"] == "poly" for r in polygons)
    ls.create_annotation(task_id, polygons)
    expected = sorted(pixel_bounds(region["value"]["points"], width, height) for region in polygons)
    mask, _ = reference_mask(vit_t_checkpoint, image, box=np.array([40.0, 48.0, 168.0, 180.0]))
    rows, columns = np.nonzero(remove_small_regions(mask, Settings.polygon_min_area))
    bounds = np.array([pixel_bounds(region["value"]["points"], width, height) for region in polygons])
    np.testing.assert_allclose([*bounds[:, :2].min(axis=0), *bounds[:, 2:].max(axis=0)],
                               [columns.min(), rows.min(), columns.max() + 1, rows.max() + 1], atol=0.01,
                               err_msg="the polygons run along the outer edges of SamPredictor's mask's pixels")

    coco = json.loads(exported_file(ls.export(project_id, "COCO"), "result.json"))
    (entry,) = coco["images"]
    assert (entry["width"], entry["height"]) == (width, height)
    assert [category["name"] for category in coco["categories"]] == ["Object"]
    found = coco["annotations"]
    assert len(found) == len(polygons) and all(a["image_id"] == entry["id"] for a in found)
    boxes = sorted((x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in found))
    np.testing.assert_allclose(boxes, expected, atol=0.01)

    yolo = zipfile.ZipFile(io.BytesIO(ls.export(project_id, "YOLO")))
    (labels,) = [name for name in yolo.namelist() if name.startswith("labels/") and name.endswith(".txt")]
    lines = [line.split() for line in yolo.read(labels).decode().splitlines() if line.strip()]
    assert len(lines) == len(polygons) and {line[0] for line in lines} == {"0"}
    bounds = []
    for line in lines:
        xs, ys = np.array(line[1::2], dtype=float) * width, np.array(line[2::2], dtype=float) * height
        bounds.append((xs.min(), ys.min(), xs.max(), ys.max()))
    np.testing.assert_allclose(sorted(bounds), expected, atol=0.01)


def test_polygon_answer_exports_to_coco_as_the_brush_mask_of_the_same_click(
    label_studio: LabelStudio, backend_url: str, vit_t_checkpoint: Path, tmp_path: Path
) -> None:
    """Issue 17, at the default vertex bound: the polygons of a rectangle click, saved in Label Studio and
    exported as COCO, decode (with pycocotools) to what they describe, the brush mask of the same click with
    the holes the bound gave up (smallest first) filled: nothing else differs from the brush mask."""
    options = PolygonOptions(Settings.polygon_tolerance, Settings.polygon_max_vertices, Settings.polygon_min_area)
    exported, mask, brush = coco_export_of_a_rectangle_click(label_studio, backend_url, vit_t_checkpoint, tmp_path)
    described = polygon_answer(mask, options).described
    faithful = iou(exported, described)
    assert faithful >= 0.95, f"COCO's polygons and what they describe: IoU {faithful:.4f}"
    given_up = iou(described, brush)
    assert iou(exported, brush) >= given_up - 0.01, "all that differs from the brush mask is the given-up holes"


def test_with_room_for_every_hole_the_coco_export_is_the_brush_mask(
    label_studio: LabelStudio, vit_t_checkpoint: Path, tmp_path: Path
) -> None:
    """Issue 17: with a vertex bound that holds every hole of the (speckled, random-weight) mask, the COCO
    export of the polygons decodes to the brush mask of the same click itself, IoU >= 0.95."""
    env = {"SAM_CHOICE": "MobileSAM", "MOBILESAM_CHECKPOINT": str(vit_t_checkpoint), "DEVICE": "cpu",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "POLYGON_MAX_VERTICES": "5000"}
    backend = BackendProcess(env, log_path=tmp_path / "backend.log")
    try:
        backend.wait_ready(BACKEND_START_TIMEOUT_S)
        exported, mask, brush = coco_export_of_a_rectangle_click(label_studio, backend.url, vit_t_checkpoint,
                                                                 tmp_path)
    finally:
        backend.stop()
    assert polygon_answer(mask, PolygonOptions(max_vertices=5000)).described.sum() == brush.sum(), (
        "the bound holds every hole")
    faithful = iou(exported, brush)
    assert faithful >= 0.95, f"COCO's polygons and the brush mask of the same click: IoU {faithful:.4f}"


def coco_export_of_a_rectangle_click(label_studio: LabelStudio, backend_url: str, checkpoint: Path,
                                     folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rectangle click on a PolygonLabels project, its answer saved as an annotation and exported as COCO:
    the export's pixels (decoded with pycocotools, as a COCO reader does), SamPredictor's mask for the same
    click, and that mask after the polygons' small-region cleanup (the brush mask of the same click)."""
    width, height = 320, 240
    path = folder / "coco.png"
    image = scene(width, height, seed=17)
    Image.fromarray(image).save(path)
    ls = label_studio
    project_id = ls.create_project("sam-ls-backend polygons to COCO", POLYGON_CONFIG)
    task_id = ls.import_image(project_id, path)
    ml_id = ls.connect_ml_backend(project_id, backend_url)
    regions = [rectangle(x=12.5, y=20.0, w=40.0, h=55.0, width=width, height=height, label="Object")]
    answer = ls.interactive_annotating(ml_id, task_id, regions)
    assert "data" in answer, f"Label Studio reported a backend failure: {answer}"
    polygons = answer["data"]["result"]
    assert polygons and all(r["type"] == "polygonlabels" for r in polygons)
    ls.create_annotation(task_id, polygons)

    mask, _ = reference_mask(checkpoint, image, box=np.array([40.0, 48.0, 168.0, 180.0]))
    brush = remove_small_regions(mask, Settings.polygon_min_area)
    assert brush.sum() >= 0.01 * width * height, "the click's mask is not trivially empty"
    coco = json.loads(exported_file(ls.export(project_id, "COCO"), "result.json"))
    (entry,) = coco["images"]
    assert (entry["width"], entry["height"]) == (width, height)
    segmentations = [a["segmentation"] for a in coco["annotations"]]
    assert len(segmentations) == len(polygons)
    exported = coco_raster([np.reshape(polygon, (-1, 2)) for segmentation in segmentations
                            for polygon in segmentation], height, width)
    return exported, mask, brush


def pixel_bounds(points: list[list[float]], width: int, height: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in pixels of a polygon given in percent."""
    array = np.array(points) * np.array([width, height]) / 100
    return (*array.min(axis=0), *array.max(axis=0))


def exported_file(payload: bytes, name: str) -> bytes:
    """A file of an export: the payload itself when LS sent it bare, else that member of the zip."""
    if not zipfile.is_zipfile(io.BytesIO(payload)):
        return payload
    archive = zipfile.ZipFile(io.BytesIO(payload))
    (member,) = [member for member in archive.namelist() if member.endswith(name)]
    return archive.read(member)


@pytest.fixture(scope="session")
def sam3_project(
    label_studio: LabelStudio, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[E2EProject, Path]]:
    """A concept project (TextArea + BrushLabels) connected to a SAM_CHOICE=SAM3 backend on a tiny SAM 3 folder."""
    from tests.support.hf_checkpoints import save_sam3_folder
    from tests.support.sam3_reference import CONCEPT_CONFIG

    folder = save_sam3_folder(tmp_path_factory.mktemp("sam3") / "sam3")
    env = {"SAM_CHOICE": "SAM3", "SAM3_MODEL_DIR": str(folder), "DEVICE": "cpu",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
    backend = BackendProcess(env, log_path=tmp_path_factory.mktemp("backend-sam3") / "backend.log")
    try:
        backend.wait_ready(BACKEND_START_TIMEOUT_S)
        image = scene(120, 90, seed=4)
        image_path = tmp_path_factory.mktemp("upload-sam3") / "concept.png"
        Image.fromarray(image).save(image_path)
        project_id = label_studio.create_project("sam-ls-backend SAM 3 e2e", CONCEPT_CONFIG)
        task_id = label_studio.import_image(project_id, image_path)
        ml_id = label_studio.connect_ml_backend(project_id, backend.url)
        yield E2EProject(label_studio, project_id, ml_id, task_id, image, Path()), folder
    finally:
        backend.stop()


def test_sam3_concept_typed_in_label_studio_gives_every_instance(sam3_project: tuple[E2EProject, Path]) -> None:
    """A concept typed in the TextArea comes back through LS as one scored brush region per instance, each
    equal to Sam3Processor's mask, and the regions save as an annotation."""
    from tests.support.sam3_reference import concept_reference, middle_threshold, textarea

    project, folder = sam3_project
    threshold = middle_threshold(folder, project.image, "person")
    expected = concept_reference(folder, project.image, "person", float(threshold))
    answer = project.label_studio.interactive_annotating(
        project.ml_id, project.task_id, [textarea("person"), textarea(threshold)])
    assert "data" in answer, f"Label Studio reported a backend failure: {answer}"
    regions = answer["data"]["result"]
    assert len(regions) == len(expected) > 1
    for region, (score, mask) in zip(regions, expected):
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["person"]
        assert region["score"] == pytest.approx(score, abs=1e-4)
        assert np.array_equal(decode_brush_region(region), mask)
    created = project.label_studio.create_annotation(project.task_id, regions)
    saved = project.label_studio.get_task(project.task_id)["annotations"]
    assert [len(a["result"]) for a in saved if a["id"] == created["id"]] == [len(regions)]
