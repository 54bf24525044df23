"""A process that ends after tdlens freezes its heap first (issue 28 session 9): the
console entry point and a local sweep worker. Without the freeze the interpreter's exit
walks every object with the cyclic collector, 0.3-0.6 s after a run (BENCHMARKS.md).

Each case runs in a child process (a freeze is for the rest of a process's life) and
reads ``gc.get_freeze_count()`` from an exit handler registered before tdlens's own, so it
runs after it (exit handlers run last-registered first).
"""

from __future__ import annotations

import subprocess
import sys

AT_EXIT = (
    "import atexit, gc, sys\n"
    "atexit.register(lambda: print('frozen', gc.get_freeze_count(), flush=True))\n"
)


def frozen_at_exit(body: str) -> int:
    """The freeze count a child process running `body` reports from its last exit handler."""
    res = subprocess.run(
        [sys.executable, "-c", AT_EXIT + body], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in res.stdout.splitlines() if line.startswith("frozen ")]
    assert lines, res.stdout + res.stderr
    return int(lines[-1].split()[1])


def test_console_entry_point_freezes_the_heap_before_exit():
    body = "from tdlens.cli import main\nsys.exit(main(['runs', '--help']))\n"
    assert frozen_at_exit(body) > 10_000


def test_console_entry_point_freezes_on_a_failing_command_too():
    body = "from tdlens.cli import main\nsys.exit(main(['run', 'sanity', '--set', 'gama=1']))\n"
    assert frozen_at_exit(body) > 10_000


def test_without_it_nothing_is_frozen():
    """The control: the same child, tdlens imported but its entry point not called."""
    assert frozen_at_exit("import tdlens.cli\n") == 0


def test_local_sweep_worker_freezes_the_heap_at_exit():
    body = (
        "import os\n"
        "from tdlens.sweeps.backends import _init_worker\n"
        "_init_worker(None, os.getppid())\n"
    )
    assert frozen_at_exit(body) > 1_000
