"""PREANNOTATE=concepts on SAM 3 (a tiny random-weight folder): every label of the output controls is a concept,
and each instance is what transformers' own Sam3Processor post-processing answers from pixels for it."""

from __future__ import annotations

import numpy as np
import pytest

from sam_ls_backend.outputs.rectangle import mask_box
from tests.support.ls_bodies import predict_body
from tests.support.reference import decode_brush_region
from tests.support.scenes import scene

transformers = pytest.importorskip("transformers")

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image"><Label value="person"/><Label value="car" concept="red car"/>'
          '</BrushLabels>'
          '<RectangleLabels name="box" toName="image"><Label value="person"/><Label value="car" concept="red car"/>'
          '</RectangleLabels>'
          '<RectangleLabels name="prompt" toName="image" smart="true"><Label value="person"/></RectangleLabels>'
          '</View>')


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.support.hf_checkpoints import save_sam3_folder

    return save_sam3_folder(tmp_path_factory.mktemp("hf-models") / "sam3")


def reference(folder, image: np.ndarray, text: str, threshold: float) -> list[tuple[float, np.ndarray]]:
    """Sam3Model from pixels and Sam3Processor's instance post-processing: (score, mask) pairs, best first."""
    import torch

    with torch.inference_mode():
        model = transformers.Sam3Model.from_pretrained(folder, local_files_only=True).eval()
        processor = transformers.Sam3Processor.from_pretrained(folder, local_files_only=True)
        inputs = processor(images=image, text=text, return_tensors="pt")
        found = processor.post_process_instance_segmentation(model(**inputs), threshold=threshold, mask_threshold=0.5,
                                                             target_sizes=inputs["original_sizes"].tolist())[0]
    order = torch.argsort(found["scores"], descending=True)
    return [(float(found["scores"][i]), found["masks"][i].numpy()) for i in order]


def test_every_label_is_a_concept_found_on_one_encoder_run(folder, image_host):
    from sam_ls_backend.app import load_backend
    from sam_ls_backend.server import create_app
    from sam_ls_backend.settings import Settings

    image = scene(90, 60, seed=21)
    # Random weights score every candidate near 0.25: a threshold inside the spread keeps some, drops others.
    scores = [score for score, _ in reference(folder, image, "person", 0.0)]
    threshold = float(f"{np.quantile(scores, 0.5):.6f}")
    expected = [(label, score, mask) for label, phrase in (("person", "person"), ("car", "red car"))
                for score, mask in reference(folder, image, phrase, threshold)]
    assert 0 < len(expected) < 2 * len(scores)
    settings = Settings.from_env({}, SAM_CHOICE="SAM3", SAM3_MODEL_DIR=str(folder), PREANNOTATE="concepts",
                                 SCORE_THRESHOLD=str(threshold), LABEL_STUDIO_URL=image_host.url,
                                 LABEL_STUDIO_API_KEY=image_host.token)
    backend = load_backend(settings)
    encoder_runs = []
    original = backend.concepts.model.get_vision_features
    backend.concepts.model.get_vision_features = lambda **kw: encoder_runs.append(1) or original(**kw)
    body = predict_body(image_host.add_image("/data/upload/1/concepts.png", image), None, task_id=5)
    body["label_config"] = CONFIG
    response = create_app(settings, backend).test_client().post("/predict", json=body)
    assert response.status_code == 200, response.json
    (prediction,) = response.json["results"]
    assert len(encoder_runs) == 1  # one image encoder run for both labels
    brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
    assert [(r["value"]["brushlabels"], round(r["score"], 4)) for r in brushes] == [
        ([label], round(score, 4)) for label, score, _ in expected]
    for brush, box, (label, _, mask) in zip(brushes, boxes, expected, strict=True):
        assert np.array_equal(decode_brush_region(brush), mask)
        assert box["from_name"] == "box" and box["value"]["rectanglelabels"] == [label]
        x0, y0, x1, y1 = mask_box(mask)
        value = box["value"]
        assert (value["x"], value["y"], value["width"], value["height"]) == pytest.approx(
            (100 * x0 / 90, 100 * y0 / 60, 100 * (x1 - x0) / 90, 100 * (y1 - y0) / 60))
    assert prediction["model_version"] and prediction["score"] > 0


def test_concepts_without_sam3_pass_the_task_on(vit_t_predictor, image_host):
    """PREANNOTATE=concepts on a model without a concept detector: tasks stay empty, as with off."""
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.settings import Settings

    settings = Settings.from_env({}, PREANNOTATE="concepts", LABEL_STUDIO_URL=image_host.url,
                                 LABEL_STUDIO_API_KEY=image_host.token)
    body = predict_body(image_host.add_image("/data/upload/1/no-sam3.png", scene(90, 60, seed=2)), None)
    body["label_config"] = CONFIG
    assert SamBackend(settings, vit_t_predictor).predict(body)["results"] == [[]]
