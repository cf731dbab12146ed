"""ImageSource against real HTTP servers on loopback (one plays Label Studio, one a third-party host), and
decode_image against images built in memory."""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from sam_ls_backend.errors import ConfigError, ImageFetchError, ImageTimeout, InvalidImage, InvalidRequest
from sam_ls_backend.media.decode import decode_image
from sam_ls_backend.media.egress import Download, GuardedAdapter
from sam_ls_backend.media.fetch import MAX_REDIRECTS, ImageSource
from sam_ls_backend.settings import Settings
from tests.support.fake_server import FakeServer, Route, Seen, Trickle, redirect, reply

LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
SECRET_QUERY = "X-Amz-Signature=topsecret"
MIB = 1024 * 1024


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


IMAGE = png_bytes(Image.new("RGB", (3, 2), (200, 10, 30)))


def serve(body: bytes = IMAGE, status: int = 200) -> Route:
    return lambda handler, request: reply(handler, status, body)


@pytest.fixture
def ls() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture
def other() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def make_source(ls_url: str = "", api_key: str = "", allow: tuple[str, ...] = (), **limits: object) -> ImageSource:
    """An ImageSource for Label Studio at `ls_url`; `allow`: the host:port of loopback servers playing third parties."""
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment between us and loopback
    settings = Settings(label_studio_url=ls_url, label_studio_api_key=api_key,
                        allowed_image_hosts=",".join(allow), **limits)
    return ImageSource(settings, session)


def jwt(**claims: object) -> str:
    """A JWT with the given payload and a meaningless signature (nobody here checks it)."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


# ---- URL kinds and where credentials go -------------------------------------------------------------------


def test_upload_path_is_fetched_from_label_studio_with_the_legacy_token(ls: FakeServer) -> None:
    ls.routes["/data/upload/1/x.png"] = serve()
    assert make_source(ls.url, LEGACY_TOKEN).read("/data/upload/1/x.png", 1) == IMAGE
    assert ls.authorizations() == [f"Token {LEGACY_TOKEN}"]


def test_local_files_url_reaches_label_studio_with_its_query(ls: FakeServer) -> None:
    ls.routes["/data/local-files/"] = serve()
    assert make_source(ls.url, LEGACY_TOKEN).read("/data/local-files/?d=dir/x.png") == IMAGE
    assert ls.seen[0].target == "/data/local-files/?d=dir/x.png"
    assert ls.authorizations() == [f"Token {LEGACY_TOKEN}"]


def test_absolute_url_on_the_label_studio_host_carries_the_token(ls: FakeServer) -> None:
    ls.routes["/media/x.png"] = serve()
    assert make_source(ls.url, LEGACY_TOKEN).read(f"{ls.url}/media/x.png") == IMAGE
    assert ls.authorizations() == [f"Token {LEGACY_TOKEN}"]


def test_third_party_url_never_receives_the_token(ls: FakeServer, other: FakeServer) -> None:
    other.routes["/x.png"] = serve()
    assert make_source(ls.url, LEGACY_TOKEN, allow=(other.netloc,)).read(f"{other.url}/x.png") == IMAGE
    assert other.authorizations() == [None]
    assert ls.seen == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_from_label_studio_to_another_host_drops_the_token(
        ls: FakeServer, other: FakeServer, status: int) -> None:
    ls.routes["/data/upload/1/x.png"] = redirect(f"{other.url}/bucket/x.png?{SECRET_QUERY}", status)
    other.routes["/bucket/x.png"] = serve()
    assert make_source(ls.url, LEGACY_TOKEN, allow=(other.netloc,)).read("/data/upload/1/x.png") == IMAGE
    assert ls.authorizations() == [f"Token {LEGACY_TOKEN}"]
    assert other.authorizations() == [None]
    assert other.seen[0].target == f"/bucket/x.png?{SECRET_QUERY}"


def test_redirect_within_label_studio_keeps_the_token(ls: FakeServer) -> None:
    ls.routes["/data/upload/1/x.png"] = redirect("/data/upload/1/moved.png")
    ls.routes["/data/upload/1/moved.png"] = serve()
    assert make_source(ls.url, LEGACY_TOKEN).read("/data/upload/1/x.png") == IMAGE
    assert ls.authorizations() == [f"Token {LEGACY_TOKEN}"] * 2


def test_cloud_uri_is_presigned_by_label_studio_then_fetched_without_the_token(
        ls: FakeServer, other: FakeServer) -> None:
    uri = "s3://bucket/photos/~~~>>>.png"
    # A URI whose standard and urlsafe base64 differ, so the test sees which one was sent.
    assert base64.b64encode(uri.encode()) != base64.urlsafe_b64encode(uri.encode())
    ls.routes["/tasks/7/presign/"] = redirect(f"{other.url}/signed/x.png?{SECRET_QUERY}", 303)
    other.routes["/signed/x.png"] = serve()

    assert make_source(ls.url, LEGACY_TOKEN, allow=(other.netloc,)).read(uri, task_id=7) == IMAGE

    fileuri = parse_qs(urlsplit(ls.seen[0].target).query)["fileuri"]
    assert fileuri == [base64.urlsafe_b64encode(uri.encode()).decode()]
    assert base64.urlsafe_b64decode(fileuri[0]).decode() == uri
    assert ls.authorizations() == [f"Token {LEGACY_TOKEN}"]
    assert other.authorizations() == [None]


@pytest.mark.parametrize("uri", ["gs://bucket/x.png", "azure-blob://container/x.png", "azure-spi://container/x.png"])
def test_every_cloud_scheme_goes_through_presign(ls: FakeServer, uri: str) -> None:
    ls.routes["/tasks/3/presign/"] = serve()
    assert make_source(ls.url, LEGACY_TOKEN).read(uri, task_id=3) == IMAGE
    assert [request.path for request in ls.seen] == ["/tasks/3/presign/"]


def test_data_uri_is_decoded_locally() -> None:
    uri = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    assert make_source().read(uri) == IMAGE


def test_data_uri_with_broken_base64_is_invalid() -> None:
    with pytest.raises(InvalidImage) as caught:
        make_source().read("data:image/png;base64,abc")
    assert caught.value.status == 422


def test_data_uri_beyond_the_byte_cap_is_refused() -> None:
    uri = "data:image/png;base64," + base64.b64encode(bytes(MIB + 1)).decode()
    with pytest.raises(InvalidImage) as caught:
        make_source(image_max_mb=1).read(uri)
    assert caught.value.status == 413
    assert "IMAGE_MAX_MB" in caught.value.message


def test_setup_values_fill_in_what_the_environment_left_unset(ls: FakeServer) -> None:
    ls.routes["/data/upload/1/x.png"] = serve()
    source = make_source()
    source.use_label_studio(ls.url + "/", "setup-token")
    assert source.read("/data/upload/1/x.png") == IMAGE
    assert ls.authorizations() == ["Token setup-token"]


def test_environment_values_win_over_setup(ls: FakeServer, other: FakeServer) -> None:
    ls.routes["/data/upload/1/x.png"] = serve()
    source = make_source(ls.url, LEGACY_TOKEN)
    source.use_label_studio(other.url, "setup-token")
    assert source.read("/data/upload/1/x.png") == IMAGE
    assert ls.authorizations() == [f"Token {LEGACY_TOKEN}"]
    assert other.seen == []


def test_relative_url_without_label_studio_url_names_the_setting() -> None:
    with pytest.raises(ImageFetchError) as caught:
        make_source().read("/data/upload/1/x.png")
    assert caught.value.status == 502
    assert "LABEL_STUDIO_URL is not set" in caught.value.message
    assert "/data/upload/1/x.png" in caught.value.message


def test_cloud_uri_without_task_id_is_a_bad_request(ls: FakeServer) -> None:
    with pytest.raises(InvalidRequest) as caught:
        make_source(ls.url, LEGACY_TOKEN).read("s3://bucket/x.png")
    assert caught.value.status == 400
    assert ls.seen == []


def test_text_that_is_no_url_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest):
        make_source("http://127.0.0.1:9").read("photos/x.png")


# ---- personal access tokens -------------------------------------------------------------------------------


class TokenServer:
    """Label Studio's /api/token/refresh/ plus one image that wants the newest access token it issued."""

    def __init__(self, ls: FakeServer, pat: str, lifetime: float) -> None:
        self.pat = pat
        self.lifetime = lifetime
        self.issued: list[str] = []
        self.bodies: list[object] = []
        ls.routes["/api/token/refresh/"] = self.refresh
        ls.routes["/data/upload/1/x.png"] = self.image

    def refresh(self, handler: BaseHTTPRequestHandler, request: Seen) -> None:
        body = json.loads(request.body)
        self.bodies.append(body)
        if body != {"refresh": self.pat}:
            reply(handler, 401, b'{"detail": "token not valid"}')
            return
        token = jwt(token_type="access", exp=int(time.time() + self.lifetime), jti=str(len(self.issued)))
        self.issued.append(token)
        reply(handler, 200, json.dumps({"access": token}).encode(), {"Content-Type": "application/json"})

    def image(self, handler: BaseHTTPRequestHandler, request: Seen) -> None:
        if self.issued and request.headers.get("Authorization") == f"Bearer {self.issued[-1]}":
            reply(handler, 200, IMAGE)
        else:
            reply(handler, 401, b'{"detail": "invalid token"}')


def personal_access_token(jti: str = "pat") -> str:
    return jwt(token_type="refresh", exp=int(time.time()) + 86400, jti=jti)


def test_personal_access_token_is_exchanged_once_and_reused(ls: FakeServer) -> None:
    pat = personal_access_token()
    tokens = TokenServer(ls, pat, lifetime=300)
    source = make_source(ls.url, pat)
    assert source.read("/data/upload/1/x.png") == IMAGE
    assert source.read("/data/upload/1/x.png") == IMAGE
    assert tokens.bodies == [{"refresh": pat}]
    images = [request for request in ls.seen if request.path == "/data/upload/1/x.png"]
    assert [request.headers.get("Authorization") for request in images] == [f"Bearer {tokens.issued[0]}"] * 2


def test_access_token_near_its_expiry_is_renewed(ls: FakeServer) -> None:
    pat = personal_access_token()
    tokens = TokenServer(ls, pat, lifetime=10)  # inside the 30 s margin: never worth reusing
    source = make_source(ls.url, pat)
    source.read("/data/upload/1/x.png")
    source.read("/data/upload/1/x.png")
    assert len(tokens.bodies) == 2


def test_rejected_cached_access_token_is_renewed_once_and_the_request_retried(ls: FakeServer) -> None:
    pat = personal_access_token()
    tokens = TokenServer(ls, pat, lifetime=300)
    source = make_source(ls.url, pat)
    source.read("/data/upload/1/x.png")
    tokens.issued.append("revokes-the-first")  # the server now only accepts a token issued after this
    assert source.read("/data/upload/1/x.png") == IMAGE
    assert len(tokens.bodies) == 2
    images = [request for request in ls.seen if request.path == "/data/upload/1/x.png"]
    assert [request.headers.get("Authorization") for request in images] == [
        f"Bearer {tokens.issued[0]}", f"Bearer {tokens.issued[0]}", f"Bearer {tokens.issued[-1]}"]


def test_personal_access_token_is_not_sent_to_third_parties(ls: FakeServer, other: FakeServer) -> None:
    pat = personal_access_token()
    tokens = TokenServer(ls, pat, lifetime=300)
    other.routes["/x.png"] = serve()
    make_source(ls.url, pat, allow=(other.netloc,)).read(f"{other.url}/x.png")
    assert other.authorizations() == [None]
    assert tokens.bodies == []


def test_refused_personal_access_token_names_the_setting(ls: FakeServer) -> None:
    TokenServer(ls, personal_access_token(), lifetime=300)
    with pytest.raises(ImageFetchError) as caught:
        make_source(ls.url, personal_access_token(jti="revoked")).read("/data/upload/1/x.png")
    assert caught.value.status == 502
    assert "LABEL_STUDIO_API_KEY" in caught.value.message


def test_legacy_token_rejected_is_not_retried_and_names_the_setting(ls: FakeServer) -> None:
    ls.routes["/data/upload/1/x.png"] = serve(b"", status=401)
    with pytest.raises(ImageFetchError) as caught:
        make_source(ls.url, LEGACY_TOKEN).read("/data/upload/1/x.png")
    assert caught.value.status == 502
    assert "LABEL_STUDIO_API_KEY" in caught.value.message
    assert len(ls.seen) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_missing_token_refused_by_label_studio_says_to_set_it(ls: FakeServer, status: int) -> None:
    ls.routes["/data/upload/1/x.png"] = serve(b"", status=status)
    with pytest.raises(ImageFetchError) as caught:
        make_source(ls.url).read("/data/upload/1/x.png")
    assert caught.value.status == 502
    assert "set LABEL_STUDIO_API_KEY" in caught.value.message
    assert ls.authorizations() == [None]


# ---- failures, limits, timeouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 500])
def test_upstream_error_is_a_bad_gateway_without_the_query_string(other: FakeServer, status: int) -> None:
    other.routes["/x.png"] = serve(b"nope", status=status)
    with pytest.raises(ImageFetchError) as caught:
        make_source(allow=(other.netloc,)).read(f"{other.url}/x.png?{SECRET_QUERY}")
    assert caught.value.status == 502
    assert str(status) in caught.value.message
    assert f"{other.url}/x.png" in caught.value.message
    assert "topsecret" not in caught.value.message and "?" not in caught.value.message


def test_error_at_a_signed_url_hides_its_query(ls: FakeServer, other: FakeServer) -> None:
    ls.routes["/tasks/7/presign/"] = redirect(f"{other.url}/signed/x.png?{SECRET_QUERY}", 303)
    other.routes["/signed/x.png"] = serve(b"expired", status=403)
    with pytest.raises(ImageFetchError) as caught:
        make_source(ls.url, LEGACY_TOKEN, allow=(other.netloc,)).read("s3://bucket/x.png", task_id=7)
    assert "403" in caught.value.message and "s3://bucket/x.png" in caught.value.message
    assert "topsecret" not in caught.value.message and "fileuri" not in caught.value.message


def test_connection_refused_is_a_bad_gateway() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ImageFetchError) as caught:
        make_source(allow=(f"127.0.0.1:{port}",)).read(f"http://127.0.0.1:{port}/x.png?{SECRET_QUERY}")
    assert caught.value.status == 502
    assert "topsecret" not in caught.value.message


def test_endless_redirects_stop(ls: FakeServer) -> None:
    ls.routes["/loop"] = redirect("/loop")
    with pytest.raises(ImageFetchError) as caught:
        make_source(ls.url, LEGACY_TOKEN).read("/loop")
    assert caught.value.status == 502
    assert len(ls.seen) == MAX_REDIRECTS + 1


def test_redirect_to_a_non_http_url_is_not_followed(ls: FakeServer) -> None:
    ls.routes["/data/upload/1/x.png"] = redirect("file:///etc/passwd")
    with pytest.raises(ImageFetchError) as caught:
        make_source(ls.url, LEGACY_TOKEN).read("/data/upload/1/x.png")
    assert "not http(s)" in caught.value.message


def test_slow_answer_times_out(other: FakeServer) -> None:
    def slow(handler: BaseHTTPRequestHandler, request: Seen) -> None:
        other.release.wait(5)
        reply(handler, 200, IMAGE)

    other.routes["/x.png"] = slow
    with pytest.raises(ImageTimeout) as caught:
        make_source(allow=(other.netloc,), image_read_timeout=0.3).read(f"{other.url}/x.png")
    assert caught.value.status == 504


def test_body_that_stalls_midway_times_out(other: FakeServer) -> None:
    def stall(handler: BaseHTTPRequestHandler, request: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(IMAGE)))
        handler.end_headers()
        handler.wfile.write(IMAGE[:10])
        handler.wfile.flush()
        other.release.wait(5)

    other.routes["/x.png"] = stall
    with pytest.raises(ImageTimeout):
        make_source(allow=(other.netloc,), image_read_timeout=0.3).read(f"{other.url}/x.png")


def test_content_length_beyond_the_cap_is_refused_before_reading(other: FakeServer) -> None:
    def announce_big(handler: BaseHTTPRequestHandler, request: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(2 * MIB))
        handler.end_headers()
        handler.wfile.flush()
        other.release.wait(5)  # sends no body: reading it would end in a timeout, not in 413

    other.routes["/big.png"] = announce_big
    with pytest.raises(InvalidImage) as caught:
        make_source(allow=(other.netloc,), image_max_mb=1, image_read_timeout=3).read(f"{other.url}/big.png")
    assert caught.value.status == 413


def chunked(total: int, stall: threading.Event | None = None) -> Route:
    """A chunked body (no Content-Length) of `total` zero bytes; with `stall`, it waits before the last chunk."""
    def route(handler: BaseHTTPRequestHandler, request: Seen) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        block = bytes(64 * 1024)
        sent = 0
        while sent < total:
            piece = block[: total - sent]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        handler.wfile.flush()
        if stall is not None:
            stall.wait(5)
        handler.wfile.write(b"0\r\n\r\n")

    return route


def test_chunked_body_beyond_the_cap_is_refused_as_soon_as_the_cap_is_passed(other: FakeServer) -> None:
    # The server sends just over the cap, then stalls: reading on past the cap would time out instead.
    other.routes["/big.png"] = chunked(MIB + 100_000, stall=other.release)
    with pytest.raises(InvalidImage) as caught:
        make_source(allow=(other.netloc,), image_max_mb=1, image_read_timeout=3).read(f"{other.url}/big.png")
    assert caught.value.status == 413


def test_chunked_body_within_the_cap_is_read_whole(other: FakeServer) -> None:
    other.routes["/ok.png"] = chunked(MIB - 1)
    assert make_source(allow=(other.netloc,), image_max_mb=1).read(f"{other.url}/ok.png") == bytes(MIB - 1)


# ---- where downloads may connect, and for how long ------------------------------------------------------------


class Connects:
    """Every socket connection the process attempts while recording; attempts beyond loopback are refused.

    Built on the `socket.connect` audit event, so it sees connections however they are made, and it keeps a test
    that resolves names to public addresses from ever leaving the machine.
    """

    recording: list[tuple[str, int]] | None = None

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if event != "socket.connect" or cls.recording is None or not isinstance(args[1], tuple):
            return
        host, port = args[1][:2]
        cls.recording.append((host, port))
        if not host.startswith("127."):
            raise ConnectionRefusedError(f"test refuses to leave loopback for {host}")


sys.addaudithook(Connects.hook)


@pytest.fixture
def connects() -> Iterator[list[tuple[str, int]]]:
    Connects.recording = []
    yield Connects.recording
    Connects.recording = None


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Names ending in .test resolve to the next list of addresses given for them here (the last one repeats)."""
    answers: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        if not isinstance(host, str) or not host.endswith(".test"):
            return real(host, port, *args, **kwargs)
        queue = answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_loopback_host_not_allowed_is_refused_without_a_connection(other: FakeServer, connects: list) -> None:
    other.routes["/x.png"] = serve()
    with pytest.raises(ImageFetchError) as caught:
        make_source().read(f"{other.url}/x.png")
    assert caught.value.status == 403
    assert "loopback" in caught.value.message and "ALLOWED_IMAGE_HOSTS" in caught.value.message
    assert other.connections == 0 and connects == []


@pytest.mark.parametrize("host, kind", [
    ("169.254.169.254", "link-local"),  # AWS, GCP, Azure, OpenStack metadata
    ("[fd00:ec2::254]", "private"),  # AWS metadata over IPv6
    ("100.100.100.200", "non-global"),  # Alibaba Cloud metadata, in the shared address space
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("[fe80::1]", "link-local"),
    ("[::1]", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("[::ffff:127.0.0.1]", "loopback"),  # IPv4-mapped
    ("[64:ff9b::a9fe:a9fe]", "link-local"),  # NAT64 of 169.254.169.254
    ("[2002:a00:1::]", "private"),  # 6to4 of 10.0.0.1
    ("2130706433", "loopback"),  # 127.0.0.1 written as one number, which the resolver accepts
    ("0x7f.1", "loopback"),
    ("localhost", "loopback"),
])
def test_internal_addresses_are_refused_before_connecting(host: str, kind: str, connects: list) -> None:
    with pytest.raises(ImageFetchError) as caught:
        make_source(image_connect_timeout=0.5).read(f"http://{host}/latest/meta-data/")
    assert caught.value.status == 403
    assert f"{kind} address)" in caught.value.message
    assert connects == []


def test_redirect_to_an_unlisted_loopback_host_is_refused(ls: FakeServer, other: FakeServer) -> None:
    ls.routes["/data/upload/1/x.png"] = redirect(f"{other.url}/x.png")
    other.routes["/x.png"] = serve()
    with pytest.raises(ImageFetchError) as caught:
        make_source(ls.url, LEGACY_TOKEN).read("/data/upload/1/x.png")
    assert caught.value.status == 403
    assert f"reached through '{other.url}/x.png'" in caught.value.message
    assert other.connections == 0


def test_redirect_to_the_metadata_address_is_refused(other: FakeServer, connects: list) -> None:
    other.routes["/x.png"] = redirect("http://169.254.169.254/latest/meta-data/iam/")
    with pytest.raises(ImageFetchError) as caught:
        make_source(allow=(other.netloc,)).read(f"{other.url}/x.png")
    assert caught.value.status == 403 and "link-local" in caught.value.message
    assert [port for _, port in connects] == [other.httpd.server_address[1]]


def test_a_name_with_one_internal_address_among_public_ones_is_refused(resolver: dict, connects: list) -> None:
    resolver["cdn.test"] = [["93.184.215.14", "10.0.0.7", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]]
    with pytest.raises(ImageFetchError) as caught:
        make_source().read("http://cdn.test/x.png")
    assert caught.value.status == 403 and "10.0.0.7" in caught.value.message
    assert connects == []


def test_connection_goes_to_the_address_that_was_checked(resolver: dict, connects: list) -> None:
    """DNS rebinding: the name answers a public address, then loopback; only the checked answer is used."""
    resolver["rebind.test"] = [["93.184.215.14"], ["127.0.0.1"]]
    with pytest.raises(ImageFetchError) as caught:
        make_source().read("http://rebind.test/x.png")
    assert caught.value.status == 502  # the (refused) public address, never loopback
    assert connects == [("93.184.215.14", 80)]


def test_allowed_host_with_a_port_allows_only_that_port(other: FakeServer, ls: FakeServer) -> None:
    other.routes["/x.png"] = serve()
    ls.routes["/x.png"] = serve()
    source = make_source(allow=(other.netloc,))
    assert source.read(f"{other.url}/x.png") == IMAGE
    with pytest.raises(ImageFetchError) as caught:
        source.read(f"{ls.url}/x.png")
    assert caught.value.status == 403 and ls.connections == 0


def test_allowed_host_without_a_port_allows_every_port(other: FakeServer, ls: FakeServer) -> None:
    other.routes["/x.png"] = serve()
    ls.routes["/x.png"] = serve()
    source = make_source(allow=("127.0.0.1",))
    assert source.read(f"{other.url}/x.png") == source.read(f"{ls.url}/x.png") == IMAGE


def test_label_studio_host_set_by_setup_may_be_internal(ls: FakeServer) -> None:
    ls.routes["/data/upload/1/x.png"] = serve()
    source = make_source()
    source.use_label_studio(ls.url, "setup-token")
    assert source.read("/data/upload/1/x.png") == IMAGE


@pytest.mark.parametrize("entry", ["http://host", "host/path", "user@host", "host:port", ":80"])
def test_malformed_allowed_hosts_stop_the_start(entry: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_source(allow=("good.example", entry))
    assert "ALLOWED_IMAGE_HOSTS" in caught.value.message and repr(entry) in caught.value.message


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_trickling_server_is_cut_off_at_the_total_deadline(other: FakeServer, headers_too: bool) -> None:
    # 400 bytes, one every 50 ms: each well within the read timeout, 20 s in all.
    other.routes["/x.png"] = slow = Trickle(bytes(400), 0.05, other.release, headers_too=headers_too)
    with pytest.raises(ImageTimeout) as caught:
        make_source(allow=(other.netloc,), image_read_timeout=5, image_total_timeout=0.5).read(f"{other.url}/x.png")
    assert caught.value.status == 504
    assert "IMAGE_TOTAL_TIMEOUT" in caught.value.message
    assert not slow.finished, "the download was not cut off: it waited for the whole answer"


def test_deadline_covers_every_redirect_hop(other: FakeServer) -> None:
    other.routes["/x.png"] = redirect("/slow.png")
    other.routes["/slow.png"] = slow = Trickle(bytes(400), 0.05, other.release)
    with pytest.raises(ImageTimeout):
        make_source(allow=(other.netloc,), image_total_timeout=0.5).read(f"{other.url}/x.png")
    assert [request.path for request in other.seen] == ["/x.png", "/slow.png"]
    assert not slow.finished


def test_a_connection_kept_alive_from_an_earlier_download_is_watched_too(other: FakeServer) -> None:
    other.routes["/small.png"] = serve()
    other.routes["/x.png"] = slow = Trickle(bytes(400), 0.05, other.release)
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", GuardedAdapter())
    with Download(lambda host, port: True, 5):
        assert session.get(f"{other.url}/small.png", timeout=5).content == IMAGE  # back to the pool, still open
    with pytest.raises(requests.RequestException), Download(lambda host, port: True, 0.5) as download:
        session.get(f"{other.url}/x.png", timeout=5)
    assert download.expired and other.connections == 1
    assert not slow.finished


def test_through_a_proxy_the_target_is_checked_before_the_proxy_is_asked(other: FakeServer) -> None:
    other.routes["/x.png"] = serve()  # plays an HTTP proxy: it is asked for the absolute URL
    source = make_source()
    source._session.proxies = {"http": other.url}
    with pytest.raises(ImageFetchError) as caught:
        source.read("http://10.0.0.8/x.png")
    assert caught.value.status == 403 and other.connections == 0
    allowed = make_source(allow=("images.internal",))
    allowed._session.proxies = {"http": other.url}
    assert allowed.read("http://images.internal/x.png") == IMAGE
    assert other.seen[0].target == "http://images.internal/x.png"


# ---- decoding ---------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: the stored left side is on top
    array = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), 10**6)
    assert array.shape == (40, 20, 3)
    assert array.dtype == np.uint8 and array.flags.c_contiguous
    top, bottom = array[5, 10].astype(int), array[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(("image", "expected"), [
    (Image.new("L", (4, 3), 77), (77, 77, 77)),
    (Image.new("1", (4, 3), 1), (255, 255, 255)),
    (Image.new("RGBA", (4, 3), (10, 20, 30, 0)), (10, 20, 30)),  # alpha dropped, not blended
    (Image.new("LA", (4, 3), (90, 0)), (90, 90, 90)),
    (Image.new("CMYK", (4, 3), (255, 0, 0, 0)), (0, 255, 255)),
], ids=["L", "1", "RGBA", "LA", "CMYK"])
def test_modes_become_rgb(image: Image.Image, expected: tuple[int, int, int]) -> None:
    array = decode_image(encode(image, "TIFF" if image.mode == "CMYK" else "PNG"), 10**6)
    assert array.shape == (3, 4, 3) and array.dtype == np.uint8 and array.flags.c_contiguous
    assert (array == expected).all()


def test_palette_image_becomes_its_colours() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([250, 0, 0, 0, 0, 250] + [0] * 762)
    image.putpixel((1, 0), 1)
    array = decode_image(encode(image, "PNG"), 10**6)
    assert array.tolist() == [[[250, 0, 0], [0, 0, 250]]]


VALUES_16 = [0, 255, 256, 4660, 65535]
HIGH_BYTES = [0, 0, 1, 0x12, 255]


def test_sixteen_bit_png_keeps_the_high_byte() -> None:
    data = encode(Image.fromarray(np.array([VALUES_16], dtype=np.uint16)), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    array = decode_image(data, 10**6)
    assert array[0, :, 0].tolist() == HIGH_BYTES
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all()


def test_big_endian_sixteen_bit_keeps_the_high_byte() -> None:
    image = Image.frombytes("I;16B", (len(VALUES_16), 1), np.array(VALUES_16, dtype=">u2").tobytes())
    data = encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    assert decode_image(data, 10**6)[0, :, 1].tolist() == HIGH_BYTES


def test_thirty_two_bit_grey_within_sixteen_bits_keeps_the_high_byte() -> None:
    data = encode(Image.fromarray(np.array([VALUES_16], dtype=np.int32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert decode_image(data, 10**6)[0, :, 2].tolist() == HIGH_BYTES


def test_float_image_is_stretched_over_its_range() -> None:
    data = encode(Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32)), "TIFF")
    assert decode_image(data, 10**6)[0, :, 0].tolist() == [0, 64, 255]


def test_truncated_jpeg_is_invalid() -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(InvalidImage) as caught:
        decode_image(data[: len(data) // 2], 10**6)
    assert caught.value.status == 422


@pytest.mark.parametrize("data", [b"", np.random.default_rng(1).bytes(4096)], ids=["empty", "random"])
def test_bytes_that_are_no_image_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage) as caught:
        decode_image(data, 10**6)
    assert caught.value.status == 422


def grey_png(width: int, height: int, bit_depth: int, pixels: bytes) -> bytes:
    """A greyscale PNG written by hand, so its header can claim any size (`pixels`: the filtered rows)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels, 9))
            + chunk(b"IEND", b""))


def test_zero_width_png_is_invalid() -> None:
    with pytest.raises(InvalidImage):
        decode_image(grey_png(0, 5, 8, b""), 10**6)


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any image's pixel data is decoded."""
    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_pixel_cap_is_checked_from_the_header(no_pixel_decoding: None) -> None:
    data = encode(Image.new("1", (9000, 9000)), "PNG")  # 81 megapixels in about 10 KB
    assert len(data) < 20_000
    with pytest.raises(InvalidImage) as caught:
        decode_image(data, 50 * 10**6)
    assert caught.value.status == 422
    assert "9000×9000" in caught.value.message and "IMAGE_MAX_MEGAPIXELS" in caught.value.message


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A 20000×20000 black 1-bit PNG: 400 megapixels in about 50 KB."""
    data = grey_png(20000, 20000, 1, bytes((1 + 20000 // 8) * 20000))
    assert len(data) < 100_000
    return data


def test_huge_dimension_png_is_refused_without_decoding(huge_png: bytes, no_pixel_decoding: None) -> None:
    with pytest.raises(InvalidImage) as caught:
        decode_image(huge_png, 150 * 10**6)
    assert caught.value.status == 422


def test_pixel_cap_does_not_depend_on_pillows_global_limit(
        huge_png: bytes, no_pixel_decoding: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as if another module had switched Pillow's guard off
    with pytest.raises(InvalidImage) as caught:
        decode_image(huge_png, 150 * 10**6)
    assert "20000×20000" in caught.value.message


def test_image_at_the_pixel_cap_is_accepted() -> None:
    assert decode_image(encode(Image.new("RGB", (10, 5)), "PNG"), 50).shape == (5, 10, 3)


SAMPLES = [encode(Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 24, 3), dtype=np.uint8)), fmt)
           for fmt in ("PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP")]


@pytest.mark.filterwarnings("ignore:Truncated File Read")
@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.sampled_from(SAMPLES), cut=st.integers(0, 4000),
       flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=4))
def test_damaged_files_decode_or_raise_invalid_image(sample: bytes, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(sample[: max(len(sample) - cut, 0)])
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    try:
        array = decode_image(bytes(data), 10**6)
    except InvalidImage:
        return
    assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8 and array.flags.c_contiguous
