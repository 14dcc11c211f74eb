"""Spread of repeated measurements: median, quartiles and extremes, by one quartile rule for the whole project.

Quartiles use the inclusive method (linear interpolation between order statistics, the one numpy calls
``linear``): the 25th and 75th percentiles always lie within the samples, which matters for the 3 to 20
samples a benchmark or a training run takes. ``Spread.of([1, 2, 3, 4, 5])`` has p25 = 2 and p75 = 4.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

SPREAD_KEYS = ("median", "p25", "p75", "min", "max", "n")


@dataclass(frozen=True)
class Spread:
    """Median, quartiles and extremes of repeated measurements."""

    median: float
    p25: float
    p75: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (at least one; ValueError otherwise)."""
        vals = sorted(float(v) for v in values)
        if not vals:
            raise ValueError("spread: no values")
        q = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 else [vals[0]] * 3
        return cls(statistics.median(vals), q[0], q[2], vals[0], vals[-1], len(vals))

    @classmethod
    def from_json(cls, data: dict) -> Spread:
        """The inverse of ``to_json``."""
        return cls(*(data[k] for k in SPREAD_KEYS))

    def to_json(self) -> dict:
        """The figures as a dict (the keys of SPREAD_KEYS)."""
        return {"median": self.median, "p25": self.p25, "p75": self.p75, "min": self.min, "max": self.max, "n": self.n}


def spread_json(values: Sequence[float]) -> dict:
    """``Spread.of(values).to_json()``, or every figure None (and n = 0) when there are no values."""
    if not values:
        return {k: (0 if k == "n" else None) for k in SPREAD_KEYS}
    return Spread.of(values).to_json()


def relative_iqr(spread: dict) -> float:
    """(p75 - p25) / median of a ``to_json`` dict: how disturbed the measurement was (0 when it has no median)."""
    return (spread["p75"] - spread["p25"]) / spread["median"] if spread["median"] else 0.0
