"""Errors the backend answers with: each carries the HTTP status and a message that names the problem."""

from __future__ import annotations


class BackendError(Exception):
    """An error with a message safe to show to the client; `status` is the HTTP status to answer."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class ConfigError(BackendError):
    """The backend's own configuration is wrong (environment, checkpoint): fatal at start-up."""


class InvalidRequest(BackendError):
    """The request body does not follow the Label Studio protocol."""

    status = 400


class InvalidImage(BackendError):
    """The task's image could not be read as an image, or is beyond the configured limits."""

    status = 422


class ImageFetchError(BackendError):
    """The server holding the task's image failed or refused us."""

    status = 502


class ImageTimeout(ImageFetchError):
    """The server holding the task's image did not answer in time."""

    status = 504


class RuntimeUnavailable(Exception):
    """RUNTIME's ONNX graphs cannot be exported, checked or opened; the message says why (auto falls back to torch)."""
