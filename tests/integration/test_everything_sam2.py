"""PREANNOTATE=everything on SAM 2.1 (a tiny random-weight folder) against transformers' own automatic mask
generation: the `mask-generation` pipeline over `Sam2Model`, on the same folder, image and parameters.

The pipeline places its grid's clicks with SAM 1's longest-side rule, while SAM 2.1's processor resizes the
image to a square: on a non-square image its clicks land elsewhere than the grid's cell centres (shown below).
On a square image both rules agree, so the comparison uses a square one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_ls_backend.predictors.automatic import FoundMask, GridOptions, generate_masks
from tests.support.ls_bodies import predict_body
from tests.support.reference import decode_brush_region
from tests.support.shape_scenes import shape_scene

transformers = pytest.importorskip("transformers")

GRID = 8
SIDE = 160
MASK_GAIN, IOU_GAIN = 30000.0, 1000.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random-weight SAM 2.1 folder whose decoder answers with logits of order one and spread-out predicted
    IoUs: at the init's scale every logit is within ±0.001 (stability 0 everywhere) and every predicted IoU is
    0.50 ± 0.01, so the filters could only keep all or nothing. The last layers of the mask hypernetworks and
    of the IoU head are scaled up; the masks already differ from click to click."""
    from tests.support.hf_checkpoints import save_sam2_folder

    path = save_sam2_folder(tmp_path_factory.mktemp("hf-models") / "sam2.1-hiera-tiny")
    model = transformers.Sam2Model.from_pretrained(path, local_files_only=True)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(MASK_GAIN)
        model.mask_decoder.iou_prediction_head.proj_out.weight.mul_(IOU_GAIN)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def settings(folder):
    from sam_ls_backend.settings import Settings

    return Settings.from_env({}, SAM_CHOICE="SAM2", SAM2_MODEL_DIR=str(folder), LABEL_STUDIO_URL="http://127.0.0.1:9")


@pytest.fixture(scope="module")
def predictor(settings):
    from sam_ls_backend.predictors.registry import load_predictor

    return load_predictor(settings)


@pytest.fixture(scope="module")
def generator(folder):
    """transformers' mask-generation pipeline on the same folder, loaded offline."""
    model = transformers.Sam2Model.from_pretrained(folder, local_files_only=True).eval()
    processor = transformers.Sam2ImageProcessor.from_pretrained(folder, local_files_only=True)
    return transformers.pipeline("mask-generation", model=model, image_processor=processor, device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return shape_scene(SIDE, SIDE, seed=7)[0]


def oracle(generator, image: np.ndarray, iou: float, stability: float,
           nms: float) -> tuple[list[np.ndarray], list[float]]:
    """transformers' masks and predicted IoUs, in its order."""
    from PIL import Image

    with torch.inference_mode():
        found = generator(Image.fromarray(image), points_per_crop=GRID, points_per_batch=64, pred_iou_thresh=iou,
                          stability_score_thresh=stability, crops_nms_thresh=nms)
    return [np.asarray(mask, dtype=bool) for mask in found["masks"]], [float(s) for s in found["scores"]]


def ours(predictor, image: np.ndarray, iou: float, stability: float, nms: float = 0.7) -> list[FoundMask]:
    return generate_masks(predictor.grid_decoder(), predictor.embed(image),
                          GridOptions(points_per_side=GRID, pred_iou_thresh=iou, stability_thresh=stability,
                                      nms_thresh=nms))


def assert_same(mine: list[FoundMask], theirs: tuple[list[np.ndarray], list[float]]) -> None:
    masks, scores = theirs
    assert len(mine) == len(masks)
    for found, mask, score in zip(mine, masks, scores):
        assert np.array_equal(found.mask, mask)
        assert found.score == pytest.approx(score, abs=1e-5)


def between(values: list[float], quantile: float) -> float:
    """A threshold strictly between two of `values` near `quantile` (the two libraries compare with > and >=)."""
    distinct = sorted(set(values))
    index = min(int(quantile * len(distinct)), len(distinct) - 2)
    return (distinct[index] + distinct[index + 1]) / 2


def test_filters_off_the_generators_masks(predictor, generator, image):
    # Not vacuous: suppression keeps several different masks. Random weights scatter each click's mask over the
    # picture, so nearly every box is the whole image and boxes overlapping by 0.7 would leave one mask.
    theirs = oracle(generator, image, 0.0, 0.0, 0.95)
    assert len(theirs[0]) >= 3 and len({mask.tobytes() for mask in theirs[0]}) == len(theirs[0])
    assert_same(ours(predictor, image, 0.0, 0.0, 0.95), theirs)


def test_filters_that_keep_some_and_drop_some_agree(predictor, generator, image):
    every = ours(predictor, image, 0.0, 0.0, nms=1.0)  # every candidate: suppression removes only equal boxes
    assert len({found.mask.tobytes() for found in every}) == len(every) == GRID * GRID * 3
    iou = between([found.score for found in every], 0.5)
    stability = between([found.stability for found in every], 0.5)
    for thresholds in ((iou, 0.0), (0.0, stability), (iou, stability)):
        theirs = oracle(generator, image, *thresholds, 1.0)
        assert 0 < len(theirs[0]) < len(every)
        assert_same(ours(predictor, image, *thresholds, nms=1.0), theirs)
    assert_same(ours(predictor, image, iou, stability, 0.95), oracle(generator, image, iou, stability, 0.95))


def test_the_pipelines_clicks_leave_the_grid_on_a_non_square_image(generator):
    """Why the comparison image is square: on 320×160 the pipeline's clicks span the top half only."""
    picture = np.zeros((160, 320, 3), dtype=np.uint8)
    target = generator.image_processor.size["height"]
    _, points, _, _ = generator.image_processor.generate_crop_boxes(picture, target, points_per_crop=GRID)
    ys = points[0, :, 0, 1] / target  # in the square frame SAM 2.1's prompt encoder reads, as fractions
    assert float(ys.max()) < 0.5  # the grid's last row is at 1 - 1/(2·GRID) of the height


def test_preannotate_everything_on_sam2_answers_a_task(settings, predictor, image_host):
    """Through the backend: one brush region per mask the grid keeps, scored with SAM 2.1's predicted IoU."""
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.server import create_app

    serving = settings.with_overrides(preannotate="everything", everything_points_per_side=GRID,
                                      everything_pred_iou=0.0, everything_stability=0.0,
                                      label_studio_url=image_host.url, label_studio_api_key=image_host.token)
    picture = shape_scene(200, 120, seed=8)[0]
    url = image_host.add_image("/data/upload/1/everything-sam2.png", picture)
    client = create_app(serving, SamBackend(serving, predictor)).test_client()
    response = client.post("/predict", json=predict_body(url, None, task_id=4))
    assert response.status_code == 200, response.json
    (prediction,) = response.json["results"]
    expected = ours(predictor, picture, 0.0, 0.0)  # the generator's answer, shown equal to transformers' above
    assert expected and len(prediction["result"]) == len(expected)
    for region, found in zip(prediction["result"], expected):
        assert np.array_equal(decode_brush_region(region), found.mask)
        assert region["score"] == pytest.approx(found.score, abs=1e-4)


def test_sam3s_tracker_offers_no_grid_its_preannotation_is_concepts():
    from sam_ls_backend.errors import ConfigError
    from sam_ls_backend.predictors.hf import HfPromptPredictor

    with pytest.raises(ConfigError, match="PREANNOTATE=concepts"):
        HfPromptPredictor(model=None, processor=None, model_type="sam3").grid_decoder()
