"""Host overheads measured once per process: per-action and per-step costs of a skeleton run, optimizer, all-reduce.

The skeleton is the run's own pipeline (same stages, layer ranges, schedule, microbatches, engine, transport and
optimizer) with every hidden width 1: its actions do next to no arithmetic, so what they take is what the runtime
adds to every action. Its per-action times minus its own profile are the action overheads; its step time minus
its actions (or, with overlapping ranks, minus the simulated skeleton step), its optimizer steps and, under
torchrun, its closing all-reduce is the step overhead (``closing_terms``). Under torchrun its messages carry the real
model's bytes (``runtime.calibrate.padded``): their host cost is the skeleton's too.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from partition.schedule.actions import Op
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost
from runtime.calibrate.padded import PaddedTransport
from runtime.comm import DistTransport, all_reduce_sum, barrier, gather_rows
from runtime.engine.pipeline import OptimizerFactory, Pipeline
from runtime.ops.functions import l2_term
from runtime.train.measure import costs_from_records, largest, replica_mean
from runtime.train.profile import flush_bytes, profile_layers

COMPUTE = (Op.F, Op.B, Op.W, Op.BW)
WINDOW = 0.5  # seconds the skeleton's untimed, then timed, steps are sized to fill under torchrun (``action_overheads``)
MAX_STEPS = 200


def skeleton_spec(spec: MLPSpec) -> MLPSpec:
    """The model with every hidden width 1: the same actions, data and loss, next to no arithmetic in the layers."""
    widths = (spec.widths[0],) + (1,) * (spec.num_layers - 1) + (spec.widths[-1],)
    return replace(spec, widths=widths)


def skeleton_pipeline(pipe: Pipeline, transport: object, make_optimizer: OptimizerFactory) -> Pipeline:
    """A pipeline shaped like ``pipe`` (same ranks of this process) over the skeleton of its model."""
    return Pipeline(replace(pipe.cfg, spec=skeleton_spec(pipe.cfg.spec)), make_optimizer, transport, pipe.ranks)


@dataclass(frozen=True)
class SkeletonStep:
    """What a skeleton step costs beyond its actions: ``extra`` in all, of which ``closing`` (the closing
    all-reduce, as the rank that reaches it last pays it) and ``optimizer`` (its optimizer steps, slowest rank)."""

    extra: float
    closing: float
    optimizer: float


def action_overheads(skel: Pipeline, x: torch.Tensor | None, y: torch.Tensor | None, batch: int,
                     steps: int, concurrent: bool, link: LinkModel,
                     widths: Sequence[int] | None = None) -> tuple[tuple[StageCost, ...], SkeletonStep]:
    """(per-stage action overheads, the step beyond them) from ``steps`` timed steps of the skeleton (after two
    untimed).

    Under torchrun (``concurrent``) every rank takes part; the figures are shared, the step overhead taken from
    the slowest rank, and the untimed and the timed steps each number about ``WINDOW`` seconds' worth (sized from the
    second step's time on the slowest rank, at most ``MAX_STEPS`` steps): there, spells of steps 1.5x slower than the
    rest come and go every few steps on this CPU, most of all in the first second of a process, so 16 steps after 2
    could land in one. ``widths`` (the real model's): messages between processes carry as many bytes as the real
    model's (``runtime.calibrate.padded``), so the skeleton's steps pay their host cost too.
    """
    transport = skel.executor.transport
    padded = widths is not None and isinstance(transport, DistTransport)
    if padded:
        skel.executor.transport = PaddedTransport(transport, skel.cfg.ranges, widths)
    try:
        records, times, outside, closing, optimizer = _timed_steps(skel, x, y, batch, steps, concurrent)
    finally:  # the skeleton is used again (its closing all-reduce, by rank): with its own transport
        skel.executor.transport = transport
    cfg = skel.cfg
    rows = batch // cfg.microbatches
    dev = next(iter(skel.stages.values())).device
    own = profile_layers(cfg.spec, rows, str(dev), _dtype_name(cfg.dtype), repeats=10, warmup=2, cold_cache_bytes=0,
                        gemm=cfg.gemm)
    costs = costs_from_records(records, cfg.num_stages)
    split = skel.schedule.splits_backward
    over = torch.zeros(cfg.num_stages, 3, dtype=torch.float64)
    for s, st in skel.stages.items():
        q = StageCost.summed(own.layers[st.start:st.stop])
        q_b = q.b if split else q.b + q.w  # the records count a fused backward BW as B
        over[s] = torch.tensor([max(0.0, costs[s].f - q.f), max(0.0, costs[s].b - q_b), max(0.0, costs[s].w - q.w)])
    if concurrent:
        over = replica_mean(over, skel.schedule.num_ranks)
        measured = replica_mean(torch.tensor([[c.f, c.b, c.w] for c in costs], dtype=torch.float64),
                                skel.schedule.num_ranks)
        skel_costs = [StageCost(*map(float, row)) for row in measured]
        sent = widths if padded else cfg.spec.widths
        nbytes = [rows * sent[b] * torch.finfo(cfg.dtype).bits / 8 for _, b in cfg.ranges]
        body = simulate(skel.schedule, skel_costs, link, nbytes).makespan
        # the closing all-reduce ends the step when the last rank reaches it: the others' wait for it is in the body
        step, least_closing, slowest_optimizer = largest(
            [statistics.median(times), -statistics.median(closing), statistics.median(optimizer)])
        phases = SkeletonStep(max(0.0, step - body), -least_closing, slowest_optimizer)
    else:
        phases = SkeletonStep(max(0.0, statistics.median(outside)), statistics.median(closing), statistics.median(optimizer))
    return tuple(StageCost(*map(float, row)) for row in over), phases


def _timed_steps(skel: Pipeline, x: torch.Tensor | None, y: torch.Tensor | None, batch: int, steps: int,
                 concurrent: bool) -> tuple[list, list, list, list, list]:
    """The skeleton's step records and timings after its untimed steps (``action_overheads``' window rule)."""
    records, times, outside, closing, optimizer = [], [], [], [], []
    picked = torch.arange(batch)
    i, warmup = 0, 2
    while i < warmup + steps:
        t0 = time.perf_counter()
        xs, ys = (None if t is None else t[picked] for t in (x, y))  # gathering the rows, as a training step does
        out = skel.step(xs, ys, batch, i, sync_timing=True)
        if i == 1 and concurrent:  # every rank runs the same number of steps
            window = min(MAX_STEPS, math.ceil(WINDOW / max(slowest(time.perf_counter() - t0), 1e-6)))
            warmup, steps = max(warmup, window), max(steps, window)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            records += out.records
            outside.append(times[-1] - sum(r.end - r.start for r in out.records if r.action.op in COMPUTE))
            closing.append(out.closing)
            optimizer.append(out.optimizer)
        i += 1
    return records, times, outside, closing, optimizer


def parameter_seconds(params: Sequence[torch.Tensor], make_optimizer: OptimizerFactory, l2: float,
                      repeats: int = 20, together: Callable[[], None] = lambda: None) -> float:
    """Median seconds of one optimizer step (and the l2 term with its gradient when ``l2`` > 0) over copies of
    ``params`` whose gradients are ones; on the CPU with the caches overwritten before each (as the profile times
    layers: in a step, the backward has filled them with other tensors since the parameters' last use).
    ``together`` is called between the overwrite and each timed step: a barrier makes every rank's timed steps
    start at once, as the ranks' optimizers do at the end of a step, and none overlap another rank's overwrite."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p in copies:
        p.grad = torch.ones_like(p)
    opt = make_optimizer(copies)
    weights = [p for p in copies if p.dim() == 2]
    on_cpu = bool(copies) and copies[0].device.type == "cpu"
    nbytes = flush_bytes(4 * sum(p.numel() * p.element_size() for p in copies))  # params, grads, state
    flush = torch.zeros(max(nbytes // 4, 1), dtype=torch.float32) if on_cpu else None
    times = []
    for i in range(repeats + 3):
        if flush is not None:
            flush.add_(1)
        together()
        t0 = time.perf_counter()
        if l2 and weights:
            l2_term(l2, weights).backward()
        opt.step()
        if copies and copies[0].device.type == "cuda":
            torch.cuda.synchronize(copies[0].device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) if times else 0.0


def closing_seconds(rank: int, ranks: int, num_stages: int, repeats: int = 30, late_by: float = 0.002) -> float:
    """Median seconds of a step's closing all-reduce (``num_stages`` flags) as the rank that reaches it last pays it:
    the others already wait in it (their threads asleep), that rank arrives from ``late_by`` seconds of busy CPU, as
    from a step's last action. Each rank takes its turn at arriving last; the median over every turn, on all ranks.
    (Back to back, with every thread awake, the same all-reduce takes a fraction of it on this CPU.)"""
    flags = torch.zeros(num_stages, dtype=torch.float64)
    mine = []
    for turn in range(ranks):
        for i in range(repeats + 1):
            barrier()
            t0 = time.perf_counter()
            if rank == turn:
                while time.perf_counter() < t0 + late_by:
                    pass
                t0 = time.perf_counter()
            all_reduce_sum(flags)
            if rank == turn and i:
                mine.append(time.perf_counter() - t0)
    every = torch.cat([part.reshape(-1) for part in gather_rows(torch.tensor([mine], dtype=torch.float64))])
    return float(every.median())


def closing_terms(skel: Pipeline, skel_step: SkeletonStep, concurrent: bool) -> tuple[float, float]:
    """(step overhead, closing all-reduce) of a run from its skeleton's steps, the rule ``train.py`` and ``compare.py``
    share: the step overhead is the skeleton's step beyond its actions and its optimizer steps (and, under torchrun,
    beyond its own closing all-reduce, which ``closing_seconds`` measures as a step pays it; every rank calls this)."""
    if not concurrent:
        return max(0.0, skel_step.extra - skel_step.optimizer), 0.0
    t = skel.executor.transport
    closing = closing_seconds(t.rank if isinstance(t, DistTransport) else 0, world_size(), skel.cfg.num_stages)
    return max(0.0, skel_step.extra - skel_step.optimizer - skel_step.closing), closing


def slowest(seconds: float) -> float:
    """The largest of every rank's ``seconds`` (``seconds`` itself without a process group)."""
    return largest([seconds])[0]


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return len(gather_rows(torch.zeros(1, 1, dtype=torch.float64)))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
