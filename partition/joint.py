"""Ranges and per-stage recomputation chosen together: the exact min-max partition when stages may recompute.

A stage owning layers [a, b) may recompute none, the first K of its layers (1 <= K < b - a) or all of them
(``partition.recompute``). Its time is F + B + W on its device, B grown by the recomputed forward, plus its link
time (``Problem.comm_time``) and its share of the data-parallel all-reduce (``Problem.reduce_time``); its peak
bytes are ``LayerMemory.stage`` with the problem's in-flight and deferred counts and that choice (an upper bound),
or, when the schedule is given, its static bytes plus the exact walk of its rank's action list
(``partition.activation_peak``). A stage's choice changes only its own time and memory,
so the best plan over ranges x choices is the min-max partition (``partition.minmax``) whose stage cost is, for
each stage and range, the fastest choice that fits the stage's cap; the dynamic program over that cost is
therefore exact for the joint problem. Costs are tabulated per (stage, start, stop), O(k L^2) ranges of O(L)
choices: made for MLPs of tens of layers.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from partition.activation_peak import rank_activation_peaks
from partition.minmax import minmax_partition
from partition.partitioner import Method, Plan, Problem, smallest_cap
from partition.plan import format_ranges
from partition.recompute import NO_RECOMPUTE, RECOMPUTE_ALL, Recompute, RecomputeKind, recompute_stage_cost
from partition.schedule.actions import Schedule
from partition.units import format_bytes


def recompute_options(num_layers: int) -> tuple[Recompute, ...]:
    """The choices for a stage of ``num_layers`` layers: none, first:1 .. first:(n-1), all."""
    firsts = tuple(Recompute(RecomputeKind.FIRST, k) for k in range(1, num_layers))
    return (NO_RECOMPUTE, *firsts, RECOMPUTE_ALL)


def stage_need(problem: Problem, s: int, a: int, b: int, choice: Recompute, schedule: Schedule | None = None) -> int:
    """Peak bytes of stage s on layers [a, b) with ``choice``: the bound ``LayerMemory.stage`` with the problem's
    counts, or, given the schedule (one stage per rank), the static bytes plus the exact activation walk of its rank."""
    if schedule is None:
        return problem.memory.stage(a, b, problem.inflight[s], problem.deferred_w[s], choice).total
    own = schedule.with_actions({schedule.rank_of(s): schedule.actions[schedule.rank_of(s)]})
    walk = rank_activation_peaks(own, [problem.memory.microbatch(a, b, choice)] * schedule.num_stages)
    return problem.memory.stage(a, b, 0, 0, choice).total + walk[schedule.rank_of(s)]


def stage_table(
    problem: Problem, recompute: bool = True, schedule: Schedule | None = None
) -> tuple[np.ndarray, list[list[list[Recompute | None]]]]:
    """time[s, a, b] of the fastest choice for stage s on layers [a, b) within its cap (inf: none fits), and the choice."""
    k, L = problem.num_stages, problem.num_layers
    time = np.full((k, L + 1, L + 1), np.inf)
    pick: list[list[list[Recompute | None]]] = [[[None] * (L + 1) for _ in range(L + 1)] for _ in range(k)]
    caps = problem.memory_caps or (math.inf,) * k
    for s in range(k):
        for a in range(L):
            for b in range(a + 1, L + 1):
                link = problem.comm_time(a, b) + problem.reduce_time(a, b)
                for choice in recompute_options(b - a) if recompute else (NO_RECOMPUTE,):
                    if problem.memory is not None and problem.memory_caps:
                        if stage_need(problem, s, a, b, choice, schedule) > caps[s]:
                            continue
                    stage = recompute_stage_cost(problem.layer_times, a, b, choice)
                    cost = stage.scaled(1 / problem.device_speeds[s]).total + link
                    if cost < time[s, a, b]:
                        time[s, a, b], pick[s][a][b] = cost, choice
    return time, pick


def joint_partition(problem: Problem, recompute: bool = True, schedule: Schedule | None = None) -> Plan:
    """The plan with the smallest bottleneck over contiguous ranges x per-stage recomputation within the caps.

    Ties keep the choice listed first (none before recomputing), so recomputation appears only where it is needed
    to fit. With ``schedule`` (one stage per rank) memory is its exact walk (``stage_need``) and the plan carries
    those peaks. ValueError (one line, with the smallest cap without recomputation) when nothing fits.
    """
    if schedule is not None and (schedule.num_stages, schedule.num_ranks) != (problem.num_stages, problem.num_stages):
        raise ValueError(f"schedule: expected one stage per rank over {problem.num_stages} stages")
    time, pick = stage_table(problem, recompute, schedule)
    totals = np.concatenate([[0.0], np.cumsum([t.total for t in problem.layer_times])])
    edges = np.zeros(problem.num_layers + 1)
    edges[1:-1] = [2 * problem.link.time(nbytes) for nbytes in problem.boundary_bytes]
    speeds = np.asarray(problem.device_speeds, dtype=np.float64)

    def cost(s: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return time[s][a, b]

    def bound(s: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (totals[b] - totals[a]) / speeds[s] + edges[b]  # recomputing and reducing only add

    value, ranges = minmax_partition(problem.num_layers, problem.num_stages, cost, bound)
    if not ranges:
        caps = ", ".join(format_bytes(c) for c in problem.memory_caps)
        need, plain = smallest_cap(problem)
        raise ValueError(f"memory caps: no split of {problem.num_layers} layers over {problem.num_stages} stages fits "
                         f"[{caps}] even recomputing every stage; without recomputation the smallest cap that fits is "
                         f"{format_bytes(need)} per device, with layers {format_ranges(plain)}")
    choices = tuple(pick[s][a][b] for s, (a, b) in enumerate(ranges))
    plan = problem.evaluate(ranges, Method.OPTIMAL, choices if any(c != NO_RECOMPUTE for c in choices) else ())
    if schedule is None or problem.memory is None:
        return plan
    peaks = tuple(stage_need(problem, s, a, b, c, schedule) for s, ((a, b), c) in enumerate(zip(ranges, choices)))
    return replace(plan, peaks=peaks)
