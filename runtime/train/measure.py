"""Measured step figures: per-stage costs from a timed step, the simulator's prediction, and the trace file."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from partition.schedule.actions import Op
from partition.schedule.simulate import simulate
from partition.schedule.timeline import format_timeline
from partition.schedule.trace import TraceEvent, write_chrome_trace
from partition.timing import StageCost
from runtime.comm import all_reduce_sum, gather_to_all
from runtime.engine.executor import ActionRecord


def costs_from_records(records: Sequence[ActionRecord], num_stages: int) -> list[StageCost]:
    """Median seconds of F, B and W per stage from one timed step (a fused BW counts as B, W = 0)."""
    times: dict[tuple[int, str], list[float]] = {}
    for r in records:
        key = {Op.F: "f", Op.B: "b", Op.BW: "b", Op.W: "w"}.get(r.action.op)
        if key is not None:
            times.setdefault((r.action.stage, key), []).append((r.end - r.start) / r.fused)
    med = {k: statistics.median(v) for k, v in times.items()}
    return [StageCost(med.get((s, "f"), 0.0), med.get((s, "b"), 0.0), med.get((s, "w"), 0.0)) for s in range(num_stages)]


def spread(values: Sequence[float]) -> dict:
    """Median, quartiles and extremes of repeated timings (seconds)."""
    vals = sorted(values)
    if not vals:
        return {"median": None, "p25": None, "p75": None, "min": None, "max": None, "n": 0}
    q = statistics.quantiles(vals, n=4) if len(vals) > 1 else [vals[0]] * 3
    return {"median": statistics.median(vals), "p25": q[0], "p75": q[2], "min": vals[0], "max": vals[-1], "n": len(vals)}


def step_figures(pipe: object, records: Sequence[ActionRecord], step_times: Sequence[float], cfg: object,
                 distributed: bool) -> dict:
    """Measured vs predicted step time for the run, and the Chrome trace when ``cfg.trace`` is set."""
    n = pipe.cfg.num_stages
    costs = costs_from_records(records, n)
    if distributed:  # every rank measured only its own stages
        table = torch.tensor([[c.f, c.b, c.w] for c in costs], dtype=torch.float64)
        table = all_reduce_sum(table)
        costs = [StageCost(*map(float, row)) for row in table]
    sim = simulate(pipe.schedule, costs)
    m = pipe.cfg.microbatches
    serial = sum(m * c.total for c in costs)
    measured = spread(list(step_times[1:]) or list(step_times))
    unit = simulate(pipe.schedule, [StageCost(1.0, 1.0, 1.0)] * n)
    figures = {
        "timeline_chart": format_timeline(unit.timeline, pipe.schedule.num_ranks),
        "stage_costs": [{"f": c.f, "b": c.b, "w": c.w} for c in costs],
        "measured_step_time": measured,
        "predicted_step_time": sim.makespan,
        "predicted_bubble_fraction": sim.bubble_fraction,
        "predicted_emulated_step_time": None if distributed else serial,
    }
    if cfg.trace:
        mine = [(r.rank, str(r.action) if r.fused == 1 else f"{r.action}x{r.fused}", r.start, r.end) for r in records]
        everyone = [e for part in (gather_to_all(mine) if distributed else [mine]) for e in part]
        if everyone and pipe.last is not None:  # one writer: the process holding the last stage
            t0 = min(e[2] for e in everyone)  # ranks share one host clock under the tests; across hosts: approximate
            events = [TraceEvent(rank, name, start - t0, end - t0) for rank, name, start, end in everyone]
            write_chrome_trace(cfg.trace, {"measured (this run)": events, "predicted (simulator)": sim.trace_events()})
    return figures
