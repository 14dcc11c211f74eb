"""PP x DP candidates: K devices as D replicas of a K/D-stage pipeline (D = K: the whole model on every device).

For each D dividing K with D > 1, P = K / D stages per replica (one stage per device), each replica takes B/D of
the global batch in m microbatches of B/(D m) rows and the replicas sum their gradients (a ring all-reduce per
stage) before the optimizer step. To keep the experiment short, each D takes one m: the fewest of the chosen
microbatch counts that fills the replica's pipeline (m >= P) and splits the batch (B divisible by D m), else the
largest that splits it; no m: no candidate. A pipeline (P > 1) is tried with every chosen one-stage-per-device
schedule (gpipe, 1f1b, zb-h1), the whole model on each device (P = 1) with the first only (with one stage they do
the same). The ranges are the partitioner's, which charges each stage its all-reduce over the D replicas
(``partition.problem``), within the cap where a split fits it. A device's predicted memory is the pipeline's at
B/(D m) rows a microbatch (the exact walk of the replica's schedule), the same on every replica.
"""

from __future__ import annotations

from dataclasses import replace

from partition.layouts import ONE_STAGE_PER_DEVICE, LayerTimes
from partition.memory import layer_memory
from partition.partitioner import partition, problem_for
from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.timing import StageCost
from partition.units import count
from runtime.compare.footprint import over_cap, rank_memory
from runtime.compare.types import Candidate, CandidateKind, Setting


def replica_microbatches(s: Setting, replicas: int) -> int | None:
    """The one microbatch count m tried for ``replicas`` replicas (see the module docstring), or None."""
    stages = s.devices // replicas
    splits = [m for m in s.microbatches if s.batch % (replicas * m) == 0]
    return min((m for m in splits if m >= stages), default=max(splits, default=None))


def data_parallel_candidates(s: Setting, layer_times: LayerTimes) -> list[Candidate]:
    """Every PP x DP candidate of the setting's K devices (see the module docstring)."""
    kinds = [k for k in s.schedules if k in ONE_STAGE_PER_DEVICE]
    out = []
    for replicas in (d for d in range(2, s.devices + 1) if s.devices % d == 0 and kinds):
        m = replica_microbatches(s, replicas)
        if m is not None:
            stages = s.devices // replicas
            out += [_replicated(s, kind, stages, replicas, m, layer_times) for kind in (kinds if stages > 1 else kinds[:1])]
    return out


def _replicated(s: Setting, kind: ScheduleKind, stages: int, replicas: int, m: int,
                layer_times: LayerTimes) -> Candidate:
    """One PP x DP candidate: its ranges within the cap where a split fits, its memory per device, or why it is out."""
    rows = s.batch // (replicas * m)
    if stages > 1:
        shape = f"{kind.value} on {count(stages, 'device')} x {count(replicas, 'replica')} (PP{stages} x DP{replicas})"
    else:
        shape = f"the whole model on each of {count(replicas, 'device')} (DP{replicas})"
    label = f"{shape}, {m} x {rows} each"
    cand = Candidate(f"pipe-{kind.value}-m{m}-dp{replicas}", label, CandidateKind.PIPELINE, kind, stages, s.devices, m,
                     s.batch, s.lr, replicas=replicas)
    if stages > s.spec.num_layers:
        return replace(cand, reason=f"not applicable: {count(stages, 'stage')} need {stages} layers, the model has "
                                    f"{s.spec.num_layers}")
    sched = generate(kind, stages, m)
    sim = simulate(sched, [StageCost(1.0, 1.0, 1.0)] * stages)  # the in-flight counts depend on the order only
    options = dict(layer_times=tuple(layer_times(rows)), dtype=s.dtype, optimizer=s.optimizer, link=s.link,
                   inflight=sim.peak_inflight, deferred_w=sim.peak_deferred_w, replicas=replicas, microbatches=m)
    try:
        ranges = partition(problem_for(s.spec, stages, rows, memory_caps=s.memory_cap, **options)).ranges
    except ValueError:  # no split fits: the fastest, marked over the cap below
        ranges = partition(problem_for(s.spec, stages, rows, **options)).ranges
    per_device = rank_memory(layer_memory(s.spec, rows, s.dtype, s.optimizer), sched, ranges) * replicas
    return replace(cand, ranges=ranges, memory_terms=per_device, reason=over_cap(s.memory_cap, per_device))
