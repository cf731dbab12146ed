"""Run a real Label Studio on loopback for end-to-end tests: install, template, start, call its API.

Label Studio lives in its own virtualenv in a cache directory outside the repository, shared between runs
and clones. A migrated data directory (admin user + legacy API token) is cached beside it, because the
first start spends 40-60 s migrating while a copy of a migrated directory starts in seconds.
Everything here binds and talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mimetypes
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from tests.support.backend_process import free_port

logger = logging.getLogger(__name__)

LABEL_STUDIO_VERSION = "1.23.2"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "e2e-admin-password"
# A legacy API token baked into the cached data template; loopback-only test credentials.
API_TOKEN = "e2e0123456789abcdef"

LOOPBACK = "127.0.0.1"
COMPLETE_MARKER = ".sam-ls-backend-complete"
INSTALL_TIMEOUT_S = 1200.0
LOCK_TIMEOUT_S = INSTALL_TIMEOUT_S + 300.0
FIRST_START_TIMEOUT_S = 300.0
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
API_TIMEOUT_S = 30.0
# Label Studio waits up to 100 s for a backend's /predict; leave room for its answer.
INTERACTIVE_TIMEOUT_S = 150.0
LOG_TAIL_LINES = 60

# Variables Label Studio reads that would change which port, host or user it uses.
INHERITED_ENV_TO_DROP = ("HOST", "USERNAME", "PASSWORD", "PORT", "USER_TOKEN")
INHERITED_ENV_PREFIXES_TO_DROP = ("LABEL_STUDIO_", "HEARTEX_")
FIXED_ENV = {
    "ML_BLOCK_LOCAL_IP": "false",
    "SSRF_PROTECTION_ENABLED": "false",
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "COLLECT_ANALYTICS": "false",
    "LATEST_VERSION_CHECK": "false",
}


class HarnessError(RuntimeError):
    """Label Studio (or a server started beside it) could not be installed, started, or answered with an error."""


def cache_dir() -> Path:
    """The shared cache root: $SAM_LS_E2E_CACHE, else $XDG_CACHE_HOME/sam-ls-backend, else ~/.cache/sam-ls-backend."""
    explicit = os.environ.get("SAM_LS_E2E_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "sam-ls-backend"


def ensure_label_studio() -> Path:
    """Return the cached virtualenv holding label-studio==LABEL_STUDIO_VERSION, installing it if needed."""
    venv = cache_dir() / f"label-studio-{LABEL_STUDIO_VERSION}"
    return _ensure_cached(venv, _install_label_studio)


def ensure_data_template() -> Path:
    """Return the cached, migrated Label Studio data directory with the admin user and legacy token."""
    ensure_label_studio()  # before taking the cache lock, which building the template holds
    template = cache_dir() / f"label-studio-{LABEL_STUDIO_VERSION}-data-template"
    return _ensure_cached(template, _create_data_template)


def fresh_data_dir(destination: Path) -> Path:
    """Copy the data template to `destination` (which must not exist) for one Label Studio session."""
    shutil.copytree(ensure_data_template(), destination, ignore=shutil.ignore_patterns(COMPLETE_MARKER))
    return destination


def wait_until_up(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits, with its log tail in the error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HarnessError(
                f"process exited with code {process.returncode} before {url} answered\n{log_tail(log_path)}"
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise HarnessError(f"{url} did not answer 200 within {timeout_s:.0f} s\n{log_tail(log_path)}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process we started, then kill it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file, labelled, for error messages."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError as error:
        return f"(no log at {log_path}: {error})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {log_path} ---\n{tail}"


class LabelStudio:
    """A Label Studio server on a free loopback port, started on enter and stopped on exit, with API helpers."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        local_files_root: Path | None = None,
        *,
        first_start: bool = False,
    ) -> None:
        """Serve `data_dir`; `local_files_root` enables /data/local-files; `first_start` creates the admin."""
        self.data_dir = data_dir
        self.log_path = log_path
        self.local_files_root = local_files_root
        self.first_start = first_start
        self.token = API_TOKEN
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Token {self.token}"

    @property
    def url(self) -> str:
        """The base URL the server answers on, e.g. http://127.0.0.1:PORT."""
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> LabelStudio:
        venv = ensure_label_studio()
        self.port = free_port()
        timeout_s = FIRST_START_TIMEOUT_S if self.first_start else START_TIMEOUT_S
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(venv),
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_up(f"{self.url}/health", self._process, self.log_path, timeout_s)
        except BaseException:
            self.stop()
            raise
        logger.info("Label Studio up at %s in %.1f s (log %s)", self.url, time.monotonic() - started, self.log_path)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server if it is running."""
        if self._process is not None:
            stop_process(self._process)
            self._process = None

    def create_project(self, title: str, label_config: str) -> int:
        """Create a project; return its id."""
        return int(self._call("POST", "/api/projects/", json={"title": title, "label_config": label_config})["id"])

    def import_image(self, project_id: int, path: Path) -> int:
        """Upload one image file as a task (multipart import, as the UI does); return the task id."""
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as image:
            answer = self._call(
                "POST",
                f"/api/projects/{project_id}/import",
                params={"return_task_ids": "true"},
                files={"file": (path.name, image, content_type)},
            )
        (task_id,) = answer["task_ids"]
        return int(task_id)

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import task JSON objects ({"data": {...}}); return their ids in order."""
        answer = self._call(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks
        )
        return [int(task_id) for task_id in answer["task_ids"]]

    def add_local_files_storage(self, project_id: int, path: Path) -> int:
        """Attach a local-files source storage (needed for /data/local-files URLs to be served); return its id."""
        body = {"project": project_id, "path": str(path), "title": "e2e local files", "use_blob_urls": True}
        return int(self._call("POST", "/api/storages/localfiles/", json=body)["id"])

    def connect_ml_backend(self, project_id: int, url: str) -> int:
        """Connect an interactive ML backend to a project (LS calls its /health and /setup); return its id."""
        body = {"url": url, "project": project_id, "title": "sam-ls-backend e2e", "is_interactive": True}
        return int(self._call("POST", "/api/ml/", json=body)["id"])

    def interactive_annotating(self, ml_id: int, task_id: int, regions: list[dict[str, Any]]) -> dict[str, Any]:
        """Send smart regions as the annotator's browser does; return LS's answer ({"data": ...} or {"errors": ...})."""
        body = {"task": task_id, "context": {"result": regions}}
        return self._call(
            "POST", f"/api/ml/{ml_id}/interactive-annotating", json=body, timeout=INTERACTIVE_TIMEOUT_S
        )

    def train(self, ml_id: int) -> int:
        """What *Start Training* in the project's Model settings does (LS posts START_TRAINING to the backend);
        Label Studio's HTTP status."""
        response = self._session.post(f"{self.url}/api/ml/{ml_id}/train", json={}, timeout=INTERACTIVE_TIMEOUT_S)
        if not response.ok:
            raise HarnessError(f"POST /api/ml/{ml_id}/train -> {response.status_code}: {response.text[:4000]}")
        return response.status_code

    def create_annotation(self, task_id: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        """Save an annotation with `result` regions on a task; return the created annotation."""
        return self._call("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result})

    def export(self, project_id: int, export_type: str) -> bytes:
        """The project exported as `export_type` (JSON, COCO, YOLO, ...) by LS's export API: a zip or a JSON file."""
        response = self._session.get(f"{self.url}/api/projects/{project_id}/export",
                                     params={"exportType": export_type}, timeout=INTERACTIVE_TIMEOUT_S)
        if not response.ok:
            raise HarnessError(f"export {export_type} -> {response.status_code}: {response.text[:4000]}")
        return response.content

    def current_user(self) -> dict[str, Any]:
        """Return the user the API token belongs to."""
        return self._call("GET", "/api/current-user/whoami")

    def get_task(self, task_id: int) -> dict[str, Any]:
        """Return a task with its annotations."""
        return self._call("GET", f"/api/tasks/{task_id}")

    def download(self, path: str) -> bytes:
        """The bytes LS serves at a path such as /data/local-files/?d=..., fetched with the API token."""
        response = self._session.get(f"{self.url}{path}", timeout=API_TIMEOUT_S)
        if not response.ok:
            raise HarnessError(f"GET {path} -> {response.status_code}: {response.text[:4000]}")
        return response.content

    def _call(self, method: str, path: str, timeout: float = API_TIMEOUT_S, **kwargs: Any) -> Any:
        """One API request; raise HarnessError with the response text unless it is 2xx."""
        response = self._session.request(method, f"{self.url}{path}", timeout=timeout, **kwargs)
        if not response.ok:
            raise HarnessError(f"{method} {path} -> {response.status_code}: {response.text[:4000]}")
        return response.json()

    def _command(self, venv: Path) -> list[str]:
        """The start command; `--debug` only stops LS from silently moving to the next port when ours is taken."""
        command = [
            str(venv / "bin" / "python"), "-m", "label_studio.server", "start",
            "--no-browser", "--debug", "--internal-host", LOOPBACK, "--port", str(self.port),
        ]  # fmt: skip
        if self.first_start:
            command += [
                "--username", ADMIN_EMAIL, "--password", ADMIN_PASSWORD,
                "--user-token", API_TOKEN, "--enable-legacy-api-token",
            ]  # fmt: skip
        return command

    def _environment(self) -> dict[str, str]:
        """Our environment minus what LS would misread, plus the data dir and loopback-friendly settings."""
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in INHERITED_ENV_TO_DROP and not name.startswith(INHERITED_ENV_PREFIXES_TO_DROP)
        }
        env.update(FIXED_ENV)
        env["LABEL_STUDIO_BASE_DATA_DIR"] = str(self.data_dir)
        if self.local_files_root is not None:
            env["LOCAL_FILES_SERVING_ENABLED"] = "true"
            env["LOCAL_FILES_DOCUMENT_ROOT"] = str(self.local_files_root)
        return env


def _ensure_cached(final: Path, build: Callable[[Path, Path], None]) -> Path:
    """Return `final` if complete; else, under the cache lock, `build` a partial dir, mark it and rename it.

    The marker is written last and the rename is atomic, so an interrupted build is never taken as complete.
    `build` gets the partial directory and a log path named after `final`.
    """
    if (final / COMPLETE_MARKER).is_file():
        return final
    with _cache_lock():
        if (final / COMPLETE_MARKER).is_file():
            return final
        for stale in [final, *final.parent.glob(f"{final.name}.partial-*")]:
            if stale.is_dir():
                logger.info("Removing incomplete %s", stale)
                shutil.rmtree(stale)
        partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
        started = time.monotonic()
        try:
            build(partial, final.with_name(f"{final.name}.log"))
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        (partial / COMPLETE_MARKER).write_text(f"label-studio=={LABEL_STUDIO_VERSION}\n")
        partial.rename(final)
        logger.info("Built %s in %.0f s", final, time.monotonic() - started)
    return final


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """Hold an exclusive lock on the cache so concurrent test runs never build the same entry twice."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock_file:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    message = f"cache lock {root / '.lock'} still held after {LOCK_TIMEOUT_S:.0f} s"
                    raise HarnessError(message) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _install_label_studio(venv: Path, log_path: Path) -> None:
    """Create a virtualenv at `venv` and pip-install Label Studio into it, logging to `log_path`.

    Label Studio is then run as `python -m label_studio.server`, never through the console script,
    whose shebang would still name the partial directory after the rename.
    """
    logger.info("Installing label-studio==%s into %s (log %s)", LABEL_STUDIO_VERSION, venv, log_path)
    python = venv / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--no-input", f"label-studio=={LABEL_STUDIO_VERSION}"],
        [str(python), "-c", "import label_studio, sys; sys.exit(label_studio.__version__ != sys.argv[1])",
         LABEL_STUDIO_VERSION],
    ]  # fmt: skip
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    with log_path.open("wb") as log:
        for step in steps:
            try:
                code = subprocess.run(
                    step, stdout=log, stderr=subprocess.STDOUT, timeout=max(1.0, deadline - time.monotonic())
                ).returncode
            except subprocess.TimeoutExpired as error:
                raise HarnessError(f"installing Label Studio timed out: {error}\n{log_tail(log_path)}") from error
            if code != 0:
                raise HarnessError(
                    f"installing Label Studio failed at {step[1:3]} (exit {code})\n{log_tail(log_path)}"
                )


def _create_data_template(data_dir: Path, log_path: Path) -> None:
    """Start Label Studio once on an empty `data_dir` so it migrates and creates the admin, then check the token."""
    data_dir.mkdir(parents=True)
    with LabelStudio(data_dir, log_path, first_start=True) as server:
        email = server.current_user()["email"]
    if email != ADMIN_EMAIL:
        raise HarnessError(f"the template's token belongs to {email!r}, not {ADMIN_EMAIL!r}")
