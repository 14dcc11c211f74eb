"""Experiment candidates under a memory cap: pipelines over K devices, one device with a smaller minibatch or accumulation.

Every candidate trains on the same samples in the same order; what changes is how a step of the global batch B is
computed (a pipeline of K stages, or m microbatches accumulated on one device: the same math), or whether the
step itself is smaller (one device at a minibatch b < B: more optimizer steps, its learning rate set by an
:class:`LRRule`). Feasibility comes from the analytic memory model (``partition.memory``): a candidate whose
predicted peak on some device exceeds the cap is kept, marked infeasible, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

from partition.cost import DType, Optimizer
from partition.memory import MemoryReport, stage_memory, training_memory
from partition.partitioner import plan_for
from partition.plan import Method, format_ranges
from partition.schedule.actions import Op, Schedule, ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import StageCost
from partition.units import format_bytes
from runtime.compare.types import Candidate, CandidateKind, LRRule

LayerTimes = Callable[[int], Sequence[StageCost]]  # microbatch size -> per-layer F/B/W seconds


@dataclass(frozen=True)
class Setting:
    """What the planner needs: the model, the global batch B, K devices, the cap and the candidate grid."""

    spec: MLPSpec
    batch: int
    devices: int
    memory_cap: float | None
    dtype: DType
    optimizer: Optimizer
    schedules: tuple[ScheduleKind, ...]
    microbatches: tuple[int, ...]
    virtual: int
    lr: float
    lr_rule: LRRule


def add_reports(reports: Sequence[MemoryReport]) -> MemoryReport:
    """Term-by-term sum of memory reports (the stages one device holds)."""
    return MemoryReport(**{f.name: sum(getattr(r, f.name) for r in reports) for f in fields(MemoryReport)})


def largest_fitting_batch(spec: MLPSpec, cap: float, dtype: DType, optimizer: Optimizer) -> int:
    """The largest minibatch whose one-device training footprint fits ``cap`` (0 when not even one sample fits)."""
    one, two = training_memory(spec, 1, dtype, optimizer).total, training_memory(spec, 2, dtype, optimizer).total
    per_sample = two - one
    return max(0, math.floor((cap - (one - per_sample)) / per_sample))


def uses_split_backward(schedule: Schedule) -> bool:
    """Whether the schedule runs the backward as separate B and W actions (zero-bubble) rather than fused BW."""
    return any(a.op is Op.W for acts in schedule.actions.values() for a in acts)


def plan_candidates(s: Setting, layer_times: LayerTimes) -> list[Candidate]:
    """Every candidate, feasible or not: one device (B, the largest b that fits, B/K), accumulation, pipelines."""
    cands = _single_device(s) + _accumulation(s)
    for kind in s.schedules:
        for m in s.microbatches:
            cands.append(_pipeline(s, kind, m, layer_times))
    return cands


def _fits(s: Setting, reports: Sequence[MemoryReport]) -> str:
    """'' when every device's predicted peak is within the cap, else why not."""
    if s.memory_cap is None:
        return ""
    over = [(r, rep.total) for r, rep in enumerate(reports) if rep.total > s.memory_cap]
    if not over:
        return ""
    rank, need = max(over, key=lambda item: item[1])
    where = "one device" if len(reports) == 1 else f"device {rank}"
    return f"over the cap: {where} needs {format_bytes(need)} > {format_bytes(s.memory_cap)}"


def _single(s: Setting, b: int, cid: str, label: str) -> Candidate:
    report = training_memory(s.spec, b, s.dtype, s.optimizer)
    return Candidate(cid, label, CandidateKind.SINGLE, ScheduleKind.ONE_F_ONE_B, 1, 1, 1, b,
                     s.lr_rule.scale(s.lr, b, s.batch), ranges=((0, s.spec.num_layers),),
                     memory_terms=(report,), reason=_fits(s, (report,)))


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
                             reason=_fits(s, (report,))))
    return out


def _pipeline(s: Setting, kind: ScheduleKind, m: int, layer_times: LayerTimes) -> Candidate:
    """A pipeline over K devices with the partitioner's time-optimal plan under the cap (or why there is none)."""
    B, K, L = s.batch, s.devices, s.spec.num_layers
    virtual = s.virtual if kind is ScheduleKind.INTERLEAVED_1F1B else 1
    cid = f"pipe-{kind.value}-m{m}"
    base = Candidate(cid, f"{kind.value} on {K} devices, {m} x {B // max(m, 1)}", CandidateKind.PIPELINE, kind, K, K, m, B,
                     s.lr, virtual=virtual)
    if B % m:
        return replace(base, label=f"{kind.value} on {K} devices, m={m}", reason=f"not applicable: m={m} does not divide B={B}")
    try:
        sched = generate(kind, K, m, virtual)
    except ValueError as err:
        return replace(base, reason=f"not applicable: {err}")
    S = sched.num_stages
    base = replace(base, num_stages=S)
    if S > L:
        return replace(base, reason=f"not applicable: {kind.value} on {K} devices needs {S} stages, the model has {L} layers")
    sim = simulate(sched, [StageCost(1.0, 1.0, 1.0)] * S)  # the in-flight counts depend on the order only
    options = dict(layer_times=tuple(layer_times(B // m)), dtype=s.dtype, optimizer=s.optimizer,
                   inflight=sim.peak_inflight, deferred_w=sim.peak_deferred_w)
    reason = ""
    try:
        plan = plan_for(s.spec, S, B // m, Method.OPTIMAL, memory_caps=s.memory_cap, **options)
    except ValueError as err:
        reason = "over the cap: " + str(err).split("\n")[0].removeprefix("memory caps: ")
        plan = plan_for(s.spec, S, B // m, Method.OPTIMAL, **options)
    per_rank = tuple(add_reports([plan.memory_terms[st] for st in sched.stages_of(r)]) for r in range(K))
    if not reason and _fits(s, per_rank):
        shared = f" (each device holds {S // K} of the stages {format_ranges(plan.ranges)})" if S > K else ""
        reason = _fits(s, per_rank) + shared
    return replace(base, ranges=plan.ranges, memory_terms=per_rank, reason=reason)
