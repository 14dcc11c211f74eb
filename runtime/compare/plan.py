"""Experiment candidates under a memory cap: pipelines over K devices (PP x DP too), one device with a smaller minibatch.

Every candidate trains on the same samples in the same order; what changes is how a step of the global batch B is
computed (a pipeline of K stages, or m microbatches accumulated on one device: the same math), or whether the
step itself is smaller (one device at a minibatch b < B: more optimizer steps, its learning rate set by an
:class:`LRRule`). Feasibility comes from the analytic memory model (``partition.memory``): a candidate whose
predicted peak on some device exceeds the cap is kept, marked infeasible, with the reason. A pipeline's peak per
device is the parameters, gradients, optimizer state and messages of its stages plus the exact activation peak of
walking its schedule (``partition.activation_peak``). Its split is the fastest that fits the cap (auto's: the
fastest): with one stage per device the joint partition judged by that exact walk (``partition.joint``), with
several the count-based partitioner; the fastest split regardless of the cap when none fits. Beside it come,
per :class:`RecomputePolicy`, every stage recomputing on the fastest split (``all``), and ``fit``: ranges and
per-stage recomputation chosen together within the cap (``partition.joint``; with several stages per device, the
least recomputation per device on the fastest split). The ``auto`` schedule (one stage per device) is searched for
each choice by ``partition.choose.auto_schedule``: the fastest order whose exact peaks fit; for its ``fit`` the
walk is one microbatch per stage at a time. PP x DP candidates (D replicas of a K/D-stage pipeline) come from
``runtime.compare.replicas``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

from partition.choose import auto_schedule
from partition.joint import joint_partition
from partition.layouts import LayerTimes
from partition.memory import LayerMemory, layer_memory, stage_memory, training_memory
from partition.partitioner import Problem, partition, problem_for
from partition.plan import Plan, Ranges, format_ranges
from partition.recompute import (
    NO_RECOMPUTE,
    RECOMPUTE_ALL,
    Recompute,
    RecomputeKind,
    per_stage,
    recompute_forward,
)
from partition.schedule.actions import Schedule, ScheduleKind
from partition.schedule.capped import CappedResult
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.timing import StageCost
from partition.units import count, format_bytes
from runtime.compare.footprint import largest_fitting_batch, over_cap, rank_memory
from runtime.compare.replicas import data_parallel_candidates
from runtime.compare.types import Candidate, CandidateKind, RecomputePolicy, Setting

__all__ = ["Setting", "fit_recompute", "largest_fitting_batch", "plan_candidates", "rank_memory"]


def plan_candidates(s: Setting, layer_times: LayerTimes) -> list[Candidate]:
    """Every candidate, feasible or not: one device (B, the largest b that fits, B/K), accumulation, pipelines, PP x DP."""
    cands = _single_device(s) + _accumulation(s)
    for kind in s.schedules:
        for m in s.microbatches:
            cands += _pipelines(s, kind, m, layer_times)
    return cands + data_parallel_candidates(s, layer_times)


def _single(s: Setting, b: int, cid: str, label: str) -> Candidate:
    report = training_memory(s.spec, b, s.dtype, s.optimizer)
    return Candidate(cid, label, CandidateKind.SINGLE, ScheduleKind.ONE_F_ONE_B, 1, 1, 1, b,
                     s.lr_rule.scale(s.lr, b, s.batch), ranges=((0, s.spec.num_layers),),
                     memory_terms=(report,), reason=over_cap(s.memory_cap, (report,)))


def _single_device(s: Setting) -> list[Candidate]:
    """One device at B, at the largest divisor of B that fits the cap, and at B/K."""
    B, K = s.batch, s.devices
    out = [_single(s, B, f"single-b{B}", f"one device, minibatch B={B}")]
    if s.memory_cap is not None:
        b_max = largest_fitting_batch(s.spec, s.memory_cap, s.dtype, s.optimizer)
        b_fit = max((d for d in range(1, B + 1) if B % d == 0 and d <= b_max), default=0)
        if b_fit == 0:
            static = training_memory(s.spec, 1, s.dtype, s.optimizer)
            why = (f"over the cap: even a minibatch of 1 needs {format_bytes(static.total)} on one device "
                   f"(parameters, gradients and optimizer state alone {format_bytes(static.total - static.saved_activations)})"
                   f" > {format_bytes(s.memory_cap)}")
            out.append(_single(s, 1, "single-fit", "one device, the largest minibatch that fits"))
            out[-1] = replace(out[-1], reason=why)
        elif b_fit < B:
            note = f" (the memory model allows up to {b_max})" if b_max != b_fit else ""
            also = " = B/K" if b_fit * K == B else ""
            label = f"one device, largest divisor of B that fits: b={b_fit}{also}{note}"
            out.append(_single(s, b_fit, f"single-b{b_fit}", label))
    if B % K == 0 and B // K not in {c.minibatch for c in out}:
        out.append(_single(s, B // K, f"single-b{B // K}", f"one device, minibatch B/K={B // K}"))
    return out


def _accumulation(s: Setting) -> list[Candidate]:
    """One device accumulating m microbatches into each step of B: the listed m, and the fewest that fit the cap."""
    B, L = s.batch, s.spec.num_layers
    counts = {m for m in s.microbatches if 1 < m <= B and B % m == 0}
    if s.memory_cap is not None:
        fitting = [m for m in range(2, B + 1) if B % m == 0
                   and stage_memory(s.spec, (0, L), B // m, s.dtype, s.optimizer).total <= s.memory_cap]
        counts |= set(fitting[:1])
    out = []
    for m in sorted(counts):
        report = stage_memory(s.spec, (0, L), B // m, s.dtype, s.optimizer)
        out.append(Candidate(f"accum-m{m}", f"one device, {m} x {B // m} accumulated", CandidateKind.ACCUMULATION,
                             ScheduleKind.ONE_F_ONE_B, 1, 1, m, B, s.lr, ranges=((0, L),), memory_terms=(report,),
                             reason=over_cap(s.memory_cap, (report,))))
    return out


def _choices(layers: int) -> list[Recompute]:
    """Every choice for a stage of ``layers`` layers, from none to all."""
    return [NO_RECOMPUTE, *(Recompute(RecomputeKind.FIRST, k) for k in range(1, layers)), RECOMPUTE_ALL]


def fit_recompute(layers: LayerMemory, sched: Schedule, ranges: Ranges, times: Sequence[StageCost],
                  cap: float | None) -> tuple[Recompute, ...]:
    """Per stage, the recomputation of least extra forward time (then fewest bytes) that keeps its rank within ``cap``.

    Each rank is searched on its own over every combination of its stages' choices; a rank that no choice brings
    within the cap recomputes everything.
    """
    chosen = [NO_RECOMPUTE] * len(ranges)
    for r in range(sched.num_ranks):
        mine = sched.stages_of(r)
        best = None
        for combo in itertools.product(*(_choices(ranges[st][1] - ranges[st][0]) for st in mine)):
            trial = list(chosen)
            for st, choice in zip(mine, combo):
                trial[st] = choice
            need = rank_memory(layers, sched, ranges, trial)[r].total
            extra = sum(recompute_forward(times, *ranges[st], c) for st, c in zip(mine, combo))
            if (cap is None or need <= cap) and (best is None or (extra, need) < best[:2]):
                best = (extra, need, combo)
        for st, choice in zip(mine, best[2] if best else [RECOMPUTE_ALL] * len(mine)):
            chosen[st] = choice
    return tuple(chosen)


def _pipelines(s: Setting, kind: ScheduleKind, m: int, layer_times: LayerTimes) -> list[Candidate]:
    """A pipeline over K devices on the fastest split that fits the cap (or why there is none), and its recomputing
    variants (see the module docstring)."""
    B, K, L = s.batch, s.devices, s.spec.num_layers
    virtual = s.virtual if kind is ScheduleKind.INTERLEAVED_1F1B else 1
    cid = f"pipe-{kind.value}-m{m}"
    on = f"{kind.value} on {count(K, 'device')}"
    base = Candidate(cid, f"{on}, {m} x {B // max(m, 1)}", CandidateKind.PIPELINE, kind, K, K, m, B, s.lr, virtual=virtual)
    if B % m:
        return [replace(base, label=f"{on}, m={m}",
                        reason=f"not applicable: m={m} does not divide B={B}")]
    auto = kind is ScheduleKind.AUTO  # one stage per device; its order is searched per recomputation choice below
    try:
        sched = generate(ScheduleKind.GPIPE if auto else kind, K, m, virtual)
    except ValueError as err:
        return [replace(base, reason=f"not applicable: {err}")]
    S = sched.num_stages
    base = replace(base, num_stages=S)
    if S > L:
        return [replace(base, reason=f"not applicable: {on} needs {S} stages, the model has {L} layers")]
    sim = simulate(sched, [StageCost(1.0, 1.0, 1.0)] * S)  # the in-flight counts depend on the order only
    times = tuple(layer_times(B // m))
    options = dict(layer_times=times, dtype=s.dtype, optimizer=s.optimizer, inflight=sim.peak_inflight,
                   deferred_w=sim.peak_deferred_w)
    roomy, capped = problem_for(s.spec, S, B // m, **options), problem_for(s.spec, S, B // m, memory_caps=s.memory_cap,
                                                                         **options)
    fastest = partition(roomy).ranges
    walk = generate(ScheduleKind.GPIPE, K, 1) if auto else sched if S == K else None  # auto: one microbatch a stage
    layers = layer_memory(s.spec, B // m, s.dtype, s.optimizer)
    out = []
    for policy in (p for p in (RecomputePolicy.NONE, RecomputePolicy.ALL, RecomputePolicy.FIT) if p in s.recompute):
        if policy is RecomputePolicy.ALL:
            where, choice = fastest, (RECOMPUTE_ALL,) * S
        elif walk is None and policy is RecomputePolicy.FIT:  # several stages a device: the least on the fastest split
            where, choice = fastest, fit_recompute(layers, sched, fastest, times, s.memory_cap)
        elif auto and policy is RecomputePolicy.NONE:
            where, choice = fastest, (NO_RECOMPUTE,) * S
        else:  # the fastest split (and with fit, recomputation) within the cap, where one exists
            plan, fit = _plan(capped, walk, policy), policy is RecomputePolicy.FIT
            where = plan.ranges if plan else fastest
            choice = per_stage(plan.recompute or (), S) if plan and fit else (RECOMPUTE_ALL if fit else NO_RECOMPUTE,) * S
        if any(c.ranges == where and c.recompute == choice for c in out):
            continue  # the same candidate under another name
        found, why = _search(roomy, capped, roomy.evaluate(where, recompute=choice), m) if auto else (None, "")
        per_rank = rank_memory(layers, found.schedule if found else sched, where, choice)
        reason = why or over_cap(s.memory_cap, per_rank)
        if reason and S > K:
            reason += f" (each device holds {S // K} of the stages {format_ranges(where)})"
        named = str(choice[0]) if len(set(choice)) == 1 else ",".join(str(c) for c in choice)
        plain = policy is RecomputePolicy.NONE
        label = base.label + ("" if plain else f", recompute {named}") + (f" ({found.source})" if found else "")
        out.append(replace(base, id=cid + ("" if plain else f"-rc-{policy.value}"), ranges=where, memory_terms=per_rank,
                           label=label, reason=reason, recompute=choice, ready=found.schedule if found else None))
    return out


def _plan(problem: Problem, walk: Schedule | None, policy: RecomputePolicy) -> Plan | None:
    """The fastest plan within the cap (ranges, and with ``fit`` the recomputation each stage needs): the joint
    partition judged by the exact walk of ``walk`` (one stage per device), else by the count-based bound; None when
    nothing fits."""
    try:
        if walk is None:
            return partition(problem)
        return joint_partition(problem, policy is RecomputePolicy.FIT, walk)
    except ValueError:
        return None


def _search(roomy: Problem, capped: Problem, plan: Plan, m: int) -> tuple[CappedResult, str]:
    """The auto schedule on ``plan``: the fastest found within the cap; when none fits, the fastest at all, and why."""
    try:
        return auto_schedule(capped, plan, m), ""
    except ValueError as err:
        return auto_schedule(roomy, plan, m), f"over the cap: {err}"
