"""A corpus of malformed and hostile requests. Each gets a clear JSON answer naming the problem (or, where the
input is odd but legitimate, the right answer), and the next valid click on the same image still gets the
right mask. The whole corpus runs through the Flask app; a representative part runs against a real server
process, whose worker must survive all of it."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from sam_ls_backend.backend import SamBackend
from sam_ls_backend.predictors.base import Embedding, MaskResult
from sam_ls_backend.protocol.prompts import Prompt
from sam_ls_backend.server import create_app
from sam_ls_backend.settings import Settings
from tests.support.backend_process import BackendProcess
from tests.support.fake_server import FakeServer, Trickle, redirect, reply
from tests.support.ls_bodies import keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region, reference_mask
from tests.support.scenes import scene

USER, PASSWORD = "ls", "hostile-pass"
IMAGE = "/data/upload/9/hostile-scene.png"
CLICK = (40.0, 55.0)
REQUEST_MAX_MB = 1
IMAGE_MAX_MB = 1
RAW = "@@raw@@"  # marks a JSON token that Python's json would not write (e.g. 1e400)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD_AUTH = basic(USER, PASSWORD)
JSON_WITH_AUTH = {"Content-Type": "application/json", **GOOD_AUTH}


@dataclass(frozen=True)
class Servers:
    """The loopback hosts the corpus points at: `hostile` is listed in ALLOWED_IMAGE_HOSTS, `forbidden` is not."""

    hostile: FakeServer
    forbidden: FakeServer


Body = Callable[[Servers], Any]


@dataclass(frozen=True)
class Case:
    """One hostile request: what is sent, the status expected, and a fragment the JSON error must contain."""

    name: str
    status: int
    says: str
    body: Body | bytes | None = None  # a JSON value built from the servers (NaN allowed), or raw bytes
    route: str = "/predict"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: GOOD_AUTH)


# ---- building hostile bodies -----------------------------------------------------------------------------


def raw(token: str) -> str:
    """A JSON token written verbatim (e.g. 1e400, which Python parses as infinity but never writes)."""
    return f"{RAW}{token}{RAW}"


def encode_json(value: Any) -> bytes:
    text = json.dumps(value)  # NaN and Infinity are written as the bare tokens Python's parser accepts
    return re.sub(f'"{RAW}(.*?){RAW}"', r"\1", text).encode()


def click(url: str = IMAGE) -> dict:
    return predict_body(url, [keypoint(*CLICK)])


def with_regions(*regions: Any) -> Body:
    return lambda servers: predict_body(IMAGE, list(regions))


def on_image(url: str | Callable[[Servers], str]) -> Body:
    """A valid click on another image URL."""
    return lambda servers: click(url(servers) if callable(url) else url)


def changed(path: str, value: Any) -> Body:
    """The valid click with the item at `path` (keys and indices split by '.') replaced, or deleted (...)."""
    def build(servers: Servers) -> dict:
        body = click()
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        holder = body
        for part in parents:
            holder = holder[part]
        if value is ...:
            del holder[last]
        else:
            holder[last] = value
        return body
    return build


def region_with(value: dict | None = None, kind: str = "keypointlabels", **top: Any) -> dict:
    """A keypoint region (or `kind`) whose value and top-level fields are overridden; `...` deletes a field."""
    region = keypoint(*CLICK) if kind == "keypointlabels" else rectangle(20, 20, 40, 40)
    region["type"] = kind
    region.update(top)
    region["value"] = {**region["value"], **(value or {})}
    for holder in (region, region["value"]):
        for key in [key for key, item in holder.items() if item is ...]:
            del holder[key]
    return region


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# ---- hostile images ----------------------------------------------------------------------------------------


def png_claiming(width: int, height: int, rows: int) -> bytes:
    """A 1-bit greyscale PNG whose header claims width×height, carrying only `rows` rows of pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    pixels = zlib.compress(bytes((1 + (width + 7) // 8) * rows), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def grey_scene() -> np.ndarray:
    """The corpus's valid image: grey (R = G = B), so a 16-bit greyscale TIFF can show exactly the same picture."""
    grey = scene(160, 120, seed=77).mean(axis=2).astype(np.uint8)
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def hostile_files(image: np.ndarray) -> dict[str, bytes]:
    """Files served on the Label Studio host under /data/upload/9/."""
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = encoded(Image.fromarray(noise), "JPEG")
    grey16 = image[:, :, 0].astype(np.uint16) * 257  # high byte = the 8-bit grey level
    bomb = png_claiming(50_000, 50_000, rows=8)
    assert len(bomb) < 5_000
    return {
        IMAGE: encoded(Image.fromarray(image), "PNG"),
        "/data/upload/9/page.html": b"<!doctype html><title>Not an image</title>",
        "/data/upload/9/truncated.jpg": jpeg[: len(jpeg) // 2],
        "/data/upload/9/empty.png": png_claiming(0, 0, rows=0),
        "/data/upload/9/bomb.png": bomb,
        "/data/upload/9/grey16.tif": encoded(Image.fromarray(grey16), "TIFF"),
        "/data/upload/9/huge-file.png": bytes(IMAGE_MAX_MB * 2**20 + 1),
    }


# ---- the corpus -------------------------------------------------------------------------------------------

VALID_TASK = click()["tasks"][0]
METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"

CASES = [
    # The body as a whole.
    Case("invalid JSON", 400, "not valid JSON", b'{"tasks": [{"data": '),
    Case("empty body", 400, "body is empty", b""),
    Case("invalid UTF-8", 400, "not valid JSON", b'{"tasks": "\xff\xfe"}'),
    Case("JSON array", 400, "must be a JSON object", b"[1, 2, 3]"),
    Case("JSON string", 400, "must be a JSON object", b'"predict"'),
    Case("JSON null", 400, "must be a JSON object", b"null"),
    Case("nesting 100 000 deep", 400, "not valid JSON", b"[" * 100_000 + b"]" * 100_000),
    Case("integer of 5 000 digits", 400, "not valid JSON", b'{"tasks": ' + b"9" * 5000 + b"}"),
    Case("body over the size cap", 413, "REQUEST_MAX_MB",
         lambda s: {**click(), "padding": "x" * (REQUEST_MAX_MB * 2**20)}),
    # Tasks.
    Case("no tasks", 400, "'tasks' must be a non-empty list", changed("tasks", ...)),
    Case("tasks is an object", 400, "'tasks' must be a non-empty list", changed("tasks", {"0": VALID_TASK})),
    Case("tasks is a string", 400, "'tasks' must be a non-empty list", changed("tasks", "tasks")),
    Case("tasks is empty", 400, "'tasks' must be a non-empty list", changed("tasks", [])),
    Case("task is null", 400, "tasks[0] must be an object", changed("tasks.0", None)),
    Case("task is a number", 400, "tasks[0] must be an object", changed("tasks.0", 7)),
    Case("task data is a string", 400, "'data' object", changed("tasks.0.data", "/data/upload/9/x.png")),
    Case("task without an image key", 400, "no image URL in data.image", changed("tasks.0.data", {"img": IMAGE})),
    Case("image URL is a number", 400, "no image URL in data.image", changed("tasks.0.data.image", 42)),
    Case("image URL is a list", 400, "no image URL in data.image", changed("tasks.0.data.image", [IMAGE])),
    Case("image URL is blank", 400, "no image URL in data.image", changed("tasks.0.data.image", "   ")),
    Case("1 001 tasks", 400, "at most 1000", changed("tasks", [VALID_TASK] * 1001)),
    # Params and context.
    Case("params is a string", 400, "'params' must be an object", changed("params", "context")),
    Case("context is a list", 400, "params.context must be an object", changed("params.context", [])),
    Case("context is a number", 400, "params.context must be an object", changed("params.context", 3)),
    Case("context missing: a task opened", 200, "", changed("params.context", ...)),
    Case("context empty: a task opened", 200, "", changed("params.context", {})),
    Case("context.result empty: a task opened", 200, "", changed("params.context.result", [])),
    Case("context.result is a string", 400, "context.result must be a list", changed("params.context.result", "x")),
    Case("context.result is an object", 400, "context.result must be a list", changed("params.context.result", {})),
    Case("context of 1 001 regions", 400, "at most 1000", with_regions(*[keypoint(*CLICK)] * 1001)),
    Case("5 000 keypoints", 400, "at most 1000", with_regions(*[
        {"type": "keypointlabels", "to_name": "image", "value": {"x": i % 100, "y": i // 50}} for i in range(5000)])),
    Case("huge context, within the cap", 200, "", changed("params.context.junk", "x" * 900_000)),
    # Label config.
    Case("no label config", 400, "label_config", changed("label_config", ...)),
    Case("label config not XML", 400, "not valid XML", changed("label_config", "<View><Image")),
    Case("label config with entities", 400, "not valid XML", changed(
        "label_config", '<!DOCTYPE v [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><View>&b;</View>')),
    Case("label config without BrushLabels", 400, "BrushLabels",
         changed("label_config", '<View><Image name="image" value="$image"/></View>')),
    Case("label config is a number", 400, "label_config", changed("label_config", 12)),
    # Regions.
    Case("region is a string", 400, "context.result[0] must be an object", with_regions("keypoint")),
    Case("region is null", 400, "context.result[0] must be an object", with_regions(None)),
    Case("only an unknown region type", 400, "no keypointlabels or rectanglelabels",
         with_regions(region_with(kind="ellipselabels"))),
    Case("region type missing", 400, "no keypointlabels or rectanglelabels", with_regions(region_with(type=...))),
    Case("region type is a number", 400, "no keypointlabels or rectanglelabels", with_regions(region_with(type=5))),
    Case("value missing", 400, "value must be an object", with_regions(region_with(value=None) | {"value": None})),
    Case("value is a list", 400, "value must be an object", with_regions(region_with() | {"value": [50, 50]})),
    Case("x missing", 400, "value.x must be a number", with_regions(region_with({"x": ...}))),
    Case("x is a string", 400, "value.x must be a number", with_regions(region_with({"x": "50"}))),
    Case("x is a boolean", 400, "value.x must be a number", with_regions(region_with({"x": True}))),
    Case("x is null", 400, "value.x must be a number", with_regions(region_with({"x": None}))),
    Case("x is nested 500 deep", 400, "value.x must be a number", with_regions(region_with({"x": nested(500)}))),
    Case("x negative", 400, "value.x must be between 0 and 100", with_regions(region_with({"x": -0.001}))),
    Case("x over 100", 400, "value.x must be between 0 and 100", with_regions(region_with({"x": 100.5}))),
    Case("x is NaN", 400, "value.x must be between 0 and 100", with_regions(region_with({"x": float("nan")}))),
    Case("x is Infinity", 400, "value.x must be between 0 and 100", with_regions(region_with({"x": float("inf")}))),
    Case("y is -Infinity", 400, "value.y must be between 0 and 100", with_regions(region_with({"y": -float("inf")}))),
    Case("x is 1e400", 400, "value.x must be between 0 and 100", with_regions(region_with({"x": raw("1e400")}))),
    Case("x of 400 digits", 400, "value.x must be between 0 and 100", with_regions(region_with({"x": 10**400}))),
    Case("zero-width rectangle", 400, "zero width or height",
         with_regions(region_with({"width": 0}, kind="rectanglelabels"))),
    Case("zero-height rectangle", 400, "zero width or height",
         with_regions(region_with({"height": 0.0}, kind="rectanglelabels"))),
    Case("negative rectangle width", 400, "value.width must be between 0 and 100",
         with_regions(region_with({"width": -10}, kind="rectanglelabels"))),
    Case("rectangle height NaN", 400, "value.height must be between 0 and 100",
         with_regions(region_with({"height": float("nan")}, kind="rectanglelabels"))),
    Case("rotation is text", 400, "value.rotation must be a number",
         with_regions(region_with({"rotation": "90deg"}, kind="rectanglelabels"))),
    Case("rotation of a billion degrees", 400, "value.rotation must be between -360 and 360",
         with_regions(region_with({"rotation": 1e9}, kind="rectanglelabels"))),
    Case("rotated image", 400, "rotated images", with_regions(region_with(image_rotation=90))),
    Case("image rotation is text", 400, "image_rotation must be a number",
         with_regions(region_with(image_rotation="90"))),
    Case("is_positive is text", 400, "is_positive must be true or false", with_regions(region_with(is_positive="no"))),
    Case("labels is a string", 400, "must be a list of label names",
         with_regions(region_with({"keypointlabels": "Foreground"}))),
    Case("labels are numbers", 400, "must be a list of label names",
         with_regions(region_with({"keypointlabels": [1]}))),
    Case("to_name missing", 400, "to_name must name the Image", with_regions(region_with(to_name=...))),
    Case("to_name names no image", 400, 'no <BrushLabels toName="nowhere">',
         with_regions(region_with(to_name="nowhere"))),
    Case("negative rectangle alone", 200, "",
         with_regions(region_with(kind="rectanglelabels", is_positive=False))),
    Case("only negative clicks", 200, "", with_regions(keypoint(10, 10, False), keypoint(90, 90, False))),
    Case("clicks on the image's very corners", 200, "", with_regions(keypoint(0, 0), keypoint(100, 100))),
    # Images.
    Case("image URL is a web page", 422, "not in an image format", on_image("/data/upload/9/page.html")),
    Case("truncated JPEG", 422, "truncated", on_image("/data/upload/9/truncated.jpg")),
    Case("0×0 PNG", 422, "not in an image format", on_image("/data/upload/9/empty.png")),
    Case("decompression bomb: 50 000 × 50 000 PNG of a few KB", 422, "pixels", on_image("/data/upload/9/bomb.png")),
    Case("image file over IMAGE_MAX_MB", 413, "IMAGE_MAX_MB", on_image("/data/upload/9/huge-file.png")),
    Case("16-bit greyscale TIFF: shown like the browser shows it", 200, "", on_image("/data/upload/9/grey16.tif")),
    Case("image missing on Label Studio", 502, "HTTP 404", on_image("/data/upload/9/missing.png")),
    Case("image URL is no URL", 400, "is not a URL", on_image("photos/cat.png")),
    Case("image URL is malformed", 400, "is not a URL", on_image("http://[::1/x.png")),
    Case("image URL has no host", 502, "could not fetch", on_image("http:///x.png")),
    Case("data: URI holding nothing", 422, "not in an image format", on_image("data:image/png;base64,####")),
    Case("image URL of 60 000 characters", 502, "HTTP 404", on_image("/data/upload/9/" + "a" * 60_000)),
    Case("redirect to a loopback host", 403, "loopback address",
         on_image(lambda s: f"{s.hostile.url}/to-loopback.png")),
    Case("redirect to the metadata service", 403, "link-local address",
         on_image(lambda s: f"{s.hostile.url}/to-metadata.png")),
    Case("metadata service itself", 403, "link-local address", on_image(METADATA)),
    Case("AWS IPv6 metadata service", 403, "private address", on_image("http://[fd00:ec2::254]/latest/meta-data/")),
    Case("unlisted loopback host", 403, "ALLOWED_IMAGE_HOSTS", on_image(lambda s: f"{s.forbidden.url}/x.png")),
    Case("server trickling bytes", 504, "IMAGE_TOTAL_TIMEOUT", on_image(lambda s: f"{s.hostile.url}/trickle.png")),
    Case("server answering 500", 502, "HTTP 500", on_image(lambda s: f"{s.hostile.url}/broken.png")),
    # Authentication and routes.
    Case("no credentials", 401, "credentials", lambda s: click(), headers={}),
    Case("wrong password", 401, "credentials", lambda s: click(), headers=basic(USER, "guess")),
    Case("malformed credentials", 401, "credentials", lambda s: click(), headers={"Authorization": "Basic !!!"}),
    Case("bearer instead of basic", 401, "credentials", lambda s: click(), headers={"Authorization": "Bearer x"}),
    Case("/setup with invalid JSON", 400, "not valid JSON", b"{", route="/setup"),
    Case("/setup with a list", 400, "must be a JSON object", b"[]", route="/setup"),
    Case("/webhook with invalid JSON", 400, "not valid JSON", b"\x00", route="/webhook"),
    Case("GET /predict", 405, "method is not allowed", method="GET"),
    Case("unknown route", 404, "not found", route="/admin"),
]
assert len(CASES) >= 60 and len({case.name for case in CASES}) == len(CASES)

# The part that also runs against a real server process.
ON_A_REAL_SERVER = [
    "invalid JSON", "nesting 100 000 deep", "body over the size cap", "task without an image key", "x is NaN",
    "x of 400 digits", "truncated JPEG", "0×0 PNG", "decompression bomb: 50 000 × 50 000 PNG of a few KB",
    "redirect to the metadata service", "server trickling bytes", "wrong password",
]


def send(case: Case, servers: Servers) -> tuple[str, str, bytes | None, dict[str, str]]:
    """(method, route, body bytes, headers) of a case."""
    if isinstance(case.body, bytes) or case.body is None:
        data = case.body
    else:
        data = encode_json(case.body(servers))
    return case.method, case.route, data, {"Content-Type": "application/json", **case.headers}


# ---- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def picture(image_host) -> np.ndarray:
    image = grey_scene()
    image_host.files.update(hostile_files(image))
    return image


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    hostile, forbidden = FakeServer(), FakeServer()
    hostile.routes["/to-loopback.png"] = redirect(f"{forbidden.url}/x.png")
    hostile.routes["/to-metadata.png"] = redirect(METADATA)
    hostile.routes["/trickle.png"] = Trickle(bytes(1000), 0.05, hostile.release)
    hostile.routes["/broken.png"] = lambda handler, request: reply(handler, 500, b"oops")
    forbidden.routes["/x.png"] = lambda handler, request: reply(handler, 200, b"must never be fetched")
    yield Servers(hostile, forbidden)
    hostile.close()
    forbidden.close()


def backend_settings(servers: Servers) -> dict[str, str]:
    """The corpus's backend settings: small caps and deadline, basic auth on, the hostile host allowed."""
    return {"ALLOWED_IMAGE_HOSTS": servers.hostile.netloc, "IMAGE_TOTAL_TIMEOUT": "1",
            "REQUEST_MAX_MB": str(REQUEST_MAX_MB), "IMAGE_MAX_MB": str(IMAGE_MAX_MB),
            "BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD}


@pytest.fixture(scope="module")
def client(make_client, servers: Servers, picture: np.ndarray):
    client, _ = make_client(**backend_settings(servers))
    return client


@pytest.fixture(scope="module")
def expected_mask(vit_t_checkpoint: Path, picture: np.ndarray) -> np.ndarray:
    """SamPredictor's mask for the corpus's valid click."""
    height, width = picture.shape[:2]
    point = np.array([[CLICK[0] * width / 100, CLICK[1] * height / 100]])
    return reference_mask(vit_t_checkpoint, picture, point, np.array([1]))[0]


@pytest.fixture(scope="module")
def expected_rle(client, expected_mask: np.ndarray) -> list[int]:
    """The brush RLE of the valid click, once checked against SamPredictor: later answers must equal it."""
    response = client.post("/predict", data=encode_json(click()), headers=JSON_WITH_AUTH)
    assert response.status_code == 200
    region = the_region(response.get_json())
    np.testing.assert_array_equal(decode_brush_region(region), expected_mask)
    return region["value"]["rle"]


def the_region(answer: dict) -> dict:
    (prediction,) = answer["results"]
    (region,) = prediction["result"]
    return region


def check_answer(case: Case, status: int, answer: Any, text: str) -> None:
    """The status expected, JSON, the error naming the problem, and no traceback."""
    assert status == case.status, f"{case.name}: {status} {text[:300]}"
    assert isinstance(answer, dict), f"{case.name}: not JSON: {text[:300]}"
    assert "Traceback" not in text
    if status >= 400:
        assert answer["status"] == status
        assert case.says.lower() in answer["error"].lower(), f"{case.name}: {answer['error'][:300]}"
        assert len(answer["error"]) < 2000, f"{case.name}: the message quotes too much of the request"
    else:
        assert "results" in answer


# ---- through the Flask app --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request_is_answered_clearly_and_the_next_click_is_right(
        case: Case, client, servers: Servers, expected_rle: list[int]) -> None:
    method, route, data, headers = send(case, servers)
    response = client.open(route, method=method, data=data, headers=headers)
    check_answer(case, response.status_code, response.get_json(silent=True), response.get_data(as_text=True))
    assert servers.forbidden.connections == 0, "a request reached the host that is not allowed"

    after = client.post("/predict", data=encode_json(click()), headers=JSON_WITH_AUTH)
    assert after.status_code == 200, after.get_data(as_text=True)
    assert the_region(after.get_json())["value"]["rle"] == expected_rle


def test_sixteen_bit_tiff_gets_the_mask_of_the_same_picture(client, expected_mask: np.ndarray) -> None:
    response = client.post("/predict", data=encode_json(click("/data/upload/9/grey16.tif")), headers=JSON_WITH_AUTH)
    assert response.status_code == 200
    np.testing.assert_array_equal(decode_brush_region(the_region(response.get_json())), expected_mask)


def test_health_stays_open_without_credentials(client) -> None:
    """Label Studio probes /health without credentials unless the backend was connected with basic auth."""
    assert client.get("/health").status_code == 200


class InstantPredictor:
    """A Predictor answering at once with an empty mask: for tests of request handling, where masks do not matter."""

    model_type = "vit_t"

    def embed(self, image: np.ndarray) -> Embedding:
        return Embedding(np.zeros(1, np.float32), image.shape[:2], image.shape[:2])

    def predict(self, embedding: Embedding, prompt: Prompt) -> MaskResult:
        return MaskResult(np.zeros(embedding.original_size, bool), 0.5, np.zeros((256, 256), np.float32))


def test_wrong_type_anywhere_in_the_body_is_never_a_server_error(image_host, picture: np.ndarray) -> None:
    """Every item of a captured Label Studio body, in turn removed or replaced by each wrong type."""
    settings = Settings.from_env({}, LABEL_STUDIO_URL=image_host.url, LABEL_STUDIO_API_KEY=image_host.token)
    client = create_app(settings, SamBackend(settings, InstantPredictor())).test_client()
    paths = list(item_paths(click()))
    assert len(paths) > 40
    for path in paths:
        for value in (..., None, True, -1, 1e308, float("nan"), "text", [], {}, [[{}]]):
            body = changed(path, value)(None)
            response = client.post("/predict", data=encode_json(body), content_type="application/json")
            answer = response.get_json(silent=True)
            assert response.status_code < 500 and isinstance(answer, dict), (path, value, response.status_code)
            assert response.status_code == 200 or answer["error"], (path, value)


def item_paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every item in a JSON value (containers and what they hold)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        path = f"{prefix}{key}"
        yield path
        yield from item_paths(item, f"{path}.")


def test_an_error_is_logged_in_one_short_line(client, servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    """A request quoting a huge value in its error must not write that value to the log."""
    body = changed("tasks.0", {"id": "x" * 500_000, "data": {"img": IMAGE}})(servers)
    with caplog.at_level("WARNING", logger="sam_ls_backend.http"):
        response = client.post("/predict", data=encode_json(body), headers=JSON_WITH_AUTH)
    assert response.status_code == 400
    (line,) = [record.getMessage() for record in caplog.records if "POST /predict" in record.getMessage()]
    assert "status=400" in line and len(line) < 2000


# ---- against a real server process ------------------------------------------------------------------------


def worker_pids(master: int) -> set[int]:
    """The gunicorn workers of the server process `master` (its children)."""
    children: set[int] = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        children |= {int(pid) for pid in (task / "children").read_text().split()}
    return children


def test_a_real_worker_survives_the_corpus(vit_t_checkpoint: Path, image_host, servers: Servers,
                                           expected_rle: list[int], tmp_path: Path) -> None:
    env = {"MOBILESAM_CHECKPOINT": str(vit_t_checkpoint), "LABEL_STUDIO_URL": image_host.url,
           "LABEL_STUDIO_API_KEY": image_host.token, "THREADS": "4", **backend_settings(servers)}
    backend = BackendProcess(env, log_path=tmp_path / "backend.log").wait_ready()
    try:
        workers = worker_pids(backend.process.pid)
        assert len(workers) == 1
        cases = {case.name: case for case in CASES}
        for name in ON_A_REAL_SERVER:
            case = cases[name]
            method, route, data, headers = send(case, servers)
            response = requests.request(method, backend.url + route, data=data, headers=headers, timeout=60)
            try:
                answer = response.json()
            except ValueError:
                answer = None
            check_answer(case, response.status_code, answer, response.text)
            after = requests.post(f"{backend.url}/predict", data=encode_json(click()), headers=JSON_WITH_AUTH,
                                  timeout=120)
            assert after.status_code == 200, f"after {name}: {after.text[:300]}"
            assert the_region(after.json())["value"]["rle"] == expected_rle, f"wrong mask after {name}"
        assert worker_pids(backend.process.pid) == workers, "the worker was replaced: it died on the way"
        assert servers.forbidden.connections == 0
        with refused_with_a_late_body(backend.port):  # kept open while the server stops
            code = backend.stop()
    finally:
        if backend.process.poll() is None:
            code = backend.stop()
    assert code == 0, "the server did not stop gracefully: " + (tmp_path / "backend.log").read_text()[-3000:]


@contextmanager
def refused_with_a_late_body(port: int) -> Iterator[None]:
    """A request with wrong credentials whose body arrives a moment after its headers, on a connection kept open.

    An answer sent before the body is read leaves the body to be taken for the next request, and a worker thread
    waiting for the rest of it for as long as the client keeps the connection: a graceful stop then never ends.
    """
    body = encode_json(click())
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: {basic(USER, 'guess')['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(head.encode())
        time.sleep(0.3)  # an eager server answers now
        client.sendall(body)
        assert client.recv(64).startswith(b"HTTP/1.1 401")
        yield
