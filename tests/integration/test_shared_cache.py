"""Embeddings shared through a real Redis: one encoder run per image across replicas."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from sam_ls_backend.embeddings.shared import SharedEmbeddings
from sam_ls_backend.predictors.base import Embedding
from tests.support.backend_process import BackendProcess, free_port
from tests.support.ls_bodies import keypoint, predict_body
from tests.support.redis_server import RedisServer
from tests.support.reference import decode_brush_region
from tests.support.scenes import scene


@pytest.fixture(scope="module")
def redis_url():
    server = RedisServer()
    yield server.url
    server.stop()


def test_embedding_round_trip_is_float16_with_its_sizes(redis_url):
    store = SharedEmbeddings(redis_url, "roundtrip", ttl_seconds=60)
    features = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    store.put("abc", Embedding(features=features, input_size=(768, 1024), original_size=(3000, 4000)))
    back = store.get("abc")
    assert back.features.dtype == np.float16 and back.features.flags.writeable
    np.testing.assert_allclose(back.features, features, rtol=1e-3, atol=1e-3)
    assert (back.input_size, back.original_size) == ((768, 1024), (3000, 4000))
    assert store.get("other") is None
    assert SharedEmbeddings(redis_url, "another-model", ttl_seconds=60).get("abc") is None


def test_a_feature_pyramid_round_trips_in_order(redis_url):
    """SAM 2 and SAM 3 embeddings are several maps, finest first; they come back as they went in."""
    store = SharedEmbeddings(redis_url, "pyramid", ttl_seconds=60)
    rng = np.random.default_rng(1)
    maps = tuple(rng.standard_normal(shape).astype(np.float32)
                 for shape in ((1, 32, 64, 64), (1, 64, 32, 32), (1, 256, 16, 16)))
    store.put("abc", Embedding(features=maps, input_size=(256, 256), original_size=(60, 90)))
    back = store.get("abc")
    assert isinstance(back.features, tuple) and [a.shape for a in back.features] == [a.shape for a in maps]
    for got, sent in zip(back.features, maps):
        np.testing.assert_allclose(got, sent, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("header", [
    b'{"input_size": [1, 1], "original_size": [1, 1], "shapes": [[1, 2, 2, 2], [1, 1, 1, 1]], "several": false}',
    b'{"input_size": [1, 1], "original_size": [1, 1], "shapes": [[1, 2, 2, -2]], "several": true}',
    b'{"input_size": [1, 1], "original_size": [1, 1], "shapes": [[1, 99999, 99999, 99]], "several": true}',
])
def test_a_malformed_pyramid_is_ignored(redis_url, header):
    import redis

    store = SharedEmbeddings(redis_url, "malformed", ttl_seconds=60)
    redis.Redis.from_url(redis_url).set("sam-ls-backend:malformed:embedding:bad", header + b"\n" + b"\0" * 18)
    assert store.get("bad") is None


def test_url_to_image_digest_is_shared(redis_url):
    writer = SharedEmbeddings(redis_url, "urls", ttl_seconds=60)
    writer.remember_image("/data/upload/1/a.png", "d1g3st")
    assert SharedEmbeddings(redis_url, "urls", ttl_seconds=60).image_digest("/data/upload/1/a.png") == "d1g3st"


@pytest.mark.parametrize("garbage", [b"", b"no header", b'{"input_size": [1, 1]}\n', b'{"input_size": [0, 1], '
                                     b'"original_size": [1, 1]}\n' + bytes(2 * 256 * 64 * 64), b"[1]\n"])
def test_malformed_shared_entries_are_ignored(redis_url, garbage):
    import redis

    store = SharedEmbeddings(redis_url, "garbage", ttl_seconds=60)
    redis.Redis.from_url(redis_url).set("sam-ls-backend:garbage:embedding:bad", garbage)
    assert store.get("bad") is None


def test_redis_down_never_fails_a_click(make_client, image_host, encoder_calls):
    client, backend = make_client(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    url = image_host.add_image("/data/upload/1/no-redis.png", scene(120, 90, seed=51))
    for _ in range(2):
        response = client.post("/predict", json=predict_body(url, [keypoint(50, 50)]))
        assert response.status_code == 200 and len(response.json["results"][0]["result"]) == 1
    assert len(encoder_calls) == 1


def test_replica_b_reuses_the_embedding_replica_a_computed(redis_url, vit_t_checkpoint, image_host, tmp_path):
    env = {"MOBILESAM_CHECKPOINT": str(vit_t_checkpoint), "LABEL_STUDIO_URL": image_host.url,
           "LABEL_STUDIO_API_KEY": image_host.token, "REDIS_URL": redis_url, "WARM_MAX_TASKS": "0"}
    replica_a = BackendProcess(env, log_path=tmp_path / "a.log")
    replica_b = BackendProcess(env, log_path=tmp_path / "b.log")
    try:
        replica_a.wait_ready()
        replica_b.wait_ready()
        url = image_host.add_image("/data/upload/1/shared.png", scene(320, 240, seed=52))
        body = predict_body(url, [keypoint(40, 40), keypoint(70, 70, False)])
        first = requests.post(f"{replica_a.url}/predict", json=body, timeout=120).json()
        downloads = len(image_host.requests)
        second = requests.post(f"{replica_b.url}/predict", json=body, timeout=120).json()
        metrics_b = requests.get(f"{replica_b.url}/metrics", timeout=10).text
        metrics_a = requests.get(f"{replica_a.url}/metrics", timeout=10).text
    finally:
        replica_a.stop()
        replica_b.stop()
    assert 'sam_embedding_lookups_total{source="encoder"} 1.0' in metrics_a
    assert 'sam_embedding_lookups_total{source="shared"} 1.0' in metrics_b
    assert 'sam_embedding_lookups_total{source="encoder"} 0.0' in metrics_b
    assert len(image_host.requests) == downloads, "replica B knew the image from A: no download"
    mask_a = decode_brush_region(first["results"][0]["result"][0])
    mask_b = decode_brush_region(second["results"][0]["result"][0])
    assert np.logical_and(mask_a, mask_b).sum() / np.logical_or(mask_a, mask_b).sum() >= 0.999


def test_replicas_on_another_runtime_or_checkpoint_do_not_share_embeddings(vit_t_predictor, redis_url, tmp_path):
    """ONNX Runtime's embeddings differ from torch's in their last bits: a torch replica never serves them."""
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.settings import Settings

    class OnOnnxRuntime:  # the namespace reads only the predictor's runtime and model type
        runtime = "onnxruntime"
        model_type = vit_t_predictor.model_type

    settings = Settings.from_env({}, REDIS_URL=redis_url, MOBILESAM_CHECKPOINT=str(tmp_path / "mobile_sam.pt"))
    (tmp_path / "mobile_sam.pt").write_bytes(b"weights")
    torch_side = SamBackend(settings, vit_t_predictor).embeddings.shared
    onnx_side = SamBackend(settings, OnOnnxRuntime()).embeddings.shared  # type: ignore[arg-type]
    again = SamBackend(settings, vit_t_predictor).embeddings.shared
    assert torch_side.namespace == again.namespace != onnx_side.namespace
    (tmp_path / "mobile_sam.pt").write_bytes(b"other weights")
    assert SamBackend(settings, vit_t_predictor).embeddings.shared.namespace != torch_side.namespace
