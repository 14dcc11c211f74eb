"""Calibrating a run before its timed steps: profile, link, skeleton overheads, optimizer and all-reduces, with origins."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from partition.cost import as_dtype
from partition.data_parallel import stage_gradient_bytes
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost
from runtime.calibrate import link as links
from runtime.calibrate.costs import CostModel, Origin, Term
from runtime.calibrate.overhead import (
    action_overheads,
    closing_terms,
    parameter_seconds,
    skeleton_pipeline,
    slowest,
    world_size,
)
from runtime.comm import DistTransport, LocalTransport, all_reduce_sum, barrier
from runtime.engine.pipeline import OptimizerFactory, Pipeline
from runtime.ops.gemm import Gemm
from runtime.train.data_parallel import GridCollectives
from runtime.train.profile import beyond_own_cache, profile_layers, working_set_bytes


def activation_bytes(pipe: Pipeline, rows: int) -> list[float]:
    """Bytes leaving each stage per microbatch (its output activation; its gradient travels back the same size)."""
    widths, size = pipe.cfg.spec.widths, torch.finfo(pipe.cfg.dtype).bits // 8
    return [float(rows * widths[b] * size) for _, b in pipe.cfg.ranges]


def fresh_transport(pipe: Pipeline, timeout: float) -> object:
    """A new transport of the kind ``pipe`` uses (for its skeleton)."""
    t = pipe.executor.transport
    return DistTransport(t.backend, timeout, t.peers, t.name_failure) if isinstance(t, DistTransport) else LocalTransport()


def profiled_layers(pipe: Pipeline, rows: int, repeats: int, concurrent: bool) -> tuple[StageCost, ...]:
    """The model's per-layer costs at ``rows`` samples on this process's device (``profile_together``)."""
    dev = next(iter(pipe.stages.values())).device
    dtype = str(pipe.cfg.dtype).removeprefix("torch.")
    return profile_together(pipe.cfg.spec, rows, str(dev), dtype, repeats, 3, pipe.cfg.seed, pipe.cfg.gemm, concurrent)


def profile_together(spec: MLPSpec, rows: int, device: str, dtype: str, repeats: int, warmup: int, seed: int,
                     gemm: Gemm, concurrent: bool) -> tuple[StageCost, ...]:
    """Per-layer costs at ``rows`` samples on ``device`` (``runtime.train.profile``). Under torchrun (``concurrent``,
    every rank calls this) the ranks' timed calls start together when the working set lies beyond a core's own cache
    on any rank (all ranks agree, so all meet equally often), and every rank gets the mean over the ranks."""
    itemsize = torch.finfo(getattr(torch, as_dtype(dtype).value)).bits // 8
    shared = beyond_own_cache(working_set_bytes(spec, rows, itemsize))
    meet = barrier if concurrent and slowest(float(shared)) > 0 else (lambda: None)
    layers = profile_layers(spec, rows, device, dtype, repeats=repeats, warmup=warmup, seed=seed, gemm=gemm,
                            together=meet).layers
    if not concurrent:
        return layers
    table = all_reduce_sum(torch.tensor([[c.f, c.b, c.w] for c in layers], dtype=torch.float64))
    ranks = world_size()
    return tuple(StageCost(*(float(v) / ranks for v in row)) for row in table)


def replicas(pipe: Pipeline) -> int:
    """How many replicas of ``pipe`` sum their gradients every step (1 outside a dp x pp grid)."""
    return pipe.collectives.grid.dp_size if isinstance(pipe.collectives, GridCollectives) else 1


def measure_link(pipe: Pipeline, rows: int, concurrent: bool, timeout: float) -> tuple[LinkModel, str, list]:
    """The link of this run's transport: (model, what was measured, ping-pong points); cached when not trivial.

    A one-rank pipeline replicated D > 1 times (pure DP) sends nothing along the pipeline: its link is measured
    between replicas 0 and 1, which its gradient all-reduce uses."""
    nbytes = max(activation_bytes(pipe, rows))
    devices = [torch.device(d) for d in pipe.cfg.devices]
    t = pipe.executor.transport
    pure_dp = concurrent and len(t.peers) == 1 and replicas(pipe) > 1
    if concurrent and (len(t.peers) > 1 or pure_dp):
        grid = pipe.collectives.grid if pure_dp else None
        rank = grid.dp_rank if grid else t.rank  # pipeline ranks (replicas, for pure DP) 0 and 1 ping
        peers = [d * grid.pp_size + grid.pp_rank for d in range(grid.dp_size)] if grid else list(t.peers)
        link, points = links.dist_link(t.backend, devices[0], 2 * nbytes, rank, timeout, peers=peers)
        staged = t.backend.value == "gloo" and devices[0].type == "cuda"
        what = (f"{t.backend.value} between {'replicas' if pure_dp else 'processes'}"
                + (", staged through host memory" if staged else ""))
        name = t.backend.value
    else:
        pair = next(((a, b) for a, b in zip(devices, devices[1:]) if a != b), (devices[0], devices[0]))
        link, points = links.local_link(pair[0], pair[1], 2 * nbytes)
        what = f"in-process copies {pair[0]} -> {pair[1]}" if points else f"in-process, one device ({devices[0]}): no copies"
        name = "local"
    if points:
        links.store(links.conditions(name, list(pipe.cfg.devices), world_size()), link, points)
    return link, what, points


def calibrate_pipeline(pipe: Pipeline, make_optimizer: OptimizerFactory, x: torch.Tensor, y: torch.Tensor, batch: int,
                       concurrent: bool, timeout: float = 60.0, steps: int = 16, profile_repeats: int = 10,
                       layers: Sequence[StageCost] | None = None) -> tuple[CostModel, list]:
    """The cost model of ``pipe``'s step on this hardware, measured now (every rank calls this under torchrun).

    ``layers`` given (e.g. a saved profile) are used as they are instead of profiling. Returns the model and the
    link's ping-pong points.
    """
    rows = batch // pipe.cfg.microbatches
    origin = Origin.GIVEN if layers is not None else Origin.PROFILED
    layers = tuple(layers) if layers is not None else profiled_layers(pipe, rows, profile_repeats, concurrent)
    link, what, points = measure_link(pipe, rows, concurrent, timeout)
    skel = skeleton_pipeline(pipe, fresh_transport(pipe, timeout), make_optimizer)
    over, skel_step = action_overheads(skel, x, y, batch, steps, concurrent, link, pipe.cfg.spec.widths)
    l2 = pipe.cfg.spec.l2
    real = [p for st in pipe.stages.values() for p in st.parameters()]
    tiny = [p for st in skel.stages.values() for p in st.parameters()]
    together = barrier if concurrent else (lambda: None)  # the ranks' optimizers run at once at a step's end
    optimizer = max(0.0, parameter_seconds(real, make_optimizer, l2, together=together)
                    - parameter_seconds(tiny, make_optimizer, l2, together=together))
    rest, closing = closing_terms(skel, skel_step, concurrent)
    if concurrent:
        optimizer = slowest(optimizer)
        reduce = Term(closing, Origin.MEASURED,
                      "the step's closing all-reduce (loss, finite flags) as the rank that reaches it last pays it")
    else:
        reduce = Term(0.0, Origin.DEFAULT, "one process: no all-reduce (its closing checks are in the step overhead)")
    grads = stage_gradient_bytes(pipe.cfg.spec, pipe.cfg.ranges, as_dtype(str(pipe.cfg.dtype).removeprefix("torch.")))
    model = CostModel(layers, origin, over, Origin.MEASURED,
                      Term(rest, Origin.MEASURED, "skeleton step beyond its actions, its optimizer and its closing all-reduce"),
                      Term(skel_step.optimizer + optimizer, Origin.MEASURED, "the optimizer steps as the skeleton's steps "
                           "ran them, plus the real parameters' extra work (cold caches; every rank at once under torchrun)"),
                      reduce, link, Origin.MEASURED, what, replicas(pipe), tuple(grads))
    return model, points
