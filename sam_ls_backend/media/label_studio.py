"""Label Studio as the backend's media server: its address and credentials, the Authorization header a URL
may carry (only Label Studio's own origin gets one), and the URL a task's media path or cloud URI is read from.

The environment (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY) comes first; the /setup body fills in what it left
unset. A personal access token (a JWT refresh token) is exchanged for short-lived access tokens, cached until
shortly before they expire or until Label Studio rejects one.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from urllib.parse import urlencode, urlsplit

import requests

from sam_ls_backend.errors import ImageFetchError, InvalidRequest

logger = logging.getLogger(__name__)

# A cached access token is renewed this long before its `exp`, so it never expires in flight.
TOKEN_MARGIN_SECONDS = 30.0
HTTP_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}


class LabelStudio:
    """Label Studio's address and credentials, as the environment and then /setup give them; thread-safe."""

    def __init__(self, url: str, api_key: str, session: requests.Session,
                 timeout: tuple[float, float]) -> None:
        self._env_url = url.strip().rstrip("/")
        self._env_key = api_key.strip()
        self._url, self._key = self._env_url, self._env_key
        self._session = session
        self._timeout = timeout
        self._lock = threading.Lock()
        # (personal access token, access token it was exchanged for, time.time() to renew it at)
        self._access: tuple[str, str, float] = ("", "", 0.0)
        self._access_lock = threading.Lock()

    def use(self, url: str | None, api_key: str | None) -> None:
        """Fallback from the /setup body (`hostname`, `access_token`): used only for what the environment left unset."""
        with self._lock:
            if url and not self._env_url:
                self._url = url.strip().rstrip("/")
            if api_key and not self._env_key:
                self._key = api_key.strip()

    @property
    def url(self) -> str:
        with self._lock:
            return self._url

    @property
    def has_key(self) -> bool:
        with self._lock:
            return bool(self._key)

    def resolve(self, url: str, task_id: int | None, shown: str) -> str:
        """The http(s) URL to start downloading from: Label Studio-relative paths and cloud URIs go through it.

        `shown` is the URL as errors may quote it (see `fetch.redact`).
        """
        scheme = url_scheme(url)
        if scheme in HTTP_SCHEMES:
            return url
        ls_url = self.url
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

    def owns(self, url: str) -> bool:
        """Whether `url` has Label Studio's scheme, host and port: the only place credentials may go."""
        ls_url = self.url
        found = origin(url)
        return bool(ls_url) and found is not None and found == origin(ls_url)

    def authorization(self, url: str, rejected: str = "") -> str | None:
        """The Authorization header `url` may receive: Label Studio's credentials on its own origin, none elsewhere.

        `rejected` is a header Label Studio just refused: a cached access token is then exchanged anew. A network
        failure of the exchange raises `requests.RequestException`, for the caller to report.
        """
        with self._lock:
            ls_url, key = self._url, self._key
        if not key or not self.owns(url):
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
        url = token_url(ls_url)
        response = self._session.post(url, json={"refresh": refresh}, timeout=self._timeout, allow_redirects=False)
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


def token_url(ls_url: str) -> str:
    """Where Label Studio exchanges a personal access token for an access token."""
    return f"{ls_url}/api/token/refresh/"


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


def url_scheme(url: str) -> str:
    """The lower-cased scheme of `url`; empty when it has none or is malformed."""
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def origin(url: str) -> tuple[str, str, int] | None:
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
