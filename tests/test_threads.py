"""tdlens.threads.parallel_map on its kept threads (issue 28): order, nesting, failures,
and a forked child."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from tdlens.threads import parallel_map


def test_results_in_order_on_kept_threads():
    """The items come back in their order; a second call runs on the first call's threads
    (kept), not on new ones."""
    names: list[set[str]] = []
    for _ in range(2):
        seen: set[str] = set()

        def work(i: int, seen=seen) -> int:
            seen.add(threading.current_thread().name)
            time.sleep(0.002)
            return i * i

        assert parallel_map(work, range(12), 2) == [i * i for i in range(12)]
        names.append(seen)
    assert threading.current_thread().name not in names[0]
    assert names[0] == names[1] and len(names[0]) == 2


def test_nested_calls_do_not_wait_for_busy_kept_threads():
    """Each item of an outer call makes an inner call: with the kept threads all busy in
    the outer items, the inner calls start threads of their own (a deadlock otherwise:
    the test would time out)."""

    def outer(i: int) -> list[int]:
        return parallel_map(lambda j: 10 * i + j, range(3), 2)

    assert parallel_map(outer, range(4), 2) == [[10 * i + j for j in range(3)] for i in range(4)]


def test_a_failing_item_raises_when_no_item_runs_any_more():
    """The first failing item's exception, raised once no item is running (none is still
    writing into the caller's arrays while it handles the failure; kept threads would
    otherwise go on with the items after the failure)."""
    running: list[int] = []
    done: list[int] = []

    def work(i: int) -> int:
        running.append(i)
        if i == 0:
            time.sleep(0.005)
            running.remove(i)
            raise ValueError("item 0")
        time.sleep(0.02)
        done.append(i)
        running.remove(i)
        return i

    with pytest.raises(ValueError, match="item 0"):
        parallel_map(work, range(6), 2)
    finished = list(done)
    assert running == []
    time.sleep(0.1)
    assert done == finished


def _child(queue) -> None:
    queue.put(parallel_map(lambda i: i + 1, range(6), 2))


def test_a_forked_child_runs_on_threads_of_its_own():
    """The parent's kept threads do not exist in a forked child: its calls make their own
    pool (they would hang on the copied one)."""
    parallel_map(lambda i: i, range(4), 2)  # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == [1, 2, 3, 4, 5, 6]
