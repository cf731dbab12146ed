"""Where task-image downloads may connect, and for how long.

Image URLs come from task data that anyone with access to a project can write, so a download must not become
a way into the backend's own network (server-side request forgery). `GuardedAdapter` is a requests transport
that resolves every host itself, refuses it when any of its addresses is loopback, private, link-local (cloud
metadata), shared, reserved or multicast, unless the host is trusted, and then connects to exactly the
addresses it checked: a DNS answer that changes between the check and the connection (rebinding) cannot
slip through. `Download` is one download on the calling thread: which hosts it trusts, and a total deadline
after which its sockets are shut down, so that a server trickling bytes cannot hold a thread.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from typing import Any
from urllib.parse import urlsplit

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.utils import select_proxy
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import create_connection

DEFAULT_PORTS = {"http": 80, "https": 443}
# IPv6 prefixes that carry an IPv4 address a gateway will reach on our behalf (NAT64).
NAT64 = IPv6Network("64:ff9b::/96")

Trusted = Callable[[str, int], bool]


class AddressRefused(Exception):
    """`host` resolves to `address`, which downloads may not reach.

    Deliberately not an OSError: urllib3 and requests let it through unwrapped, so the caller can say why.
    """

    def __init__(self, host: str, address: str, kind: str) -> None:
        super().__init__(f"{host} resolves to {address} ({kind} address)")
        self.host, self.address, self.kind = host, address, kind


def refusal_kind(address: str) -> str | None:
    """Why `address` is no place for a download ('loopback', 'link-local', ...); None for a public address."""
    ip = ip_address(address.partition("%")[0])
    if isinstance(ip, IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        inner = refusal_kind(str(embedded)) if embedded is not None else None
        if inner is not None:
            return f"IPv6-embedded {inner}"
        if ip.is_site_local:
            return "site-local"
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-global"


class Download:
    """One download on the calling thread: the hosts it trusts and its deadline.

    Used as a context manager around every request a download makes. The connections it opens register their
    sockets here; when the deadline passes they are shut down, which ends any blocked read at once.
    """

    _active = threading.local()

    def __init__(self, trusted: Trusted, seconds: float) -> None:
        self._trusted = trusted
        self._ends = time.monotonic() + seconds
        self._watched: list[socket.socket] = []
        self._lock = threading.Lock()
        self._finished = False
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Download:
        self._active.download = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._active.download = None
        with self._lock:
            self._finished = True
            for watched in self._watched:
                watched.close()

    @classmethod
    def current(cls) -> Download:
        """The download running on this thread; connecting outside one is a programming error."""
        download = getattr(cls._active, "download", None)
        if download is None:
            raise RuntimeError("a guarded connection was opened outside a Download")
        return download

    def remaining(self) -> float:
        return max(self._ends - time.monotonic(), 0.0)

    def addresses(self, host: str, port: int, trusted: bool = False) -> list[str]:
        """Every address `host` resolves to; raises AddressRefused if the host is untrusted and any is not public."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not (trusted or self.trusts(host, port)):
            for address in addresses:
                kind = refusal_kind(address)
                if kind is not None:
                    raise AddressRefused(host, address, kind)
        return addresses

    def trusts(self, host: str, port: int) -> bool:
        """Whether `host:port` may resolve to internal addresses."""
        return self._trusted(host.lower().rstrip("."), port)

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down when the deadline passes (through a duplicate, so TLS sockets work as well)."""
        duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        with self._lock:
            if self._finished:
                duplicate.close()
                return
            self._watched.append(duplicate)
            if self.expired:
                duplicate.shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            for watched in self._watched:
                try:
                    watched.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the peer


class _GuardedConnection(HTTPConnection):
    """Connects only to addresses the current Download accepts, and registers its socket with it."""

    def _new_conn(self) -> socket.socket:
        download = Download.current()
        try:
            # A connection to a configured proxy is the operator's choice; the target was checked in `send`.
            addresses = download.addresses(self.host, self.port, trusted=self.proxy is not None)
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error
        failure: Exception = NewConnectionError(self, f"no address to connect to for {self.host}")
        for address in addresses:
            timeout = download.remaining()
            if isinstance(self.timeout, (int, float)):
                timeout = min(timeout, self.timeout)
            try:
                sock = create_connection((address, self.port), timeout, source_address=self.source_address,
                                         socket_options=self.socket_options)
            except TimeoutError as error:
                failure = ConnectTimeoutError(self, f"connection to {self.host} ({address}) timed out")
                failure.__cause__ = error
            except OSError as error:
                failure = NewConnectionError(self, f"failed to connect to {self.host} ({address}): {error}")
                failure.__cause__ = error
            else:
                sys.audit("http.client.connect", self, self.host, self.port)
                download.watch(sock)
                return sock
        raise failure

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:  # a kept-alive connection now serves the current download
            Download.current().watch(self.sock)
        super().request(*args, **kwargs)


class _GuardedHTTPSConnection(_GuardedConnection, HTTPSConnection):
    """TLS on top of the guarded socket; the certificate is still checked against the host name."""


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_POOLS = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class GuardedAdapter(HTTPAdapter):
    """A requests transport whose every connection goes through `Download.current()`'s checks and deadline.

    Through an HTTP(S) proxy the target's name is checked before the request, and the proxy resolves it again:
    a proxy should enforce its own egress rules.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = _POOLS
        return manager

    def send(self, request: PreparedRequest, stream: bool = False, timeout: Any = None, verify: Any = True,
             cert: Any = None, proxies: dict[str, str] | None = None) -> Response:
        if select_proxy(request.url or "", proxies):
            target = urlsplit(str(request.url))
            host, port = target.hostname or "", target.port or DEFAULT_PORTS[target.scheme]
            download = Download.current()
            try:
                if not download.trusts(host, port):
                    download.addresses(host, port)
            except socket.gaierror:
                raise RequestsConnectionError(f"cannot resolve {target.hostname}", request=request) from None
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
