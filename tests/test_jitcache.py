"""tdlens.runs.jitcache: the replay calls exactly the kernel signatures of a seed-settings
round, a kernel missing from the cache is compiled in a child process (not in the run's),
and a run's numbers do not change."""

from __future__ import annotations

import json
import subprocess
import sys

from numba import njit, types

from helpers import TINY_SEED, curves, small_config
from tdlens.api import execute, load_run_config
from tdlens.runs import jitcache
from tdlens.runs.runner import Runner

SIGNATURES = """
import gc, json, sys
from numba.core.registry import CPUDispatcher
from tdlens.api import load_run_config
from tdlens.features import Workspace, make_feature_maps
from tdlens.learner import init_params, outer_iteration
from tdlens.probes.manager import ProbeManager
from tdlens.runs import jitcache

def signatures():
    return sorted({f"{d.py_func.__module__}.{d.py_func.__qualname__}{s}"
                   for d in gc.get_objects() if isinstance(d, CPUDispatcher)
                   for s in d.signatures})

cfg = load_run_config("seed_plateau", [], None)
cached = None
if sys.argv[1] == "replay":
    cached = jitcache.cached(cfg)
else:
    maps = make_feature_maps(cfg)
    res = outer_iteration(cfg, maps, init_params(cfg, maps), 0, Workspace())
    ProbeManager(cfg, maps).run(0, res.params, res.delta, res.metrics["td_loss"], "last")
print(json.dumps({"cached": cached, "signatures": signatures()}))
"""


def _signatures(what: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SIGNATURES, what], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_the_replay_calls_exactly_the_kernel_signatures_of_a_seed_round():
    # each in a fresh process with a warm cache: a dispatcher's signatures are those it
    # loaded (a compile also adds those of the kernels it calls, and numba's own helpers)
    _signatures("round")
    real = _signatures("round")["signatures"]
    assert any("pair_products" in s for s in real)  # the Arnoldi path is in the real round
    replay = _signatures("replay")
    assert replay["signatures"] == real
    # every kernel is cacheable: a warm cache starts no child (one that is not would
    # start a child compile in every run)
    assert replay["cached"] is True


def test_tiny_config_only_shrinks_sizes():
    seed = load_run_config("seed_plateau", [], None)
    small = jitcache.tiny_config(seed)
    assert small.env.feature_dim == jitcache.TINY["env.feature_dim"] < seed.env.feature_dim
    assert small.threads == seed.threads and small.probes.bar_phi == seed.probes.bar_phi
    tiny = small_config()
    assert jitcache.tiny_config(tiny).env.feature_dim == tiny.env.feature_dim == 64


def _kernel_replay(monkeypatch, calls: list) -> object:
    """Replace the replay by one call of a new, never cached kernel; stub the child."""
    kernel = njit(lambda x: x + 1.0)
    monkeypatch.setattr(jitcache, "replay", lambda cfg: calls.append("replay") or kernel(1.0))
    monkeypatch.setattr(
        jitcache.subprocess, "run", lambda args, **kw: calls.append(json.loads(kw["input"]))
    )
    return kernel


def test_a_kernel_missing_from_the_cache_is_refused_then_compiled_in_the_child(monkeypatch):
    cfg = small_config()
    calls: list = []
    kernel = _kernel_replay(monkeypatch, calls)
    assert not jitcache.cached(cfg)
    assert kernel.signatures == []  # refused: nothing compiled in this process
    calls.clear()
    jitcache.load_kernels(cfg)
    # refused, the child given the config, then replayed here (the stub child compiled
    # nothing, so this process compiles it, as without load_kernels)
    assert calls == ["replay", cfg.to_dict(), "replay"]
    assert kernel.signatures == [(types.float64,)]


def test_a_cached_kernel_starts_no_child(monkeypatch):
    calls: list = []
    kernel = _kernel_replay(monkeypatch, calls)
    kernel(2.0)  # now in the process, as a cache load would leave it
    jitcache.load_kernels(small_config())
    assert calls == ["replay"]


def test_the_child_command_replays_a_config():
    cfg = small_config()
    done = subprocess.run(
        [sys.executable, "-c", "from tdlens.runs.jitcache import _child; _child()"],
        input=json.dumps(cfg.to_dict()),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_a_run_after_load_kernels_has_the_same_numbers(tmp_path):
    cfg = load_run_config("seed_plateau", [f"{k}={v}" for k, v in TINY_SEED.items()], None)
    plain = Runner(cfg, tmp_path / "plain").run()
    loaded = execute(Runner(cfg, tmp_path / "loaded"))
    assert plain.status == loaded.status == "complete"
    rows = curves(tmp_path / "plain")
    assert len(rows) == 1 + cfg.outer_iters and rows[2][rows[0].index("fixed_point_gap")]
    assert curves(tmp_path / "loaded") == rows


def test_a_child_that_cannot_start_leaves_the_compile_here(monkeypatch):
    calls: list = []
    kernel = _kernel_replay(monkeypatch, calls)

    def no_child(args, **kw):
        raise subprocess.TimeoutExpired(args, jitcache.CHILD_TIMEOUT_S)

    monkeypatch.setattr(jitcache.subprocess, "run", no_child)
    jitcache.load_kernels(small_config())
    assert calls == ["replay", "replay"]
    assert kernel.signatures == [(types.float64,)]
