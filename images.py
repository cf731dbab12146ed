"""Task images: fetched the way Label Studio serves them, decoded into the RGB arrays SAM takes.

Label Studio hands the backend URLs, not pixels: paths relative to itself, plain http(s), cloud URIs only it
can sign, or data: URIs. `ImageSource.read` turns any of them into bytes, sending credentials to Label
Studio's own host and nowhere else, and reaching internal addresses only on Label Studio's host and the
hosts in ALLOWED_IMAGE_HOSTS (see egress.py); `decode_image` turns the bytes into an upright H×W×3 uint8 array.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from urllib.parse import unquote_to_bytes, urlencode, urljoin, urlsplit

import numpy as np
import requests
from PIL import Image, ImageOps, UnidentifiedImageError
from urllib3.exceptions import ReadTimeoutError

from egress import AddressRefused, Download, GuardedAdapter
from errors import ConfigError, ImageFetchError, ImageTimeout, InvalidImage, InvalidRequest
from settings import Settings

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# A cached access token is renewed this long before its `exp`, so it never expires in flight.
TOKEN_MARGIN_SECONDS = 30.0
CHUNK_BYTES = 64 * 1024
HTTP_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Status 413 (Content Too Large) for an image beyond IMAGE_MAX_MB.
TOO_LARGE = 413
# Status 403 (Forbidden) for an image on an address the backend does not fetch from.
FORBIDDEN = 403
# URLs quoted in errors and logs are cut to this many characters.
SHOWN_URL_CHARS = 200


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
        self._lock = threading.Lock()
        self._ls_url = settings.label_studio_url.strip().rstrip("/")
        self._api_key = settings.label_studio_api_key.strip()
        # (personal access token, access token it was exchanged for, time.time() to renew it at)
        self._access: tuple[str, str, float] = ("", "", 0.0)
        self._access_lock = threading.Lock()

    def use_label_studio(self, url: str | None, api_key: str | None) -> None:
        """Fallback from the /setup body (`hostname`, `access_token`): used only for what the environment left unset."""
        with self._lock:
            if url and not self._settings.label_studio_url:
                self._ls_url = url.strip().rstrip("/")
            if api_key and not self._settings.label_studio_api_key:
                self._api_key = api_key.strip()

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
        data = self._download(self._resolve(url, task_id, shown), shown)
        logger.debug("read task image %s: %d bytes", shown, len(data))
        return data

    def authorization(self, url: str) -> str | None:
        """The Authorization header a request to `url` may carry: Label Studio's credentials, on its host only."""
        return self._authorization(url)

    def _resolve(self, url: str, task_id: int | None, shown: str) -> str:
        """The http(s) URL to start downloading from: LS-relative paths and cloud URIs go through Label Studio."""
        scheme = _scheme(url)
        if scheme in HTTP_SCHEMES:
            return url
        ls_url = self._label_studio()[0]
        if url.startswith("/"):
            if not ls_url:
                raise ImageFetchError(
                    f"task image '{shown}' is relative to Label Studio, but LABEL_STUDIO_URL is not set")
            return ls_url + url
        if not scheme:
            raise InvalidRequest(
                f"task image '{shown}' is not a URL: expected a path on Label Studio, http(s)://, a cloud URI or data:")
        if not ls_url:
            raise ImageFetchError(
                f"task image '{shown}' is a cloud storage URI that only Label Studio can sign, "
                "but LABEL_STUDIO_URL is not set")
        if task_id is None:
            raise InvalidRequest(
                f"task image '{shown}' is a cloud storage URI, which Label Studio signs per task, "
                "but the task has no id")
        # Label Studio decodes `fileuri` with urlsafe_b64decode (padding kept), as its SDK encodes it.
        fileuri = base64.urlsafe_b64encode(url.encode()).decode()
        return f"{ls_url}/tasks/{int(task_id)}/presign/?{urlencode({'fileuri': fileuri})}"

    def _download(self, url: str, shown: str) -> bytes:
        """The whole exchange, redirects included, within IMAGE_TOTAL_TIMEOUT and the address rules."""
        total = self._settings.image_total_timeout
        with Download(self._may_reach_internal, total) as download:
            try:
                data = self._follow(url, shown)
            except ImageFetchError:
                if not download.expired:
                    raise
                data = b""
            if download.expired:  # whatever came before the sockets were shut down is not the whole image
                raise ImageTimeout(f"task image '{shown}' did not download within {total:g} s (IMAGE_TOTAL_TIMEOUT)")
        return data

    def _follow(self, url: str, shown: str) -> bytes:
        """Follow redirects by hand, so credentials are decided again for every host on the way."""
        for _ in range(MAX_REDIRECTS + 1):
            if _scheme(url) not in HTTP_SCHEMES:
                raise ImageFetchError(f"task image '{shown}' was redirected to '{_redact(url)}', which is not http(s)")
            response = self._get(url, shown)
            if not response.is_redirect:
                with response:
                    return self._body(response, url, shown)
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

    def _body(self, response: requests.Response, url: str, shown: str) -> bytes:
        """The response's bytes, refusing an error status and stopping as soon as IMAGE_MAX_MB is passed."""
        if not 200 <= response.status_code < 300:
            raise self._refused(response.status_code, url, shown)
        too_large = InvalidImage(f"task image '{shown}' is larger than IMAGE_MAX_MB={self._settings.image_max_mb}",
                                 status=TOO_LARGE)
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self._max_bytes:
            raise too_large
        data = bytearray()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                data += chunk
                if len(data) > self._max_bytes:
                    raise too_large
        except requests.RequestException as exc:
            raise self._network_error(exc, url, shown) from None
        return bytes(data)

    def _refused(self, status: int, url: str, shown: str) -> ImageFetchError:
        """The error for an upstream error status; says how to fix Label Studio credentials when they are the cause."""
        if status in (401, 403) and self._is_label_studio(url):
            if not self._label_studio()[1]:
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
        """The Authorization header `url` may receive: Label Studio's credentials on its own origin, none elsewhere."""
        ls_url, key = self._label_studio()
        if not key or not self._is_label_studio(url):
            return None
        claims = _jwt_claims(key)
        if claims is None:
            return f"Token {key}"
        if claims.get("token_type") != "refresh":
            return f"Bearer {key}"
        return f"Bearer {self._access_token_for(ls_url, key, rejected.removeprefix('Bearer '))}"

    def _access_token_for(self, ls_url: str, refresh: str, rejected: str) -> str:
        """The access token for the PAT `refresh`: cached, exchanged anew near expiry or when rejected."""
        with self._access_lock:
            cached_for, token, renew_at = self._access
            if cached_for == refresh and token and token != rejected and time.time() < renew_at:
                return token
            token = self._exchange(ls_url, refresh)
            exp = (_jwt_claims(token) or {}).get("exp")
            renew_at = float(exp) - TOKEN_MARGIN_SECONDS if isinstance(exp, (int, float)) else 0.0
            self._access = (refresh, token, renew_at)
            return token

    def _exchange(self, ls_url: str, refresh: str) -> str:
        """Trade a personal access token (a JWT refresh token) for a short-lived access token at Label Studio."""
        url = f"{ls_url}/api/token/refresh/"
        shown = "(personal access token exchange)"
        try:
            response = self._session.post(url, json={"refresh": refresh}, timeout=self._timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise self._network_error(exc, url, shown) from None
        if response.status_code != 200:
            raise ImageFetchError(f"Label Studio answered HTTP {response.status_code} at '{url}' when exchanging "
                                  "the personal access token in LABEL_STUDIO_API_KEY: check the token")
        try:
            token = response.json()["access"]
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise ImageFetchError(f"Label Studio's answer at '{url}' holds no access token")
        logger.info("exchanged the personal access token for an access token at %s", url)
        return token

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

    def _label_studio(self) -> tuple[str, str]:
        """Label Studio's URL and API key as currently known (environment first, then /setup)."""
        with self._lock:
            return self._ls_url, self._api_key

    def _may_reach_internal(self, host: str, port: int) -> bool:
        """Whether `host:port` may resolve to internal addresses: Label Studio's host, or one the operator listed."""
        ls_origin = _origin(self._label_studio()[0])
        if ls_origin is not None and ls_origin[1:] == (host, port):
            return True
        return (host, None) in self._allowed_hosts or (host, port) in self._allowed_hosts

    def _is_label_studio(self, url: str) -> bool:
        """Whether `url` has Label Studio's scheme, host and port: the only place credentials may go."""
        ls_url = self._label_studio()[0]
        origin = _origin(url)
        return bool(ls_url) and origin is not None and origin == _origin(ls_url)


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


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """H×W×3 uint8 RGB array of an encoded image; EXIF orientation applied.

    The size is read from the header and checked against `max_pixels` before any pixel is decoded, so a small
    file claiming huge dimensions costs nothing. Raises InvalidImage (422).
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        # Pillow's own process-wide guard fired before we could read the size: far beyond any sane limit.
        raise InvalidImage("task image has more pixels than Pillow accepts "
                           f"(over twice Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS})") from None
    except UnidentifiedImageError:
        raise InvalidImage("task image is not in an image format the backend can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"task image could not be decoded: {exc}") from None
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"task image is empty ({width}×{height} pixels)")
        if width * height > max_pixels:
            raise InvalidImage(f"task image is {width}×{height} = {width * height / 1e6:.1f} megapixels, more than "
                               f"the limit of {max_pixels / 1e6:g} (IMAGE_MAX_MEGAPIXELS)")
        try:
            ImageOps.exif_transpose(image, in_place=True)
            return _rgb_array(image)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidImage(f"task image is damaged or truncated: {exc}") from None


def _rgb_array(image: Image.Image) -> np.ndarray:
    """The pixels as a C-contiguous H×W×3 uint8 array, the way a browser shows them; alpha is dropped, not blended."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        gray = _eight_bit(np.asarray(image))
        return np.ascontiguousarray(np.repeat(gray[:, :, np.newaxis], 3, axis=2))
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _eight_bit(values: np.ndarray) -> np.ndarray:
    """Grey levels in 0–255: 16-bit values keep their high byte (as browsers do); others are stretched min..max."""
    if values.dtype.kind in "ui" and values.min() >= 0 and values.max() <= 65535:
        return (values >> 8).astype(np.uint8)
    floats = np.nan_to_num(values.astype(np.float32))
    low, high = float(floats.min()), float(floats.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((floats - low) * (255.0 / (high - low))).astype(np.uint8)


def _jwt_claims(token: str) -> dict | None:
    """The payload of a JWT, unverified (only its type and expiry are read); None when `token` is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def _scheme(url: str) -> str:
    """The lower-cased scheme of `url`; empty when it has none or is malformed."""
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, default port filled in; None when it has no usable host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in HTTP_SCHEMES or not parts.hostname:
        return None
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


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
