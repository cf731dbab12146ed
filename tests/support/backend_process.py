"""The backend started as a real server process (`python _wsgi.py` → gunicorn), for tests over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BackendProcess:
    """The backend on a free loopback port with the given environment; `wait_ready` waits for /health.

    By default it runs `python _wsgi.py --host 127.0.0.1 --port P`; `gunicorn=True` runs
    `gunicorn -c gunicorn.conf.py _wsgi:app` instead, configured through HOST and PORT.
    """

    def __init__(self, env: dict[str, str], log_path: Path | None = None, gunicorn: bool = False) -> None:
        self.env = env  # as given, so the same server can be started again
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or Path(os.devnull)
        self._log = open(self.log_path, "wb")
        if gunicorn:
            command = [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "_wsgi:app"]
            env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        else:
            command = [sys.executable, str(ROOT / "_wsgi.py"), "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> BackendProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"backend exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"backend did not answer /health in {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> int:
        """Ask for a graceful shutdown (SIGTERM) and return the exit code."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        return self.process.returncode
