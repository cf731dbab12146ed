"""A loopback HTTP server that serves task images the way Label Studio's /data routes do, for server tests."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


class ImageHost:
    """Serves registered image bytes at paths, answers 401 without the right token, and records requests."""

    def __init__(self, token: str = "secret-token") -> None:
        self.token = token
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                authorization = self.headers.get("Authorization")
                host.requests.append((self.path, authorization))
                if authorization != f"Token {host.token}":
                    self.send_error(401)
                    return
                body = host.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add_image(self, path: str, image: np.ndarray) -> str:
        """Serve `image` as PNG at `path`; returns the path, as a task's data would hold it."""
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        self.files[path] = buffer.getvalue()
        return path

    def add_bytes(self, path: str, data: bytes) -> str:
        """Serve `data` as they are (a video, a broken file) at `path`; returns the path."""
        self.files[path] = data
        return path

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
