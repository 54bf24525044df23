"""BLAS thread limits without re-inspecting the process's libraries on every call.

``threadpoolctl.threadpool_limits`` walks every loaded shared library each time it is
entered (about 1 ms, more on a busy machine), and the hot paths enter it once per
iteration and several times per probe round. A :class:`ThreadpoolController` made once
and kept while no new module is imported gives the same limits in ~15 us.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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


def parallel_map(
    fn: Callable[[T], R], items: Iterable[T], threads: int, user_api: str | None = "blas"
) -> list[R]:
    """``[fn(item) for item in items]``, on up to `threads` threads (in order when 1).

    The `user_api` pools (BLAS by default, None: all) are held to one thread meanwhile, on
    either path: the calling threads already use every core (OpenBLAS threads inside them
    would only contend). The results come back in the order of `items`, so a caller that
    reduces them in that order gets the same bits whatever the thread count (NumPy releases
    the GIL inside its ufuncs and BLAS).
    """
    items = list(items)
    with limit_threads(1, user_api):
        if threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
            return list(pool.map(fn, items))
