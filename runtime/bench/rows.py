"""One result row per contender, with the comparisons the tables show: paired speedups, best of, equal math.

"Best of" picks the fastest contender of a group by median step time among those that ran and passed the
equal-math check (a failing contender is marked and never chosen); it is shown as information. Verdicts
judge the headline contender named in the configuration before the run (runtime.bench.verdict).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runtime.bench.equal_math import MathCheck
from runtime.bench.flops import throughput
from runtime.bench.report import ms, ratio
from runtime.bench.timing import Group, Measured, speedup_json


def passes(name: str, checks: Mapping[str, MathCheck]) -> bool:
    """True unless ``name`` was checked and failed (unchecked contenders are not excluded)."""
    check = checks.get(name)
    return check is None or check.ok


def best_of(measured: Mapping[str, Measured], group: Group, checks: Mapping[str, MathCheck]) -> Measured | None:
    """The fastest of ``group`` that ran and passed the equal-math check (None when there is none)."""
    return fastest(measured, [m.name for m in measured.values() if m.group is group], checks)


def fastest(measured: Mapping[str, Measured], names: Sequence[str], checks: Mapping[str, MathCheck]) -> Measured | None:
    """The fastest of the contenders called ``names`` that ran and passed the equal-math check (None: none did)."""
    ok = [m for n in names if (m := measured.get(n)) is not None and m.spread is not None and passes(n, checks)]
    return min(ok, key=lambda m: m.spread.median, default=None)


def base_row(m: Measured, check: MathCheck | None, flops: int, peak: object, batch: int) -> dict:
    """What every table shows of a contender: time spread, samples/s, FLOP/s, loss, equal-math verdict."""
    s = m.spread
    return {"variant": m.name, "group": m.group.value, "error": m.error, "step_time": s.to_json() if s else None,
            "samples_per_second": batch / s.median if s else None, "flops": flops,
            **throughput(flops, s.median if s else None, peak), "loss": m.losses[0] if m.losses else None,
            "math": check.to_json() if check else None}


def speedups(m: Measured, against: Mapping[str, Measured | None]) -> dict:
    """``speedup_vs_<key>`` (paired, above 1: ``m`` is faster) and ``<key>`` (the other's name) for each entry."""
    out = {}
    for key, other in against.items():
        out[key] = other.name if other is not None else None
        out[f"speedup_vs_{key}"] = speedup_json(other, m) if other is not None and other is not m else None
    return out


def math_cell(row: dict) -> str:
    """``ok``, ``FAILED (worst ...)`` or ``-`` (not checked)."""
    check = row.get("math")
    if not check:
        return "-"
    return "ok" if check["ok"] else f"FAILED ({check['detail']})"


def time_cell(row: dict, key: str = "step_time") -> str:
    """The median [quartiles] of the step, or why the contender has none."""
    return ms(row[key]) if not row["error"] else f"failed: {row['error'][:50]}"


def ratio_cell(row: dict, key: str) -> str:
    """A paired speedup cell (``-`` when there is none)."""
    return ratio(row.get(f"speedup_vs_{key}"))


def loss_cell(row: dict) -> str:
    """The loss to 6 significant digits."""
    return "-" if row["loss"] is None else f"{row['loss']:.6g}"
