"""Measured step figures: per-stage costs from timed steps, the error of the run's prediction, Gantt chart and trace."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from partition.schedule.actions import Action, Op
from partition.schedule.simulate import simulate
from partition.schedule.timeline import TimeUnit, format_timeline
from partition.timing import StageCost
from runtime.calibrate.explain import explain
from runtime.calibrate.timelines import measured_events, write_timelines
from runtime.comm import all_reduce_sum, gather_rows
from runtime.engine.executor import ActionRecord
from runtime.engine.pipeline import Pipeline
from runtime.stats import spread_json

if TYPE_CHECKING:
    from runtime.calibrate.run import RunPrediction
    from runtime.train.config import TrainConfig

RECENT_STEPS = 32  # the latest steps whose action records give the measured per-action times


def costs_from_records(records: Sequence[ActionRecord], num_stages: int) -> list[StageCost]:
    """Seconds of F, B and W per stage and microbatch from timed steps (a fused BW counts as B, W = 0): each
    position's median over the steps, summed over the positions of a step, divided by the microbatches they ran.

    A position is an action of the step's list (a W fused over k microbatches is one position of k). A step pays
    every position: the first forward after the optimizer step and a stage's first backward after a run of other
    work take up to 2-3x the others (host and cache effects, on every step), so a plain median over all actions
    drops them and a step's sum comes out short (13% for gpipe with 16 microbatches of a width-256 model on the
    CPU); the median over steps keeps a rare slow step out.
    """
    times: dict[tuple[int, str], dict[int, list[float]]] = {}
    counts: dict[tuple[int, str], dict[int, int]] = {}
    for r in records:
        key = {Op.F: "f", Op.B: "b", Op.BW: "b", Op.W: "w"}.get(r.action.op)
        if key is not None:
            times.setdefault((r.action.stage, key), {}).setdefault(r.action.microbatch, []).append(r.end - r.start)
            counts.setdefault((r.action.stage, key), {})[r.action.microbatch] = r.fused
    cost = {k: sum(statistics.median(v) for v in at.values()) / sum(counts[k].values()) for k, at in times.items()}
    return [StageCost(cost.get((s, "f"), 0.0), cost.get((s, "b"), 0.0), cost.get((s, "w"), 0.0)) for s in range(num_stages)]


def largest(values: Sequence[float]) -> list[float]:
    """Each of ``values``, the largest any rank has (the values themselves without a process group; every rank
    calls this)."""
    return torch.cat(gather_rows(torch.tensor([list(values)], dtype=torch.float64))).max(0).values.tolist()


def replica_mean(table: torch.Tensor, ranks_per_pipeline: int) -> torch.Tensor:
    """Per-stage figures each process measured for its own stages (zeros for the others), made known to all: the sum
    over every process divided by the number of pipeline replicas (a stage runs once in each), i.e. their mean."""
    replicas = max(1, len(gather_rows(torch.zeros(1, 1, dtype=torch.float64))) // max(1, ranks_per_pipeline))
    return all_reduce_sum(table) / replicas


def gather_records(records: Sequence[ActionRecord], distributed: bool) -> list[ActionRecord]:
    """Every rank's records of one step (this process's alone without a process group)."""
    if not distributed:
        return list(records)
    ops = list(Op)
    rows = torch.tensor([[r.rank, r.action.stage, ops.index(r.action.op), r.action.microbatch, r.fused, r.start, r.end]
                         for r in records], dtype=torch.float64).reshape(-1, 7)
    out = []
    for part in gather_rows(rows):
        for rank, stage, op, mb, fused, start, end in part.tolist():
            out.append(ActionRecord(int(rank), Action(int(stage), ops[int(op)], int(mb)), start, end, int(fused)))
    return out


def measured_peaks(pipe: Pipeline, distributed: bool) -> dict[int, int] | None:
    """Peak CUDA bytes allocated per rank (None on the CPU, where the device does not report it)."""
    per = torch.zeros(pipe.schedule.num_ranks, dtype=torch.float64)
    cuda = False
    for s, st in pipe.stages.items():
        if st.device.type == "cuda":
            cuda = True
            per[pipe.schedule.placement[s]] = float(torch.cuda.max_memory_allocated(st.device))
    flag = torch.tensor([1.0 if cuda else 0.0], dtype=torch.float64)
    if distributed:
        per, flag = replica_mean(per, pipe.schedule.num_ranks), all_reduce_sum(flag)
    return {r: int(v) for r, v in enumerate(per.tolist())} if float(flag[0]) > 0 else None


def step_figures(pipe: Pipeline, traced: Sequence[ActionRecord], recent: Sequence[ActionRecord],
                 step_times: Sequence[float], cfg: TrainConfig, distributed: bool, prediction: RunPrediction,
                 closing_terms: tuple[Sequence[float], Sequence[float]] = ((), ())) -> dict:
    """Both predictions (made before the run), the measured step, the error and its largest contributors; the
    Gantt chart and Chrome trace of the traced step when ``cfg.gantt`` / ``cfg.trace`` ask for them.

    ``recent``: this process's action records of the last timed steps (``costs_from_records`` turns them into the
    measured action times); ``closing_terms``: each step's closing all-reduce and optimizer seconds (StepOutput).
    """
    n = pipe.cfg.num_stages
    gpu = any(st.device.type == "cuda" for st in pipe.stages.values())
    costs = costs_from_records(recent, n)
    if distributed:  # every rank measured only its own stages, and each stage runs in every replica
        table = replica_mean(torch.tensor([[c.f, c.b, c.w] for c in costs], dtype=torch.float64), pipe.schedule.num_ranks)
        costs = [StageCost(*map(float, row)) for row in table]
    measured = spread_json(list(step_times[1:]) or list(step_times))
    unit = simulate(pipe.schedule, [StageCost(1.0, 1.0, 1.0)] * n)
    explained = explain(prediction.here, pipe.schedule, prediction.model, prediction.activation_bytes,
                        prediction.concurrent, costs, measured["median"] or 0.0,
                        measured_terms=closing_medians(*closing_terms, distributed, synced=not gpu))
    figures = {
        "timeline_chart": format_timeline(unit.timeline, pipe.schedule.num_ranks, unit=TimeUnit.COST),
        **prediction.to_json(),
        "measured_step_time": measured,
        "measured_stage_costs": [{"f": c.f, "b": c.b, "w": c.w} for c in costs],
        "prediction_error": explained["prediction_error"],
        "prediction_explained": explained,
    }
    if cfg.trace or cfg.gantt:
        everyone = gather_records(traced, distributed)
        peaks = measured_peaks(pipe, distributed)
        if everyone and pipe.last is not None:  # one writer: the process holding the last stage
            rows = [(r.rank, str(r.action) if r.fused == 1 else f"{r.action}x{r.fused}", r.action.op.is_comm,
                     r.start, r.end) for r in everyone]  # ranks share one host clock under the tests; across hosts: approximate
            title = (f"{pipe.cfg.schedule.value}, {pipe.schedule.num_ranks} ranks, {pipe.cfg.microbatches} microbatches: "
                     f"measured {measured['median'] * 1e3:.3g} ms (median), predicted {prediction.here.step_time * 1e3:.3g} ms")
            write_timelines(cfg.gantt, cfg.trace, measured_events(rows), prediction.here,
                            dict(enumerate(prediction.peak_memory)), peaks, title)
    return figures


def closing_medians(closing: Sequence[float], optimizer: Sequence[float], distributed: bool,
                    synced: bool = True) -> dict[str, float]:
    """The step's closing terms measured in the run, by their names in the forecast: the optimizer steps (slowest
    rank; only when ``synced``: a GPU's training steps time their launches) and, under torchrun, the closing
    all-reduce as the rank that reached it last paid it (the others' wait for that rank is in the step's body).
    Empty without timed steps; every rank calls this under torchrun."""
    if len(optimizer) < 2:
        return {}
    opt, close = statistics.median(optimizer[1:]), statistics.median(closing[1:])
    if distributed:
        opt, least = largest([opt, -close])
        close = -least
    return ({"optimizer": opt} if synced else {}) | ({"loss all-reduce": close} if distributed else {})
