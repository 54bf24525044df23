"""Number and value formatting shared by the renderers (docs/model.md §8: "4 significant digits").

``fmt(x)`` reproduces the seed report's cells: ``f"{x:.4g}"`` for floats, integers (and
integral floats below 1e15) as integers, so ``4096.0 -> "4096"``, ``1e-07 -> "1e-07"``,
``2.5e-05 -> "2.5e-05"``, ``0.043 -> "0.043"``; a missing value (None) is ``"-"``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MISSING = "-"
_INT_LIMIT = 1e15


def fmt(x: Any) -> str:
    """A number with 4 significant digits, ints as ints, None as '-', strings unchanged."""
    if x is None:
        return MISSING
    if isinstance(x, str):
        return x
    if isinstance(x, list | tuple):
        return "[" + ", ".join(fmt(v) for v in x) + "]"
    if isinstance(x, bool | np.bool_):
        return str(int(x))
    if isinstance(x, int | np.integer):
        return str(int(x))
    value = float(x)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0.0:
        return "0"
    if value.is_integer() and abs(value) < _INT_LIMIT:
        return str(int(value))
    return f"{value:.4g}"


def fmt_param(x: Any) -> str:
    """A config value as written in key_hparams: shortest float repr, ints, true/false."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return repr(x)
    return str(x)


def fmt_ratio(ratio: float | None) -> str:
    """The scale ratio: exactly 1 prints as the seed's ``1.0``; otherwise 10 digits so
    that a deviation the 4-digit format would hide stays visible."""
    if ratio is None:
        return MISSING
    if ratio == 1.0:
        return "1.0"
    if not math.isfinite(ratio):
        return fmt(ratio)
    return f"{ratio:.10g}"


def fmt_count(x: float) -> str:
    """An iteration count to 2 significant digits with thousands separators: ``~17,000``."""
    if not math.isfinite(x):
        return fmt(x)
    rounded = float(f"{x:.2g}")
    if abs(rounded) >= 1e15:
        return f"{x:.2g}"
    return f"{rounded:,.0f}" if abs(rounded) >= 1 else f"{x:.2g}"


def duration_text(seconds: float) -> str:
    """``42s``, ``7m05s``, ``3h10m``: a wall time for progress lines."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
