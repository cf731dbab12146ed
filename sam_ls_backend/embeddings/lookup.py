"""The embedding of the image a task shows: from this process's cache, the shared cache, or the encoder.

A click on an image seen before costs no download, no decode and no encoder run: the task URL is
remembered with the digest of the image's bytes, and the digest keys the embedding (so two tasks showing
the same file share one entry). Opening a task can warm its embedding in the background.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from sam_ls_backend.embeddings.cache import EmbeddingCache
from sam_ls_backend.embeddings.shared import SharedEmbeddings
from sam_ls_backend.lru import LRU
from sam_ls_backend.media.decode import decode_image
from sam_ls_backend.media.fetch import ImageSource
from sam_ls_backend.metrics import ENCODER_SECONDS
from sam_ls_backend.predictors.base import Embedding, Encoder
from sam_ls_backend.settings import Settings

log = logging.getLogger(__name__)

Source = Literal["memory", "shared", "encoder"]
REMEMBERED_URLS = 4096
MAX_QUEUED_WARMUPS = 32


class ImageEmbeddings:
    """Finds or computes embeddings for task image URLs; safe to call from many threads."""

    def __init__(self, settings: Settings, predictor: Encoder, images: ImageSource,
                 cache: EmbeddingCache[Embedding], shared: SharedEmbeddings | None = None, kind: str = "") -> None:
        self.settings = settings
        self.kind = kind  # keys this encoder's entries apart from another's in the same caches (SAM 3 has two)
        self.predictor = predictor
        self.images = images
        self.cache = cache
        self.shared = shared
        self._digests: LRU[str, str] = LRU(REMEMBERED_URLS)  # task image URL -> SHA-256 of its bytes
        self._lock = threading.Lock()
        self._warmer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warm")
        self._queued = 0
        self._sources: Counter[Source] = Counter()

    def sources(self) -> dict[Source, int]:
        """How many lookups were answered from memory, from the shared cache, and by the encoder."""
        with self._lock:
            return {source: self._sources[source] for source in ("memory", "shared", "encoder")}

    def digest(self, url: str) -> str | None:
        """The SHA-256 of the image a task URL showed, once `get` has read it."""
        return self._digests.peek(url)

    def get(self, url: str, task_id: int | None) -> tuple[Embedding, Source]:
        """The embedding of the image at `url`, and where it came from."""
        embedding, source = self._find(url, task_id)
        with self._lock:
            self._sources[source] += 1
        return embedding, source

    def _find(self, url: str, task_id: int | None) -> tuple[Embedding, Source]:
        digest = self._known_digest(url)
        if digest is not None:
            found = self._stored(digest)
            if found is not None:
                return found
        data = self.images.read(url, task_id)
        digest = hashlib.sha256(data).hexdigest()
        self._remember(url, digest)
        sources: list[Source] = []

        def find_or_encode() -> Embedding:
            shared = self.shared.get(self.kind + digest) if self.shared else None
            if shared is not None:
                sources.append("shared")
                return shared
            sources.append("encoder")
            image = decode_image(data, self.settings.image_max_megapixels * 10**6)
            with ENCODER_SECONDS.time():
                embedding = self.predictor.embed(image)
            if self.shared:
                self.shared.put(self.kind + digest, embedding)
            return self._kept(embedding)

        embedding = self.cache.get_or_compute(self.kind + digest, find_or_encode)
        return embedding, sources[0] if sources else "memory"

    def warm(self, url: str, task_id: int | None) -> bool:
        """Embed the image in the background unless too much is queued; True when queued."""
        with self._lock:
            if self._queued >= MAX_QUEUED_WARMUPS:
                return False
            self._queued += 1
        self._warmer.submit(self._warm_now, url, task_id)
        return True

    def _warm_now(self, url: str, task_id: int | None) -> None:
        try:
            _, source = self.get(url, task_id)
            log.debug("warmed task %s image from %s", task_id, source)
        except Exception as error:  # a background job has no client to answer: log and move on
            log.warning("could not warm task %s image: %s", task_id, getattr(error, "message", error))
        finally:
            with self._lock:
                self._queued -= 1

    def _stored(self, digest: str) -> tuple[Embedding, Source] | None:
        """The embedding from this process's cache or, failing that, the shared one."""
        embedding = self.cache.get(self.kind + digest)
        if embedding is not None:
            return embedding, "memory"
        if self.shared is None:
            return None
        shared = self.shared.get(self.kind + digest)
        if shared is None:
            return None
        self.cache.put(self.kind + digest, shared, replace=False)
        return shared, "shared"

    def _kept(self, embedding: Embedding) -> Embedding:
        """The form this process keeps an encoder's output in (EMBEDDING_PRECISION); the shared cache's
        embeddings already come in float16, in memory of their own."""
        return embedding.compact() if self.settings.embedding_precision == "float16" else embedding.set_apart()

    def _known_digest(self, url: str) -> str | None:
        digest = self._digests.get(url)
        if digest is not None:
            return digest
        return self.shared.image_digest(url) if self.shared else None

    def _remember(self, url: str, digest: str) -> None:
        self._digests.put(url, digest)
        if self.shared:
            self.shared.remember_image(url, digest)
