"""Named random streams derived from one run seed (docs/model.md, introduction).

Every draw of a run comes from ``numpy.random.SeedSequence(seed).spawn(...)``: stream
``name`` is child ``STREAMS.index(name)`` of the root, and a stream can be keyed further
(``stream(seed, "rollout", n, b)`` is trajectory ``b`` of iteration ``n``), which is
exactly the grandchild ``SeedSequence(seed).spawn(...)[i].spawn(...)[n]...``. Because a
stream is a pure function of (seed, name, keys), the "state" of every stream at an
iteration boundary is the iteration counter itself: a run resumed from a checkpoint at
iteration n draws exactly what the uninterrupted run would have drawn.

The order of ``STREAMS`` is part of the reproducibility contract: only append. A probe
registered outside tdlens declares its streams (:func:`register_stream`); each gets the
spawn key ``EXTRA_KEY_BASE + crc32(name)``, a pure function of its name, so it never
depends on the order of registration and never collides with ``STREAMS``.
"""

from __future__ import annotations

import zlib

import numpy as np

STREAMS: tuple[str, ...] = (
    "actor_features",
    "critic_features",
    "teacher",
    "init_theta_pi",
    "init_theta_mu_offset",
    "init_w",
    "rollout",
    "probe_fixed_point",
    "probe_stability",
    "probe_distribution",
    "probe_rho_audit",
    "render",
)


EXTRA_KEY_BASE = 1 << 32
"""Spawn keys of registered streams start here (far above the indices of STREAMS)."""
_EXTRA: dict[str, int] = {}


def register_stream(name: str) -> None:
    """Allow stream `name` (a registered probe's); its key is a pure function of the name."""
    if name not in STREAMS:
        _EXTRA[name] = EXTRA_KEY_BASE + zlib.crc32(name.encode())


def _stream_key(name: str) -> int:
    if name in STREAMS:
        return STREAMS.index(name)
    if name in _EXTRA:
        return _EXTRA[name]
    known = ", ".join([*STREAMS, *_EXTRA])
    raise KeyError(f"unknown random stream '{name}' (known: {known})")


def seed_sequence(seed: int, name: str, *keys: int) -> np.random.SeedSequence:
    """The SeedSequence of stream `name`, keyed by `keys` (all non-negative ints)."""
    spawn_key = (_stream_key(name), *(int(k) for k in keys))
    if any(k < 0 for k in spawn_key):
        raise ValueError(f"stream keys must be non-negative, got {keys}")
    return np.random.SeedSequence(int(seed), spawn_key=spawn_key)


def stream(seed: int, name: str, *keys: int) -> np.random.Generator:
    """A fresh PCG64 Generator for stream `name` keyed by `keys`."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, name, *keys)))
