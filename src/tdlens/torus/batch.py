"""A stateful batched simulator for users: n independent environments stepped together.

:class:`TorusBatch` wraps the pure functions of :mod:`tdlens.torus.dynamics` (docs/model.md §1)
with its own Generator and validates what it is given; the training path calls the
pure functions directly on pre-drawn noise. Row i of a batch evolves exactly like a
single environment fed the same noise rows.
"""

from __future__ import annotations

import numpy as np

from tdlens.config import EnvConfig
from tdlens.torus.dynamics import (
    NORMAL_WIDTH,
    TorusState,
    observe,
    reset_from_uniforms,
    reset_width,
    step,
    uniform_width,
)


def check_actions(a: object, n: int) -> np.ndarray:
    """``a`` as a finite float64 ``[n, 2]`` array; ValueError naming `action` otherwise."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"action: expected an array of numbers, got {a!r} ({exc})") from None
    if arr.shape != (n, 2):
        raise ValueError(f"action: expected shape ({n}, 2) for {n} environments, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("action: expected finite values, got NaN or infinity")
    return arr


class TorusBatch:
    """``n`` Torus Goblet & Ghost environments with one random stream.

    ``reset()`` returns observations ``[n, 18]``; ``step(a)`` takes actions ``[n, 2]`` and
    returns the next observations and this transition's events.
    """

    def __init__(self, env: EnvConfig, n: int, rng: np.random.Generator) -> None:
        if not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n: expected a positive number of environments, got {n!r}")
        self.env = env
        self.n = int(n)
        self.rng = rng
        self.state: TorusState | None = None

    def reset(self) -> np.ndarray:
        self.state = reset_from_uniforms(
            self.rng.random((self.n, reset_width(self.env.num_goblets))), self.env
        )
        return observe(self.state, self.env)

    def step(self, action: object) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.state is None:
            raise RuntimeError("step() before reset()")
        a = check_actions(action, self.n)
        z = self.rng.standard_normal((self.n, NORMAL_WIDTH))
        u = self.rng.random((self.n, uniform_width(self.env.num_goblets)))
        self.state = step(self.state, a, z, u, self.env)
        s = self.state
        events = {
            "caught": s.caught,
            "picked": s.picked,
            "picked_type": s.picked_type,
            "restart": s.restart,
        }
        return observe(s, self.env), events
