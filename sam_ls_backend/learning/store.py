"""The masks annotators accepted, with their images' embeddings: what the decoder is fine-tuned on.

A bounded store that survives restarts and is shared by every worker: an SQLite file (`SqliteStore`, in
LEARN_DIR or beside the checkpoint) or Redis when REDIS_URL is set (`RedisStore`). Each mask has a key (its
annotation and region), a sequence number in order of arrival, and its image's key; each image has its
embedding once, float16. Every `held_out`-th mask by arrival is held out (never trained on: the judge of a new
decoder), fixed when the mask first arrives. An updated annotation replaces its masks; a region whose pixels
did not change is not new (nothing is trained twice on the same mask). Past `max_masks`, the oldest go, and
images no mask needs any more with them.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from sam_ls_backend.predictors.base import Embedding


@dataclass(frozen=True)
class StoredMask:
    """One kept mask with its image's embedding, as the trainer reads them."""

    key: str
    features: np.ndarray  # float16 1×256×64×64: the image encoder's output for the mask's image
    input_size: tuple[int, int]  # (h, w) of the resized image inside the encoder's square input
    original_size: tuple[int, int]  # (h, w) of the task image
    mask: np.ndarray  # bool H×W, original frame
    held_out: bool


class AnnotationStore(Protocol):
    """What the learner and the trainer need of a store; safe to use from several threads and processes."""

    def image_size(self, image: str) -> tuple[int, int] | None:
        """The (h, w) of a stored image, or None when the store lacks its embedding."""
        ...

    def replace_annotation(self, annotation: int, masks: Sequence[tuple[str, str, np.ndarray]],
                           embeddings: dict[str, Embedding]) -> int:
        """Make `masks` ((key, image key, H×W bool) each) the annotation's masks, with the `embeddings` of their
        images the store lacks (by image key); returns how many masks are new."""
        ...

    def drop_annotations(self, annotations: Sequence[int]) -> int: ...

    def count(self) -> int: ...

    def new_masks(self) -> int:
        """Masks added since the last `take_new`."""
        ...

    def take_new(self) -> int:
        """`new_masks()`, and start counting again from 0 (a training is starting)."""
        ...

    def masks(self) -> Iterator[StoredMask]: ...


def image_key(url: str) -> str:
    """The store's name for an image: a digest of its URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def pack_mask(mask: np.ndarray) -> bytes:
    return zlib.compress(np.packbits(mask, axis=None).tobytes(), 1)


def unpack_mask(blob: bytes, height: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(zlib.decompress(blob), dtype=np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)


def mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(mask, axis=None).tobytes() + str(mask.shape).encode()).hexdigest()[:32]


def embedding_arrays(embedding: Embedding) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """The single feature map of a SAM / MobileSAM embedding as float16 NumPy, with its sizes."""
    compact = embedding.compact()
    if len(compact.arrays) != 1:
        raise ValueError("only SAM and MobileSAM embeddings (one feature map) can be learned from")
    return compact.arrays[0], embedding.input_size, embedding.original_size


SCHEMA = """
CREATE TABLE IF NOT EXISTS masks (key TEXT PRIMARY KEY, annotation INTEGER NOT NULL, image TEXT NOT NULL,
    seq INTEGER NOT NULL, held_out INTEGER NOT NULL, digest TEXT NOT NULL, height INTEGER NOT NULL,
    width INTEGER NOT NULL, bits BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS masks_by_annotation ON masks (annotation);
CREATE TABLE IF NOT EXISTS images (image TEXT PRIMARY KEY, features BLOB NOT NULL, input_h INTEGER NOT NULL,
    input_w INTEGER NOT NULL, original_h INTEGER NOT NULL, original_w INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
FEATURES_SHAPE = (1, 256, 64, 64)


class SqliteStore:
    """The store in one SQLite file (write-ahead log: workers and the trainer read while one writes)."""

    def __init__(self, path: Path, max_masks: int, held_out: int) -> None:
        self.path = path
        self.max_masks = max_masks
        self.held_out = held_out
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def image_size(self, image: str) -> tuple[int, int] | None:
        with self._lock:
            row = self._db.execute("SELECT original_h, original_w FROM images WHERE image = ?", (image,)).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def replace_annotation(self, annotation: int, masks: Sequence[tuple[str, str, np.ndarray]],
                           embeddings: dict[str, Embedding]) -> int:
        new = 0
        images = [(image, *embedding_arrays(embedding)) for image, embedding in embeddings.items()]
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)",
                           [(image, features.tobytes(), *input_size, *original_size)
                            for image, features, input_size, original_size in images])
            kept = dict(db.execute("SELECT key, digest FROM masks WHERE annotation = ?", (annotation,)))
            wanted = {key for key, _, _ in masks}
            db.executemany("DELETE FROM masks WHERE key = ?", [(key,) for key in kept if key not in wanted])
            for key, image, mask in masks:
                digest = mask_digest(mask)
                if kept.get(key) == digest:
                    continue
                seq = self._next(db, "seq")
                old = db.execute("SELECT seq, held_out FROM masks WHERE key = ?", (key,)).fetchone()
                held_out = old[1] if old else int(seq % self.held_out == 0)
                db.execute("INSERT OR REPLACE INTO masks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (key, annotation, image, seq, held_out, digest, mask.shape[0], mask.shape[1],
                            pack_mask(mask)))
                new += 1
            self._next(db, "new", new)
            self._bound(db)
        return new

    def drop_annotations(self, annotations: Sequence[int]) -> int:
        with self._write() as db:
            dropped = sum(db.execute("DELETE FROM masks WHERE annotation = ?", (a,)).rowcount for a in annotations)
            self._bound(db)
        return dropped

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM masks").fetchone()[0])

    def new_masks(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'new'").fetchone()
        return int(row[0]) if row else 0

    def take_new(self) -> int:
        with self._write() as db:
            taken = self._next(db, "new", 0)
            db.execute("UPDATE counters SET value = 0 WHERE name = 'new'")
        return taken

    def masks(self) -> Iterator[StoredMask]:
        """The masks in order of arrival; an image's features are read once and shared by its masks (a join
        would copy 2 MB of features into every mask's row)."""
        with self._lock:
            images = {image: (np.frombuffer(features, dtype=np.float16).reshape(FEATURES_SHAPE), (input_h, input_w),
                              (original_h, original_w))
                      for image, features, input_h, input_w, original_h, original_w in
                      self._db.execute("SELECT image, features, input_h, input_w, original_h, original_w FROM images")}
            rows = self._db.execute(
                "SELECT key, image, held_out, height, width, bits FROM masks ORDER BY seq").fetchall()
        for key, image, held_out, height, width, bits in rows:
            if image not in images or images[image][2] != (height, width):
                continue  # the image changed size since: its mask no longer fits
            features, input_size, original_size = images[image]
            yield StoredMask(key, features, input_size, original_size, unpack_mask(bits, height, width),
                             bool(held_out))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _next(db: sqlite3.Connection, name: str, step: int = 1) -> int:
        """Add `step` to counter `name`; its new value."""
        db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                   (name, step, step))
        return int(db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def _bound(self, db: sqlite3.Connection) -> None:
        """The oldest masks past `max_masks` out, and the images no mask needs."""
        db.execute("DELETE FROM masks WHERE seq IN (SELECT seq FROM masks ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                   (self.max_masks,))
        db.execute("DELETE FROM images WHERE image NOT IN (SELECT DISTINCT image FROM masks)")
