"""PREANNOTATE=everything against segment-anything's own SamAutomaticMaskGenerator, on a MobileSAM whose masks
follow the click (tests/support/trained_checkpoint.py: fine-tuned here on generated scenes, this test's scene
not among them): on random weights the generator keeps no mask at its default filters, and a comparison of
two empty sets would prove nothing."""

from __future__ import annotations

import numpy as np
import pytest

from sam_ls_backend.predictors.automatic import GridOptions, generate_masks, point_grid
from tests.support.ls_bodies import predict_body
from tests.support.reference import decode_brush_region
from tests.support.shape_scenes import shape_scene
from tests.support.trained_checkpoint import trained_model

GRID = 16
SEED = 100
CONFIG = """<View><Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels>
  <RectangleLabels name="box" toName="image"><Label value="Object"/><Label value="Thing"/></RectangleLabels>
  <KeyPointLabels name="point" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>"""


@pytest.fixture(scope="module")
def models():
    """The model, served by the backend's predictor, and as segment-anything's `Sam` for the generator."""
    from sam_ls_backend.predictors.sam import SamImagePredictor

    model = trained_model()
    return None, SamImagePredictor(model, model_type="vit_t"), model


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return shape_scene(320, 240, seed=SEED)[0]


@pytest.fixture(scope="module")
def oracle(models, image) -> list[dict]:
    """SamAutomaticMaskGenerator's answer at its default filters on a 16×16 grid."""
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(models[2], points_per_side=GRID).generate(image)


def test_the_grid_is_the_generators(models):
    from segment_anything.utils.amg import build_point_grid

    for side in (1, 4, GRID, 32):
        assert np.array_equal(point_grid(side), build_point_grid(side))


def test_everything_finds_the_generators_masks(models, image, oracle):
    _, predictor, _ = models
    found = generate_masks(predictor, predictor.embed(image), GridOptions(points_per_side=GRID))
    # Not vacuous: the generator keeps many different masks on this model (none on random weights), and its
    # filters drop some: fewer masks than the grid's 768 candidates even before suppression.
    distinct = {mask["segmentation"].tobytes() for mask in oracle}
    assert len(oracle) >= 20 and len(distinct) == len(oracle)
    areas = sorted(int(mask["segmentation"].sum()) for mask in oracle)
    assert areas[-1] > 4 * areas[0]  # masks of different sizes and places, not one blob seen from many clicks
    loose = generate_masks(predictor, predictor.embed(image), GridOptions(points_per_side=GRID, pred_iou_thresh=0,
                                                                          stability_thresh=0))
    assert len(loose) > len(oracle)
    # The same masks, in the same order (highest predicted IoU first), with the same scores.
    assert len(found) == len(oracle)
    for mine, theirs in zip(found, oracle):
        assert np.array_equal(mine.mask, theirs["segmentation"])
        assert mine.score == pytest.approx(theirs["predicted_iou"], abs=1e-6)
        assert mine.stability == pytest.approx(theirs["stability_score"], abs=1e-6)


def test_other_filters_agree_too(models, image):
    """Looser and stricter filters and a smaller batch: still the generator's masks."""
    from segment_anything import SamAutomaticMaskGenerator

    _, predictor, model = models
    embedding = predictor.embed(image)
    for iou, stability, nms, batch in ((0.7, 0.9, 0.5, 16), (0.95, 0.97, 0.8, 64)):
        theirs = SamAutomaticMaskGenerator(model, points_per_side=8, points_per_batch=batch, pred_iou_thresh=iou,
                                           stability_score_thresh=stability, box_nms_thresh=nms).generate(image)
        mine = generate_masks(predictor, embedding, GridOptions(points_per_side=8, points_per_batch=batch,
                                                                pred_iou_thresh=iou, stability_thresh=stability,
                                                                nms_thresh=nms))
        assert [m.mask.tobytes() for m in mine] == [t["segmentation"].tobytes() for t in theirs]


def test_retrieve_predictions_gets_every_mask_as_brush_polygons_and_boxes(models, image, oracle, image_host):
    """A task without regions under PREANNOTATE=everything: one region per object in each output control."""
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.server import create_app
    from sam_ls_backend.settings import Settings

    _, predictor, _ = models
    settings = Settings.from_env({}, LABEL_STUDIO_URL=image_host.url,
                                 LABEL_STUDIO_API_KEY=image_host.token, PREANNOTATE="everything",
                                 EVERYTHING_POINTS_PER_SIDE=str(GRID), EMBEDDING_PRECISION="float32")
    client = create_app(settings, SamBackend(settings, predictor)).test_client()
    url = image_host.add_image("/data/upload/1/everything.png", image)
    body = predict_body(url, None, task_id=7)
    body["label_config"] = CONFIG
    body["tasks"].append({**body["tasks"][0], "id": 8})
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.json
    predictions = response.json["results"]
    assert len(predictions) == 2 and predictions[0]["result"] and predictions[0]["model_version"] == "MobileSAM-vit_t"
    result = predictions[0]["result"]
    brushes = [r for r in result if r["type"] == "brushlabels"]
    boxes = [r for r in result if r["type"] == "rectanglelabels"]
    assert [decode_brush_region(r).tobytes() for r in brushes] == [m["segmentation"].tobytes() for m in oracle]
    assert len(boxes) == len(oracle) and {r["from_name"] for r in boxes} == {"box"}
    for box, mask in zip(boxes, oracle):
        x, y, w, h = mask["bbox"]  # the generator's box: inclusive last pixel, so one pixel narrower
        value = box["value"]
        assert value["rectanglelabels"] == ["Object"] and box["score"] == pytest.approx(mask["predicted_iou"], 1e-3)
        assert (value["x"], value["y"], value["width"], value["height"]) == pytest.approx(
            (100 * x / image.shape[1], 100 * y / image.shape[0], 100 * (w + 1) / image.shape[1],
             100 * (h + 1) / image.shape[0]))
    assert any(r["type"] == "polygonlabels" for r in result)
    assert predictions[1]["result"] and len(predictions[1]["result"]) == len(result)
    assert predictions[0]["score"] == pytest.approx(np.mean([r["score"] for r in result]), abs=1e-3)


def test_preannotate_label_names_the_regions_label(models, image, image_host):
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.settings import Settings

    _, predictor, _ = models
    settings = Settings.from_env({}, LABEL_STUDIO_URL=image_host.url, LABEL_STUDIO_API_KEY=image_host.token,
                                 PREANNOTATE="everything", PREANNOTATE_LABEL="Thing", RESULT_TYPE="rectangle",
                                 EVERYTHING_POINTS_PER_SIDE="8")
    url = image_host.add_image("/data/upload/1/everything-label.png", image)
    body = predict_body(url, None)
    body["label_config"] = CONFIG
    (prediction,) = SamBackend(settings, predictor).predict(body)["results"]
    assert prediction["result"] and {r["type"] for r in prediction["result"]} == {"rectanglelabels"}
    assert all(r["value"]["rectanglelabels"] == ["Thing"] for r in prediction["result"])


def test_off_keeps_a_task_without_regions_empty(models, image, image_host):
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.settings import Settings

    _, predictor, _ = models
    settings = Settings.from_env({}, LABEL_STUDIO_URL=image_host.url, LABEL_STUDIO_API_KEY=image_host.token)
    body = predict_body(image_host.add_image("/data/upload/1/off.png", image), None)
    body["label_config"] = CONFIG
    assert SamBackend(settings, predictor).predict(body)["results"] == [[]]


def test_a_model_without_a_grid_decoder_is_refused_at_start(models):
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.errors import ConfigError
    from sam_ls_backend.settings import Settings

    class ClicksOnly:
        model_type = "vit_t"

    with pytest.raises(ConfigError, match="PREANNOTATE=everything"):
        SamBackend(Settings.from_env({}, PREANNOTATE="everything"), ClicksOnly())  # type: ignore[arg-type]

