"""The targets, checked against a benchmark's results: one line per target, MET or MISSED, with the figure.

Targets judge the headline contender named in the benchmark's configuration before the run, never the
fastest of the run (that would pick the winner on the samples it is then judged by); the fastest of ours and
each of ours against its paired peer are printed as INFO lines. A contender that failed the equal-math check is excluded:
it cannot be the best peer, and a headline that failed it misses every target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DIST_VS_BEST_PEER = 1.20
DIST_OF_LIMIT = 0.85
PIPELINE_VS_ACCUMULATION = 1.0
PIPELINE_VS_BEST_PEER = 1.10
CONTENTION_RATIO = 1.5


@dataclass(frozen=True)
class Target:
    """A bound on a figure and what it is about."""

    what: str
    bound: float
    at_least: bool = True

    def line(self, value: float | None, detail: str, spread: dict | None = None) -> str:
        """``MET     dist: ...: speedup 1.213 [1.190-1.230] (target >= 1.20)``."""
        if value is None:
            return f"n/a     {self.what}: {detail} (no figure)"
        ok = value >= self.bound if self.at_least else value <= self.bound
        sign = ">=" if self.at_least else "<="
        iqr = f" [{spread['p25']:.3f}-{spread['p75']:.3f}]" if spread else ""
        return f"{'MET   ' if ok else 'MISSED'}  {self.what}: {detail} {value:.3f}{iqr} (target {sign} {self.bound:.2f})"


def _median(d: dict | None) -> float | None:
    return None if not d else d["median"]


def _math_failed(row: dict) -> bool:
    return bool(row.get("math")) and not row["math"]["ok"]


def _math_line(where: str, rows: Sequence[dict]) -> str:
    failed = [r["variant"] for r in rows if _math_failed(r)]
    if failed:
        return f"MISSED  {where}: equal math: {', '.join(failed)} failed the gradient/loss check (excluded from verdicts)"
    return f"MET     {where}: equal math: every contender's loss and gradients match the float64 reference"


def _headline(where: str, rows: Sequence[dict], name: str) -> tuple[dict | None, list[str]]:
    """The headline's row, or None with the line saying why it cannot be judged."""
    row = next((r for r in rows if r["variant"] == name), None)
    if row is None or row["error"] or not row["step_time"]:
        return None, [f"MISSED  {where}: headline {name} did not run ({row['error'] if row else 'not in the run'})"]
    if _math_failed(row):
        return None, [f"MISSED  {where}: headline {name} failed the equal-math check ({row['math']['detail']})"]
    return row, []


def _functions(result: dict) -> list[str]:
    gpu = result["machine"]["device"].startswith("cuda")
    out = []
    for r in result["results"]:
        if r["variant"] != "custom":
            continue
        if gpu:
            target = Target(f"functions {r['dtype']} width {r['width']}: custom vs autograd", 1.0)
        elif r["width"] >= 1024:
            target = Target(f"functions {r['dtype']} width {r['width']}: custom vs autograd (CPU, within 5%)", 0.95)
        else:
            continue
        if _math_failed(r):
            out.append(f"MISSED  {target.what}: custom failed the equal-math check ({r['math']['detail']})")
        else:
            out.append(target.line(_median(r["speedup_vs_autograd"]), "speedup", r["speedup_vs_autograd"]))
    return out + [_math_line("functions", result["results"])]


def _pipeline(result: dict) -> list[str]:
    out = []
    name = result["config"]["headline"]
    for dtype in dict.fromkeys(r["dtype"] for r in result["results"]):
        rows = [r for r in result["results"] if r["dtype"] == dtype]
        where = f"pipeline {dtype}"
        head, why = _headline(where, rows, name)
        out += why
        if head is not None:
            for key, bound in (("accumulation", PIPELINE_VS_ACCUMULATION), ("best_peer", PIPELINE_VS_BEST_PEER)):
                d = head.get(f"speedup_vs_{key}")
                other = head.get(key) or f"no {key.replace('_', ' ')} (none ran)"
                out.append(Target(f"{where}: headline {name} vs {other}", bound).line(_median(d), "speedup", d))
            full = head.get("speedup_vs_full_batch")
            out.append(f"INFO    {where}: headline {name} vs the fastest full batch in one pass ({head.get('full_batch')}): "
                       f"{'-' if not full else format(full['median'], '.3f')}x (above 1: the pipeline is faster)")
        fastest = min((r for r in rows if r["group"] == "ours" and r["step_time"] and not _math_failed(r)),
                      key=lambda r: r["step_time"]["median"], default=None)
        if fastest is not None:
            out.append(f"INFO    {where}: fastest of ours in this run (information, not a verdict): {fastest['variant']}")
        out.append(_math_line(where, rows))
    return out


def _dist(result: dict) -> list[str]:
    rows, name = result["results"], result["config"]["headline"]
    head, out = _headline("dist", rows, name)
    if head is not None:
        d, limit = head.get("speedup_vs_best_peer"), head.get("fraction_of_limit")
        out.append(Target(f"dist: headline {name} vs the best torch schedule ({head.get('best_peer')}), samples/s",
                          DIST_VS_BEST_PEER).line(_median(d), "speedup", d))
        out.append(Target(f"dist: headline {name} vs the physical limit (world size x {head.get('full_batch')}'s samples/s)",
                          DIST_OF_LIMIT).line(_median(limit), "fraction", limit))
        busy = head.get("fraction_of_busy_limit")
        if busy:
            out.append(f"INFO    dist: headline {name} of the busy limit (every rank running the full batch at once): "
                       f"{busy['median']:.3f} [{busy['p25']:.3f}-{busy['p75']:.3f}]")
    for r in rows:
        if r["group"] == "ours" and r.get("speedup_vs_paired_peer") and not _math_failed(r):
            out.append(f"INFO    dist: {r['variant']} vs its paired {r['paired_peer']}: "
                       f"{r['speedup_vs_paired_peer']['median']:.3f}x")
    out.append(_math_line("dist", rows))
    return out


def _simulator(result: dict) -> list[str]:
    return [Target(f"simulator ({result['mode']}): {r['schedule']} |predicted - measured| / measured", 0.10, False).line(
        _abs(r.get("prediction_error", r.get("error_fraction"))), "error")  # error_fraction: files before the rename
        for r in result["results"]]


def _abs(value: float | None) -> float | None:
    return None if value is None else abs(value)


def _contention(result: dict) -> list[str]:
    return [Target("contention: default train.py next to a busy loop vs alone (median step)", CONTENTION_RATIO,
                   at_least=False).line(result["ratio"], "ratio")]


def verdicts(result: dict) -> list[str]:
    """One line per target that ``result`` (any benchmark's) speaks to."""
    check = {"functions": _functions, "pipeline": _pipeline, "dist": _dist, "simulator": _simulator,
             "contention": _contention}
    return check[result["benchmark"]](result) if result["benchmark"] in check else []
