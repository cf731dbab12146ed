"""download_models.sh against a loopback HTTP server: checksums, idempotence, offline failure, no half files.

Each test copies the script into a temporary project folder together with a checksum list written for the
test's small fake checkpoint. That is the script's real design (the expected SHA-256 values live in
`download_models.sha256` beside it), so no test-only switch exists in the script itself.

The Hugging Face model folders (sam2, sam3) come from a loopback stand-in for the hub that HF_ENDPOINT points
at, serving small fake repositories laid out like facebook/sam2.1-hiera-* and facebook/sam3.
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
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support.fake_server import reply

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "download_models.sh"
MANIFEST = ROOT / "download_models.sha256"

OFFICIAL_FILES = {"mobile_sam.pt", "sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth"}
FAKE_CHECKPOINT = b"not a real checkpoint, just bytes to hash\n" * 1000

# The fake hub repositories: the file names are the ones download_models.sh fetches; the contents are small.
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_loopbackTestToken0123456789"
SAM2_FILES = {
    "config.json": b'{"model_type": "sam2"}\n',
    "processor_config.json": b'{"processor_class": "Sam2VideoProcessor"}\n',
    "preprocessor_config.json": b'{"image_processor_type": "Sam2ImageProcessorFast"}\n',
    "video_preprocessor_config.json": b'{"video_processor_type": "Sam2VideoVideoProcessor"}\n',
    "model.safetensors": b"fake SAM 2.1 weights\n" * 4000,
}
SAM3_FILES = {
    "config.json": b'{"model_type": "sam3_video"}\n',
    "processor_config.json": b'{"image_processor": {"image_processor_type": "Sam3ImageProcessorFast"}}\n',
    "tokenizer_config.json": b'{"tokenizer_class": "CLIPTokenizer"}\n',
    "tokenizer.json": b'{"model": {"type": "BPE"}}\n',
    "special_tokens_map.json": b'{"eos_token": "<|endoftext|>"}\n',
    "vocab.json": b'{"a</w>": 0}\n',
    "merges.txt": b"#version: 0.2\n",
    "model.safetensors": b"fake SAM 3 weights\n" * 4000,
}
SAM2_REPOS = {f"facebook/sam2.1-hiera-{size}": SAM2_FILES for size in ("tiny", "small", "base-plus", "large")}
HUB_REPOS = {**SAM2_REPOS, "facebook/sam3": SAM3_FILES}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("curl") is None,
                                reason="download_models.sh needs bash and curl")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, str]:
    """Serve `handler` on 127.0.0.1 (a port the OS picks) in a daemon thread; the server and its URL via `host`."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://{host}:{httpd.server_address[1]}"


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

        self.httpd, self.url = serve(Handler)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class HubRequest(NamedTuple):
    path: str
    authorization: str | None


class HubServer:
    """A loopback stand-in for the Hugging Face hub: GET /<org>/<name>/resolve/<revision>/<file>.

    Acts like the real hub where download_models.sh depends on it: every answer names the commit
    (X-Repo-Commit); weight files name their SHA-256 (X-Linked-Etag) and, with `storage` set, redirect there
    as the hub redirects to its CDN; a repository in `gated` answers 401 without a token, and `refusal`
    (401 for a token the hub does not know, 403 for one without access) with another than `token`. Any
    revision serves the same files; tests read the revisions asked for in `requests`. `broken` makes one
    file misbehave: "truncate" closes the connection early, "stall" stops after a first chunk, as a
    download someone interrupts.
    """

    def __init__(self, repos: dict[str, dict[str, bytes]], host: str = "127.0.0.1"):
        self.repos = repos
        self.requests: list[HubRequest] = []
        self.gated: set[str] = set()
        self.token = TOKEN
        self.refusal = 403
        self.storage: HubServer | None = None
        self.blobs: dict[str, bytes] = {}
        self.broken: dict[str, str] = {}
        self.linked_etag: str | None = None  # overrides the true SHA-256 of weight files
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.requests.append(HubRequest(self.path, self.headers.get("Authorization")))
                if self.path.startswith("/blobs/"):
                    data = hub.blobs.get(self.path.removeprefix("/blobs/"))
                    return self.answer(200, data) if data is not None else self.answer(404)
                match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/([^/]+)", self.path)
                if not match or match[1] not in hub.repos:
                    return self.answer(404)
                repo, file = match[1], match[3]
                if repo in hub.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self.answer(hub.refusal if self.headers.get("Authorization") else 401)
                data = hub.repos[repo].get(file)
                if data is None:
                    return self.answer(404, headers={"X-Repo-Commit": COMMIT})
                headers = {"X-Repo-Commit": COMMIT}
                if file.endswith(".safetensors"):
                    headers["X-Linked-Etag"] = f'"{hub.linked_etag or sha256(data)}"'
                    headers["X-Linked-Size"] = str(len(data))
                    if hub.storage:
                        hub.storage.blobs[sha256(data)] = data
                        headers["Location"] = f"{hub.storage.url}/blobs/{sha256(data)}"
                        return self.answer(302, headers=headers)
                if hub.broken.get(file) == "truncate":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data) + 1000))
                    self.end_headers()
                    self.wfile.write(data)
                    self.close_connection = True
                    return None
                if hub.broken.get(file) == "stall":
                    self.send_response(200)
                    self.send_header("Content-Length", str(50_000_000))
                    self.end_headers()
                    self.wfile.write(data[:65536])
                    self.wfile.flush()
                    time.sleep(20)
                    return None
                return self.answer(200, data, headers)

            def answer(self, status, data=b"", headers=None):
                reply(self, status, data, headers)

            def log_message(self, *args):
                pass

        self.httpd, self.url = serve(Handler, host)

    def revisions(self) -> list[str]:
        return [request.path.split("/")[4] for request in self.requests]

    def files(self) -> list[str]:
        return [request.path.rsplit("/", 1)[1] for request in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub():
    server = HubServer(HUB_REPOS)
    yield server
    server.close()


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
           if key not in ("MODEL_DIR", "MOBILESAM_DOWNLOAD_URL", "SAM_DOWNLOAD_BASE_URL", "HF_ENDPOINT", "HF_REVISION",
                          "HF_TOKEN")
           and not key.lower().endswith("_proxy")}
    env.update(values)
    return env


def start_interruptible(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`command` in a process group of its own, as a script a user runs on a terminal: SIGINT and SIGTERM at
    their defaults. (A test run started in the background without job control inherits SIGINT ignored, and
    bash cannot trap a signal that was ignored when it started, so Ctrl-C would never reach the script.)"""
    def default_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return subprocess.Popen(command, start_new_session=True, env=env, preexec_fn=default_signals,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


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
    process = start_interruptible(["bash", str(project / SCRIPT.name)],
                                  script_env(MOBILESAM_DOWNLOAD_URL=f"{served.url}/slow/mobile_sam.pt"))
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
                 "SAM_DOWNLOAD_BASE_URL", "sam2", "sam2-small", "sam2-base-plus", "sam2-large", "sam3",
                 "facebook/sam2.1-hiera-tiny", "facebook/sam3", "HF_TOKEN", "HF_ENDPOINT", "HF_REVISION",
                 "https://huggingface.co/facebook/sam3"):
        assert word in help_text.stdout

    wrong = run(project, "vit_x")
    assert wrong.returncode == 2
    assert "unknown model 'vit_x'" in wrong.stderr


# --- Hugging Face model folders (sam2, sam3) from the loopback hub. ---

def hub_run(project: Path, hub: HubServer, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run(project, *args, HF_ENDPOINT=hub.url, **env)


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_sam2_folder_arrives_with_every_file(project, hub):
    result = hub_run(project, hub, "sam2")

    assert result.returncode == 0, result.stderr
    models = project / "models"
    assert leftovers(models) == ["sam2.1-hiera-tiny"]
    assert folder_contents(models / "sam2.1-hiera-tiny") == SAM2_FILES
    assert "sam2.1-hiera-tiny: saved with every file" in result.stdout
    # small files first, the weights last, so that a refusal comes before the big download
    assert hub.files()[-1] == "model.safetensors" and sorted(hub.files()) == sorted(SAM2_FILES)
    assert all(request.path.startswith("/facebook/sam2.1-hiera-tiny/resolve/") for request in hub.requests)
    assert all(request.authorization is None for request in hub.requests)
    mode = (models / "sam2.1-hiera-tiny").stat().st_mode
    assert mode & 0o755 == 0o755, oct(mode)  # readable by a server running as another user


def test_a_complete_folder_is_kept_and_nothing_downloaded(project, hub):
    assert hub_run(project, hub, "sam2").returncode == 0
    folder = project / "models" / "sam2.1-hiera-tiny"
    before = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    asked = len(hub.requests)

    again = hub_run(project, hub, "sam2")

    assert again.returncode == 0, again.stderr
    assert "sam2.1-hiera-tiny: already present with every file" in again.stdout
    assert len(hub.requests) == asked
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == before


def test_each_sam2_size_has_its_folder(project, hub):
    result = hub_run(project, hub, "sam2-small", "sam2-base-plus", "sam2-large")

    assert result.returncode == 0, result.stderr
    assert leftovers(project / "models") == ["sam2.1-hiera-base-plus", "sam2.1-hiera-large", "sam2.1-hiera-small"]
    assert "SAM2_MODEL_DIR=sam2.1-hiera-large" in result.stdout  # how to point the server at it


def test_a_broken_file_leaves_no_folder(project, hub):
    hub.broken["model.safetensors"] = "truncate"

    result = hub_run(project, hub, "sam2")

    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: could not download facebook/sam2.1-hiera-tiny/model.safetensors from ")
    assert "set SAM2_MODEL_DIR to its path" in lines[0]
    assert leftovers(project / "models") == []


def test_a_required_file_missing_from_the_repository_leaves_no_folder(project, hub):
    hub.repos = {**HUB_REPOS, "facebook/sam2.1-hiera-tiny": {
        name: data for name, data in SAM2_FILES.items() if name != "preprocessor_config.json"}}

    result = hub_run(project, hub, "sam2")

    assert result.returncode != 0
    assert "facebook/sam2.1-hiera-tiny/preprocessor_config.json" in result.stderr and "404" in result.stderr
    assert "model.safetensors" not in hub.files()  # stopped before the big download
    assert leftovers(project / "models") == []


def test_a_file_that_loading_does_not_need_may_be_missing(project, hub):
    hub.repos = {**HUB_REPOS, "facebook/sam2.1-hiera-tiny": {
        name: data for name, data in SAM2_FILES.items() if name != "video_preprocessor_config.json"}}

    result = hub_run(project, hub, "sam2")

    assert result.returncode == 0, result.stderr
    assert "video_preprocessor_config.json: not in the repository; skipped" in result.stdout
    assert sorted(leftovers(project / "models" / "sam2.1-hiera-tiny")) == sorted(
        set(SAM2_FILES) - {"video_preprocessor_config.json"})


def test_an_interrupted_folder_download_leaves_nothing(project, hub):
    hub.broken["model.safetensors"] = "stall"
    models = project / "models"
    process = start_interruptible(["bash", str(project / SCRIPT.name), "sam2"], script_env(HF_ENDPOINT=hub.url))
    try:
        deadline = time.monotonic() + 10
        while not any((models / name / "model.safetensors").exists() and
                      (models / name / "model.safetensors").stat().st_size > 0
                      for name in leftovers(models) if ".part." in name):
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
        assert process.wait(timeout=10) != 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert leftovers(models) == []


def test_a_weight_file_that_does_not_match_the_hubs_sha256_is_discarded(project, hub):
    hub.linked_etag = sha256(b"the official weights")

    result = hub_run(project, hub, "sam2")

    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert (f"facebook/sam2.1-hiera-tiny/model.safetensors has SHA-256 {sha256(SAM2_FILES['model.safetensors'])}, "
            f"but the hub names {hub.linked_etag}") in result.stderr
    assert leftovers(project / "models") == []


def test_every_file_comes_from_the_commit_the_revision_pointed_at(project, hub):
    result = hub_run(project, hub, "sam2", HF_REVISION="refs/pr/1")

    assert result.returncode == 0, result.stderr
    # the first answer names the commit; the other files are asked for at that commit, not at the branch
    assert hub.revisions() == ["refs%2Fpr%2F1"] + [COMMIT] * (len(SAM2_FILES) - 1)
    assert f"revision {COMMIT}" in result.stdout


def test_an_incomplete_folder_is_reported_and_left_alone(project, hub):
    folder = project / "models" / "sam2.1-hiera-tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(b"a user's own copy, half made")

    result = hub_run(project, hub, "sam2")

    assert result.returncode != 0
    assert "lacks processor_config.json preprocessor_config.json model.safetensors" in result.stderr
    assert hub.requests == []
    assert folder_contents(folder) == {"config.json": b"a user's own copy, half made"}


def test_sam3_without_a_token_points_to_the_licence_and_asks_nothing(project, hub):
    hub.gated.add("facebook/sam3")

    result = hub_run(project, hub, "sam2", "sam3")  # checked before anything, sam2 included, is downloaded

    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "facebook/sam3 is gated" in lines[0]
    assert "accept its licence at https://huggingface.co/facebook/sam3" in lines[0]
    assert "export HF_TOKEN=" in lines[0]
    assert hub.requests == []
    assert leftovers(project / "models") == []


@pytest.mark.parametrize("status", [401, 403], ids=["unknown-token", "licence-not-accepted"])
def test_sam3_refused_by_the_hub_points_to_the_licence(project, hub, status):
    hub.gated.add("facebook/sam3")
    hub.refusal = status
    token = "hf_someoneElsesToken0123456789"

    result = hub_run(project, hub, "sam3", HF_TOKEN=token)

    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "facebook/sam3 is gated (the hub refused the token" in lines[0] and str(status) in lines[0]
    assert "accept its licence at https://huggingface.co/facebook/sam3" in lines[0]
    assert hub.files() == ["config.json"]  # the first small file tells; the weights are never asked for
    assert token not in result.stdout + result.stderr
    assert leftovers(project / "models") == []


def test_a_complete_sam3_folder_needs_no_token(project, hub):
    folder = project / "models" / "sam3"
    folder.mkdir(parents=True)
    for name, data in SAM3_FILES.items():
        (folder / name).write_bytes(data)

    result = hub_run(project, hub, "sam3")

    assert result.returncode == 0, result.stderr
    assert "sam3: already present with every file" in result.stdout
    assert hub.requests == []


def test_the_token_goes_to_the_hub_as_a_bearer_header_and_nowhere_else(project, hub):
    hub.gated.add("facebook/sam3")
    storage = HubServer({}, host="localhost")  # another host, as the hub's CDN is
    hub.storage = storage
    try:
        result = hub_run(project, hub, "sam3", HF_TOKEN=TOKEN)
    finally:
        storage.close()

    assert result.returncode == 0, result.stderr
    assert folder_contents(project / "models" / "sam3") == SAM3_FILES
    assert hub.requests and all(request.authorization == f"Bearer {TOKEN}" for request in hub.requests)
    assert [request.authorization for request in storage.requests] == [None]  # the weights, fetched without it
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads other processes' command lines in /proc")
def test_the_token_is_on_no_command_line(project, hub):
    hub.gated.add("facebook/sam3")
    hub.broken["model.safetensors"] = "stall"
    models = project / "models"
    process = start_interruptible(["bash", str(project / SCRIPT.name), "sam3"],
                                  script_env(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN))
    try:
        deadline = time.monotonic() + 10
        while "model.safetensors" not in hub.files():
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        command_lines = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                command_lines.append(cmdline.read_bytes())
            except OSError:  # a process that ended meanwhile
                pass
        assert any(b"curl" in line and b"/resolve/" in line for line in command_lines), "curl not seen running"
        assert not any(TOKEN.encode() in line for line in command_lines)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert leftovers(models) == []


def test_all_is_every_model_that_needs_no_token(project, served, hub):
    hub.gated.add("facebook/sam3")

    result = run(project, "all", MOBILESAM_DOWNLOAD_URL=f"{served.url}/mobile_sam.pt",
                 SAM_DOWNLOAD_BASE_URL=served.url, HF_ENDPOINT=hub.url)

    assert result.returncode == 0, result.stderr
    assert leftovers(project / "models") == sorted(OFFICIAL_FILES | {
        "sam2.1-hiera-tiny", "sam2.1-hiera-small", "sam2.1-hiera-base-plus", "sam2.1-hiera-large"})
    assert not any("sam3" in request.path for request in hub.requests)
