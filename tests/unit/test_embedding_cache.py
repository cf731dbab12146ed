"""The embedding cache: bounded in bytes, least recently used first out, one computation per key."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from sam_ls_backend.embeddings.cache import EmbeddingCache


@dataclass(frozen=True)
class Blob:
    nbytes: int
    exact: bool = True

    def compact(self) -> Blob:
        return self if not self.exact else Blob(self.nbytes // 2, exact=False)


def test_hit_after_miss_and_counts():
    cache = EmbeddingCache(max_bytes=100)
    calls = []
    first = cache.get_or_compute("a", lambda: calls.append(1) or Blob(10))
    again = cache.get_or_compute("a", lambda: calls.append(1) or Blob(10))
    assert first is again and calls == [1]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.cost) == (1, 1, 1, 10)
    assert cache.get("missing") is None


def test_least_recently_used_is_evicted_when_bytes_overflow():
    cache = EmbeddingCache(max_bytes=30)
    for key in "abc":
        cache.get_or_compute(key, lambda: Blob(10))
    cache.get("a")  # a is now the most recent
    cache.get_or_compute("d", lambda: Blob(10))
    assert cache.get("b") is None
    assert all(cache.get(key) is not None for key in "acd")
    assert cache.stats().cost == 30


def test_value_larger_than_the_budget_is_returned_but_not_kept():
    cache = EmbeddingCache(max_bytes=5)
    assert cache.get_or_compute("big", lambda: Blob(6)).nbytes == 6
    assert cache.stats().entries == 0


def test_racing_requests_compute_once():
    cache = EmbeddingCache(max_bytes=1000)
    started = threading.Event()
    calls = []

    def slow() -> Blob:
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return Blob(1)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 6 and all(r is results[0] for r in results)


def test_a_failed_computation_reaches_every_waiter_and_leaves_nothing_behind():
    cache = EmbeddingCache(max_bytes=1000)
    gate = threading.Event()

    def fails() -> Blob:
        gate.wait(1)
        raise ValueError("bad image")

    errors = []

    def call() -> None:
        try:
            cache.get_or_compute("k", fails)
        except ValueError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join()
    assert errors == ["bad image"] * 3
    assert cache.stats().entries == 0
    assert cache.get_or_compute("k", lambda: Blob(1)).nbytes == 1


def test_keyboard_interrupt_style_errors_do_not_wedge_the_key():
    cache = EmbeddingCache(max_bytes=10)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute("k", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cache.get_or_compute("k", lambda: Blob(1)).nbytes == 1


def exact_keys(cache: EmbeddingCache, keys: str = "abcdef") -> set[str]:
    return {key for key in keys if (value := cache._entries.get(key)) is not None and value.exact}


def test_only_the_most_recently_used_entries_stay_exact():
    cache = EmbeddingCache(max_bytes=1000, exact_entries=2)
    for key in "abcd":
        cache.get_or_compute(key, lambda: Blob(100))
    assert exact_keys(cache) == {"c", "d"}
    assert cache.stats().cost == 2 * 100 + 2 * 50


def test_a_compacted_entry_used_again_stays_compact_and_pushes_the_next_one_out():
    cache = EmbeddingCache(max_bytes=1000, exact_entries=2)
    for key in "abc":
        cache.get_or_compute(key, lambda: Blob(100))
    assert not cache.get("a").exact  # a fell out of the two most recent when c arrived
    assert exact_keys(cache) == {"c"}  # b is now third most recent: compacted
    assert cache.stats().cost == 100 + 50 + 50


def test_entries_from_elsewhere_and_the_byte_budget_count_compacted_sizes():
    cache = EmbeddingCache(max_bytes=250, exact_entries=1)
    cache.put("a", Blob(100))
    cache.put("b", Blob(100))
    cache.get_or_compute("c", lambda: Blob(100))  # a and b are compacted to 50 each: 200 fits
    assert exact_keys(cache) == {"c"} and cache.stats().entries == 3
    cache.get_or_compute("d", lambda: Blob(100))  # 350 before compaction: a goes, c is compacted
    assert cache.get("a") is None and exact_keys(cache) == {"d"}
    assert cache.stats().cost == 50 + 50 + 100


def test_without_exact_entries_nothing_is_compacted():
    cache = EmbeddingCache(max_bytes=1000)
    for key in "abcdef":
        cache.get_or_compute(key, lambda: Blob(100))
    assert exact_keys(cache) == set("abcdef")


def test_racing_uses_leave_only_the_most_recent_entries_exact_and_the_bytes_right():
    cache = EmbeddingCache(max_bytes=10**6, exact_entries=3)
    keys = [f"{thread}-{i}" for thread in range(8) for i in range(20)]

    def use(thread: int) -> None:
        for i in range(20):
            cache.get_or_compute(f"{thread}-{i}", lambda: Blob(100))
            cache.get(f"{thread}-{i // 2}")

    threads = [threading.Thread(target=use, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    most_recent = list(cache._entries)[-3:]
    assert exact_keys(cache, keys) <= set(most_recent) and len(exact_keys(cache, keys)) >= 1
    assert cache.stats().cost == sum(value.nbytes for value in cache._entries.values())
    assert cache.stats().cost <= 3 * 100 + 157 * 50
