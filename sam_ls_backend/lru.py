"""The one cache of the backend: least-recently-used values, bounded by their total cost, single-flight.

Every bounded memory of the backend is one of these: embeddings (cost = bytes), refinement rounds, SAM 3
detections and encoded concepts, the digests of task URLs, projects' labeling configs and typed concepts
(cost = 1 per entry). `get_or_compute` computes a missing key once for all callers that race for it; a
failed computation is handed to every waiting caller and leaves nothing behind, so the next call tries again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    cost: float


def one_each(value: object) -> int:
    """Cost of an entry when the bound is a number of entries."""
    return 1


class LRU(Generic[K, V]):
    """Values by key, least recently used out once their costs add up to more than `max_cost`; thread-safe.

    A value costing more than `max_cost` on its own is handed back but not kept.
    """

    def __init__(self, max_cost: float, cost: Callable[[V], float] = one_each) -> None:
        self.max_cost = max_cost
        self._cost = cost
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._costs: dict[K, float] = {}
        self._pending: dict[K, Future] = {}
        self._total = 0.0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value, now the most recently used, or None; counts a hit when found."""
        with self._lock:
            value = self._hit(key)
        if value is not None:
            self._used()
        return value

    def peek(self, key: K) -> V | None:
        """The value, or None, leaving the order and the counts as they are."""
        with self._lock:
            return self._entries.get(key)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """The value, else `compute()` once for all concurrent callers of the same key."""
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
            self._used()
            return value
        assert pending is not None
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
        self._used()
        return value

    def put(self, key: K, value: V, replace: bool = True) -> None:
        """Keep `value` under `key` as the most recently used; with `replace=False` an existing entry stays."""
        with self._lock:
            if replace or key not in self._entries:
                self._store(key, value)
        self._used()

    def pop(self, key: K) -> V | None:
        """Forget `key`; its value, or None."""
        with self._lock:
            return self._drop(key)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._total)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _hit(self, key: K) -> V | None:
        """The entry for `key`, now the most recently used, counted as a hit (lock held)."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
            self._hits += 1
        return value

    def _store(self, key: K, value: V) -> None:
        """Insert, then evict the least recently used entries beyond `max_cost` (lock held)."""
        self._drop(key)
        cost = self._cost(value)
        if cost > self.max_cost:
            return
        self._entries[key] = value
        self._costs[key] = cost
        self._total += cost
        self._stored(key)
        while self._total > self.max_cost:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: K) -> V | None:
        """Remove `key` and its cost (lock held)."""
        value = self._entries.pop(key, None)
        if value is not None:
            self._total -= self._costs.pop(key)
            self._dropped(key)
        return value

    def _replace(self, key: K, old: V, new: V) -> bool:
        """Put `new` in place of `old` (keeping its place in the order) unless the entry changed meanwhile."""
        with self._lock:
            if self._entries.get(key) is not old:
                return False
            self._entries[key] = new
            cost = self._cost(new)
            self._total += cost - self._costs[key]
            self._costs[key] = cost
            return True

    def _recent_keys(self, count: int) -> list[K]:
        """The `count` most recently used keys, newest first (lock held)."""
        keys: list[K] = []
        for key in reversed(self._entries):
            if len(keys) == count:
                break
            keys.append(key)
        return keys

    # Hooks for a subclass that keeps state beside the entries.
    def _stored(self, key: K) -> None:
        """Called with the lock held after `key` was stored."""

    def _dropped(self, key: K) -> None:
        """Called with the lock held after `key` was removed or evicted."""

    def _used(self) -> None:
        """Called without the lock after every use that found or stored a value."""
