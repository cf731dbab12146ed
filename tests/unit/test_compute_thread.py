"""Model calls run on one resident thread, or concurrently on short-lived ones when it is busy."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sam_ls_backend.compute_thread import COMPUTE, ComputeThread, on_compute_thread
from tests.support.polling import eventually


def test_calls_run_on_the_resident_thread_and_return_their_result() -> None:
    compute = ComputeThread()
    names = {compute.run(lambda: threading.current_thread().name) for _ in range(5)}
    assert len(names) == 1 and names.pop().startswith("compute")
    assert compute.run(divmod, 17, 5) == (3, 2)


def test_an_exception_reaches_the_caller() -> None:
    compute = ComputeThread()
    with pytest.raises(ZeroDivisionError):
        compute.run(lambda: 1 / 0)
    assert compute.run(lambda: "still serving") == "still serving"


def test_a_call_that_finds_the_resident_thread_busy_runs_at_once_on_a_thread_that_ends_with_it() -> None:
    compute = ComputeThread()
    release = threading.Event()
    busy = threading.Event()

    def long_call() -> str:
        busy.set()
        release.wait(60)
        return threading.current_thread().name

    with ThreadPoolExecutor(max_workers=1) as caller:
        first = caller.submit(compute.run, long_call)
        assert busy.wait(60)
        meanwhile = compute.run(lambda: threading.current_thread())  # would wait forever behind long_call
        assert not first.done()
        release.set()
        assert first.result(timeout=60).startswith("compute")
    assert meanwhile.name.startswith("compute-extra")
    meanwhile.join(60)
    assert not meanwhile.is_alive()


def test_a_call_made_by_a_call_stays_on_its_thread() -> None:
    compute = ComputeThread()

    def outer() -> tuple[str, str]:
        return threading.current_thread().name, compute.run(lambda: threading.current_thread().name)

    here, inner = compute.run(outer)
    assert here == inner


def test_decorated_methods_keep_their_name_and_run_through_the_compute_thread() -> None:
    class Model:
        @on_compute_thread
        def embed(self, scale: int) -> tuple[str, int]:
            """Doc."""
            return threading.current_thread().name, 2 * scale

    name, value = Model().embed(21)
    assert value == 42 and name.startswith("compute")
    assert Model.embed.__name__ == "embed" and Model.embed.__doc__ == "Doc."


def test_a_forked_child_starts_its_own_resident_thread() -> None:
    COMPUTE.run(lambda: None)  # the parent's resident thread exists
    pid = os.fork()
    if pid == 0:  # the child: would hang on the parent's (absent) thread without the reset
        try:
            os._exit(0 if COMPUTE.run(lambda: 7) == 7 else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child's model call never ran")


def test_torch_work_on_a_busy_resident_thread_leaves_no_openmp_threads_behind() -> None:
    torch = pytest.importorskip("torch")
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: OpenMP starts no team")
    compute = ComputeThread()
    work = compute.run(torch.ones, 4_000_000)  # the resident thread's team, started once
    baseline = _native_threads()
    release, busy = threading.Event(), threading.Event()
    with ThreadPoolExecutor(max_workers=1) as caller:
        blocked = caller.submit(compute.run, lambda: (busy.set(), release.wait(60)))
        assert busy.wait(60)
        for _ in range(3):  # each on a thread of its own, with a team of its own
            assert compute.run(lambda: float((work * 2).sum())) == 8_000_000
        release.set()
        blocked.result(timeout=60)
    assert eventually(lambda: _native_threads() <= baseline)  # libgomp ends a team when its thread ends



def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))
