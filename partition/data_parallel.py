"""Data parallelism in the plan: each stage's gradient all-reduce over D replicas, timed as a ring on the link model.

D replicas of a pipeline each run the same schedule on 1/D of the batch; afterwards every stage sums its
gradients over its D copies. A ring all-reduce of n bytes over D ranks takes 2 (D - 1) steps, each moving n / D
bytes over one link (reduce-scatter, then all-gather), so it costs ``2 (D - 1) link.time(n / D)``. A stage's
reduction can start once its last weight gradient of the step (its last W, or BW) is done: it then overlaps
whatever the other stages still compute. The reductions of one rank use that rank's one link and run one after
another in the order their stages finish; the step ends when the pipeline and every reduction are done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from partition.cost import DType, layer_costs
from partition.schedule.actions import Op, Schedule
from partition.schedule.simulate import SimResult
from partition.spec import MLPSpec
from partition.timing import LinkModel

GRADIENT_OPS = (Op.W, Op.BW)


def ring_all_reduce_time(nbytes: float, replicas: int, link: LinkModel) -> float:
    """Seconds for a ring all-reduce of ``nbytes`` over ``replicas`` ranks (0 for one replica or nothing)."""
    return float(ring_all_reduce_times(np.asarray(nbytes), replicas, link))


def ring_all_reduce_times(nbytes: np.ndarray, replicas: int, link: LinkModel) -> np.ndarray:
    """:func:`ring_all_reduce_time` of every entry of ``nbytes`` at once (e.g. the partitioner's stage costs)."""
    if replicas < 1:
        raise ValueError(f"data-parallel: replicas must be >= 1, got {replicas}")
    nbytes = np.asarray(nbytes, dtype=np.float64)
    if replicas == 1:
        return np.zeros_like(nbytes)
    hop = link.latency + nbytes / replicas / link.bandwidth  # link.time of one hop's bytes
    return np.where(nbytes > 0, 2 * (replicas - 1) * hop, 0.0)


def stage_gradient_bytes(spec: MLPSpec, ranges: Sequence[tuple[int, int]], dtype: DType | str) -> list[float]:
    """Bytes of each stage's gradients (its layers' weights and biases); ``ranges`` are [start, stop) pairs."""
    costs = layer_costs(spec, dtype)
    return [float(sum(c.grad_bytes for c in costs[a:b])) for a, b in ranges]


@dataclass(frozen=True)
class DataParallelStep:
    """A simulated step with its per-stage all-reduces (seconds from the step's start)."""

    pipeline: float  # the schedule's makespan alone
    makespan: float  # pipeline and every reduction done
    reduce_start: tuple[float, ...]  # per stage
    reduce_end: tuple[float, ...]  # per stage

    @property
    def exposed(self) -> float:
        """Seconds the reductions add to the step (what the overlap did not hide)."""
        return self.makespan - self.pipeline


def with_all_reduce(sim: SimResult, schedule: Schedule, grad_bytes: Sequence[float], replicas: int,
                    link: LinkModel) -> DataParallelStep:
    """``sim`` (the simulated schedule) extended by each stage's ring all-reduce over ``replicas`` copies."""
    S = schedule.num_stages
    if len(grad_bytes) != S:
        raise ValueError(f"gradient bytes: expected {S} values (one per stage), got {len(grad_bytes)}")
    ready = [0.0] * S
    for t in sim.timeline:
        if t.action.op in GRADIENT_OPS:
            ready[t.action.stage] = max(ready[t.action.stage], t.end)
    start, end = [0.0] * S, [0.0] * S
    for rank in range(schedule.num_ranks):
        free = 0.0  # this rank's link is busy until then
        for s in sorted((s for s in range(S) if schedule.placement[s] == rank), key=lambda s: (ready[s], s)):
            start[s] = max(ready[s], free)
            end[s] = free = start[s] + ring_all_reduce_time(grad_bytes[s], replicas, link)
    return DataParallelStep(sim.makespan, max([sim.makespan, *end]), tuple(start), tuple(end))
