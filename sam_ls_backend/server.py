"""The HTTP side of the backend: Label Studio's ML-backend routes over Flask, every error as JSON."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from dataclasses import asdict
from typing import Any

from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from werkzeug.exceptions import HTTPException

from sam_ls_backend import metrics as model_metrics
from sam_ls_backend.backend import SamBackend
from sam_ls_backend.errors import BackendError, InvalidRequest
from sam_ls_backend.learning.learner import Learner
from sam_ls_backend.outputs.base import JsonText
from sam_ls_backend.pipelines.base import PredictStats
from sam_ls_backend.settings import Settings

log = logging.getLogger("sam_ls_backend.http")

OPEN_ROUTES = ("/health",)  # Label Studio probes these without credentials unless told otherwise
LOGGED_ERROR_CHARS = 300


def create_app(settings: Settings, backend: SamBackend) -> Flask:
    """A Flask app serving `backend`; tests build one per case, `_wsgi.py` builds the served one."""
    app = Flask("sam_ls_backend")
    app.json = _JsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.request_max_mb * 2**20
    metrics = _Metrics(backend)

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify(status="UP", model_class=backend.model_class, model_version=backend.model_version)

    @app.post("/setup")
    def setup() -> Response:
        return jsonify(backend.setup(_json_body()))

    @app.post("/predict")
    def predict() -> Response:
        g.stats = PredictStats()
        return jsonify(backend.predict(_json_body(), g.stats))

    @app.post("/webhook")
    def webhook() -> Response:
        return jsonify(backend.webhook(_json_body()))

    @app.get("/versions")
    def versions() -> Response:
        return jsonify(versions=[backend.model_version], model_version=backend.model_version)

    @app.get("/metrics")
    def prometheus() -> Response:
        text = generate_latest(metrics.registry) + generate_latest(model_metrics.REGISTRY)
        return Response(text, mimetype="text/plain; version=0.0.4")

    @app.before_request
    def authenticate() -> Response | None:
        g.started = time.perf_counter()
        if not settings.basic_auth_enabled or request.path in OPEN_ROUTES:
            return None
        auth = request.authorization
        user = (auth.username or "") if auth and auth.type == "basic" else ""
        password = (auth.password or "") if auth and auth.type == "basic" else ""
        user_ok = hmac.compare_digest(user.encode(), settings.basic_auth_user.encode())
        password_ok = hmac.compare_digest(password.encode(), settings.basic_auth_pass.encode())
        if user_ok and password_ok:
            return None
        g.error_kind = "Unauthorized"
        response = _error(401, "authentication required: wrong or missing basic-auth credentials")
        response.headers["WWW-Authenticate"] = 'Basic realm="sam-ls-backend"'
        return response

    @app.errorhandler(BackendError)
    def backend_error(error: BackendError) -> Response:
        g.error_kind = type(error).__name__
        return _error(error.status, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        g.error_kind = type(error).__name__
        if error.code == 413:
            return _error(413, f"request body too large: the limit is {settings.request_max_mb} MB (REQUEST_MAX_MB)")
        return _error(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        g.error_kind = "InternalError"
        log.exception("unexpected error on %s", request.path)
        return _error(500, "internal error in the backend; its log has the details")

    @app.after_request
    def account(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule else "unknown"
        metrics.observe(route, _prompt_kind(g.get("stats")), response.status_code, elapsed)
        if response.status_code >= 400:
            metrics.errors.labels(kind=g.get("error_kind", "HTTPError")).inc()
        _log_request(route, response, elapsed)
        response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.1f}"  # what the backend spent, in ms
        _discard_unread_body(app.config["MAX_CONTENT_LENGTH"])
        return response

    return app


def _json_body() -> Any:
    """The request's JSON body; anything else is the client's error."""
    raw = request.get_data(cache=False)
    if not raw:
        raise InvalidRequest("the request body is empty; a JSON object is expected")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None


def _discard_unread_body(limit: int) -> None:
    """Read what is left of a body no route read (a refused login, an unknown route), if within `limit`.

    Left unread, gunicorn takes it for the start of the next request on a worker thread, and that thread then
    waits for the client to send more: one thread held for as long as the client keeps the connection open.
    """
    if 0 < (request.content_length or 0) <= limit:
        request.get_data(cache=False)


def _error(status: int, message: str) -> Response:
    response = jsonify(error=message, status=status)
    response.status_code = status
    g.error = message
    return response


def _log_request(route: str, response: Response, elapsed: float) -> None:
    """One line per request: no bodies, no masks, no credentials."""
    stats: PredictStats | None = g.get("stats")
    fields = [f"{request.method} {route}", f"status={response.status_code}", f"ms={elapsed * 1000:.0f}"]
    if stats is not None:
        fields += [f"{name}={value}" for name, value in asdict(stats).items()]
    if g.get("error"):
        error = g.error if len(g.error) <= LOGGED_ERROR_CHARS else g.error[:LOGGED_ERROR_CHARS] + "…"
        fields.append(f"error={error!r}")  # cut: an error may quote a value of the (hostile) request
    level = logging.WARNING if response.status_code >= 400 else logging.INFO
    if route in ("/health", "/metrics") and response.status_code < 400:
        level = logging.DEBUG
    log.log(level, " ".join(fields))


def _prompt_kind(stats: PredictStats | None) -> str:
    """What a /predict asked for: a task opened, a SAM 3 concept, clicks, a box, or a box with clicks; "-" for
    other routes."""
    if stats is None:
        return "-"
    if not stats.interactive:
        return "open"
    if stats.concepts:
        return "concept"
    return {(True, False): "points", (False, True): "box", (True, True): "box+points"}.get(
        (stats.points > 0, stats.boxes > 0), "invalid")


class _JsonProvider(DefaultJSONProvider):
    """Flask's JSON, writing each `JsonText` value (a brush RLE, see outputs/brush.py) as its ready-made text.

    Responses are built as bytes: the RLEs' texts (megabytes for a speckled 12-megapixel mask) are joined
    into the body once, never decoded to a str and encoded back.
    """

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return self.dump_bytes(obj, **kwargs).decode()

    def dump_bytes(self, obj: Any, end: bytes = b"", **kwargs: Any) -> bytes:
        """`obj` as UTF-8 JSON text followed by `end`, each `JsonText` spliced in as it is."""
        texts: list[bytes] = []
        marker = secrets.token_hex(16)  # a string no request can contain by chance or by design

        def default(value: Any) -> Any:
            if isinstance(value, JsonText):
                texts.append(value.data)  # the encoder meets values in document order
                return marker
            return self.default(value)

        pieces = super().dumps(obj, default=default, **kwargs).split(f'"{marker}"')
        spliced = [pieces[0].encode()]
        for text, piece in zip(texts, pieces[1:]):
            spliced += (text, piece.encode())
        spliced.append(end)
        return b"".join(spliced)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """Flask's `jsonify` answer (compact JSON and a newline), its body written once as bytes."""
        obj = self._prepare_response_obj(args, kwargs)
        layout: dict[str, Any] = {"separators": (",", ":")}
        if (self.compact is None and self._app.debug) or self.compact is False:
            layout = {"indent": 2}
        return Response(self.dump_bytes(obj, end=b"\n", **layout), mimetype=self.mimetype)


class _Metrics:
    """Prometheus counters of the HTTP side, in a registry of the app's own."""

    def __init__(self, backend: SamBackend) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sam_requests", "HTTP requests by route, prompt kind and status",
                                ["route", "kind", "status"], registry=self.registry)
        self.latency = Histogram("sam_request_seconds", "HTTP request latency by route and prompt kind",
                                 ["route", "kind"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.errors = Counter("sam_errors", "requests refused or failed, by kind of error", ["kind"],
                              registry=self.registry)
        self.registry.register(_CacheCollector(backend))
        if backend.learner is not None:
            self.registry.register(_LearningCollector(backend.learner))

    def observe(self, route: str, kind: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, kind=kind, status=str(status)).inc()
        self.latency.labels(route=route, kind=kind).observe(seconds)


class _CacheCollector:
    """Reads the embedding cache's counters at scrape time."""

    def __init__(self, backend: SamBackend) -> None:
        self.backend = backend

    def collect(self):
        stats = self.backend.cache.stats()
        yield CounterMetricFamily("sam_embedding_cache_hits", "embedding cache hits in this process", stats.hits)
        yield CounterMetricFamily("sam_embedding_cache_misses", "embedding cache misses in this process",
                                  stats.misses)
        yield GaugeMetricFamily("sam_embedding_cache_entries", "embeddings held", stats.entries)
        yield GaugeMetricFamily("sam_embedding_cache_bytes", "bytes of embeddings held", stats.cost)
        sources = CounterMetricFamily("sam_embedding_lookups", "embedding lookups by where the answer came from",
                                      labels=["source"])
        for source, count in self.backend.embeddings.sources().items():
            sources.add_metric([source], count)
        yield sources


class _LearningCollector:
    """LEARN=on: what is kept and learned, read at scrape time (the store and `learned.json` are shared)."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    def collect(self):
        status = self.learner.decoders.status()
        yield GaugeMetricFamily("sam_learning_annotations", "masks kept to learn from (every worker's)",
                                self.learner.store.count())
        yield GaugeMetricFamily("sam_learning_new_annotations", "masks kept since the last training started",
                                self.learner.store.new_masks())
        yield CounterMetricFamily("sam_learning_trainings", "trainings finished, adopted or not", status.trainings)
        yield GaugeMetricFamily("sam_learning_version_served", "learned decoder version served (0: the checkpoint's)",
                                self.learner.served.version if self.learner.served else 0)
        held_out = GaugeMetricFamily("sam_learning_held_out_iou", "click IoU on the held-out masks in the last "
                                     "training, of the decoder served before it and of the one it made",
                                     labels=["decoder"])
        for decoder, iou in (("before", status.held_out_before), ("after", status.held_out_after)):
            if iou is not None:
                held_out.add_metric([decoder], iou)
        yield held_out
        events = CounterMetricFamily("sam_learning_events", "annotation regions kept, skipped (unreadable) and "
                                     "dropped (deleted) by this process", labels=["event"])
        for event in ("kept", "skipped", "dropped"):
            events.add_metric([event], self.learner.counts[event])
        yield events
