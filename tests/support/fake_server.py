"""A scriptable HTTP server on loopback, for playing Label Studio, third-party hosts and hostile ones in tests."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Seen:
    """One request a fake server received."""

    method: str
    target: str  # path and query
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


Route = Callable[[BaseHTTPRequestHandler, Seen], None]


class FakeServer:
    """A threaded HTTP server on 127.0.0.1 answering from a table of routes (path → function).

    Records every request (`seen`) and counts every TCP connection accepted (`connections`), so a test can
    prove that nothing reached it at all.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.connections = 0
        self.release = threading.Event()  # set at teardown to free handlers that stall on purpose
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Seen(self.command, self.path, dict(self.headers.items()), body)
                server.seen.append(request)
                route = server.routes.get(request.path)
                if route is None:
                    reply(self, 404, b"not found")
                else:
                    route(self, request)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.netloc = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.netloc}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def authorizations(self) -> list[str | None]:
        return [request.headers.get("Authorization") for request in self.seen]


class _QuietServer(ThreadingHTTPServer):
    """Says nothing when a client drops its connection: the tests' clients give up on purpose."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"",
          headers: dict[str, str] | None = None) -> None:
    """Answer with `status`, `body` and extra `headers`; Content-Length always set (keep-alive)."""
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def redirect(location: str, status: int = 302) -> Route:
    return lambda handler, request: reply(handler, status, headers={"Location": location})


class Trickle:
    """A route sending its answer one byte every `every` seconds (the body only, or the headers too) until `stop`.

    Each byte arrives well within any read timeout, so only a deadline on the whole download ends it early;
    `finished` tells whether it got to the end.
    """

    def __init__(self, body: bytes, every: float, stop: threading.Event, headers_too: bool = False) -> None:
        self.head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: image/png\r\n\r\n".encode()
        self.slow = self.head + body if headers_too else body
        self.every, self.stop, self.headers_too = every, stop, headers_too
        self.sent = 0

    def __call__(self, handler: BaseHTTPRequestHandler, request: Seen) -> None:
        handler.close_connection = True
        if not self.headers_too:
            handler.wfile.write(self.head)
        try:
            for index in range(len(self.slow)):
                handler.wfile.write(self.slow[index:index + 1])
                handler.wfile.flush()
                self.sent = index + 1
                if self.stop.wait(self.every):
                    return
        except OSError:
            return  # the client gave up, as it should

    @property
    def finished(self) -> bool:
        return self.sent == len(self.slow)
