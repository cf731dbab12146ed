"""Image embeddings kept between clicks, so only the first click on an image pays for the encoder."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Protocol


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...

    def compact(self) -> "Sized":
        """The same value in less memory (called only when the cache keeps some entries exact)."""
        ...


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int


class EmbeddingCache:
    """Least-recently-used embeddings, bounded in bytes; each key is computed once even when requests race.

    A failed computation is handed to every request waiting on it and leaves nothing behind, so the next
    request tries again. With `exact_entries`, only that many most recently used entries are kept as given;
    an entry that falls out of them is replaced by its `compact()` form (images nobody is clicking on).
    """

    def __init__(self, max_bytes: int, exact_entries: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.exact_entries = exact_entries
        self._entries: OrderedDict[str, Sized] = OrderedDict()
        self._exact: set[str] = set()  # keys whose values are still as given, not yet compacted
        self._pending: dict[str, Future] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Sized | None:
        """The cached value, or None; counts as a hit when found."""
        with self._lock:
            value = self._hit(key)
        self._compact_older()
        return value

    def get_or_compute(self, key: str, compute: Callable[[], Sized]) -> Sized:
        """The cached value, else `compute()` once for all concurrent callers of the same key."""
        with self._lock:
            value = self._hit(key)
            pending = self._pending.get(key) if value is None else None
            owner = value is None and pending is None
            if owner:
                self._misses += 1
                pending = self._pending[key] = Future()
            elif pending is not None:
                self._hits += 1
        if value is not None:
            self._compact_older()
            return value
        if not owner:
            return pending.result()
        try:
            value = compute()
        except BaseException as error:
            with self._lock:
                del self._pending[key]
            pending.set_exception(error)
            raise
        with self._lock:
            del self._pending[key]
            self._store(key, value)
        pending.set_result(value)
        self._compact_older()
        return value

    def put(self, key: str, value: Sized) -> None:
        """Keep a value obtained elsewhere (the shared cache), as if computed here."""
        with self._lock:
            if key not in self._entries:
                self._store(key, value)
        self._compact_older()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._bytes)

    def _hit(self, key: str) -> Sized | None:
        """The entry for `key`, now the most recently used, counted as a hit (lock held)."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
            self._hits += 1
        return value

    def _store(self, key: str, value: Sized) -> None:
        """Insert and evict the least recently used entries beyond the byte budget (lock held)."""
        size = value.nbytes
        if size > self.max_bytes:
            return
        self._entries[key] = value
        self._bytes += size
        if self.exact_entries is not None:
            self._exact.add(key)
        while self._bytes > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self._exact.discard(evicted_key)

    def _compact_older(self) -> None:
        """Compact the entries that recent uses pushed out of the `exact_entries` most recently used.

        Compacting runs outside the lock; a result replaces its entry only if nothing replaced or evicted
        that entry meanwhile.
        """
        if self.exact_entries is None:
            return
        with self._lock:
            recent = set(islice(reversed(self._entries), self.exact_entries))
            older = [(key, self._entries[key]) for key in self._exact - recent]
            self._exact &= recent
        for key, value in older:
            compact = value.compact()
            with self._lock:
                if self._entries.get(key) is value:
                    self._entries[key] = compact  # keeps its place in the order
                    self._bytes += compact.nbytes - value.nbytes
