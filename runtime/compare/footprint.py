"""Predicted memory of a candidate's devices: the stages a device holds, the exact activation walk, the cap check."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields, replace

from partition.activation_peak import plan_activation_peaks
from partition.cost import DType, Optimizer
from partition.memory import LayerMemory, MemoryReport, training_memory
from partition.plan import Ranges
from partition.recompute import Recompute
from partition.schedule.actions import Schedule
from partition.spec import MLPSpec
from partition.units import format_bytes


def add_reports(reports: Sequence[MemoryReport]) -> MemoryReport:
    """Term-by-term sum of memory reports (the stages one device holds)."""
    return MemoryReport(**{f.name: sum(getattr(r, f.name) for r in reports) for f in fields(MemoryReport)})


def largest_fitting_batch(spec: MLPSpec, cap: float, dtype: DType, optimizer: Optimizer) -> int:
    """The largest minibatch whose one-device training footprint fits ``cap`` (0 when not even one sample fits)."""
    one, two = training_memory(spec, 1, dtype, optimizer).total, training_memory(spec, 2, dtype, optimizer).total
    per_sample = two - one
    return max(0, math.floor((cap - (one - per_sample)) / per_sample))


def rank_memory(layers: LayerMemory, sched: Schedule, ranges: Ranges,
                recompute: Sequence[Recompute] = ()) -> tuple[MemoryReport, ...]:
    """Exact peak bytes per rank: its stages' static terms and messages plus the activation peak of its action list."""
    peaks = plan_activation_peaks(layers, sched, ranges, recompute)
    static = [layers.stage(a, b, inflight=0) for a, b in ranges]
    return tuple(replace(add_reports([static[st] for st in sched.stages_of(r)]), saved_activations=peaks[r])
                 for r in range(sched.num_ranks))


def over_cap(cap: float | None, reports: Sequence[MemoryReport]) -> str:
    """'' when every device's predicted peak is within ``cap`` (or there is none), else why not, in one line."""
    if cap is None:
        return ""
    over = [(r, rep.total) for r, rep in enumerate(reports) if rep.total > cap]
    if not over:
        return ""
    rank, need = max(over, key=lambda item: item[1])
    where = "one device" if len(reports) == 1 else f"device {rank}"
    return f"over the cap: {where} needs {format_bytes(need)} > {format_bytes(cap)}"
