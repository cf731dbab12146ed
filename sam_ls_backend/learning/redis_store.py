"""The annotation store in Redis (REDIS_URL set): the same store as `store.SqliteStore`, for workers and replicas
that share no disk. Entries never expire; the store's bound removes the oldest masks. Writes hold a Redis lock,
so two workers storing at once do not interleave their counters.

Keys, under `sam-ls-backend:learn:<checkpoint stem>:`: `mask:<key>` (a hash: annotation, image, seq,
held_out, digest, height, width, bits), `order` (mask keys by seq), `annotation:<id>` and `image-masks:<image>`
(sets of mask keys), `image:<image>` (a hash: features and sizes), `seq` and `new` (counters).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import redis

from sam_ls_backend.learning.store import (
    FEATURES_SHAPE,
    StoredMask,
    embedding_arrays,
    mask_digest,
    pack_mask,
    unpack_mask,
)
from sam_ls_backend.predictors.base import Embedding

LOCK_SECONDS = 60


class RedisStore:
    """The store in Redis; see the module's docstring for its keys."""

    def __init__(self, url: str, namespace: str, max_masks: int, held_out: int,
                 client: redis.Redis | None = None) -> None:
        # Untyped: redis-py types every reply as bytes | str | ..., and this client always answers bytes.
        self._redis: Any = client or redis.Redis.from_url(url, socket_timeout=10.0, socket_connect_timeout=2.0)
        self._prefix = f"sam-ls-backend:learn:{namespace}:"
        self.max_masks = max_masks
        self.held_out = held_out

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def image_size(self, image: str) -> tuple[int, int] | None:
        height, width = self._redis.hmget(self._key("image", image), ["original_h", "original_w"])
        return (int(height), int(width)) if height is not None and width is not None else None

    def replace_annotation(self, annotation: int, masks: Sequence[tuple[str, str, np.ndarray]],
                           embeddings: dict[str, Embedding]) -> int:
        new = 0
        with self._redis.lock(self._key("lock"), timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS):
            for image, embedding in embeddings.items():
                features, (input_h, input_w), (original_h, original_w) = embedding_arrays(embedding)
                self._redis.hset(self._key("image", image), mapping={
                    "features": features.tobytes(), "input_h": input_h, "input_w": input_w,
                    "original_h": original_h, "original_w": original_w})
            owned = {key.decode() for key in self._redis.smembers(self._key("annotation", str(annotation)))}
            wanted = {key for key, _, _ in masks}
            for key in owned - wanted:
                self._remove(key)
            for key, image, mask in masks:
                digest = mask_digest(mask)
                old = self._redis.hmget(self._key("mask", key), ["digest", "seq", "held_out"])
                if old[0] is not None and old[0].decode() == digest:
                    continue
                seq = int(self._redis.incr(self._key("seq")))
                held_out = int(old[2]) if old[2] is not None else int(seq % self.held_out == 0)
                self._redis.hset(self._key("mask", key), mapping={
                    "annotation": annotation, "image": image, "seq": seq, "held_out": held_out, "digest": digest,
                    "height": mask.shape[0], "width": mask.shape[1], "bits": pack_mask(mask)})
                self._redis.zadd(self._key("order"), {key: seq})
                self._redis.sadd(self._key("annotation", str(annotation)), key)
                self._redis.sadd(self._key("image-masks", image), key)
                new += 1
            self._redis.incrby(self._key("new"), new)
            for key in self._redis.zrange(self._key("order"), 0, -self.max_masks - 1):
                self._remove(key.decode())
        return new

    def drop_annotations(self, annotations: Sequence[int]) -> int:
        dropped = 0
        with self._redis.lock(self._key("lock"), timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS):
            for annotation in annotations:
                for key in self._redis.smembers(self._key("annotation", str(annotation))):
                    dropped += self._remove(key.decode())
        return dropped

    def count(self) -> int:
        return int(self._redis.zcard(self._key("order")))

    def new_masks(self) -> int:
        return int(self._redis.get(self._key("new")) or 0)

    def take_new(self) -> int:
        return int(self._redis.getset(self._key("new"), 0) or 0)

    def masks(self) -> Iterator[StoredMask]:
        images: dict[str, dict] = {}
        for raw in self._redis.zrange(self._key("order"), 0, -1):
            fields = self._redis.hgetall(self._key("mask", raw.decode()))
            if not fields:
                continue
            image = fields[b"image"].decode()
            if image not in images:
                images[image] = self._redis.hgetall(self._key("image", image))
            found = images[image]
            height, width = int(fields[b"height"]), int(fields[b"width"])
            if not found or (int(found[b"original_h"]), int(found[b"original_w"])) != (height, width):
                continue
            yield StoredMask(raw.decode(), np.frombuffer(found[b"features"], dtype=np.float16).reshape(FEATURES_SHAPE),
                             (int(found[b"input_h"]), int(found[b"input_w"])), (height, width),
                             unpack_mask(fields[b"bits"], height, width), fields[b"held_out"] == b"1")

    def _remove(self, key: str) -> int:
        """Forget one mask, and its image when no other mask needs it; 1 if it was there."""
        annotation, image_raw = self._redis.hmget(self._key("mask", key), ["annotation", "image"])
        self._redis.delete(self._key("mask", key))
        self._redis.zrem(self._key("order"), key)
        if annotation is None or image_raw is None:
            return 0
        self._redis.srem(self._key("annotation", annotation.decode()), key)
        image = image_raw.decode()
        self._redis.srem(self._key("image-masks", image), key)
        if not self._redis.scard(self._key("image-masks", image)):
            self._redis.delete(self._key("image", image))
        return 1
