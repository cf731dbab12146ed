"""Model calls on one resident thread, so that OpenMP keeps a single team of threads between clicks.

Torch on the CPU parallelises with OpenMP, and libgomp gives every thread that calls into torch a team of its
own. Once it manages more threads than there are cores, idle team threads go to sleep at once instead of
spinning a moment, and each of the decoder's few hundred parallel steps pays a wake-up: on 2 cores a click's
decoder took 12–15 % longer from a server thread than from a lone one. Model calls therefore run on one
resident thread. A call that finds it busy (an encoder run, another annotator's click) runs on a thread of
its own that ends with the call and takes its team along, so calls still run concurrently.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ComputeThread:
    """Runs calls on the resident thread when it is free, else on a short-lived thread; safe from any thread."""

    def __init__(self) -> None:
        self.start_afresh()

    def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`work(*args, **kwargs)`'s result (or exception), computed on the resident thread if it is free."""
        if getattr(self._local, "inside", False):  # called from a model call: stay on its thread
            return work(*args, **kwargs)
        if self._free.acquire(blocking=False):
            try:
                return self._resident.submit(self._inside, functools.partial(work, *args, **kwargs)).result()
            finally:
                self._free.release()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute-extra") as own:
            return own.submit(self._inside, functools.partial(work, *args, **kwargs)).result()

    def _inside(self, call: Callable[[], T]) -> T:
        self._local.inside = True
        return call()

    def start_afresh(self) -> None:
        """A new resident thread (started on first use); also in a forked child, which has none of the parent's
        threads (gunicorn forks its workers)."""
        self._resident = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._free = threading.Lock()
        self._local = threading.local()


COMPUTE = ComputeThread()
os.register_at_fork(after_in_child=COMPUTE.start_afresh)


def on_compute_thread(method: Callable[P, T]) -> Callable[P, T]:
    """Make a model call (encoder, decoder, detector) run through `COMPUTE`."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return COMPUTE.run(method, *args, **kwargs)

    return wrapper
