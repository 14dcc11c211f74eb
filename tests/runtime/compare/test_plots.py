"""The report plots' readability rules: labels kept apart inside the axes, colours by family, a sensible byte unit."""

import pytest

from partition.units import binary_unit, format_bytes
from runtime.compare.plots import _family_colours, _spread


@pytest.mark.parametrize("values", [[0.5] * 15, [0.0, 0.01, 0.02, 0.9, 0.91], [0.99, 1.0, 1.0], [0.3]])
def test_labels_are_spread_apart_in_order_and_inside_the_axes(values):
    out = _spread(sorted(values), 0.035)
    gap = min(0.035, 1 / len(values))
    assert all(0.0 - 1e-12 <= v <= 1.0 + 1e-12 for v in out)
    assert all(b - a >= gap - 1e-12 for a, b in zip(out, out[1:]))
    if len(values) == 1:
        assert out == values


def test_byte_unit_keeps_one_to_four_digits_and_no_exponent():
    assert binary_unit(900) == ("B", 1.0) and binary_unit(40 * 1024) == ("KiB", 1024.0)
    assert binary_unit(3 * 2**20) == ("MiB", 2.0**20) and binary_unit(5 * 2**50) == ("TiB", 2.0**40)
    assert format_bytes(1010 * 1024) == "1010 KiB" and format_bytes(1536) == "1.5 KiB" and format_bytes(5) == "5 B"


def test_candidates_are_coloured_by_family_with_distinct_shades():
    plt = pytest.importorskip("matplotlib.pyplot")
    entries = [{"id": f"p{i}", "kind": "pipeline"} for i in range(3)] + [{"id": "a", "kind": "accumulation"},
                                                                          {"id": "s", "kind": "single"}]
    colours = _family_colours(plt, entries)
    assert len(set(colours.values())) == 5
    blue = [colours[f"p{i}"] for i in range(3)]
    assert all(c[2] > c[0] for c in blue)  # the pipelines' family is blue
    assert colours["a"][1] > colours["a"][0] and colours["s"][0] > colours["s"][2]  # green, orange
