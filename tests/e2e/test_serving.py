"""The backend as users start it: `python _wsgi.py` (gunicorn), `gunicorn _wsgi:app`, `--check`, bad set-ups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.backend_process import ROOT, BackendProcess, free_port
from tests.support.ls_bodies import keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region, reference_mask
from tests.support.scenes import scene


@pytest.fixture(scope="module")
def server(vit_t_checkpoint, image_host, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "backend.log"
    env = {"MOBILESAM_CHECKPOINT": str(vit_t_checkpoint), "LABEL_STUDIO_URL": image_host.url,
           "LABEL_STUDIO_API_KEY": image_host.token, "THREADS": "8", "LOG_LEVEL": "INFO"}
    backend = BackendProcess(env, log_path=log).wait_ready()
    yield backend
    backend.stop()


def test_four_annotators_on_four_images_each_get_their_own_mask(server, image_host, vit_t_checkpoint):
    """8 threads (two per image) hit a gthread server at once; every mask belongs to its own image."""
    images = {f"/data/upload/1/annotator-{i}.png": scene(240 + 40 * i, 180 + 20 * i, seed=100 + i) for i in range(4)}
    for path, image in images.items():
        image_host.add_image(path, image)
    prompts = [([keypoint(30, 40), keypoint(70, 60, False)], [[0.3, 0.4], [0.7, 0.6]], [1, 0], None),
               ([rectangle(20, 20, 50, 50)], None, None, [0.2, 0.2, 0.7, 0.7])]
    jobs = [(path, prompt) for path in images for prompt in prompts]
    barrier = threading.Barrier(len(jobs))
    answers: dict[int, dict] = {}

    def click(index: int, path: str, regions: list[dict]) -> None:
        barrier.wait()
        answers[index] = requests.post(f"{server.url}/predict", json=predict_body(path, regions), timeout=120).json()

    threads = [threading.Thread(target=click, args=(i, path, prompt[0])) for i, (path, prompt) in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, (path, (_, points, labels, box)) in enumerate(jobs):
        image = images[path]
        height, width = image.shape[:2]
        scale = np.array([width, height])
        expected, _ = reference_mask(vit_t_checkpoint, image,
                                     None if points is None else np.array(points) * scale,
                                     None if labels is None else np.array(labels),
                                     None if box is None else np.array(box) * np.tile(scale, 2))
        (region,) = answers[index]["results"][0]["result"]
        np.testing.assert_array_equal(decode_brush_region(region), expected, err_msg=f"job {index} on {path}")


def test_server_logs_one_line_per_request_without_secrets(server, image_host):
    path = image_host.add_image("/data/upload/1/logged.png", scene(100, 80, seed=5))
    requests.post(f"{server.url}/predict", json=predict_body(path, [keypoint(50, 50)]), timeout=60)
    log = server.log_tail()
    assert "POST /predict status=200" in log and "points=1" in log
    assert image_host.token not in log
    assert '"rle"' not in log


def test_gunicorn_serves_the_wsgi_app_and_stops_gracefully(vit_t_checkpoint, tmp_path):
    backend = BackendProcess({"MOBILESAM_CHECKPOINT": str(vit_t_checkpoint)}, log_path=tmp_path / "gunicorn.log",
                             gunicorn=True).wait_ready()
    try:
        assert requests.get(f"{backend.url}/health", timeout=5).json()["status"] == "UP"
    finally:
        code = backend.stop()
    assert code == 0, backend.log_tail()


def test_check_loads_the_model_and_exits(vit_t_checkpoint):
    done = run_wsgi("--check", env={"MOBILESAM_CHECKPOINT": str(vit_t_checkpoint)})
    assert done.returncode == 0, done.stderr
    assert "ok: MobileSAM (vit_t) runs on torch (RUNTIME=torch), loads from" in done.stdout


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere" / "mobile_sam.pt"
    done = run_wsgi("--port", str(free_port()), env={"MOBILESAM_CHECKPOINT": str(missing)})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [f"error: checkpoint not found: {missing}. Run ./download_models.sh mobile_sam "
                     f"or set MOBILESAM_CHECKPOINT to the checkpoint's path"]


@pytest.mark.parametrize("args, env, message", [
    (("--kwargs", "SAM_CHOICE=Nope"), {}, "SAM_CHOICE must be one of"),
    (("--kwargs", "NO_SUCH_SETTING=1"), {}, "unknown setting(s): NO_SUCH_SETTING"),
    (("--kwargs", "oops"), {}, "--kwargs takes KEY=VALUE"),
    ((), {"DEVICE": "tpu"}, "DEVICE must be auto, cpu, cuda or cuda:N"),
    ((), {"EMBEDDING_PRECISION": "bfloat16"}, "EMBEDDING_PRECISION must be mixed, float32 or float16"),
    ((), {"PORT": "ninety"}, "PORT must be a int"),
    ((), {"BASIC_AUTH_USER": "only-user"}, "set both BASIC_AUTH_USER and BASIC_AUTH_PASS"),
    (("--kwargs", "SAM_CHOICE=ONNX", "ONNX_DECODER=nowhere.onnx"), {}, "ONNX_DECODER not found"),
])
def test_bad_configuration_stops_with_a_message(args, env, message):
    done = run_wsgi("--check", *args, env=env)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_checkpoint_of_another_model_is_refused(tmp_path):
    not_sam = tmp_path / "other.pt"
    import torch
    torch.save({"backbone.weight": torch.zeros(1)}, not_sam)
    done = run_wsgi("--check", env={"MOBILESAM_CHECKPOINT": str(not_sam)})
    assert done.returncode == 2 and "does not hold SAM weights" in done.stderr


def run_wsgi(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("SAM_CHOICE", "MOBILESAM_CHECKPOINT", "DEVICE")}
    return subprocess.run([sys.executable, str(ROOT / "_wsgi.py"), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=180)


def test_a_killed_worker_is_replaced_and_serving_goes_on(vit_t_checkpoint, image_host, tmp_path):
    """gunicorn replaces a worker that dies (here: SIGKILL); the other worker and the service carry on."""
    env = {"MOBILESAM_CHECKPOINT": str(vit_t_checkpoint), "LABEL_STUDIO_URL": image_host.url,
           "LABEL_STUDIO_API_KEY": image_host.token, "WORKERS": "2", "WARM_MAX_TASKS": "0"}
    backend = BackendProcess(env, log_path=tmp_path / "workers.log").wait_ready()
    try:
        before = wait_for_workers(backend.process.pid, 2)
        victim, survivor = sorted(before)
        os.kill(victim, signal.SIGKILL)
        after = wait_for_workers(backend.process.pid, 2, without=victim)
        assert survivor in after and victim not in after
        path = image_host.add_image("/data/upload/1/after-kill.png", scene(120, 90, seed=71))
        for _ in range(4):
            response = requests.post(f"{backend.url}/predict", json=predict_body(path, [keypoint(50, 50)]),
                                     timeout=120)
            assert response.status_code == 200 and response.json()["results"][0]["result"]
    finally:
        assert backend.stop() == 0, backend.log_tail()


def wait_for_workers(master: int, count: int, without: int | None = None, timeout: float = 120) -> set[int]:
    """The master's worker pids, once there are `count` of them (none of them `without`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = set()
        for task in Path(f"/proc/{master}/task").iterdir():
            children |= {int(pid) for pid in (task / "children").read_text().split()}
        if len(children) == count and without not in children:
            return children
        time.sleep(0.2)
    raise TimeoutError(f"gunicorn did not reach {count} workers")
