"""Quantiles by nearest rank and median with min-max over runs."""

from __future__ import annotations

import math

import pytest

from bench.stats import quantile, spread


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 0.99, 5.0),
        ([float(n) for n in range(1, 101)], 0.50, 50.0),
        ([float(n) for n in range(1, 101)], 0.99, 99.0),
        ([float(n) for n in range(1, 1001)], 0.999, 999.0),
        ([3.0, 1.0, 2.0], 1.0, 3.0),
    ],
)
def test_quantile_is_a_measured_value_by_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert quantile(values, q) == expected


def test_quantile_of_nothing_is_nan() -> None:
    assert math.isnan(quantile([], 0.5))


def test_spread_leaves_out_runs_without_a_figure() -> None:
    result = spread([3.0, math.nan, 1.0, 2.0])
    assert (result["median"], result["min"], result["max"]) == (2.0, 1.0, 3.0)
    assert len(result["runs"]) == 4


def test_spread_of_runs_without_any_figure_is_nan() -> None:
    assert math.isnan(spread([math.nan])["median"])
