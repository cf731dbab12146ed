"""Image embeddings kept between clicks, so only the first click on an image pays for the encoder."""

from __future__ import annotations

from typing import Protocol, Self, TypeVar

from sam_ls_backend.lru import LRU, CacheStats

__all__ = ["CacheStats", "EmbeddingCache", "Sized"]


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...

    def compact(self) -> Self:
        """The same value in less memory (called only when the cache keeps some entries exact)."""
        ...


S = TypeVar("S", bound=Sized)


class EmbeddingCache(LRU[str, S]):
    """Least-recently-used embeddings, bounded in bytes; each key is computed once even when requests race.

    With `exact_entries`, only that many most recently used entries are kept as given; an entry that falls out
    of them is replaced by its `compact()` form (images nobody is clicking on).
    """

    def __init__(self, max_bytes: int, exact_entries: int | None = None) -> None:
        super().__init__(max_bytes, cost=lambda value: value.nbytes)
        self.exact_entries = exact_entries
        self._exact: set[str] = set()  # keys whose values are still as given, not yet compacted

    @property
    def max_bytes(self) -> float:
        return self.max_cost

    def _stored(self, key: str) -> None:
        if self.exact_entries is not None:
            self._exact.add(key)

    def _dropped(self, key: str) -> None:
        self._exact.discard(key)

    def _used(self) -> None:
        """Compact the entries that recent uses pushed out of the `exact_entries` most recently used.

        Compacting runs outside the lock; a result replaces its entry only if nothing replaced or evicted
        that entry meanwhile.
        """
        if self.exact_entries is None:
            return
        with self._lock:
            recent = set(self._recent_keys(self.exact_entries))
            older = [(key, self._entries[key]) for key in self._exact - recent]
            self._exact &= recent
        for key, value in older:
            self._replace(key, value, value.compact())
