"""Predicted step times: profiled layer costs plus the runtime's own per-action overhead, measured on a skeleton model.

A candidate runs m microbatches of n samples through stages s (layer ranges); each action of stage s costs

* P_s: the F, B and W seconds of the stage's layers for one microbatch, from ``runtime.train.profile`` (profiled once per
  microbatch size, before any run; a recomputing stage's B also reruns the F of its recomputed layers), plus
* O_s: what an action costs beyond its arithmetic (Python, autograd, the executor, the loss), measured on a skeleton
  of the model (``runtime.calibrate.overhead``, as ``train.py`` does): the same input and output widths, every hidden
  width 1, so that its layers cost next to nothing. A few steps of a skeleton pipeline of the candidate's shape
  (schedule, stages, m), timed right before and right after the candidate's run (averaged, or the smaller where they
  disagree: other work on a shared machine only adds time), give its per-action times; O_s is those minus the
  skeleton's own profile. Work that grows with the width
  of the activation crossing a stage boundary (the finite check of a stage's output, autograd's handling of its
  gradient) is not in the skeleton, whose boundaries are 1 wide, so pipelines of wide layers come out a little low
  (about 5-10% on CPU).

Per step comes E: the skeleton step's remainder beyond its actions (loop, messages, optimizer calls; under torchrun,
beyond its simulated step with the measured link, its messages padded to the real model's size), plus the optimizer's
and the l2 term's work on the real parameter sizes (timed once, minus the same on the skeleton's).

Which prediction is compared with which measurement: in one process every stage runs on this one device, one after
another, so the compared prediction is sum_s m * (P_s + O_s) + E. Under torchrun (one process per device) it is the
simulator's makespan with the costs P_s + O_s, plus E. The K-device prediction (the simulator, with E shared by the
devices of one pipeline) is reported for every candidate; in single-process emulation nothing measures it.

A PP x DP candidate (D replicas of a P-stage pipeline, m microbatches of n = B/(D m) rows each) runs in one process
as one pipeline of D m microbatches of n rows: the same arithmetic, so its prediction here is that pipeline's,
sum_s D m (P_s + O_s) + E. On K devices it is the simulated schedule of one replica (m microbatches) extended by each
stage's ring all-reduce of its gradients over the D replicas on the link (``partition.data_parallel``), plus E / P.
Under torchrun it runs as a dp x pp grid over the K processes: its skeleton is calibrated on one replica's B/D
rows, and this run's prediction is the K-device one's shape on the measured link: the simulated schedule of one
replica with the measured transfers, extended by each stage's ring all-reduce over D, plus E.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from partition.cost import as_dtype
from partition.data_parallel import stage_gradient_bytes, with_all_reduce
from partition.recompute import per_stage, recompute_stage_cost
from partition.schedule.replay import TimedAction
from partition.schedule.simulate import FREE_LINK, SimResult, simulate
from partition.schedule.trace import TraceEvent
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost
from runtime.calibrate.build import profile_together
from runtime.calibrate.costs import CostModel, Origin, Term
from runtime.calibrate.explain import explain
from runtime.calibrate.forecast import emulated_timeline, this_run
from runtime.calibrate.overhead import action_overheads, closing_terms, parameter_seconds, skeleton_spec
from runtime.comm import barrier
from runtime.compare.run import RunContext, build, replica_of, replica_rows, step_inputs
from runtime.compare.types import Candidate
from runtime.ops.gemm import Gemm
from runtime.ops.model import init_parameters
from runtime.train.config import TrainConfig
from runtime.train.trainer import optimizer_factory

AGREE = 1.2  # two calibrations within this ratio are averaged, else the smaller is kept


class Profiler:
    """Per-layer F/B/W seconds of a model, profiled once per microbatch size and kept."""

    def __init__(self, spec: MLPSpec, ctx: RunContext, repeats: int = 20, warmup: int = 5) -> None:
        self.spec, self.ctx, self.repeats, self.warmup = spec, ctx, repeats, warmup
        self.seconds = 0.0
        self._cache: dict[int, tuple[StageCost, ...]] = {}

    def layers(self, microbatch: int) -> tuple[StageCost, ...]:
        """Per-layer costs for one microbatch of ``microbatch`` samples (averaged over the ranks under torchrun)."""
        if microbatch not in self._cache:
            begin = time.perf_counter()
            # under torchrun every rank plans with the same numbers: the mean over the ranks
            self._cache[microbatch] = profile_together(self.spec, microbatch, self.ctx.device, self.ctx.dtype, self.repeats,
                                                       self.warmup, self.ctx.seed, Gemm.TORCH, self.ctx.distributed)
            self.seconds += time.perf_counter() - begin
        return self._cache[microbatch]


@dataclass(frozen=True)
class Calibration:
    """A skeleton pipeline of the candidate's shape: per-stage action overheads and the step's overhead beyond them."""

    action_overhead: tuple[StageCost, ...]
    step_overhead: float

    def merge(self, other: Calibration) -> Calibration:
        """Two calibrations of one shape combined figure by figure: their mean when they agree within 20%, else the
        smaller (other work on a shared machine only adds time, so a disagreement marks a disturbed one)."""

        def pick(a: float, b: float) -> float:
            return (a + b) / 2 if max(a, b) <= AGREE * min(a, b) else min(a, b)

        costs = tuple(StageCost(pick(a.f, b.f), pick(a.b, b.b), pick(a.w, b.w))
                      for a, b in zip(self.action_overhead, other.action_overhead))
        return Calibration(costs, pick(self.step_overhead, other.step_overhead))


def calibrate(ctx: RunContext, spec: MLPSpec, cand: Candidate, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor,
              steps: int = 16, link: LinkModel = FREE_LINK) -> Calibration:
    """Time ``steps`` steps (after two untimed ones) of the skeleton of ``spec`` shaped like ``cand`` on the rows
    ``order`` starts with (``runtime.calibrate.overhead.action_overheads``; ``link`` between processes). A replica of
    a dp x pp grid under torchrun takes its own B/D of those rows."""
    pipe = build(ctx, skeleton_spec(spec), replace(cand, lr=1e-9))
    idx = replica_rows(order[: cand.minibatch], *replica_of(pipe))
    xs, ys = step_inputs(pipe, x[idx], y[idx])
    over, skel_step = action_overheads(pipe, xs, ys, idx.shape[0], steps, ctx.spans_processes(cand), link, spec.widths)
    rest, closing = closing_terms(pipe, skel_step, ctx.spans_processes(cand))
    return Calibration(over, rest + skel_step.optimizer + closing)


def parameter_work(spec: MLPSpec, ctx: RunContext, repeats: int = 20) -> float:
    """Seconds of one optimizer step and l2 term over the real parameters, beyond the same on the skeleton's."""
    make = optimizer_factory(TrainConfig(lr=1e-9, optimizer=ctx.optimizer, momentum=ctx.momentum))

    def seconds(model: MLPSpec) -> float:
        params = [t.to(ctx.device, ctx.torch_dtype) for w, b in init_parameters(model, ctx.seed) for t in (w, b)
                  if t is not None]
        return parameter_seconds(params, make, model.l2, repeats, together=barrier if ctx.distributed else lambda: None)

    return seconds(spec) - seconds(skeleton_spec(spec))


@dataclass(frozen=True)
class Prediction:
    """Predicted step figures of one candidate (see the module docstring for what each is compared with).

    ``timeline``: this run's predicted step (stages in turn in one process; overlapping ranks under torchrun), its
    transfers in the lane "transfers"; ``timeline_k_devices``: the simulator's on K devices.
    """

    step_time: float
    basis: str
    step_time_k: float
    bubble_fraction: float
    stage_costs: tuple[StageCost, ...]
    step_overhead: float
    timeline: tuple[TraceEvent, ...]
    timeline_k_devices: tuple[TraceEvent, ...] = ()
    link: LinkModel = FREE_LINK
    boundary_bytes: tuple[float, ...] | None = None
    concurrent: bool = False
    replicas: int = 1  # replicas whose gradients this run all-reduces (1 when emulated in one process)
    gradient_bytes: tuple[float, ...] = ()


def _events(timed: Sequence[TimedAction], lane: str = "") -> list[TraceEvent]:
    return [TraceEvent(t.rank, str(t.action), t.start, t.end, lane) for t in timed]


def predict(cand: Candidate, profiler: Profiler, calib: Calibration, param_extra: float, distributed: bool,
            link: LinkModel = FREE_LINK, nbytes: Sequence[float] | None = None) -> Prediction:
    """The candidate's predicted step time here, on K devices, and both timelines.

    Under torchrun, transfers of ``nbytes`` per stage boundary cost what ``link`` says; a PP x DP candidate's
    all-reduces too (on K devices, and in this run under torchrun).
    """
    real = profiler.layers(cand.microbatch_size)
    sched = cand.compute_schedule()
    costs = []
    for (a, b), over, choice in zip(cand.ranges, calib.action_overhead, per_stage(cand.recompute, len(cand.ranges))):
        p = recompute_stage_cost(real, a, b, choice)
        costs.append(StageCost(p.f + over.f, p.b + over.b, p.w + over.w))
    sim = simulate(sched, costs)
    k_step, k_reduces = _with_reductions(cand, profiler, sim, link)
    k_events = sim.trace_events() + k_reduces
    if distributed:
        here_sim = simulate(sched, costs, link, nbytes)
        body, reduces = _with_reductions(cand, profiler, here_sim, link)
        timeline = _events(here_sim.timeline) + _events(here_sim.transfers, "transfers") + reduces
    else:
        timeline = _events(emulated_timeline(cand.emulated_schedule(), costs))
        body = cand.local_microbatches * sum(c.total for c in costs)
    extra = calib.step_overhead + param_extra
    reduce = f", and the all-reduce over {cand.replicas} replicas" if cand.replicas > 1 else ""
    basis = (f"{cand.num_ranks} devices, one process each (simulator{reduce})" if distributed and cand.num_ranks > 1
             else "this one device, all stages in turn" + (" and every replica's microbatches" if cand.replicas > 1 else ""))
    grads = stage_gradient_bytes(profiler.spec, cand.ranges, as_dtype(profiler.ctx.dtype))
    return Prediction(body + extra, basis, k_step + extra / cand.ranks_per_replica, sim.bubble_fraction, tuple(costs),
                      extra, tuple(timeline), tuple(k_events), link, None if nbytes is None else tuple(nbytes), distributed,
                      cand.replicas if distributed else 1, tuple(grads))


def _with_reductions(cand: Candidate, profiler: Profiler, sim: SimResult, link: LinkModel) -> tuple[float, list[TraceEvent]]:
    """One replica's simulated step extended by each stage's ring all-reduce of its gradients over the replicas on
    ``link`` (none for one replica): (seconds, the all-reduces as events in the lane "transfers")."""
    if cand.replicas == 1:
        return sim.makespan, []
    sched = cand.compute_schedule()
    grads = stage_gradient_bytes(profiler.spec, cand.ranges, as_dtype(profiler.ctx.dtype))
    reduced = with_all_reduce(sim, sched, grads, cand.replicas, link)
    return reduced.makespan, [TraceEvent(sched.rank_of(s), f"all-reduce {s}", start, end, "transfers")
                              for s, (start, end) in enumerate(zip(reduced.reduce_start, reduced.reduce_end)) if end > start]


def explain_error(cand: Candidate, pred: Prediction, measured_costs: Sequence[StageCost], measured_step: float) -> dict:
    """The candidate's prediction error and its largest contributors (``runtime.calibrate.explain``)."""
    sched = cand.compute_schedule() if pred.concurrent else cand.emulated_schedule()
    model = CostModel(pred.stage_costs, step_overhead=Term(pred.step_overhead, Origin.MEASURED), link=pred.link,
                      replicas=pred.replicas, gradient_bytes=pred.gradient_bytes)
    ranges = [(s, s + 1) for s in range(len(pred.stage_costs))]
    here = this_run(sched, model, ranges, pred.boundary_bytes, pred.concurrent)
    return explain(here, sched, model, pred.boundary_bytes, pred.concurrent, measured_costs, measured_step)
