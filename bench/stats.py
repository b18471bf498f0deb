"""Summaries of repeated measurements: quantiles of latencies, and median with min-max over runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TypedDict

__all__ = ["Spread", "quantile", "spread"]


class Spread(TypedDict):
    median: float
    min: float
    max: float
    runs: list[float]


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank method: always a value that was measured, never extrapolated."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def spread(values: Sequence[float]) -> Spread:
    """Median, min and max of one figure over runs (NaN runs, e.g. too few samples, are left out)."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "runs": list(values)}
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept), "runs": list(values)}
