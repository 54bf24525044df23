"""Random feature maps over (observation, action) and the linear teacher (docs/model.md §2).

Shapes: ``o [..., 18]`` observation vectors, ``a [..., 2]`` actions, ``N`` actor and ``D``
critic features, ``D' = D - 4``. Knows nothing about the torus beyond the observation
layout (event flags at o[14:17]).

- Actor: ``psi = tanh(W_psi o + b_psi)``, rescaled to norm ``c_psi`` when longer.
- Critic: with ``x = [o; a; 1]``, ``phi[:D'] = sqrt(2/D') cos(W_phi x + b_phi)``,
  ``phi[D':D'+3]`` = caught, picked-positive, picked-negative flags, ``phi[D'+3] = ||a||^2``.
- Teacher: ``r(s, a) = w_R . phi(s, a) / sqrt(D)``.
- Expected next features ``bar_phi(s') = E_{a' ~ N(m, sigma^2 I)} phi(s', a')``: Monte Carlo
  over given draws, or in closed form ``E cos(c + w_a . a') = cos(c + w_a . m)
  exp(-sigma^2 ||w_a||^2 / 2)`` and ``E ||a'||^2 = ||m||^2 + 2 sigma^2``.

The critic part is evaluated in row blocks that stay in cache, as ``cos(C + a W_act)`` with
``C = W_obs o + bias`` computed once per state, optionally on several threads (NumPy
releases the GIL inside ufuncs). ``dtype`` float32 is the validated fast path.
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
import queue
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from tdlens.config import RunConfig
from tdlens.kernels import affine_rows, block_arguments, block_cos_features, block_features
from tdlens.seeding import stream
from tdlens.threads import parallel_map

OBS_DIM = 18
ACTION_DIM = 2
NUM_EXTRA = 4
_FLAGS = slice(14, 17)
_BLOCK_ROWS = 128
_CACHE_BYTES = 1 << 20
"""Target size of a feature block's cosine-argument buffer (about one L2 cache)."""


@dataclass(frozen=True)
class FeatureMaps:
    """Frozen random feature maps and teacher of one run."""

    W_psi: np.ndarray  # [N, 18] float64
    b_psi: np.ndarray  # [N]
    c_psi: float
    W_obs: np.ndarray  # [18, D'] columns of W_phi acting on o, in `dtype`
    W_act: np.ndarray  # [2, D'] columns of W_phi acting on a, in `dtype`
    bias: np.ndarray  # [D'] = W_phi[:, 20] + b_phi, in `dtype`
    w_R: np.ndarray  # [D] teacher, float64
    threads: int = 1

    @property
    def W_psi_t(self) -> np.ndarray:
        """``W_psi^T [18, N]`` in the features dtype (cached, contiguous)."""
        return self._cache("W_psi_t", lambda: np.ascontiguousarray(self.W_psi.T, self.dtype))

    @property
    def b_psi_d(self) -> np.ndarray:
        return self._cache("b_psi_d", lambda: self.b_psi.astype(self.dtype))

    def constant(self, key: str, value: float) -> np.ndarray:
        """``[D']`` vector filled with `value` in the features dtype (cached)."""
        return self._cache(key, lambda: np.full(self.D - NUM_EXTRA, value, dtype=self.dtype))

    def _cache(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        store = self.__dict__.setdefault("_derived", {})
        if key not in store:
            store[key] = make()
        return store[key]

    @property
    def N(self) -> int:
        return self.W_psi.shape[0]

    @property
    def D(self) -> int:
        return self.W_obs.shape[1] + NUM_EXTRA

    @property
    def dtype(self) -> np.dtype:
        return self.W_obs.dtype

    @property
    def base_scale(self) -> float:
        """sqrt(2 / D'), the scale of the random Fourier part."""
        return math.sqrt(2.0 / (self.D - NUM_EXTRA))


def make_feature_maps(cfg: RunConfig) -> FeatureMaps:
    """Draw the actor and critic feature maps and the teacher from the run seed's streams."""
    env = cfg.env
    N, D = env.actor_feature_dim, env.feature_dim
    D_base = D - NUM_EXTRA
    rng_psi = stream(cfg.seed, "actor_features")
    W_psi = rng_psi.normal(0.0, 1.0 / math.sqrt(OBS_DIM), size=(N, OBS_DIM))
    b_psi = rng_psi.normal(0.0, 0.1, size=N)
    rng_phi = stream(cfg.seed, "critic_features")
    W_phi = rng_phi.normal(0.0, env.feature_sigma, size=(D_base, OBS_DIM + ACTION_DIM + 1))
    b_phi = rng_phi.uniform(0.0, 2.0 * math.pi, size=D_base)
    rng_teacher = stream(cfg.seed, "teacher")
    w_R = np.concatenate(
        [
            rng_teacher.normal(0.0, env.teacher_base_scale, size=D_base),
            [-1.0, 1.0, -1.0, -env.lambda_action_penalty],
        ]
    )
    dtype = np.dtype(cfg.precision)
    threads = cfg.threads or os.cpu_count() or 1
    return FeatureMaps(
        W_psi=W_psi,
        b_psi=b_psi,
        c_psi=env.c_psi,
        W_obs=np.ascontiguousarray(W_phi[:, :OBS_DIM].T, dtype=dtype),
        W_act=np.ascontiguousarray(W_phi[:, OBS_DIM : OBS_DIM + ACTION_DIM].T, dtype=dtype),
        bias=(W_phi[:, -1] + b_phi).astype(dtype),
        w_R=w_R,
        threads=threads,
    )


def actor_features(maps: FeatureMaps, o: np.ndarray) -> np.ndarray:
    """``psi [..., N] = tanh(W_psi o + b_psi)``, rescaled so that ||psi|| <= c_psi.

    Computed in the features dtype (float32 is validated against float64, docs/model.md §14); the
    affine map row by row in a fixed order (:func:`tdlens.kernels.affine_rows`), so a row's
    value never depends on the other rows or on the CPU's BLAS kernel.
    """
    rows = np.ascontiguousarray(o, dtype=maps.dtype).reshape(-1, o.shape[-1])
    psi = np.empty((rows.shape[0], maps.N), dtype=maps.dtype)
    affine_rows(rows, maps.W_psi_t, maps.b_psi_d, psi)
    psi = psi.reshape(*o.shape[:-1], maps.N)
    np.tanh(psi, out=psi)
    norm = np.sqrt(np.vecdot(psi, psi))[..., None]
    psi *= (maps.c_psi / np.maximum(norm, maps.c_psi)).astype(psi.dtype)
    return psi


def reward(maps: FeatureMaps, phi: np.ndarray) -> np.ndarray:
    """Teacher reward ``r = w_R . phi / sqrt(D)`` for ``phi [..., D]`` (float64)."""
    return (phi @ maps.w_R.astype(phi.dtype)).astype(np.float64) / math.sqrt(maps.D)


def critic_features(maps: FeatureMaps, o: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``phi(s, a) [..., D]`` straight from the definition (reference path, any shape)."""
    o = np.asarray(o, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    f64 = np.float64
    arg = o @ maps.W_obs.astype(f64) + a @ maps.W_act.astype(f64) + maps.bias.astype(f64)
    out = np.empty((*o.shape[:-1], maps.D), dtype=maps.dtype)
    out[..., : maps.D - NUM_EXTRA] = maps.base_scale * np.cos(arg)
    out[..., maps.D - NUM_EXTRA : maps.D - 1] = o[..., _FLAGS]
    out[..., maps.D - 1] = np.sum(a**2, axis=-1)
    return out


def expected_critic_features_exact(
    maps: FeatureMaps, o: np.ndarray, mean: np.ndarray, sigma: float
) -> np.ndarray:
    """Closed-form ``E_{a ~ N(mean, sigma^2 I)} phi(s, a)`` (reference path, any shape)."""
    out = critic_features(maps, o, mean).astype(np.float64)
    damp = np.exp(-0.5 * sigma**2 * np.sum(maps.W_act.astype(np.float64) ** 2, axis=0))
    out[..., : maps.D - NUM_EXTRA] *= damp
    out[..., maps.D - 1] += 2.0 * sigma**2
    return out.astype(maps.dtype)


@dataclass(frozen=True)
class NextActions:
    """How bar_phi(s') is estimated: MC draws ``[L, K, 2]`` (K may be 0) or exact."""

    draws: np.ndarray | None = None
    mean: np.ndarray | None = None
    sigma: float = 0.0

    @property
    def exact(self) -> bool:
        return self.draws is None


MAPPED_BYTES = 4 * 2**20
"""Workspace buffers of at least this many bytes get their own anonymous mapping (NumPy
asks for huge pages from this size on too)."""


def mapped_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array of `shape` and `dtype` in its own private anonymous memory
    mapping, unmapped (its memory back to the OS) as soon as no array refers to it,
    unlike a block of glibc's heap, whose freed pages may stay resident. Huge pages are
    asked for, as NumPy does for its large arrays: first touch of 32 MB then costs ~3.5 ms
    instead of ~16 ms in 4 KiB pages. An allocation that cannot be mapped raises
    MemoryError, as NumPy's does."""
    if not hasattr(mmap, "MAP_PRIVATE"):  # not a Unix: NumPy's allocation
        return np.empty(shape, dtype=dtype)
    count = math.prod(shape)
    nbytes = max(1, count * np.dtype(dtype).itemsize)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    except (OSError, OverflowError) as exc:  # as np.empty says it (runs report "out of memory")
        raise MemoryError(
            f"Unable to allocate {nbytes / 2**30:.3g} GiB for an array with shape {shape} "
            f"and data type {np.dtype(dtype).name}"
        ) from exc
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


class Workspace:
    """Reusable arrays for the hot path.

    Fresh large arrays cost a page fault per 4 KiB on first touch (about 4 ms for the
    26 MB feature matrices of one iteration); a workspace hands out the same buffers again.
    Arrays from ``array(key, ...)`` stay valid until the next request of the same key.
    Buffers of at least :data:`MAPPED_BYTES` are mapped on their own
    (:func:`mapped_empty`), so that :meth:`release` gives their memory back.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._scratch: queue.SimpleQueue[dict[str, np.ndarray]] = queue.SimpleQueue()
        self._ahead: dict[str, tuple[Hashable, Any]] = {}

    def array(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A buffer of `shape` and `dtype` (uninitialised) reused across calls."""
        arr = self._arrays.get(key)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            del arr  # the old buffer is freed before the new one is allocated
            self.release(key)
            dtype = np.dtype(dtype)
            big = math.prod(shape) * dtype.itemsize >= MAPPED_BYTES
            arr = mapped_empty(shape, dtype) if big else np.empty(shape, dtype=dtype)
            self._arrays[key] = arr
        return arr

    def held_bytes(self) -> int:
        """Bytes of the buffers held (those of :meth:`array`; the scratch dicts are not
        counted)."""
        return sum(arr.nbytes for arr in self._arrays.values())

    def release_all(self) -> None:
        """Drop every buffer (:meth:`release` of all keys)."""
        self.release(*list(self._arrays))

    def release(self, *keys: str) -> None:
        """Drop the buffers of `keys` (absent keys are ignored): their memory returns once
        no array refers to it, and the next request of a key allocates afresh. For
        buffers that are large and short-lived, so they do not stay resident beside the
        next stage's."""
        for key in keys:
            self._arrays.pop(key, None)

    @contextmanager
    def scratch(self) -> Iterator[dict[str, np.ndarray]]:
        """A per-thread scratch dict (one per concurrent user, returned after use)."""
        try:
            item = self._scratch.get_nowait()
        except queue.Empty:
            item = {}
        try:
            yield item
        finally:
            self._scratch.put(item)

    def keep_ahead(self, slot: str, key: Hashable, value: Any) -> None:
        """Keep `value`, work done ahead of the call that needs it, in `slot` (one value a
        slot: it replaces the slot's last one) for :meth:`take_ahead` with the same `key`.
        Not a buffer: :meth:`release_all` keeps it."""
        self._ahead[slot] = (key, value)

    def take_ahead(self, slot: str, key: Hashable) -> Any | None:
        """The value kept in `slot` under `key`, emptying the slot; None when the slot is
        empty or holds another key's value."""
        kept_key, value = self._ahead.pop(slot, (None, None))
        return value if kept_key == key else None


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter: allocations of at least this many bytes are mapped."""
ROUND_MMAP_BYTES = 8 * 2**20
STEADY_MMAP_BYTES = 32 * 2**20
"""glibc's largest dynamic mmap threshold (64-bit), where it settles once a program has
freed an array of 32 MiB."""


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt`` (None where the C library has none)."""
    try:
        return ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None where the C library has none)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


def trim_heaps() -> None:
    """Give the free pages of glibc's heaps (every thread's arena) back to the OS
    (``malloc_trim(0)``; ~1 ms): blocks below the mmap threshold freed by a probe round or
    a training iteration otherwise stay resident, ~40 MiB at the seed settings. No-op
    without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextmanager
def large_arrays_unmapped_when_freed(threshold: int = ROUND_MMAP_BYTES) -> Iterator[None]:
    """Within: every allocation of at least `threshold` bytes is mapped on its own, so its
    memory goes back to the OS as soon as it is freed; afterwards the threshold is
    :data:`STEADY_MMAP_BYTES`, where glibc's dynamic one settles anyway.

    glibc raises its mmap threshold to the size of any mapped block that is freed (up to
    32 MiB), after which blocks below it come from its heaps (one per thread that
    allocates) and stay resident when freed; a probe round's 16-32 MiB buffers, freed
    stage after stage on several threads, then add up instead of taking each other's
    place (seed run: ~70 MiB more at the peak). Not for the training iteration, whose
    temporaries of that size would be page-faulted afresh every iteration. On entry and
    exit the heaps are trimmed (:func:`trim_heaps`). No-op without glibc or when the user
    set ``MALLOC_MMAP_THRESHOLD_``."""
    mallopt = _mallopt()
    if mallopt is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        yield
        return
    mallopt(M_MMAP_THRESHOLD, threshold)
    trim_heaps()
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_BYTES)
        trim_heaps()


def _buffer(scratch: dict[str, np.ndarray], key: str, rows: int, cols: int, dtype) -> np.ndarray:
    arr = scratch.get(key)
    if arr is None or arr.shape[0] < rows or arr.shape[1] != cols or arr.dtype != dtype:
        arr = scratch[key] = np.empty((max(rows, _BLOCK_ROWS + 1), cols), dtype=dtype)
    return arr[:rows]


def next_action_terms(
    maps: FeatureMaps, next_actions: NextActions, L: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What bar_phi takes from the next actions of a chain of L steps (docs/model.md §3):
    ``draws [L, J, 2]`` whose cosines are summed (the K_mc draws, or the mean alone,
    J = 1, for the closed form), the scale of that sum ``bar_scale [D']`` (``base_scale /
    K``, or ``base_scale exp(-sigma^2 |W_act_j|^2 / 2)`` for the closed form), and bar_phi's
    last column ``sq [L]`` (the mean of ``|a'|^2`` over the draws, or ``|m|^2 + 2
    sigma^2``)."""
    dtype = maps.dtype
    if next_actions.exact:
        draws = next_actions.mean[:, None, :]
        w_sq = np.sum(maps.W_act.astype(np.float64) ** 2, axis=0)
        bar_scale = (maps.base_scale * np.exp(-0.5 * next_actions.sigma**2 * w_sq)).astype(dtype)
        sq = np.sum(next_actions.mean**2, axis=-1) + 2.0 * next_actions.sigma**2
    else:
        K = next_actions.draws.shape[1]
        draws = next_actions.draws if K > 0 else np.zeros((L, 1, 2))
        bar_scale = maps.constant(f"bar_scale_{K}", maps.base_scale / max(K, 1))
        sq = np.mean(np.sum(draws**2, axis=-1), axis=1) if K > 0 else np.zeros(L)
    return draws, bar_scale, sq


def chain_features(
    maps: FeatureMaps,
    o_chain: np.ndarray,
    a: np.ndarray,
    next_actions: NextActions,
    phi_out: np.ndarray,
    bar_phi_out: np.ndarray,
    scratch: dict[str, np.ndarray] | None = None,
) -> None:
    """TD features along one chain of states s_0..s_S (fused, blocked, in place).

    ``o_chain [L+1, 18]``, ``a [L, 2]`` the executed actions. Writes
    ``phi_out[t] = phi(s_t, a_t)`` and ``bar_phi_out[t] = bar_phi(s_{t+1})`` for t < L,
    computing ``C = W_obs o`` once per state and reusing it for all J + 1
    actions of a row (a_t on s_t; the J next-action draws, or the mean when exact, on
    s_{t+1}). In float32 one compiled call per row block
    (:func:`tdlens.kernels.block_cos_features`) forms each cosine argument ``a W_act + (C
    + bias)``, takes its cosine (:func:`tdlens.kernels.cos32`, NumPy's float32 cosine bit
    for bit), scales it (phi) and sums the draws in order (bar_phi), the arguments never
    stored. Otherwise (float64, or an argument NaN or beyond the cosine's reduction range,
    which NumPy takes through the C library), per sub-block: one compiled call writes the
    arguments of all actions into one cache-sized buffer ``[J + 1, rows, D']``, NumPy
    takes their cosines in one call, and one more scales and sums them.
    The values are those of ``cos(C + bias + a W_act)`` evaluated step by step with NumPy.
    """
    scratch = {} if scratch is None else scratch
    L = a.shape[0]
    D, D_base, dtype = maps.D, maps.D - NUM_EXTRA, maps.dtype
    o32 = o_chain.astype(dtype)
    scale = maps.constant("phi_scale", maps.base_scale)
    draws, bar_scale, sq = next_action_terms(maps, next_actions, L)
    a32, draws32 = a.astype(dtype), draws.astype(dtype)
    J = draws32.shape[1]
    sub = max(1, _CACHE_BYTES // ((J + 1) * D_base * dtype.itemsize))
    for start in range(0, L, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, L)
        C = _buffer(scratch, "C", stop - start + 1, D_base, dtype)
        np.matmul(o32[start : stop + 1], maps.W_obs, out=C)
        block = slice(start, stop)
        if dtype == np.float32 and block_cos_features(
            C, maps.bias, maps.W_act, a32[block], draws32[block], scale, bar_scale,
            phi_out[block], bar_phi_out[block],
        ):  # fmt: skip
            continue
        for lo in range(start, stop, sub):
            hi = min(lo + sub, stop)
            rows, C_lo = hi - lo, C[lo - start : hi - start + 1]
            args = _buffer(scratch, "args", (J + 1) * rows, D_base, dtype)
            args = args.reshape(J + 1, rows, D_base)
            block_arguments(C_lo, maps.bias, maps.W_act, a32[lo:hi], draws32[lo:hi], args)
            np.cos(args, out=args)
            block_features(args, scale, bar_scale, phi_out[lo:hi], bar_phi_out[lo:hi])
    phi_out[:, D_base : D - 1] = o_chain[:L, _FLAGS]
    phi_out[:, D - 1] = np.sum(a**2, axis=-1)
    bar_phi_out[:, D_base : D - 1] = o_chain[1 : L + 1, _FLAGS]
    bar_phi_out[:, D - 1] = sq


def run_parallel(fn: Callable[[int], None], items: Sequence[int], threads: int) -> None:
    """Call ``fn(i)`` for every item, on up to `threads` threads (in order when 1), every
    thread pool (BLAS, OpenMP) held to one thread meanwhile: our threads already use every
    core, and the small products of a feature block gain nothing from a second BLAS
    thread (:func:`tdlens.threads.parallel_map`)."""
    parallel_map(fn, items, threads, user_api=None)
