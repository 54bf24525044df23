"""What a run keeps resident (issue 28, peak memory): workspace buffers that go back to
the OS when released, the training features released during a probe round, and float64
readouts of float32 rows made a block of rows at a time."""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest

from tdlens.config import load_config
from tdlens.features import MAPPED_BYTES, Workspace
from tdlens.probes import expected as ex
from tdlens.probes.manager import ProbeManager
from tdlens.runs import runner as runner_module
from tdlens.runs.runner import Runner

SMALL = [
    "env.feature_dim=64",
    "env.actor_feature_dim=16",
    "trajectories=4",
    "horizon=32",
    "probes.fixed_point.batch_size=256",
    "probes.stability.batch_size=256",
    "probes.stability.k_mc=3",
    "probes.distribution.num_samples=256",
    "probes.rho_audit.batch_size=512",
    "threads=2",
]


def _rss_anon() -> int:
    """RssAnon of this process (bytes)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        line = next(x for x in fh if x.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_released_buffer_leaves_the_process():
    """A released workspace buffer's memory leaves the process at once, even after glibc
    raised its mmap threshold (freeing a 30 MiB block raises it to 30 MiB, after which a
    24 MiB np.empty comes from its heap and may stay resident when freed)."""
    np.ones(30 * 2**20 // 8)  # freed at once: glibc's threshold is now ~30 MiB
    ws = Workspace()
    size = 24 * 2**20
    before = _rss_anon()
    buf = ws.array("big", (size // 4,), np.dtype(np.float32))
    buf.fill(1.0)
    touched = _rss_anon()
    del buf
    ws.release("big")
    gc.collect()
    after = _rss_anon()
    assert touched - before >= 0.9 * size, (before, touched)
    assert touched - after >= 0.9 * size, (touched, after)
    assert ws.held_bytes() == 0


def test_workspace_buffers_are_reused_and_writable():
    """Mapped (large) and heap (small) buffers alike: the same array for the same key,
    shape and dtype; a new one when the shape changes."""
    ws = Workspace()
    big = ws.array("a", (MAPPED_BYTES // 8,), np.dtype(np.float64))
    small = ws.array("b", (3, 4), np.dtype(np.float32))
    big[:] = 2.0
    small[:] = 1.0
    assert ws.array("a", (MAPPED_BYTES // 8,), np.dtype(np.float64)) is big
    assert ws.array("b", (3, 4), np.dtype(np.float32)) is small
    assert big.flags.writeable and big.flags.c_contiguous
    other = ws.array("a", (MAPPED_BYTES // 4,), np.dtype(np.float64))
    assert other is not big and ws.held_bytes() == other.nbytes + small.nbytes
    ws.release_all()
    assert ws.held_bytes() == 0


def test_training_features_are_not_alive_during_a_probe_round(tmp_path, monkeypatch):
    """The runner drops the iteration's batch and releases the training workspace before
    a probe round: its feature arrays (2 B T D f bytes) are freed, not resident beside
    the round's; and the run's curves are those of a run that keeps them (the next
    iteration writes every feature afresh)."""
    cfg = load_config(None, [*SMALL, "outer_iters=3", "probes.every=2"])
    features: list[weakref.ref] = []
    alive: list[bool] = []
    outer_iteration = runner_module.outer_iteration

    def spy_iteration(*args, **kwargs):
        result = outer_iteration(*args, **kwargs)
        features[:] = [weakref.ref(result.batch.phi), weakref.ref(result.batch.bar_phi)]
        return result

    run = ProbeManager.run

    def spy_round(self, *args, **kwargs):
        gc.collect()
        alive.append(any(ref() is not None for ref in features))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(runner_module, "outer_iteration", spy_iteration)
    monkeypatch.setattr(ProbeManager, "run", spy_round)
    Runner(cfg, tmp_path / "run", handle_signals=False).run()
    assert alive == [False, False]  # rounds after iterations 0 and 2
    monkeypatch.undo()
    Runner(
        cfg.model_copy(update={"probes": cfg.probes.model_copy(update={"enabled": False})}),
        tmp_path / "plain",
        handle_signals=False,
    ).run()
    with_probes = (tmp_path / "run" / "learning_curves.csv").read_text().splitlines()
    plain = (tmp_path / "plain" / "learning_curves.csv").read_text().splitlines()
    column = with_probes[0].split(",").index("td_loss")
    assert [r.split(",")[column] for r in with_probes[1:]] == [
        r.split(",")[column] for r in plain[1:]
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products64_equal_the_all_rows_products(dtype):
    """products64 gives ``rows.astype(float64) @ M`` for each M (the rounding of each
    output row's dot products may differ in the last bits with the row count of a BLAS
    call: bounded at 1e-13 relative), converting ROW_BLOCK rows at a time."""
    rng = np.random.default_rng(5)
    n, D = 3 * ex.ROW_BLOCK + 17, 96
    rows = rng.standard_normal((n, D)).astype(dtype)
    Ms = [rng.standard_normal((D, 7)), rng.standard_normal((D, 1))]
    got = ex.products64(rows, *Ms)
    for M, out in zip(Ms, got, strict=True):
        want = rows.astype(np.float64) @ M
        assert out.dtype == np.float64 and out.shape == want.shape
        scale = np.abs(rows.astype(np.float64)) @ np.abs(M)
        assert np.all(np.abs(out - want) <= 1e-13 * scale)


def test_products64_never_holds_all_rows_in_float64():
    """The float64 copy is a block of rows, not all of them: NumPy's allocations (traced)
    peak far below the ``8 n D`` bytes of ``rows.astype(float64)`` (the first round's
    counterfactual readouts held two such copies, 96 MB at the seed settings)."""
    rng = np.random.default_rng(6)
    n, D = 4096, 512
    rows = rng.standard_normal((n, D)).astype(np.float32)
    M = rng.standard_normal((D, 3))
    tracemalloc.start()
    try:
        ex.products64(rows, M)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 2 * 8 * ex.ROW_BLOCK * D + 8 * n * 3 + 2**16  # a block and the next
    assert peak < 8 * n * D / 4


def test_a_buffer_too_big_to_map_is_a_memory_error():
    """A workspace buffer that cannot be mapped raises MemoryError, as NumPy's np.empty
    does, so that a run reports it as "out of memory" (docs/faults.md)."""
    with pytest.raises(MemoryError, match="Unable to allocate"):
        Workspace().array("huge", (2**48,), np.dtype(np.uint8))  # 256 TiB
