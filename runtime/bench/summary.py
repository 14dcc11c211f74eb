"""A short table over several benchmark JSON files (the device check prints it last), with the target verdicts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from runtime.bench.flops import describe_rate
from runtime.bench.verdict import verdicts
from runtime.output import text_table
from runtime.stats import Spread


def _ms(d: dict | None) -> str:
    return "-" if not d else f"{d['median'] * 1e3:.2f} ms"


def _x(d: dict | None) -> str:
    return "-" if not d else f"{d['median']:.3f}x"


def _rows(result: dict) -> list[list[str]]:
    bench = result["benchmark"]
    rows = []
    for r in result.get("results", []):
        if r.get("error"):
            rows.append([bench, r.get("dtype", result.get("config", {}).get("dtype", "")), r.get("variant", r.get("schedule")),
                         "failed", r["error"][:48], "-", "-"])
            continue
        if bench == "functions":
            rows.append([bench, f"{r['dtype']} w{r['width']}", r["variant"], _ms(r["step_time"]), describe_rate(r),
                         _x(r.get("speedup_vs_autograd")), "vs autograd"])
        elif bench == "pipeline":
            speed = r.get("speedup_vs_best_peer")
            rows.append([bench, r["dtype"], r["variant"], _ms(r["step_time"]), describe_rate(r),
                         _x(r.get("speedup_vs_accumulation")) + " / " + _x(speed), "vs accum / best peer"])
        elif bench == "dist":
            rows.append([bench, result["config"]["dtype"], r["variant"], _ms(r["step_time"]), describe_rate(r),
                         _x(r.get("speedup_vs_best_peer")), "vs best peer"])
        elif bench == "gemms":
            rate = "-" if r["flops_per_second"] is None else describe_rate(r)
            rows.append([bench, r["dtype"], r["case"], f"{r['seconds'] * 1e3:.3f} ms", rate, "-", "one layer"])
        elif bench == "simulator":
            err = r.get("prediction_error", r.get("error_fraction"))  # error_fraction: files before the rename
            rows.append([bench, result["config"]["dtype"], r["schedule"], _ms(r["measured_step_time"]),
                         f"predicted {r['predicted_step_time'] * 1e3:.2f} ms", "-" if err is None else f"{err:+.1%}", "error"])
    return rows


def summarize_files(paths: Sequence[str | Path]) -> str:
    """The short table and verdicts of every readable result file; unreadable ones are named, not fatal."""
    rows, lines, notes, dists = [], [], [], []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            notes.append(f"{path}: not read ({type(exc).__name__})")
            continue
        machine = result.get("machine", {})
        notes.append(f"{path}: {result.get('benchmark')} on {machine.get('device_name')} ({machine.get('device')}), "
                     f"torch {machine.get('torch')}, {machine.get('date')}; peaks: {result.get('peaks')}")
        rows += _rows(result)
        lines += verdicts(result) if "summary" in result or result.get("benchmark") != "pipeline" else []
        dists += [result] if result.get("benchmark") == "dist" else []
    text = text_table(["bench", "dtype", "contender", "step", "achieved", "ratio", "ratio of"], rows)
    return "\n".join(notes + ["", text, ""] + lines + headline_over_runs(dists))


def headline_over_runs(results: Sequence[dict]) -> list[str]:
    """For `dist` results of one headline: its median figures in each run, and their spread over the runs."""
    if not results:
        return []
    names = {r["config"]["headline"] for r in results}
    if len(names) != 1:
        return [f"headline over runs: the runs name different headlines ({', '.join(sorted(names))})"]
    name = names.pop()
    out = []
    for key, label in (("speedup_vs_best_peer", "vs the best torch schedule"), ("fraction_of_limit", "of the physical limit")):
        values = [row[key]["median"] for r in results for row in r["results"]
                  if row["variant"] == name and row.get(key) and (row.get("math") or {}).get("ok", True)]
        if values:
            s = Spread.of(values)
            out.append(f"headline {name} {label} over {len(values)} runs: {', '.join(f'{v:.3f}' for v in values)} "
                       f"(median {s.median:.3f}, range {s.min:.3f}-{s.max:.3f})")
    shares = [r["breakdown"]["fraction_of_shape_limit"] for r in results
              if "fraction_of_shape_limit" in r.get("breakdown", {})]
    if shares:
        s = Spread.of(shares)
        out.append(f"headline {name} of the shape limit (GEMMs at the microbatch's shapes) over {len(shares)} runs: "
                   f"{', '.join(f'{v:.3f}' for v in shares)} (median {s.median:.3f})")
    return out
