"""BLAS thread limits without re-inspecting the process's libraries on every call.

``threadpoolctl.threadpool_limits`` walks every loaded shared library each time it is
entered (about 1 ms, more on a busy machine), and the hot paths enter it once per
iteration and several times per probe round. A :class:`ThreadpoolController` made once
and kept while no new module is imported gives the same limits in ~15 us.

:func:`parallel_map` runs its items on threads kept between calls (:func:`_pool`):
starting and joining two threads cost 0.15-0.5 ms a call, and a training iteration makes
three calls, a probe round dozens.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from typing import TypeVar

from threadpoolctl import ThreadpoolController

T = TypeVar("T")
R = TypeVar("R")


@functools.cache
def _controller(_modules_loaded: int) -> ThreadpoolController:
    """A controller over the libraries loaded when ``len(sys.modules)`` had this value (a
    newly imported extension may bring its own BLAS, so a new count makes a new one)."""
    return ThreadpoolController()


def limit_threads(n: int, user_api: str | None = None) -> AbstractContextManager:
    """Hold the thread pools of `user_api` (``"blas"``, ``"openmp"``; None: all) to `n`
    threads inside a ``with`` block, as ``threadpool_limits(n, user_api)`` does."""
    return _controller(len(sys.modules)).limit(limits=n, user_api=user_api)


_worker = threading.local()
"""``_worker.active`` is set in the threads of :func:`_pool`."""


def _mark_worker() -> None:
    _worker.active = True


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of `workers` threads, kept between :func:`parallel_map` calls
    (made once, also when two threads ask at once); a forked child, whose copy of it has
    no threads, makes its own."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="tdlens", initializer=_mark_worker
            )
        return pool


def _forget_pools_in_child() -> None:
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()  # it may have been held by another thread at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)


def parallel_map(
    fn: Callable[[T], R], items: Iterable[T], threads: int, user_api: str | None = "blas"
) -> list[R]:
    """``[fn(item) for item in items]``, on up to `threads` threads (in order when 1).

    The `user_api` pools (BLAS by default, None: all) are held to one thread meanwhile, on
    either path: the calling threads already use every core (OpenBLAS threads inside them
    would only contend). The results come back in the order of `items`, so a caller that
    reduces them in that order gets the same bits whatever the thread count (NumPy releases
    the GIL inside its ufuncs and BLAS). It returns or raises (the first failing item's
    exception, or an interruption; the items not started by then never run) once no item
    runs. The threads are the kept ones of :func:`_pool`, but in a call made from one of
    them (a nested call), which starts its own: the kept ones may all be waiting for it.
    """
    items = list(items)
    with limit_threads(1, user_api):
        if threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        workers = min(threads, len(items))
        if getattr(_worker, "active", False):
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(fn, items))
        futures = [_pool(workers).submit(fn, item) for item in items]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            for f in futures:
                f.cancel()  # those not started (a no-op on the others)
            wait(futures)
        failed = [f.exception() for f in futures if not f.cancelled() and f.exception()]
        if failed:
            raise failed[0]
        return [f.result() for f in futures]
