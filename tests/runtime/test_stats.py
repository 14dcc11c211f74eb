"""The one quartile rule: hand-computed spreads (inclusive quartiles), the empty case, and the JSON round trip."""

import pytest

from runtime.stats import SPREAD_KEYS, Spread, relative_iqr, spread_json


def test_inclusive_quartiles_by_hand():
    s = Spread.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.p25, s.p75, s.min, s.max, s.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    # four samples 1..4: positions 0.75 and 2.25 of the sorted list (the exclusive rule would give 1.25 and 3.75)
    s = Spread.of([1.0, 2.0, 3.0, 4.0])
    assert (s.p25, s.median, s.p75) == (1.75, 2.5, 3.25)
    assert Spread.of([7.0]).to_json() == {"median": 7.0, "p25": 7.0, "p75": 7.0, "min": 7.0, "max": 7.0, "n": 1}


def test_empty_and_round_trip():
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])
    assert spread_json([]) == {"median": None, "p25": None, "p75": None, "min": None, "max": None, "n": 0}
    d = spread_json([3.0, 1.0, 2.0])
    assert tuple(d) == SPREAD_KEYS and Spread.from_json(d) == Spread.of([1.0, 2.0, 3.0])


def test_relative_iqr():
    assert relative_iqr(spread_json([1.0, 2.0, 3.0, 4.0])) == pytest.approx(1.5 / 2.5)
    assert relative_iqr(spread_json([])) == 0.0
