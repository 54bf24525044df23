"""4-significant-digit formatting (docs/model.md §8) and the summary statistics of the tables."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from tdlens.pages.fmt import fmt, fmt_count, fmt_param, fmt_ratio
from tdlens.report.series_stats import K_LAST, ls_slope, summarize

SEED = Path(__file__).resolve().parent / "data" / "seed_report.md"


def seed_number_cells() -> list[str]:
    """Every numeric cell of every table in the seed report."""
    cells = []
    for line in SEED.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            for cell in line.strip("| ").split(" | ")[1:]:
                if re.fullmatch(r"-?[0-9][0-9.e+-]*", cell):
                    cells.append(cell)
    return cells


def test_fmt_reproduces_every_number_of_the_seed_report():
    """Origin: the seed report's own cells; formatting their value gives them back."""
    cells = seed_number_cells()
    assert len(cells) == 384
    assert [fmt(float(c)) for c in cells] == cells


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4096.0, "4096"),
        (1e-07, "1e-07"),
        (2.5e-05, "2.5e-05"),
        (0.043, "0.043"),
        (31.6, "31.6"),
        (1.0, "1"),
        (0.0, "0"),
        (-0.0, "0"),
        (4.58234, "4.582"),
        (-6.16666e-07, "-6.167e-07"),
        (12345.0, "12345"),
        (123456.7, "1.235e+05"),
        (7, "7"),
        (np.int64(3), "3"),
        (True, "1"),
        (None, "-"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (np.float32(0.5), "0.5"),
    ],
)
def test_fmt_examples(value, text):
    assert fmt(value) == text


def test_other_formats():
    assert fmt_ratio(1.0) == "1.0"
    assert fmt_ratio(1.00001) == "1.00001"  # a deviation 4 digits would hide stays visible
    assert fmt_ratio(None) == "-"
    assert fmt_count(16891.9) == "17,000" and fmt_count(2324.4) == "2,300"
    assert fmt_count(math.inf) == "inf"
    assert fmt_param(0.3) == "0.3" and fmt_param(True) == "true" and fmt_param(None) == "null"


def test_summarize_last_k_finite_points_and_slope():
    """Hand calculation: y = 2 t + 1 on the last 5 finite points has slope 2."""
    t = np.arange(10.0)
    y = 2 * t + 1
    y[3] = np.nan
    y[9] = np.nan
    s = summarize(y, t)
    assert s.last == 17.0 and s.min == 1.0 and s.max == 17.0 and s.count == 8
    last5 = [9.0, 11.0, 13.0, 15.0, 17.0]
    assert s.mean_last_k == pytest.approx(np.mean(last5))
    assert s.slope_last_k == pytest.approx(2.0)
    assert K_LAST == 5


def test_summarize_edge_cases():
    empty = summarize(np.array([np.nan, np.nan]), np.array([0.0, 1.0]))
    assert empty.last is None and empty.slope_last_k is None and empty.count == 0
    one = summarize(np.array([3.0]), np.array([4.0]))
    assert one.last == 3.0 and one.mean_last_k == 3.0 and one.slope_last_k is None
    with_inf = summarize(np.array([1.0, np.inf]), np.array([0.0, 1.0]))
    assert with_inf.last == math.inf and with_inf.max == math.inf and with_inf.mean_last_k == 1.0
    assert ls_slope(np.array([1.0, 1.0]), np.array([0.0, 5.0])) is None
    assert summarize(np.full(4, 4096.0), np.arange(4.0)).slope_last_k == 0.0


def test_table_colours_regime_labels_by_family():
    """A mechanism label is coloured as its family; other text is not marked."""
    from tdlens.pages.kit import table

    html = table(["regime"], [["plateau:slow-modes"], ["diverged:off-policy"], ["frozen"], ["x:y"]])
    assert '<td class="t plateau">plateau:slow-modes</td>' in html
    assert '<td class="t diverged">diverged:off-policy</td>' in html
    assert '<td class="t frozen">frozen</td>' in html and '<td class="t">x:y</td>' in html
