"""K devices as PP x DP layouts: every factorisation planned, simulated with its all-reduce, and ranked.

For K devices and each D dividing K, a layout runs D replicas of a pipeline of P = K / D stages (one stage per
device): PP = K is one pipeline, DP = K holds the whole model on every device. Each replica takes 1/D of the global
batch in the same number of microbatches, so a microbatch has batch / (D m) rows. The pipeline's ranges come from
the partitioner under the per-device cap; its step is the simulated schedule plus each stage's ring all-reduce over
the D replicas (``partition.data_parallel``). The min-max partitioner sees the reductions: each stage's time
includes its ring all-reduce over the D replicas, a 1/m share per microbatch (``partition.problem``), which bounds
when the stage is done but not how much of the reduction the schedule hides (a 1F1B step exposes the first
stage's, which finishes last). So under D > 1 every split of the layers that fits the cap is also simulated with
its reductions when there are at most ``SEARCH_LIMIT`` of them, and the fastest kept (the partitioner's on a
tie); beyond that, the partitioner's split alone. A layout is out when the batch does not split into D x m equal
microbatches, when P exceeds the layers, or when no split fits the cap (the bytes it would need are reported).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from partition.choose import schedule_counts
from partition.cost import DType, Optimizer
from partition.data_parallel import stage_gradient_bytes, with_all_reduce
from partition.partitioner import DEFAULT_FLOPS, partition, problem_for, smallest_cap
from partition.plan import Plan, Ranges
from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost
from partition.units import format_bytes

ONE_STAGE_PER_DEVICE = (ScheduleKind.GPIPE, ScheduleKind.ONE_F_ONE_B, ScheduleKind.ZB_H1)
SEARCH_LIMIT = 2000  # splits simulated one by one under data parallelism; beyond it, the partitioner's alone
LayerTimes = Callable[[int], Sequence[StageCost]]  # per-layer F/B/W seconds for a microbatch of that many rows


@dataclass(frozen=True)
class Layout:
    """One way to use the devices: ``replicas`` copies of a ``stages``-stage pipeline, and what it is predicted to do.

    ``step_time`` is None for a layout that is out (``why`` says why); ``memory`` is the peak bytes per device of
    each stage (for a layout over the cap: the smallest per-device bytes any split needs, on every device).
    """

    stages: int
    replicas: int
    rows: int  # samples per microbatch
    step_time: float | None = None
    pipeline_time: float | None = None  # the schedule alone, before the all-reduces
    exposed: float | None = None  # all-reduce seconds not hidden behind the schedule
    memory: tuple[int, ...] = ()
    plan: Plan | None = None
    why: str = ""

    @property
    def feasible(self) -> bool:
        """Whether this layout can run (its step time is predicted)."""
        return self.step_time is not None

    @property
    def name(self) -> str:
        """``PP4``, ``PP2xDP2`` or ``DP4``."""
        if self.replicas == 1:
            return f"PP{self.stages}"
        return f"DP{self.replicas}" if self.stages == 1 else f"PP{self.stages}xDP{self.replicas}"

    def to_dict(self) -> dict:
        """A JSON-ready description."""
        return {"name": self.name, "stages": self.stages, "replicas": self.replicas, "rows": self.rows,
                "step_time": self.step_time, "pipeline_time": self.pipeline_time, "exposed": self.exposed,
                "memory": list(self.memory), "ranges": self.plan.describe() if self.plan else None, "why": self.why}


def plan_layouts(
    spec: MLPSpec,
    devices: int,
    batch: int,
    microbatches: int,
    *,
    kind: ScheduleKind = ScheduleKind.ONE_F_ONE_B,
    layer_times: LayerTimes | None = None,
    flops_per_second: float = DEFAULT_FLOPS,
    link: LinkModel | None = None,
    memory_cap: float | None = None,
    dtype: DType | str = DType.FLOAT32,
    optimizer: Optimizer | str = Optimizer.SGD,
) -> tuple[Layout, ...]:
    """Every PP x DP layout of ``devices``, fastest predicted first, the infeasible ones last (see the module)."""
    if kind not in ONE_STAGE_PER_DEVICE:
        raise ValueError(f"layouts: schedule {kind.value} is not one with one stage per device; use one of "
                         f"{', '.join(k.value for k in ONE_STAGE_PER_DEVICE)}")
    for name, value in (("devices", devices), ("batch", batch), ("microbatches", microbatches)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"layouts: {name} must be an integer >= 1, got {value!r}")
    link = link or LinkModel()
    found = [_layout(spec, devices // d, d, batch, microbatches, kind, layer_times, flops_per_second, link,
                     memory_cap, dtype, optimizer)
             for d in range(1, devices + 1) if devices % d == 0]
    return tuple(sorted(found, key=lambda x: (not x.feasible, x.step_time or 0.0, x.replicas)))


def _layout(spec: MLPSpec, stages: int, replicas: int, batch: int, m: int, kind: ScheduleKind,
            layer_times: LayerTimes | None, flops: float, link: LinkModel, cap: float | None,
            dtype: DType | str, optimizer: Optimizer | str) -> Layout:
    """One layout planned and simulated, or the reason it is out."""
    rows = batch // (replicas * m)
    if batch % (replicas * m):
        return Layout(stages, replicas, 0, why=f"batch {batch} does not split into {replicas} replicas x {m} "
                                               f"microbatches")
    if stages > spec.num_layers:
        return Layout(stages, replicas, rows, why=f"{stages} stages need {stages} layers; the model has "
                                                  f"{spec.num_layers}")
    inflight, deferred = schedule_counts(kind, stages, m)
    problem = problem_for(spec, stages, rows, layer_times=None if layer_times is None else layer_times(rows),
                          flops_per_second=flops, dtype=dtype, optimizer=optimizer, link=link, inflight=inflight,
                          deferred_w=deferred, memory_caps=cap, replicas=replicas, microbatches=m)
    try:
        plan = partition(problem)
    except ValueError:
        need, _ = smallest_cap(problem)
        return Layout(stages, replicas, rows, memory=(int(need),) * stages,
                      why=f"needs {format_bytes(need)} per device, over the cap {format_bytes(cap or 0)}")
    schedule = generate(kind, stages, m)
    candidates = [plan] + [problem.evaluate(r) for r in _splits(spec.num_layers, stages, replicas) if r != plan.ranges]
    best = None
    for candidate in (c for c in candidates if c.fits):
        sim = simulate(schedule, candidate.stage_costs, link=link, activation_bytes=candidate.boundary_bytes or None)
        step = with_all_reduce(sim, schedule, stage_gradient_bytes(spec, candidate.ranges, dtype), replicas, link)
        if best is None or step.makespan < best[0].makespan:
            best = step, candidate
    step, plan = best
    return Layout(stages, replicas, rows, step.makespan, step.pipeline, step.exposed, tuple(plan.memory or ()), plan)


def _splits(layers: int, stages: int, replicas: int) -> list[Ranges]:
    """Every split of ``layers`` into ``stages`` contiguous ranges, when data parallel and at most SEARCH_LIMIT."""
    if replicas == 1 or math.comb(layers - 1, stages - 1) > SEARCH_LIMIT:
        return []
    return [tuple(zip((0, *cuts), (*cuts, layers))) for cuts in itertools.combinations(range(1, layers), stages - 1)]
