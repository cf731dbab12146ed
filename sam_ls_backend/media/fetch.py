"""Task media downloaded the way Label Studio serves them: any URL a task holds, to its bytes.

Label Studio hands the backend URLs, not pixels: paths relative to itself, plain http(s), cloud URIs only it
can sign, or data: URIs. `ImageSource.read` turns any of them into bytes, sending credentials to Label
Studio's own host and nowhere else (label_studio.py), and reaching internal addresses only on Label Studio's
host and the hosts in ALLOWED_IMAGE_HOSTS (egress.py), within a byte cap and a total deadline.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

from sam_ls_backend.errors import ConfigError, ImageFetchError, ImageTimeout, InvalidImage, InvalidRequest
from sam_ls_backend.media.egress import AddressRefused, Download, GuardedAdapter
from sam_ls_backend.media.label_studio import HTTP_SCHEMES, LabelStudio, origin, token_url, url_scheme
from sam_ls_backend.settings import Settings

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
# Status 413 (Content Too Large) for an image beyond IMAGE_MAX_MB.
TOO_LARGE = 413
# Status 403 (Forbidden) for an image on an address the backend does not fetch from.
FORBIDDEN = 403
# URLs quoted in errors and logs are cut to this many characters.
SHOWN_URL_CHARS = 200


@dataclass(frozen=True)
class Limits:
    """How much one download may be: its byte cap and whole-exchange deadline, with the settings naming them."""

    max_bytes: int
    max_setting: str  # e.g. "IMAGE_MAX_MB=64", quoted when the cap is passed
    total_seconds: float
    total_setting: str  # e.g. "IMAGE_TOTAL_TIMEOUT"
    what: str = "task image"


class ImageSource:
    """Downloads task images the way Label Studio serves them."""

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self._settings = settings
        self._session = session or requests.Session()
        for scheme in HTTP_SCHEMES:
            self._session.mount(f"{scheme}://", GuardedAdapter())
        self._allowed_hosts = allowed_hosts(settings.allowed_image_hosts)
        self._timeout = (settings.image_connect_timeout, settings.image_read_timeout)
        self._max_bytes = settings.image_max_mb * 1024 * 1024
        self.label_studio = LabelStudio(settings.label_studio_url, settings.label_studio_api_key, self._session,
                                        self._timeout)

    def use_label_studio(self, url: str | None, api_key: str | None) -> None:
        """Fallback from the /setup body (`hostname`, `access_token`): used only for what the environment left unset."""
        self.label_studio.use(url, api_key)

    def read(self, url: str, task_id: int | None = None) -> bytes:
        """The bytes of the image a task's data points to.

        Raises InvalidRequest (400) for a URL that cannot name an image, InvalidImage (413 beyond IMAGE_MAX_MB,
        422 for a broken data: URI), ImageFetchError (502) when the image's server fails or refuses, ImageTimeout (504).
        """
        url = url.strip()
        if not url:
            raise InvalidRequest("the task's image URL is empty")
        if url.lower().startswith("data:"):
            return self._decode_data_uri(url)
        shown = _redact(url)
        buffer = bytearray()
        self._download(self._resolve(url, task_id, shown), shown, buffer, self._image_limits())
        logger.debug("read task image %s: %d bytes", shown, len(buffer))
        return bytes(buffer)

    def save(self, url: str, task_id: int | None, target: BinaryIO, limits: Limits) -> int:
        """Download what a task's media URL points to into `target` (an open file), within `limits`; the number
        of bytes written. data: URIs are refused (no video fits in a task's JSON); errors as for `read`."""
        url = url.strip()
        if not url:
            raise InvalidRequest(f"the {limits.what} URL is empty")
        if url.lower().startswith("data:"):
            raise InvalidRequest(f"the {limits.what} is a data: URI; give it a URL")
        shown = _redact(url)
        written = self._download(self._resolve(url, task_id, shown), shown, target, limits)
        logger.debug("saved %s %s: %d bytes", limits.what, shown, written)
        return written

    def _image_limits(self) -> Limits:
        return Limits(self._max_bytes, f"IMAGE_MAX_MB={self._settings.image_max_mb}",
                      self._settings.image_total_timeout, "IMAGE_TOTAL_TIMEOUT")

    def authorization(self, url: str) -> str | None:
        """The Authorization header a request to `url` may carry: Label Studio's credentials, on its host only."""
        return self._authorization(url)

    def _resolve(self, url: str, task_id: int | None, shown: str) -> str:
        """The http(s) URL to start downloading from: LS-relative paths and cloud URIs go through Label Studio."""
        return self.label_studio.resolve(url, task_id, shown)

    def _download(self, url: str, shown: str, sink: bytearray | BinaryIO, limits: Limits) -> int:
        """The whole exchange, redirects included, into `sink` within the limits' deadline and the address rules."""
        total = limits.total_seconds
        with Download(self._may_reach_internal, total) as download:
            try:
                written = self._follow(url, shown, sink, limits)
            except ImageFetchError:
                if not download.expired:
                    raise
                written = 0
            if download.expired:  # whatever came before the sockets were shut down is not the whole file
                raise ImageTimeout(f"{limits.what} '{shown}' did not download within {total:g} s "
                                   f"({limits.total_setting})")
        return written

    def _follow(self, url: str, shown: str, sink: bytearray | BinaryIO, limits: Limits) -> int:
        """Follow redirects by hand, so credentials are decided again for every host on the way."""
        for _ in range(MAX_REDIRECTS + 1):
            if url_scheme(url) not in HTTP_SCHEMES:
                raise ImageFetchError(f"task image '{shown}' was redirected to '{_redact(url)}', which is not http(s)")
            response = self._get(url, shown)
            if not response.is_redirect:
                with response:
                    return self._body(response, url, shown, sink, limits)
            response.close()
            try:
                url = urljoin(url, response.headers["Location"])
            except ValueError:
                raise ImageFetchError(f"task image '{shown}' was redirected to a malformed URL") from None
        raise ImageFetchError(f"task image '{shown}' was redirected more than {MAX_REDIRECTS} times")

    def _get(self, url: str, shown: str) -> requests.Response:
        """GET `url` with the credentials it may receive; a rejected cached access token is renewed once."""
        authorization = self._authorization(url)
        response = self._send(url, authorization, shown)
        if response.status_code == 401 and authorization:
            response.close()  # a 401's body is never read: its status is all the error needs
            renewed = self._authorization(url, rejected=authorization)
            if renewed != authorization:
                response = self._send(url, renewed, shown)
        return response

    def _send(self, url: str, authorization: str | None, shown: str) -> requests.Response:
        """One GET, streamed, redirects left to the caller; network failures become ImageFetchError/ImageTimeout."""
        headers = {"Authorization": authorization} if authorization else {}
        try:
            return self._session.get(url, headers=headers, timeout=self._timeout, stream=True, allow_redirects=False)
        except requests.RequestException as exc:
            raise self._network_error(exc, url, shown) from None
        except AddressRefused as refused:
            where = "" if _redact(url) == shown else f", reached through '{_redact(url)}',"
            raise ImageFetchError(
                f"task image '{shown}'{where} is on {refused.host}, which resolves to {refused.address} "
                f"({refused.kind} address): images are fetched from internal addresses only on Label Studio's host "
                "and the hosts listed in ALLOWED_IMAGE_HOSTS", status=FORBIDDEN) from None

    def _body(self, response: requests.Response, url: str, shown: str, sink: bytearray | BinaryIO,
              limits: Limits) -> int:
        """The response's bytes into `sink`, refusing an error status and stopping as soon as the cap is passed."""
        if not 200 <= response.status_code < 300:
            raise self._refused(response.status_code, url, shown)
        too_large = InvalidImage(f"{limits.what} '{shown}' is larger than {limits.max_setting}", status=TOO_LARGE)
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limits.max_bytes:
            raise too_large
        written = 0
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                written += len(chunk)
                if written > limits.max_bytes:
                    raise too_large
                if isinstance(sink, bytearray):
                    sink += chunk
                else:
                    sink.write(chunk)
        except requests.RequestException as exc:
            raise self._network_error(exc, url, shown) from None
        return written

    def _refused(self, status: int, url: str, shown: str) -> ImageFetchError:
        """The error for an upstream error status; says how to fix Label Studio credentials when they are the cause."""
        if status in (401, 403) and self.label_studio.owns(url):
            if not self.label_studio.has_key:
                return ImageFetchError(f"Label Studio answered HTTP {status} for task image '{shown}': "
                                       "set LABEL_STUDIO_API_KEY so the backend can read task images")
            return ImageFetchError(f"Label Studio answered HTTP {status} for task image '{shown}': check that "
                                   "LABEL_STUDIO_API_KEY is valid and its user can see the project")
        where = "" if _redact(url) == shown else f" (at '{_redact(url)}')"
        return ImageFetchError(f"HTTP {status} for task image '{shown}'{where}")

    def _network_error(self, exc: requests.RequestException, url: str, shown: str) -> ImageFetchError:
        """ImageTimeout or ImageFetchError for a failed exchange; never quotes `exc`, whose text holds the query."""
        # requests reports a read timeout in the middle of a body as a ConnectionError wrapping urllib3's.
        if isinstance(exc, requests.Timeout) or (exc.args and isinstance(exc.args[0], ReadTimeoutError)):
            connect, read = self._timeout
            return ImageTimeout(f"'{_redact(url)}' did not answer in time (connect {connect:g} s, read {read:g} s; "
                                f"IMAGE_CONNECT_TIMEOUT, IMAGE_READ_TIMEOUT) for task image '{shown}'")
        return ImageFetchError(f"could not fetch task image '{shown}' from '{_redact(url)}': {type(exc).__name__}")

    def _authorization(self, url: str, rejected: str = "") -> str | None:
        """Label Studio's Authorization header for `url`; a failed token exchange is reported like a download's."""
        try:
            return self.label_studio.authorization(url, rejected)
        except requests.RequestException as exc:
            raise self._network_error(exc, token_url(self.label_studio.url),
                                      "(personal access token exchange)") from None

    def _decode_data_uri(self, uri: str) -> bytes:
        """The bytes a `data:[<type>][;base64],<payload>` URI carries, within IMAGE_MAX_MB."""
        header, comma, payload = uri[5:].partition(",")
        if not comma:
            raise InvalidImage("task image is a data: URI with no ',' before its payload")
        try:
            data = base64.b64decode(payload) if header.lower().endswith(";base64") else unquote_to_bytes(payload)
        except ValueError:
            raise InvalidImage("task image is a data: URI whose base64 payload is invalid") from None
        if len(data) > self._max_bytes:
            raise InvalidImage(f"task image (a data: URI) is larger than IMAGE_MAX_MB={self._settings.image_max_mb}",
                               status=TOO_LARGE)
        return data

    def _may_reach_internal(self, host: str, port: int) -> bool:
        """Whether `host:port` may resolve to internal addresses: Label Studio's host, or one the operator listed."""
        ls_origin = origin(self.label_studio.url)
        if ls_origin is not None and ls_origin[1:] == (host, port):
            return True
        return (host, None) in self._allowed_hosts or (host, port) in self._allowed_hosts


def allowed_hosts(text: str) -> frozenset[tuple[str, int | None]]:
    """ALLOWED_IMAGE_HOSTS ('host', 'host:port', '[v6]:port', comma-separated) as (host, port or None) pairs."""
    hosts = set()
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            parts = urlsplit(f"//{entry}")
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or parts.path or parts.query or parts.fragment or "@" in parts.netloc:
            raise ConfigError(f"ALLOWED_IMAGE_HOSTS: {entry!r} is not a host name with an optional :port")
        hosts.add((host.rstrip("."), port))
    return frozenset(hosts)


def _redact(url: str) -> str:
    """`url` without user info, query string or fragment (signed URLs carry secrets there), cut to a sane length."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(malformed URL)"
    shown = f"{parts.scheme}:" if parts.scheme else ""
    if parts.netloc:
        shown += "//" + parts.netloc.rpartition("@")[2]
    shown += parts.path
    return shown if len(shown) <= SHOWN_URL_CHARS else shown[:SHOWN_URL_CHARS] + "…"
