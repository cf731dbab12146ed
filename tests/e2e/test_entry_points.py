"""The README's ways of starting the server, run for real: `label-studio-ml start .` and `gunicorn _wsgi:app`.

Every test here starts processes (an end-to-end test: this file belongs in tests/e2e/), binds loopback only,
and stops what it started: a graceful stop first, then a kill of the whole process group if anything is left.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support.backend_process import ROOT, free_port
from tests.support.label_studio import log_tail, wait_until_up
from tests.support.launcher import LaunchedBackend, children, group_members, runs_wsgi, server_bin
from tests.support.ls_bodies import keypoint, predict_body
from tests.support.reference import decode_brush_region, reference_mask
from tests.support.scenes import scene

AUTH = ("launcher-user", "launcher-pass")
MODEL_VERSION = "started-by-label-studio-ml"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0  # gunicorn's graceful_timeout is 30 s
# Settings of ours and of gunicorn that an inherited environment could set behind a test's back.
INHERITED = ("HOST", "PORT", "WORKERS", "THREADS", "LOG_LEVEL", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
             "MODEL_VERSION", "SAM_CHOICE", "REDIS_URL", "GUNICORN_CMD_ARGS")


def clean_environ() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in INHERITED}


def data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_label_studio_ml_start_serves_clicks_and_stops_cleanly(vit_t_checkpoint: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`label-studio-ml start . <flags>` (1.0.9, from its own venv) runs our `_wsgi.py` with the flags as typed."""
    for name in INHERITED:
        monkeypatch.delenv(name, raising=False)
    flags = ["--host", "127.0.0.1", "--port", "{port}", "--log-level", "DEBUG",
             "--basic-auth-user", AUTH[0], "--basic-auth-pass", AUTH[1],
             "--kwargs", "DEVICE=cpu", f"MODEL_VERSION={MODEL_VERSION}"]  # fmt: skip
    env = {"MOBILESAM_CHECKPOINT": str(vit_t_checkpoint), "LABEL_STUDIO_URL": "http://127.0.0.1:9"}
    image = scene(320, 240, seed=5)
    body = predict_body(data_url(image), [keypoint(40, 55, width=320, height=240)])
    launched = LaunchedBackend(flags, env, tmp_path / "launcher.log")
    with launched:
        tree = launched.server_processes()
        health = requests.get(f"{launched.url}/health", timeout=10)
        refused = requests.post(f"{launched.url}/predict", json=body, timeout=30)
        answer = requests.post(f"{launched.url}/predict", json=body, auth=AUTH, timeout=120)
        code = launched.stop()
        left = launched.left_in_group()
    log = log_tail(launched.log_path, 200)

    # What the launcher ran: `python ././_wsgi.py` and our flags, unchanged (the server's python: it has torch).
    wsgi = [argv for _, argv in tree if runs_wsgi(argv)]
    assert wsgi, f"no python _wsgi.py under the launcher: {tree}"
    assert wsgi[0] == ["python", "././_wsgi.py", *launched.arguments], tree
    assert len(wsgi) == 2, f"gunicorn's master and one worker expected: {tree}"
    # The flags took effect: the port and host (it answers on loopback), --kwargs, basic auth.
    assert health.status_code == 200, log
    assert health.json()["model_version"] == MODEL_VERSION
    assert refused.status_code == 401
    assert answer.status_code == 200, answer.text[:1000]
    (region,) = answer.json()["results"][0]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Foreground"]
    expected, _ = reference_mask(vit_t_checkpoint, image, np.array([[0.40 * 320, 0.55 * 240]]), np.array([1]))
    assert expected.any() and not expected.all(), "a degenerate reference mask would prove nothing"
    assert np.array_equal(decode_brush_region(region), expected)
    # The graceful stop unwinds the chain: the launcher returns by itself, and nothing of its group is left.
    assert code == 0, log
    assert left == [], f"processes left in the launcher's group: {left}"
    assert "Shutting down: Master" in log


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp{,6} writes them) of sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_gunicorn_without_c_reads_the_conf_file(vit_t_checkpoint: Path, tmp_path: Path) -> None:
    """`gunicorn _wsgi:app` in the repository root loads ./gunicorn.conf.py: bind, workers, threads from Settings.

    Without the conf file gunicorn would still serve on $PORT, but on 0.0.0.0, with the sync worker, one
    worker and one thread: the address, the worker count and gunicorn's own configuration dump tell them apart.
    """
    port = free_port()
    env = {**clean_environ(), "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": "2", "THREADS": "3",
           "LOG_LEVEL": "DEBUG", "MOBILESAM_CHECKPOINT": str(vit_t_checkpoint),
           "LABEL_STUDIO_URL": "http://127.0.0.1:9"}
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(server_bin() / "gunicorn"), "_wsgi:app"], cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process, log_path, START_TIMEOUT_S)
        addresses = listening_addresses(port)
        workers = children(process.pid)
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_TIMEOUT_S)
        left = group_members(process.pid)
    finally:
        if process.poll() is None or group_members(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    log = log_path.read_text(errors="replace")

    assert addresses == {"0100007F"}, f"listening on {addresses}, not 127.0.0.1 only\n{log[-3000:]}"
    assert len(workers) == 2, f"workers {workers}\n{log[-3000:]}"
    assert health.status_code == 200 and health.json()["status"] == "UP"
    for setting in (f"bind: ['127.0.0.1:{port}']", "workers: 2", "threads: 3", "worker_class: gthread",
                    "timeout: 120", "graceful_timeout: 30", "preload_app: False", "loglevel: debug"):
        assert f"\n  {setting}\n" in log, f"gunicorn's configuration lacks {setting!r}\n{log[:6000]}"
    assert "Using worker: gthread" in log
    assert code == 0, log[-3000:]
    assert left == [], f"processes left in gunicorn's group: {left}"
