"""RUNTIME=auto, the default: on a CPU, MobileSAM served by ONNX Runtime from graphs exported once, checked,
cached by fingerprint, with masks as SamPredictor's (IoU ≥ 0.999); a failed export falls back to torch.

The random-weight MobileSAM is exported once per session into the session's cache folder (a minute or
more); the fallback tests fail cheaply (an unwritable folder, or the check refusing the decoder).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sam_ls_backend.errors import ConfigError
from sam_ls_backend.predictors import onnx_cache, onnx_convert
from sam_ls_backend.predictors.files import cached_graphs
from sam_ls_backend.predictors.onnx_convert import mask_iou
from sam_ls_backend.predictors.registry import load_predictor
from tests.support.backend_process import BackendProcess
from tests.support.ls_bodies import keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region, reference_mask
from tests.support.scenes import scene

ROOT = Path(__file__).resolve().parents[2]
SIZES = [(320, 240), (201, 333), (1024, 768), (4000, 3000)]  # the parity tests' sizes, and the bench's

# Label Studio regions, and SamPredictor's prompt for them in fractions of the image (points, labels, boxes).
# (A lone negative click is no object of its own: it refines the task image's current object, as
# tests/integration/test_current_object.py shows.)
PROMPTS = {
    "one click": ([keypoint(50, 50)], [[0.5, 0.5]], [1], [None]),
    "clicks positive and negative": ([keypoint(30, 40), keypoint(70, 60, False), keypoint(35, 45)],
                                     [[0.3, 0.4], [0.7, 0.6], [0.35, 0.45]], [1, 0, 1], [None]),
    "rectangle": ([rectangle(20, 10, 50, 60)], None, None, [[0.2, 0.1, 0.7, 0.7]]),
    "rectangle with clicks inside": ([rectangle(20, 10, 50, 60), keypoint(40, 40), keypoint(60, 20, False)],
                                     [[0.4, 0.4], [0.6, 0.2]], [1, 0], [[0.2, 0.1, 0.7, 0.7]]),
    "several rectangles": ([rectangle(5, 5, 30, 30), rectangle(40, 20, 25, 50)], None, None,
                           [[0.05, 0.05, 0.35, 0.35], [0.4, 0.2, 0.65, 0.7]]),
}


@pytest.fixture(scope="session")
def runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def auto_settings(vit_t_settings, runtime_cache):
    """The defaults (RUNTIME=auto) on a CPU, exporting into the session's cache folder."""
    return vit_t_settings.with_overrides(runtime="auto", device="cpu", onnx_cache_dir=str(runtime_cache))


@pytest.fixture(scope="session")
def auto_predictor(auto_settings):
    """What the default settings serve: the one export of the session happens here."""
    return load_predictor(auto_settings)


@pytest.fixture(scope="session")
def auto_client(auto_predictor, auto_settings, image_host):
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.server import create_app

    settings = auto_settings.with_overrides(label_studio_url=image_host.url, label_studio_api_key=image_host.token)
    return create_app(settings, SamBackend(settings, auto_predictor)).test_client()


def test_default_on_a_cpu_serves_mobile_sam_on_onnx_runtime_from_graphs_named_by_the_checkpoint(
        auto_predictor, auto_settings, runtime_cache, vit_t_checkpoint):
    assert (auto_predictor.runtime, auto_predictor.model_type) == ("onnxruntime", "vit_t")
    # The encoder and prompt graphs (and the grid graph, once PREANNOTATE=everything has asked for it), nothing else.
    names = sorted(path.name for path in runtime_cache.iterdir() if not path.name.endswith(".grid.onnx"))
    assert len(names) == 2 and all(re.fullmatch(r"mobile_sam\.[0-9a-f]{16}\.(decoder|encoder)\.onnx", n) for n in names)
    assert names == sorted(path.name for path in cached_graphs(auto_settings, vit_t_checkpoint))


@pytest.mark.parametrize("kind", PROMPTS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_default_path_masks_agree_with_sam_predictor(kind, size, auto_client, image_host, vit_t_checkpoint):
    """Through the served path (encoder, decoder, brush RLE) against SamPredictor on the same checkpoint."""
    width, height = size
    image = scene(width, height, seed=width)
    url = image_host.add_image(f"/data/upload/1/runtime-{width}x{height}.png", image)
    regions, points, labels, boxes = PROMPTS[kind]
    response = auto_client.post("/predict", json=predict_body(url, regions))
    assert response.status_code == 200, response.json
    answers = response.json["results"][0]["result"]
    assert len(answers) == len(boxes)
    scale = np.array([width, height])
    for region, box in zip(answers, boxes):
        expected, score = reference_mask(
            vit_t_checkpoint, image, None if points is None else np.array(points) * scale,
            None if labels is None else np.array(labels), None if box is None else np.array(box) * np.tile(scale, 2))
        assert 0 < expected.sum() < expected.size, "a degenerate reference mask would prove nothing"
        ours = decode_brush_region(region)
        assert ours.shape == (height, width)
        assert mask_iou(ours, expected) >= 0.999
        assert region["score"] == pytest.approx(score, abs=2e-3)


def test_refinement_on_the_default_path_agrees_with_sam_predictors_mask_input(auto_predictor, vit_t_checkpoint):
    from segment_anything import SamPredictor

    from sam_ls_backend.protocol.prompts import prompts_from_regions
    from tests.support.reference import _model

    image = scene(333, 517, seed=4)
    reference = SamPredictor(_model(str(vit_t_checkpoint)))
    reference.set_image(image)
    masks, scores, logits = reference.predict(point_coords=np.array([[166.5, 258.5]]), point_labels=np.array([1]))
    best = int(np.argmax(scores))
    points = np.array([[166.5, 258.5], [0.3 * 333, 0.7 * 517]])
    expected, _, _ = reference.predict(point_coords=points, point_labels=np.array([1, 0]),
                                       mask_input=logits[best][None], multimask_output=False)
    embedding = auto_predictor.embed(image)
    (first,) = prompts_from_regions([keypoint(50, 50)])
    (second,) = prompts_from_regions([keypoint(50, 50), keypoint(30, 70, False)])
    previous = auto_predictor.predict(embedding, first).low_res_logits
    assert mask_iou(auto_predictor.predict(embedding, second, previous).mask, expected[0]) >= 0.999


def test_a_second_start_reuses_the_export(auto_predictor, auto_settings, monkeypatch, caplog):
    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_convert, "convert", no_export)
    with caplog.at_level(logging.INFO):
        assert load_predictor(auto_settings).runtime == "onnxruntime"
    assert not any("exporting" in record.getMessage() for record in caplog.records)


def test_a_refused_check_falls_back_to_torch_in_one_line_and_writes_nothing(vit_t_settings, tmp_path, monkeypatch,
                                                                            caplog):
    monkeypatch.setattr(onnx_cache, "MIN_IOU", 1.01)  # no mask can pass: the check refuses the first graph
    settings = vit_t_settings.with_overrides(runtime="auto", device="cpu", onnx_cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO):
        predictor = load_predictor(settings)
    assert predictor.runtime == "torch"
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("RUNTIME=auto: serving mobile_sam.pt on torch, as its ONNX Runtime graphs are "
                                  "unavailable: validation failed: the exported prompt-decoder gives a mask with IoU")
    assert any(re.search(r"exporting mobile_sam.pt to ONNX Runtime graphs in", r.getMessage()) for r in caplog.records)
    assert list((tmp_path / "cache").iterdir()) == []  # no graph, no staging folder


def test_an_unwritable_cache_falls_back_to_torch_and_runtime_onnx_refuses(vit_t_settings, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = vit_t_settings.with_overrides(runtime="auto", device="cpu", onnx_cache_dir=str(blocker / "cache"))
    with caplog.at_level(logging.WARNING):
        assert load_predictor(settings).runtime == "torch"
    (warning,) = [record.getMessage() for record in caplog.records]
    assert f"cannot write the exported graphs to {blocker / 'cache'}" in warning and "ONNX_CACHE_DIR" in warning
    with pytest.raises(ConfigError, match=r"^RUNTIME=onnx: cannot write the exported graphs"):
        load_predictor(settings.with_overrides(runtime="onnx"))


def test_check_reports_the_runtime_in_use(auto_predictor, vit_t_checkpoint, runtime_cache):
    env = {"RUNTIME": "auto", "DEVICE": "cpu", "MOBILESAM_CHECKPOINT": str(vit_t_checkpoint),
           "ONNX_CACHE_DIR": str(runtime_cache), "SAM_CHOICE": "MobileSAM"}
    done = subprocess.run([sys.executable, str(ROOT / "_wsgi.py"), "--check"], env=_environ(env), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ok: MobileSAM (vit_t) runs on onnxruntime (RUNTIME=auto)" in done.stdout


@pytest.mark.parametrize("gunicorn", [False, True], ids=["python _wsgi.py", "gunicorn -c gunicorn.conf.py"])
def test_server_exports_before_forking_and_a_failure_is_logged_once(gunicorn, vit_t_checkpoint, tmp_path,
                                                                    image_host):
    """Two workers, an export that cannot be written: one warning (from the export run before forking), and
    both workers serve torch without trying again; started by `python _wsgi.py` or by gunicorn itself."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"RUNTIME": "auto", "DEVICE": "cpu", "MOBILESAM_CHECKPOINT": str(vit_t_checkpoint),
           "ONNX_CACHE_DIR": str(blocker / "cache"), "WORKERS": "2", "LABEL_STUDIO_URL": image_host.url,
           "LABEL_STUDIO_API_KEY": image_host.token}
    backend = BackendProcess(env, log_path=tmp_path / "server.log", gunicorn=gunicorn).wait_ready()
    try:
        url = image_host.add_image("/data/upload/1/runtime-fallback.png", scene(320, 240, seed=9))
        import requests

        response = requests.post(f"{backend.url}/predict", json=predict_body(url, [keypoint(50, 50)]), timeout=120)
    finally:
        backend.stop()
    log = (tmp_path / "server.log").read_text()
    assert response.status_code == 200, log
    assert log.count("RUNTIME=auto: serving mobile_sam.pt on torch") == 1, log
    assert "exporting" not in log, log  # the folder could not be made: nothing was attempted twice


def test_server_on_the_default_runtime_answers_like_sam_predictor(auto_predictor, vit_t_checkpoint, runtime_cache,
                                                                  tmp_path, image_host):
    """`python _wsgi.py` with RUNTIME=auto and the graphs cached: no export, ONNX Runtime, SamPredictor's mask."""
    env = {"RUNTIME": "auto", "DEVICE": "cpu", "MOBILESAM_CHECKPOINT": str(vit_t_checkpoint),
           "ONNX_CACHE_DIR": str(runtime_cache), "LABEL_STUDIO_URL": image_host.url,
           "LABEL_STUDIO_API_KEY": image_host.token}
    image = scene(320, 240, seed=12)
    url = image_host.add_image("/data/upload/1/runtime-server.png", image)
    backend = BackendProcess(env, log_path=tmp_path / "server.log").wait_ready()
    try:
        import requests

        response = requests.post(f"{backend.url}/predict", json=predict_body(url, [rectangle(20, 10, 50, 60)]),
                                 timeout=120)
    finally:
        backend.stop()
    log = (tmp_path / "server.log").read_text()
    assert response.status_code == 200, log
    assert "serving vit_t on ONNX Runtime" in log and "exporting" not in log, log
    expected, _ = reference_mask(vit_t_checkpoint, image, box=np.array([64.0, 24.0, 224.0, 168.0]))
    assert mask_iou(decode_brush_region(response.json()["results"][0]["result"][0]), expected) >= 0.999


def _environ(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **extra}


EVERYTHING_OFF = {"EVERYTHING_POINTS_PER_SIDE": "8", "EVERYTHING_PRED_IOU": "0", "EVERYTHING_STABILITY": "0"}


def test_everything_on_the_default_runtime_decodes_every_candidate_as_torch(auto_predictor, vit_t_predictor):
    """The grid decoder the ONNX-served predictor offers (the checkpoint's prompt encoder and mask decoder as one
    batched ONNX graph, fed the ONNX encoder's embedding) gives the torch runtime's three candidates per click,
    for a full batch and for a smaller one (the graph's batch axis is free)."""
    from sam_ls_backend.predictors.automatic import point_grid
    from sam_ls_backend.predictors.onnx_grid import OnnxGridDecoder

    image = scene(320, 240, seed=31)
    ours, theirs = auto_predictor.embed(image), vit_t_predictor.embed(image)
    points = point_grid(8) * np.array([320, 240])
    grid = auto_predictor.grid_decoder()
    assert isinstance(grid, OnnxGridDecoder)
    assert auto_predictor.grid_decoder() is grid  # loaded once
    for batch in (points, points[5:18]):
        low_res, scores = grid.decode_grid(ours, batch)
        expected_low_res, expected_scores = vit_t_predictor.decode_grid(theirs, batch)
        assert scores.shape == expected_scores.shape == (len(batch), 3)
        assert np.allclose(scores.numpy(), expected_scores.numpy(), atol=2e-3)
        masks = (grid.upscale(ours, low_res.flatten(0, 1)) > 0).numpy()
        expected = (vit_t_predictor.upscale(theirs, expected_low_res.flatten(0, 1)) > 0).numpy()
        assert masks.shape == (3 * len(batch), 240, 320)
        assert 0 < expected.sum() < expected.size  # not all empty, not all full
        assert min(mask_iou(a, b) for a, b in zip(masks, expected)) >= 0.999


def test_the_grid_graph_is_exported_once_beside_the_other_graphs_and_reused(auto_predictor, auto_settings,
                                                                           vit_t_checkpoint, caplog):
    """A second start opens the cached `<stem>.<fingerprint>.grid.onnx` without exporting it again."""
    from sam_ls_backend.predictors.onnx_grid import OnnxGridDecoder

    auto_predictor.grid_decoder()
    decoder, _ = cached_graphs(auto_settings, vit_t_checkpoint)
    graph = decoder.with_name(decoder.name.replace(".decoder.onnx", ".grid.onnx"))
    written = graph.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert isinstance(load_predictor(auto_settings).grid_decoder(), OnnxGridDecoder)
    assert not any("exporting" in record.getMessage() for record in caplog.records)
    assert graph.stat().st_mtime_ns == written
    assert sorted(path.name for path in graph.parent.iterdir()) == sorted(
        [decoder.name, decoder.name.replace(".decoder.", ".encoder."), graph.name])  # no temporary file left


def test_a_corrupt_grid_graph_is_exported_again(auto_predictor, auto_settings, vit_t_checkpoint, vit_t_predictor,
                                                tmp_path, caplog):
    """A truncated grid graph in the cache is reported, replaced by a new export, and the new one is served."""
    from sam_ls_backend.predictors.automatic import point_grid
    from sam_ls_backend.predictors.onnx_grid import OnnxGridDecoder

    auto_predictor.grid_decoder()
    decoder, encoder = cached_graphs(auto_settings, vit_t_checkpoint)
    graph = decoder.with_name(decoder.name.replace(".decoder.onnx", ".grid.onnx"))
    for path in (decoder, encoder):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / graph.name).write_bytes(graph.read_bytes()[:4096])
    settings = auto_settings.with_overrides(onnx_cache_dir=str(tmp_path))
    with caplog.at_level(logging.INFO):
        grid = load_predictor(settings).grid_decoder()
    messages = [record.getMessage() for record in caplog.records]
    assert isinstance(grid, OnnxGridDecoder)
    assert any(f"{graph.name} is not a readable ONNX graph" in message and "exporting it again" in message
               for message in messages)
    assert any(f"exported and checked {graph.name}" in message for message in messages)
    assert (tmp_path / graph.name).stat().st_size > 4096
    image = scene(320, 240, seed=33)
    points = point_grid(4) * np.array([320, 240])
    _, scores = grid.decode_grid(auto_predictor.embed(image), points)
    _, expected = vit_t_predictor.decode_grid(vit_t_predictor.embed(image), points)
    assert np.allclose(scores.numpy(), expected.numpy(), atol=2e-3)


def test_preannotate_everything_starts_on_the_default_runtime_and_finds_the_torch_runtimes_masks(
        auto_settings, vit_t_predictor, image_host):
    """PREANNOTATE=everything with RUNTIME=auto: the server starts (it used to refuse ONNX Runtime) and a task
    without regions gets the masks of automatic mask generation on the torch runtime (filters off)."""
    from sam_ls_backend.app import load_backend
    from sam_ls_backend.pipelines.everything import grid_options
    from sam_ls_backend.predictors.automatic import generate_masks
    from sam_ls_backend.server import create_app
    from sam_ls_backend.settings import Settings

    env = {"RUNTIME": "auto", "DEVICE": "cpu", "MOBILESAM_CHECKPOINT": str(auto_settings.mobilesam_checkpoint),
           "ONNX_CACHE_DIR": auto_settings.onnx_cache_dir, "PREANNOTATE": "everything",
           "LABEL_STUDIO_URL": image_host.url, "LABEL_STUDIO_API_KEY": image_host.token, **EVERYTHING_OFF}
    settings = Settings.from_env(env)
    backend = load_backend(settings)
    assert backend.predictor.runtime == "onnxruntime"
    image = scene(320, 240, seed=32)
    url = image_host.add_image("/data/upload/1/runtime-everything.png", image)
    response = create_app(settings, backend).test_client().post("/predict", json=predict_body(url, None, task_id=3))
    assert response.status_code == 200, response.json
    regions = response.json["results"][0]["result"]
    expected = generate_masks(vit_t_predictor, vit_t_predictor.embed(image), grid_options(settings))
    assert expected, "an empty set on both sides would prove nothing"
    assert len(regions) == len(expected)
    for region, found in zip(regions, expected):
        assert mask_iou(decode_brush_region(region), found.mask) >= 0.999
        assert region["score"] == pytest.approx(found.score, abs=2e-3)
