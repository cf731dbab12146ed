"""Embeddings shared by every worker and replica through Redis, so an image is encoded once per deployment.

Two kinds of entries, both namespaced by the model's fingerprint and runtime so that replicas on another
checkpoint or runtime never read them: the embedding of an image (keyed by the SHA-256 of its bytes, float16 at
rest), and which image a task URL showed (so a warm replica neither downloads nor encodes). Redis being down
never fails a click: the backend logs it and carries on with its own cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np
import redis

from sam_ls_backend.predictors.base import Embedding, mapped_copy

log = logging.getLogger(__name__)

MAX_FEATURE_VALUES = 64 * 2**20  # beyond SAM 3's feature pyramid: not an embedding we wrote
_HEADER_END = b"\n"
_QUIET_SECONDS = 60.0  # after a Redis failure, log the next one no sooner than this


class SharedEmbeddings:
    """Embeddings and URL → image digests in Redis, float16 at rest, expiring after `ttl_seconds`."""

    def __init__(self, url: str, namespace: str, ttl_seconds: int, client: redis.Redis | None = None) -> None:
        self._redis = client or redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.namespace = namespace
        self._prefix = f"sam-ls-backend:{namespace}:"
        self._ttl = ttl_seconds
        self._quiet_until = 0.0

    def get(self, digest: str) -> Embedding | None:
        """The embedding of the image whose bytes hash to `digest`, or None."""
        raw = self._call("read", self._redis.get, self._prefix + "embedding:" + digest)
        if raw is None:
            return None
        try:
            return _unpack(raw)
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignoring a malformed shared embedding %s: %s", digest[:12], error)
            return None

    def put(self, digest: str, embedding: Embedding) -> None:
        self._call("write", self._redis.set, self._prefix + "embedding:" + digest, _pack(embedding), ex=self._ttl)

    def image_digest(self, url: str) -> str | None:
        """Which image (by digest) a task URL showed, as some replica found out."""
        raw = self._call("read", self._redis.get, self._url_key(url))
        return raw.decode() if isinstance(raw, bytes) else None

    def remember_image(self, url: str, digest: str) -> None:
        self._call("write", self._redis.set, self._url_key(url), digest.encode(), ex=self._ttl)

    def _url_key(self, url: str) -> str:
        return self._prefix + "url:" + hashlib.sha256(url.encode()).hexdigest()

    def _call(self, what: str, method, *args, **kwargs):
        """Run one Redis command; a failure is logged (not too often) and read as 'nothing there'."""
        try:
            return method(*args, **kwargs)
        except redis.RedisError as error:
            now = time.monotonic()
            if now >= self._quiet_until:
                log.warning("shared cache %s failed (%s); serving from this process's cache",
                            what, type(error).__name__)
                self._quiet_until = now + _QUIET_SECONDS
            return None


def _pack(embedding: Embedding) -> bytes:
    compact = embedding.compact()
    header = {"input_size": list(embedding.input_size), "original_size": list(embedding.original_size),
              "shapes": [list(array.shape) for array in compact.arrays],
              "several": isinstance(compact.features, tuple)}
    return json.dumps(header).encode() + _HEADER_END + b"".join(array.tobytes() for array in compact.arrays)


def _unpack(raw: bytes) -> Embedding:
    """Parse what `_pack` wrote; anything else raises ValueError (the store is shared, so check it)."""
    header_bytes, sep, payload = raw.partition(_HEADER_END)
    if not sep:
        raise ValueError("no header")
    header = json.loads(header_bytes)
    input_size = tuple(int(v) for v in header["input_size"])
    original_size = tuple(int(v) for v in header["original_size"])
    if len(input_size) != 2 or len(original_size) != 2 or min(*input_size, *original_size) <= 0:
        raise ValueError("bad sizes")
    shapes = [tuple(int(v) for v in shape) for shape in header["shapes"]]
    several = bool(header.get("several"))
    if not 1 <= len(shapes) <= 8 or any(len(shape) != 4 or min(shape) <= 0 for shape in shapes) or (
            len(shapes) > 1 and not several):
        raise ValueError("bad feature shapes")
    counts = [int(np.prod(shape)) for shape in shapes]
    if sum(counts) > MAX_FEATURE_VALUES or len(payload) != 2 * sum(counts):
        raise ValueError(f"{len(payload)} feature bytes do not match the shapes {shapes}")
    values = mapped_copy(np.frombuffer(payload, dtype=np.float16))  # kept by the cache: not in the malloc heap
    offsets = np.cumsum([0] + counts)
    arrays = tuple(values[start:end].reshape(shape) for start, end, shape in zip(offsets, offsets[1:], shapes))
    features = arrays if several else arrays[0]
    return Embedding(features=features, input_size=input_size, original_size=original_size)
