"""tdlens's float32 cosine is NumPy's, and the fused feature kernels give the bits of the
three-call path they replace (issue 28).

References: NumPy's ``np.cos`` on float32 (bit for bit where NumPy's loop is its FMA SIMD
one, which ``benchmarks/check_cosine.py`` checks over all 2^32 inputs; here a fixed-seed
sample of 2^22 bit patterns and the edges of the algorithm), and the three-call path
(:func:`tdlens.kernels.block_arguments`, ``np.cos``, :func:`tdlens.kernels.block_features`)
that chain_features took before.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tdlens.features as features
import tdlens.probes.td_features as td_features
from helpers import small_config
from tdlens.features import NextActions, chain_features, make_feature_maps
from tdlens.kernels import (
    COS_REDUCTION_MAX,
    block_arguments,
    block_cos_features,
    block_features,
    cosines,
)
from tdlens.probes.td_features import chain_differences


def _numpy_cos_is_fma_simd() -> bool:
    """Whether NumPy's float32 cosine runs its FMA SIMD loop here (x86 with FMA3 and
    AVX2); elsewhere it may call the C library's cosf, which rounds otherwise."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # pragma: no cover
        return False
    return bool(__cpu_features__.get("FMA3") and __cpu_features__.get("AVX2"))


def _assert_numpy_cos(x: np.ndarray) -> None:
    x = np.ascontiguousarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        ref = np.cos(x)
    got = np.empty_like(x)
    cosines(x, got)
    in_place = x.copy()
    cosines(in_place, in_place)
    np.testing.assert_array_equal(in_place.view(np.uint32), got.view(np.uint32))
    if _numpy_cos_is_fma_simd():
        bad = np.flatnonzero(got.view(np.uint32) != ref.view(np.uint32))
        shown = bad[:5]
        assert bad.size == 0, f"{bad.size} differ, e.g. x={x[shown]}: {got[shown]} vs {ref[shown]}"
    else:  # pragma: no cover - NumPy's cosine is not the SIMD one here
        finite = np.isfinite(x)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        ulp = np.spacing(np.abs(ref[finite]))
        assert np.all(np.abs(got[finite] - ref[finite]) <= 2 * ulp)


def test_cos32_equals_numpy_on_random_bit_patterns():
    """2^22 float32 bit patterns drawn uniformly (every exponent, both signs, NaNs)."""
    bits = np.random.default_rng(28).integers(0, 2**32, size=2**22, dtype=np.uint64)
    _assert_numpy_cos(bits.astype(np.uint32).view(np.float32))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3, 7e4])
def test_cos32_equals_numpy_at_feature_scales(scale):
    """Normal draws around the scales of the features' arguments and up to the edge of
    the Cody-Waite range (where the quadrant's rounding and the reduction are hardest)."""
    x = np.random.default_rng(int(scale)).normal(0.0, scale, 2**20)
    _assert_numpy_cos(x)


def test_cos32_equals_numpy_at_the_edges():
    """The reduction range's edge and its neighbours (inside: the polynomial; outside:
    cosf), zeros, infinities, NaNs of either sign and other payloads, subnormals, the
    largest floats, and float32 multiples of pi/2 with their neighbours (where the
    quadrant changes and the reduced argument is smallest)."""
    f32 = np.float32
    edge = COS_REDUCTION_MAX
    near = [np.nextafter(edge, f32(0)), edge, np.nextafter(edge, f32(np.inf))]
    special = [0.0, -0.0, np.inf, -np.inf, 117435.992, np.finfo(f32).max, np.finfo(f32).tiny]
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FA00000], np.uint32)
    subnormal = np.array([1, 2, 0x7FFFFF, 0x400000], np.uint32).view(f32)
    k = np.arange(-50_000, 50_001, dtype=np.float64)
    multiples = (k * (math.pi / 2)).astype(f32)
    multiples = multiples[np.abs(multiples) <= 1.01 * edge]
    pieces = [near, special, nans.view(f32), subnormal, multiples]
    x = np.concatenate([np.asarray(p, dtype=f32) for p in pieces])
    with np.errstate(invalid="ignore", over="ignore"):
        x = np.concatenate([x, -x, np.nextafter(x, f32(np.inf)), np.nextafter(x, f32(-np.inf))])
    assert np.sum(np.abs(x) == edge) >= 2 and np.sum(np.abs(x) > edge) > 4
    _assert_numpy_cos(x)


def _block_inputs(J: int, R: int = 13, D: int = 301, seed: int = 0):
    """Random inputs of a feature block: ``C [R + 1, D]``, bias, ``W_act [2, D]``, ``a [R,
    2]``, ``draws [R, J, 2]``, scales (D odd: the vector loops' tails are exercised)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    C = rng.normal(0, 3, (R + 1, D)).astype(f32)
    bias = rng.uniform(0, 2 * math.pi, D).astype(f32)
    W = rng.normal(0, 1.5, (2, D)).astype(f32)
    a = rng.normal(0, 0.5, (R, 2)).astype(f32)
    draws = rng.normal(0, 0.5, (R, J, 2)).astype(f32)
    scale = np.full(D, math.sqrt(2 / D), f32)
    bar_scale = rng.uniform(0.01, 0.05, D).astype(f32)
    return C, bias, W, a, draws, scale, bar_scale


@pytest.mark.parametrize("J", [4, 1, 3])
def test_block_cos_features_equals_three_calls(J):
    """Bit for bit against block_arguments, np.cos, block_features (J = 4 is the seed
    runs' K_mc loop, J = 1 the closed form's mean, J = 3 the general loop)."""
    C, bias, W, a, draws, scale, bar_scale = _block_inputs(J)
    R, D = a.shape[0], C.shape[1]
    args = np.empty((J + 1, R, D), np.float32)
    block_arguments(C, bias, W, a, draws, args)
    np.cos(args, out=args)
    ref_phi, ref_bar = np.empty((R, D), np.float32), np.empty((R, D), np.float32)
    block_features(args, scale, bar_scale, ref_phi, ref_bar)
    phi, bar = np.full((R, D + 4), -7.0, np.float32), np.full((R, D + 4), -7.0, np.float32)
    assert block_cos_features(C, bias, W, a, draws, scale, bar_scale, phi, bar)
    np.testing.assert_array_equal(phi[:, :D].view(np.uint32), ref_phi.view(np.uint32))
    np.testing.assert_array_equal(bar[:, :D].view(np.uint32), ref_bar.view(np.uint32))
    assert np.all(phi[:, D:] == -7.0) and np.all(bar[:, D:] == -7.0)


@pytest.mark.parametrize("where", ["phi", "draw"])
@pytest.mark.parametrize("value", [1e6, np.nan, np.inf])
def test_block_cos_features_refuses_arguments_outside_the_reduction(where, value):
    """An argument NaN or beyond COS_REDUCTION_MAX (NumPy takes it through cosf): the
    kernel says so (its caller then takes the three-call path)."""
    C, bias, W, a, draws, scale, bar_scale = _block_inputs(4)
    if where == "phi":
        a[5, 1] = value
    else:
        draws[12, 3, 0] = value
    phi, bar = np.empty((13, 301), np.float32), np.empty((13, 301), np.float32)
    assert not block_cos_features(C, bias, W, a, draws, scale, bar_scale, phi, bar)


def _chain(S: int, K: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    o = rng.uniform(-1, 1, (S + 1, 18))
    o[:, 14:18] = rng.integers(0, 2, (S + 1, 4))
    a = rng.normal(0, 0.4, (S, 2))
    if K == 0:
        nxt = NextActions(mean=rng.normal(0, 0.3, (S, 2)), sigma=0.3)
    else:
        nxt = NextActions(draws=rng.normal(0, 0.4, (S, K, 2)))
    return o, a, nxt


@pytest.mark.parametrize("K", [4, 2, 0])
@pytest.mark.parametrize("bad_action", [None, 3e5, np.nan])
def test_chain_features_fused_equals_three_calls(monkeypatch, K, bad_action):
    """chain_features with the fused kernel against the same call with the fused kernel
    refused everywhere (the three-call path), bit for bit, over several 128-row blocks;
    with one huge action (arguments beyond the reduction range: cosf) or a NaN one, the
    fused path falls back for that block and still agrees. K = 0: the closed-form
    bar_phi."""
    maps = make_feature_maps(small_config("env.feature_dim=300"))
    S = 333
    o, a, nxt = _chain(S, K)
    if bad_action is not None:
        a[200, 0] = bad_action
    fused: list[bool] = []

    def spy(*args):
        fused.append(block_cos_features(*args))
        return fused[-1]

    monkeypatch.setattr(features, "block_cos_features", spy)
    got = [np.empty((S, maps.D), np.float32) for _ in range(2)]
    chain_features(maps, o, a, nxt, *got)
    assert fused == [True, bad_action is None, True]
    monkeypatch.setattr(features, "block_cos_features", lambda *args: False)
    ref = [np.empty((S, maps.D), np.float32) for _ in range(2)]
    chain_features(maps, o, a, nxt, *ref)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g.view(np.uint32), r.view(np.uint32))


@pytest.mark.parametrize("K", [4, 3, 0])
@pytest.mark.parametrize("keep_phi", [True, False])
@pytest.mark.parametrize("huge_action", [False, True])
def test_chain_differences_fused_equals_three_calls(monkeypatch, K, keep_phi, huge_action):
    """The probes' chain_differences with block_cos_differences against the same call
    with it refused everywhere (the three-call path), bit for bit: phi (kept or in
    scratch) and dphi; a huge action makes its block fall back. K = 0: closed form."""
    maps = make_feature_maps(small_config("env.feature_dim=300"))
    S = 333
    o, a, nxt = _chain(S, K, seed=9)
    if huge_action:
        a[7, 1] = -2e5
    fused: list[bool] = []

    def spy(*args):
        fused.append(td_features_kernel(*args))
        return fused[-1]

    td_features_kernel = td_features.block_cos_differences
    monkeypatch.setattr(td_features, "block_cos_differences", spy)
    got = [np.full((S, maps.D), np.nan, np.float32) for _ in range(2)]
    chain_differences(maps, o, a, nxt, 0.9, got[0] if keep_phi else None, got[1], {})
    assert fused == [not huge_action, True, True]
    monkeypatch.setattr(td_features, "block_cos_differences", lambda *args: False)
    ref = [np.full((S, maps.D), np.nan, np.float32) for _ in range(2)]
    chain_differences(maps, o, a, nxt, 0.9, ref[0] if keep_phi else None, ref[1], {})
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g.view(np.uint32), r.view(np.uint32))


@pytest.mark.parametrize("K", [4, 3, 0])
@pytest.mark.parametrize("bad", [None, "action", "draw"])
def test_chain_differences_from_a_formed_phi_equals_three_calls(monkeypatch, K, bad):
    """chain_differences given the chain's phi (``phi_in``: the trainer's TD errors on the
    probes' batch) takes only the next actions' cosines (block_cos_differences without phi)
    and
    writes the three-call path's dphi bit for bit; a huge action (phi's argument only)
    does not stop it, a huge next action makes its block fall back (and still agree)."""
    maps = make_feature_maps(small_config("env.feature_dim=300"))
    S = 333
    o, a, nxt = _chain(S, K, seed=11)
    if bad == "action":
        a[7, 1] = -2e5
    elif bad == "draw" and K == 0:
        nxt.mean[140, 0] = 3e5
    elif bad == "draw":
        nxt.draws[140, K - 1, 0] = 3e5
    kernel = td_features.block_cos_differences
    monkeypatch.setattr(td_features, "block_cos_differences", lambda *args: False)
    phi, ref = (np.full((S, maps.D), np.nan, np.float32) for _ in range(2))
    chain_differences(maps, o, a, nxt, 0.9, phi, ref, {})
    assert not np.isnan(ref).any()
    calls: list[tuple[bool, bool]] = []  # (fused, with_phi) per block

    def spy(*args):
        calls.append((kernel(*args), args[-1]))
        return calls[-1][0]

    monkeypatch.setattr(td_features, "block_cos_differences", spy)
    got = np.full((S, maps.D), np.nan, np.float32)
    chain_differences(maps, o, a, nxt, 0.9, None, got, {}, phi_in=phi)
    assert calls == [(True, False), (bad != "draw", False), (True, False)]
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _check_cosine(env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """benchmarks/check_cosine.py on every 65537th float32 bit pattern (65536 inputs)."""
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "check_cosine.py"), "--stride", "65537"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_check_cosine_passes_here_and_fails_against_numpys_baseline_loop():
    """The exhaustive check's script (its full run is BENCHMARKS.md's): exit 0 and "0
    differ" on NumPy's own dispatch; with NumPy held to its baseline (no SIMD targets:
    on x86-64-v2, no FMA), NumPy's cosine is the C library's and the script reports the
    inputs that differ and exits 1, so it can tell two cosines apart."""
    from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__

    done = _check_cosine()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "checked 65536 float32 inputs" in done.stdout and ": 0 differ" in done.stdout
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(__cpu_dispatch__)}
    baseline = _check_cosine(env)
    if "FMA3" in __cpu_baseline__ or "X86_V3" in __cpu_baseline__:  # pragma: no cover
        assert baseline.returncode == 0, baseline.stdout[-2000:]
    else:
        assert baseline.returncode == 1, baseline.stdout[-2000:] + baseline.stderr[-2000:]
        assert "MISMATCH x=" in baseline.stdout and ": 0 differ" not in baseline.stdout


def test_bench_cosine_runs():
    """benchmarks/bench_cosine.py (BENCHMARKS.md quotes it) runs and prints its figures."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_cosine.py"), "--repeats", "4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("machine: ")
    for line in ("kernels.cosines", "fused (block_cos_features)", "fused (block_cos_differences)"):
        assert line in done.stdout and "ns per cosine" in done.stdout, done.stdout[-2000:]
