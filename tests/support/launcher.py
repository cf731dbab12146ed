"""Label Studio's launcher (`label-studio-ml start .`) run for real, from a virtualenv of its own.

label-studio-ml 1.0.9 pins Flask 1.1.2, so it never goes into the server's environment: it is installed into
the shared test cache beside Label Studio (see label_studio.py), under the same lock, with the same
completion marker and bounded timeouts. Its `start` command runs `os.system('python ' + <dir>/_wsgi.py + ' '
+ ' '.join(<arguments it did not recognise>))`: a bare `python` from PATH, so the server's environment must
come first on PATH, and the arguments go through a shell unquoted.

A launched server is a process tree (launcher → [sh →] python _wsgi.py → gunicorn workers) in a process
group of its own; it is stopped by a SIGTERM to the `_wsgi.py` process (gunicorn's graceful stop), after which
the launcher returns by itself, and whatever is left of the group is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tests.support.backend_process import ROOT, free_port
from tests.support.label_studio import HarnessError, _ensure_cached, cache_dir, log_tail, wait_until_up

LAUNCHER_VERSION = "1.0.9"
# label_studio_ml.model imports redis and rq without declaring them; pinned to versions of its time.
UNDECLARED_DEPENDENCIES = ("redis==5.0.8", "rq==1.16.2")
LAUNCHER_INSTALL_TIMEOUT_S = 600.0
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0  # gunicorn's graceful_timeout is 30 s
KILL_TIMEOUT_S = 10.0
LOOPBACK = "127.0.0.1"


def ensure_launcher() -> Path:
    """Return the cached virtualenv holding label-studio-ml==LAUNCHER_VERSION, installing it if needed."""
    return _ensure_cached(cache_dir() / f"label-studio-ml-{LAUNCHER_VERSION}", _install_launcher)


def server_bin() -> Path:
    """The folder of the server's `python` (this interpreter's virtualenv), not resolved through symlinks."""
    return Path(sys.executable).parent


class LaunchedBackend:
    """`label-studio-ml start . <arguments>` in the repository root, on a free loopback port, as a context manager.

    `arguments` come after `start .`, as a user types them; `{port}` in them is replaced by the chosen port.
    """

    def __init__(self, arguments: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.arguments = [argument.replace("{port}", str(self.port)) for argument in arguments]
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def command(self) -> list[str]:
        """The console script run by the launcher's own interpreter (its shebang names the partial directory)."""
        venv = ensure_launcher()
        return [str(venv / "bin" / "python"), str(venv / "bin" / "label-studio-ml"), "start", ".", *self.arguments]

    def __enter__(self) -> LaunchedBackend:
        command = self.command()
        path = os.pathsep.join([str(server_bin()), os.environ.get("PATH", os.defpath)])
        env = {**os.environ, **self.env, "PATH": path}
        env.pop("PYTHONHOME", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_up(f"{self.url}/health", self.process, self.log_path, START_TIMEOUT_S)
        except BaseException:
            self.kill_group()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.process is not None and (self.process.poll() is None or self.left_in_group()):
            self.kill_group()

    def server_processes(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of the launcher's descendants, parents before children."""
        assert self.process is not None
        found: list[tuple[int, list[str]]] = []
        queue = [self.process.pid]
        while queue:
            pid = queue.pop(0)
            for child in children(pid):
                found.append((child, _argv(child)))
                queue.append(child)
        return found

    def stop(self) -> int:
        """SIGTERM to the `_wsgi.py` process (gunicorn's master); return the launcher's own exit code."""
        assert self.process is not None
        servers = [pid for pid, argv in self.server_processes() if runs_wsgi(argv)]
        if not servers:
            raise HarnessError(f"no python _wsgi.py under the launcher\n{log_tail(self.log_path)}")
        os.kill(servers[0], signal.SIGTERM)  # the first in tree order is gunicorn's master, the rest its workers
        try:
            self.exit_code = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            self.kill_group()
            raise HarnessError(f"the launcher did not return after its server was stopped\n"
                               f"{log_tail(self.log_path)}") from error
        return self.exit_code

    def left_in_group(self) -> list[int]:
        """Live (not zombie) processes still in the launcher's process group."""
        assert self.process is not None
        return group_members(self.process.pid)

    def kill_group(self) -> None:
        """SIGKILL every process of the launcher's group and reap the launcher (bounded)."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def children(pid: int) -> list[int]:
    """The child processes of `pid` (none once it has gone)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def runs_wsgi(argv: list[str]) -> bool:
    """True for `python .../_wsgi.py ...` (not for the `sh -c "python ./_wsgi.py ..."` that may start it)."""
    return len(argv) >= 2 and Path(argv[0]).name.startswith("python") and Path(argv[1]).name == "_wsgi.py"


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _install_launcher(venv: Path, log_path: Path) -> None:
    """Create a virtualenv at `venv` and pip-install the launcher (and what it imports) into it, bounded."""
    python = venv / "bin" / "python"
    check = ("import importlib.metadata as m, sys, label_studio_ml.server; "
             "sys.exit(m.version('label-studio-ml') != sys.argv[1])")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
         f"label-studio-ml=={LAUNCHER_VERSION}", *UNDECLARED_DEPENDENCIES],
        [str(python), "-c", check, LAUNCHER_VERSION],
    ]  # fmt: skip
    deadline = time.monotonic() + LAUNCHER_INSTALL_TIMEOUT_S
    with log_path.open("wb") as log:
        for step in steps:
            try:
                code = subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      timeout=max(1.0, deadline - time.monotonic())).returncode
            except subprocess.TimeoutExpired as error:
                raise HarnessError(f"installing label-studio-ml timed out: {error}\n{log_tail(log_path)}") from error
            if code != 0:
                raise HarnessError(f"installing label-studio-ml failed at {step[1:3]} (exit {code})\n"
                                   f"{log_tail(log_path)}")
