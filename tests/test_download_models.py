"""download_models.sh against a loopback HTTP server: checksums, idempotence, offline failure, no half files.

Each test copies the script into a temporary project folder together with a checksum list written for the
test's small fake checkpoint. That is the script's real design (the expected SHA-256 values live in
`download_models.sha256` beside it), so no test-only switch exists in the script itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "download_models.sh"
MANIFEST = ROOT / "download_models.sha256"

OFFICIAL_FILES = {"mobile_sam.pt", "sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth"}
FAKE_CHECKPOINT = b"not a real checkpoint, just bytes to hash\n" * 1000

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("curl") is None,
                                reason="download_models.sh needs bash and curl")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointServer:
    """Serves a folder on 127.0.0.1 (port chosen by the OS) and records every path requested."""

    def __init__(self, folder: Path, slow_path: str | None = None):
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                if self.path == slow_path:
                    # Announce a big file, send a little, then stall: a download someone interrupts.
                    self.send_response(200)
                    self.send_header("Content-Length", str(50_000_000))
                    self.end_headers()
                    self.wfile.write(b"x" * 65536)
                    self.wfile.flush()
                    time.sleep(20)
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    """A loopback server whose folder holds the fake checkpoint under every official name."""
    folder = tmp_path / "served"
    folder.mkdir()
    for name in OFFICIAL_FILES:
        (folder / name).write_bytes(FAKE_CHECKPOINT)
    server = CheckpointServer(folder, slow_path="/slow/mobile_sam.pt")
    yield server
    server.close()


@pytest.fixture
def project(tmp_path):
    """A copy of the script in a fresh folder; `write_manifest` sets what the copy expects."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy2(SCRIPT, folder / SCRIPT.name)
    (folder / MANIFEST.name).write_text(
        "\n".join(f"{sha256(FAKE_CHECKPOINT)}  {name}" for name in sorted(OFFICIAL_FILES)) + "\n")
    return folder


def write_manifest(project: Path, digest: str, name: str = "mobile_sam.pt") -> None:
    (project / MANIFEST.name).write_text(f"# test list\n{digest}  {name}\n")


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script_env(**values: str) -> dict[str, str]:
    """The current environment without anything that would redirect the script, plus `values`."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("MODEL_DIR", "MOBILESAM_DOWNLOAD_URL", "SAM_DOWNLOAD_BASE_URL")
           and not key.lower().endswith("_proxy")}
    env.update(values)
    return env


def run(project: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(project / SCRIPT.name), *args], env=script_env(**env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_the_script_is_executable_and_the_checksum_list_covers_every_official_checkpoint():
    assert os.access(SCRIPT, os.X_OK)
    entries = {}
    for line in MANIFEST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            entries[name] = digest
    assert set(entries) == OFFICIAL_FILES
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in entries.values())
    assert len(set(entries.values())) == len(entries)


def test_downloads_verifies_and_moves_into_place(project, served):
    result = run(project, MOBILESAM_DOWNLOAD_URL=f"{served.url}/mobile_sam.pt")

    assert result.returncode == 0, result.stderr
    assert (project / "models" / "mobile_sam.pt").read_bytes() == FAKE_CHECKPOINT
    assert leftovers(project / "models") == ["mobile_sam.pt"]
    assert "saved and verified" in result.stdout
    assert served.requests == ["/mobile_sam.pt"]


def test_sam_checkpoints_come_from_the_base_url_into_model_dir(project, served, tmp_path):
    models = tmp_path / "elsewhere"
    result = run(project, "vit_b", "vit_l", SAM_DOWNLOAD_BASE_URL=served.url + "/", MODEL_DIR=str(models))

    assert result.returncode == 0, result.stderr
    assert leftovers(models) == ["sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth"]
    assert served.requests == ["/sam_vit_b_01ec64.pth", "/sam_vit_l_0b3195.pth"]
    assert not (project / "models").exists()


def test_checksum_mismatch_fails_clearly_and_leaves_no_file(project, served):
    expected = sha256(b"the official bytes")
    write_manifest(project, expected)

    result = run(project, MOBILESAM_DOWNLOAD_URL=f"{served.url}/mobile_sam.pt")

    assert result.returncode != 0
    error = result.stderr.strip()
    assert error.startswith("error: mobile_sam.pt")
    assert f"has SHA-256 {sha256(FAKE_CHECKPOINT)}, expected {expected}" in error
    assert leftovers(project / "models") == []


def test_offline_fails_fast_with_one_line_naming_the_file_and_the_way_out(project):
    url = f"http://127.0.0.1:{closed_port()}/mobile_sam.pt"
    started = time.monotonic()

    result = run(project, MOBILESAM_DOWNLOAD_URL=url)

    assert time.monotonic() - started < 10
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: could not download mobile_sam.pt from {url} (offline?")
    assert f"Put the checkpoint at {project / 'models' / 'mobile_sam.pt'} yourself" in lines[0]
    assert "set MOBILESAM_CHECKPOINT to its path" in lines[0]
    assert leftovers(project / "models") == []


def test_offline_sam_points_to_sam_checkpoint(project):
    result = run(project, "vit_h", SAM_DOWNLOAD_BASE_URL=f"http://127.0.0.1:{closed_port()}")

    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "could not download sam_vit_h_4b8939.pth" in result.stderr
    assert "set SAM_CHECKPOINT to its path" in result.stderr


def test_http_error_is_reported_without_leaving_a_file(project, served):
    result = run(project, MOBILESAM_DOWNLOAD_URL=f"{served.url}/no/such/file.pt")

    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "could not download mobile_sam.pt" in result.stderr and "404" in result.stderr
    assert leftovers(project / "models") == []


def test_a_verified_file_is_kept_without_downloading(project, served):
    models = project / "models"
    models.mkdir()
    (models / "mobile_sam.pt").write_bytes(FAKE_CHECKPOINT)
    before = (models / "mobile_sam.pt").stat().st_mtime_ns

    result = run(project, MOBILESAM_DOWNLOAD_URL=f"{served.url}/mobile_sam.pt")

    assert result.returncode == 0, result.stderr
    assert "already present and verified" in result.stdout
    assert served.requests == []
    assert (models / "mobile_sam.pt").stat().st_mtime_ns == before


def test_a_verified_file_is_kept_even_offline(project):
    models = project / "models"
    models.mkdir()
    (models / "mobile_sam.pt").write_bytes(FAKE_CHECKPOINT)

    result = run(project, MOBILESAM_DOWNLOAD_URL=f"http://127.0.0.1:{closed_port()}/mobile_sam.pt")

    assert result.returncode == 0, result.stderr


def test_a_wrong_file_is_reported_and_replaced(project, served):
    models = project / "models"
    models.mkdir()
    (models / "mobile_sam.pt").write_bytes(b"a truncated or foreign file")

    result = run(project, MOBILESAM_DOWNLOAD_URL=f"{served.url}/mobile_sam.pt")

    assert result.returncode == 0, result.stderr
    assert f"has SHA-256 {sha256(b'a truncated or foreign file')}" in result.stderr
    assert (models / "mobile_sam.pt").read_bytes() == FAKE_CHECKPOINT
    assert leftovers(models) == ["mobile_sam.pt"]


def test_a_wrong_file_stays_when_the_replacement_cannot_be_had(project):
    models = project / "models"
    models.mkdir()
    (models / "mobile_sam.pt").write_bytes(b"a user's own file")

    result = run(project, MOBILESAM_DOWNLOAD_URL=f"http://127.0.0.1:{closed_port()}/mobile_sam.pt")

    assert result.returncode != 0
    assert (models / "mobile_sam.pt").read_bytes() == b"a user's own file"
    assert leftovers(models) == ["mobile_sam.pt"]


def test_an_interrupted_download_leaves_no_partial_file(project, served):
    models = project / "models"
    process = subprocess.Popen(["bash", str(project / SCRIPT.name)], start_new_session=True,
                               env=script_env(MOBILESAM_DOWNLOAD_URL=f"{served.url}/slow/mobile_sam.pt"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not any(".part." in name and (models / name).stat().st_size > 0 for name in leftovers(models)):
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
        assert process.wait(timeout=10) != 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert leftovers(models) == []


def test_usage(project):
    help_text = run(project, "--help")
    assert help_text.returncode == 0
    for word in ("mobile_sam", "vit_b", "vit_l", "vit_h", "all", "MODEL_DIR", "MOBILESAM_DOWNLOAD_URL",
                 "SAM_DOWNLOAD_BASE_URL"):
        assert word in help_text.stdout

    wrong = run(project, "vit_x")
    assert wrong.returncode == 2
    assert "unknown model 'vit_x'" in wrong.stderr
