"""BLAS thread limits without re-inspecting the process's libraries on every call.

``threadpoolctl.threadpool_limits`` walks every loaded shared library each time it is
entered (about 1 ms, more on a busy machine), and the hot paths enter it once per
iteration and several times per probe round. A :class:`ThreadpoolController` made once
and kept while no new module is imported gives the same limits in ~15 us.
"""

from __future__ import annotations

import functools
import sys
from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController


@functools.cache
def _controller(_modules_loaded: int) -> ThreadpoolController:
    """A controller over the libraries loaded when ``len(sys.modules)`` had this value (a
    newly imported extension may bring its own BLAS, so a new count makes a new one)."""
    return ThreadpoolController()


def limit_threads(n: int, user_api: str | None = None) -> AbstractContextManager:
    """Hold the thread pools of `user_api` (``"blas"``, ``"openmp"``; None: all) to `n`
    threads inside a ``with`` block, as ``threadpool_limits(n, user_api)`` does."""
    return _controller(len(sys.modules)).limit(limits=n, user_api=user_api)
