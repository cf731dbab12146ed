"""A stand-in ML backend on loopback that records what Label Studio sends and answers what a test decides.

It serves the routes Label Studio calls (/health, /setup, /predict, /webhook, /versions) on a thread.
Each /predict body is kept in `bodies`; the answer's result regions come from `respond(body)`, which a test
may swap between actions to see how the labeling page treats a given answer (same ids, other labels, ...).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], list[dict[str, Any]]]


class RecordingBackend:
    """A recording ML backend on a free loopback port; `close()` stops it."""

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond: Responder = respond or (lambda body: [])
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, payload: Any, status: int = 200) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.startswith("/versions"):
                    self._send({"versions": ["recording"]})
                else:
                    self._send({"status": "UP", "model_class": "RecordingBackend"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.startswith("/setup"):
                    self._send({"model_version": "recording"})
                elif self.path.startswith("/predict"):
                    try:
                        answer = backend._predict(body)
                    except Exception as error:  # a test's responder failed: say so instead of hanging up
                        self._send({"error": f"{type(error).__name__}: {error}"}, status=500)
                        return
                    self._send(answer)
                else:
                    self._send({})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _predict(self, body: dict[str, Any]) -> dict[str, Any]:
        context = (body.get("params") or {}).get("context")
        if context is None:  # a task opened or "retrieve predictions": no prediction
            return {"results": [[] for _ in body.get("tasks", [])], "model_version": "recording"}
        with self._lock:
            self.bodies.append(body)
        result = self.respond(body)
        return {"results": [{"result": result, "score": 0.5, "model_version": "recording"}],
                "model_version": "recording"}

    def interactive_bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.bodies)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
