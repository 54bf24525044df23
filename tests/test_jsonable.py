"""to_jsonable's one-pass copy of float series against the item-by-item definition."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from tdlens.rundir.files import to_jsonable


def _item_by_item(value: Any) -> Any:
    """to_jsonable's definition, one call per item (the code before its float fast path)."""
    if isinstance(value, Mapping):
        return {str(k): _item_by_item(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_item_by_item(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cases() -> list[Any]:
    rng = np.random.default_rng(0)
    xs = rng.standard_normal(50).tolist()
    return [
        [],
        (),
        xs,
        tuple(xs),
        [*xs[:5], math.nan, *xs[5:]],  # one NaN: the series item by item
        [1e308, 1e308],  # finite items whose sum overflows
        [math.inf, -math.inf],
        [1.0, 2, 3.5],  # an int among floats
        [1.0, np.float64(2.0), np.float32(0.5)],  # numpy scalars become Python numbers
        [True, 1.0],
        {"data": [{"x": xs, "y": [math.nan, 1.0]}], "layout": {"range": (0.0, 1.0)}},
        [[1.0, math.nan], (2.0, 3.0)],
    ]


@pytest.mark.parametrize("value", _cases())
def test_to_jsonable_equals_its_item_by_item_definition(value):
    got = to_jsonable(value)
    ref = _item_by_item(value)
    assert json.dumps(got, allow_nan=False) == json.dumps(ref, allow_nan=False)
    if isinstance(ref, list):  # the same Python types item by item
        assert [type(v) for v in got] == [type(v) for v in ref]
