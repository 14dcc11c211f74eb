"""Benchmark `dist` (under torchrun): our schedules over DistTransport vs every torch.distributed.pipelining schedule.

Every rank holds the stage(s) of one uniform split (one stage a rank, or two for interleaved, looped and
V-shaped schedules); gloo between CPU processes, NCCL between GPUs. Each timed step is a full training step
(runtime.bench.contenders: zero grads, forward/backward of every microbatch, SGD with lr = 0) plus the
all-reduce of the step's loss that real training does, for every contender; it starts right after a barrier
and its time is the slowest rank's, so samples/s = batch / that time. The ``full-batch`` contender runs the
whole model on rank 0 in one piece (the others only join the loss all-reduce), and ``full-batch:onednn`` the
same on our direct engine with oneDNN's GEMM kernel when one of ours uses it: the world size times the faster
one's samples/s is the physical limit, what perfect pipelining of the same GEMMs at the best speed either kernel
reaches would give. ``full-batch:every-rank`` (and ``full-batch:onednn:every-rank``) run the same on every rank at
once (each its own copy, no communication): the world size times the faster one's samples/s is the busy limit,
the same with every core working (shared caches, memory bandwidth and clocks); the gap between the two limits is
what the cores cost each other, not pipelining.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from partition.cost import step_flops
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.bench import breakdown, equal_math
from runtime.bench.contenders import (
    EVERY_RANK,
    FULL_BATCH,
    FULL_BATCH_EVERY_RANK,
    FULL_BATCH_ONEDNN,
    FULL_BATCH_ONEDNN_EVERY_RANK,
    ONE_DEVICE,
    OurSchedule,
    Peer,
    full_batch_run,
    module_grads,
    onednn_full_batch,
    ours_variant,
    pipeline_config,
    torch_variant,
)
from runtime.bench.flops import describe_rate, device_peak
from runtime.bench.models import (
    Params,
    bench_spec,
    make_batch,
    reference_loss,
    reference_sequential,
    scaled,
    sgd_frozen,
    shared_init,
    stage_modules,
)
from runtime.bench.report import dtype_name, machine
from runtime.bench.rows import base_row, best_of, fastest, loss_cell, math_cell, ratio_cell, speedups, time_cell
from runtime.bench.timing import Group, Measured, Variant
from runtime.bench.world import join_world, loss_all_reduce, measure_world, share_checksums
from runtime.comm import Backend, DistTransport, WorldInfo
from runtime.engine.pipeline import Pipeline
from runtime.ops.gemm import Gemm, gemm_problem
from runtime.output import text_table
from runtime.train.layout import resolve_ranges

# Which torch schedule does the same job as ours (like for like).
PAIRED = MappingProxyType({ScheduleKind.GPIPE: "gpipe", ScheduleKind.ONE_F_ONE_B: "1f1b", ScheduleKind.ZB_H1: "1f1b",
                           ScheduleKind.INTERLEAVED_1F1B: "interleaved-1f1b", ScheduleKind.ZB_V: "zbv"})
STEP = ("barrier, then zero grads + pipelined forward/backward of every microbatch + SGD(lr=0) + all-reduce of the "
        "step's loss (one float64), all timed; the slowest rank's time")
_S = OurSchedule


@dataclass(frozen=True)
class DistBenchConfig:
    """Sizes and contenders of the `dist` benchmark; ``headline`` is the contender the targets judge."""

    width: int = 1024
    layers: int = 8
    microbatches: int = 8
    batch: int = 512
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    schedules: tuple[OurSchedule, ...] = (
        _S(ScheduleKind.GPIPE), _S(ScheduleKind.ONE_F_ONE_B), _S(ScheduleKind.INTERLEAVED_1F1B), _S(ScheduleKind.ZB_H1),
        _S(ScheduleKind.ZB_V), _S(ScheduleKind.ONE_F_ONE_B, True), _S(ScheduleKind.ZB_H1, False, True),
        _S(ScheduleKind.ZB_H1, True, True), _S(ScheduleKind.ONE_F_ONE_B, True, True, True),
        _S(ScheduleKind.ZB_H1, True, True, True))
    headline: str = "ours:zb-h1+defer-w+direct+onednn"
    warmup: int = 2
    repeats: int = 10
    seed: int = 0
    timeout: float = 120.0


def _ours(cfg: DistBenchConfig, spec: MLPSpec, params: Params, world: WorldInfo, backend: Backend,
          device: torch.device, x: torch.Tensor, y: torch.Tensor, pipes: dict[str, Pipeline]) -> list[Variant]:
    out, rows = [], cfg.batch // cfg.microbatches
    for ours in cfg.schedules:
        if (failed := ours.unavailable(device, cfg.dtype)) is not None:
            out.append(failed)
            continue
        per_rank = ours.kind.stages_per_rank(2)
        ranges = resolve_ranges(spec, world.world_size * per_rank, "uniform", rows)
        pcfg = pipeline_config(spec, ranges, ours, cfg.microbatches, str(device), cfg.dtype, cfg.seed, per_rank)
        pipe = pipes[f"ours:{ours.name}"] = Pipeline(pcfg, sgd_frozen, DistTransport(backend, cfg.timeout),
                                                     [world.rank], init=params)
        out.append(ours_variant(ours.name, pipe, x, y, cfg.batch, loss_all_reduce))
    return out


def _peers(cfg: DistBenchConfig, spec: MLPSpec, seq: torch.nn.Sequential, peers: Mapping[str, Peer], world: WorldInfo,
           device: torch.device, x: torch.Tensor, y: torch.Tensor) -> list[Variant]:
    out, p, m = [], world.world_size, cfg.microbatches
    per_mb = scaled(reference_loss(spec), 1.0 / m)
    for name, peer in peers.items():
        n = peer.placement.num_stages(p, p)
        if n > spec.num_layers:
            out.append(Variant.failed(f"peer:{name}", Group.PEER, ValueError(f"needs {n} stages, {spec.num_layers} layers")))
            continue
        ranges = resolve_ranges(spec, n, "uniform", cfg.batch // m)
        every = stage_modules(spec, seq, ranges)
        mine = {s: every[s] for s in peer.placement.stages_of(world.rank, p, n)}
        try:
            run = peer.build(mine, n, m, per_mb, device)
        except Exception as exc:  # noqa: BLE001 - a peer that cannot be built is reported, not fatal
            out.append(Variant.failed(f"peer:{name}", Group.PEER, exc))
            continue
        params = [q for mod in mine.values() for q in mod.parameters()]
        out.append(torch_variant(f"peer:{name}", Group.PEER, params, lambda run=run: run(x, y),
                                 module_grads([(ranges[s][0], mod) for s, mod in mine.items()]), loss_all_reduce))
    return out


def _full_batch(spec: MLPSpec, params: Params, dtype: torch.dtype, world: WorldInfo, x: torch.Tensor,
                y: torch.Tensor, onednn_too: bool) -> list[Variant]:
    """The whole model in one piece on rank 0 while the other ranks only join the loss all-reduce, and the same
    on every rank at once (each its own copy: both cores busy); with torch's layers and, with ``onednn_too`` (some
    of ours use oneDNN's GEMMs), on our direct engine with those GEMMs. The loss and gradients checked are rank 0's."""
    out = []
    kinds = ((FULL_BATCH, False, False), (FULL_BATCH_EVERY_RANK, True, False))
    if onednn_too:
        kinds += ((FULL_BATCH_ONEDNN, False, True), (FULL_BATCH_ONEDNN_EVERY_RANK, True, True))
    problem = gemm_problem(Gemm.ONEDNN, [x.device], dtype, direct=True)
    for name, everyone, onednn in kinds:
        after = loss_all_reduce if world.rank == 0 else _no_loss
        if onednn and problem is not None:  # on every rank alike, so that no rank waits for a step the others skip
            out.append(Variant.failed(name, Group.BASELINE, ValueError(problem)))
        elif world.rank != 0 and not everyone:
            out.append(Variant(name, lambda: loss_all_reduce(None), group=Group.BASELINE, grads=dict))
        elif onednn:
            variant = onednn_full_batch(spec, params, dtype, x.device, x, y, after, name)
            out.append(variant if world.rank == 0 else Variant(name, variant.step, group=Group.BASELINE, grads=dict))
        else:
            seq = reference_sequential(spec, params, dtype, x.device)
            run = full_batch_run(seq, reference_loss(spec), x, y)
            grads = module_grads([(0, seq)]) if world.rank == 0 else dict
            out.append(torch_variant(name, Group.BASELINE, list(seq.parameters()), run, grads, after))
    return out


def _no_loss(loss: object) -> float:
    """The loss all-reduce for a rank whose loss is not the one reported (rank 0's is)."""
    return loss_all_reduce(None)


def run_dist_bench(cfg: DistBenchConfig, peers: Mapping[str, Peer], log: Callable[[str], None] = print) -> dict:
    """Time ours, the peers and the full batch on this world, then check everyone's math; every rank returns
    the same results (print on one)."""
    world, device, backend = join_world(cfg.device, cfg.timeout)
    p, m = world.world_size, cfg.microbatches
    if cfg.batch % m:
        raise ValueError(f"microbatches: {m} do not divide the batch of {cfg.batch}")
    spec = bench_spec(cfg.width, cfg.layers)
    data = make_batch(spec, cfg.batch, cfg.dtype, device)
    with shared_init(spec, cfg.seed) as params:
        seq = reference_sequential(spec, params, cfg.dtype, device)
        pipes: dict[str, Pipeline] = {}
        variants = _ours(cfg, spec, params, world, backend, device, data.x, data.y, pipes)
        variants += _full_batch(spec, params, cfg.dtype, world, data.x, data.y, any(s.onednn for s in cfg.schedules))
        variants += _peers(cfg, spec, seq, peers, world, device, data.x, data.y)
        if world.rank == 0:
            log(f"dist: {p} ranks ({backend.value}), {cfg.layers} x {cfg.width}, batch {cfg.batch}, {m} microbatches ...")
        measured = measure_world(variants, device, cfg.warmup, cfg.repeats, world)
        keys = [(i, k) for i in range(spec.num_layers) for k in ("w", "b")]
        checks = equal_math.check_all(variants, *equal_math.reference(spec, params, data.x, data.y), cfg.dtype,
                                      share=share_checksums(keys), skip={n for n, r in measured.items() if not r.times})
        split = None
        if cfg.headline in pipes and measured[cfg.headline].times:
            if world.rank == 0:
                log(f"dist: where {cfg.headline}'s step goes ({breakdown.STEPS} more steps, then the bare GEMMs) ...")
            split = breakdown.attribute(pipes[cfg.headline], data.x, data.y, cfg.batch, cfg.width, world, cfg.dtype,
                                        device, cfg.headline)
    peak = device_peak(device, cfg.dtype)
    rows = summarize(measured, checks, step_flops(spec, cfg.batch), peak, cfg.batch, p)
    result = {"benchmark": "dist", "machine": {**machine(device), "world_size": p, "backend": backend.value},
              "peaks": {dtype_name(cfg.dtype): peak.assumed if peak else None},
              "config": {"width": cfg.width, "layers": cfg.layers, "microbatches": m, "batch": cfg.batch,
                         "dtype": dtype_name(cfg.dtype), "schedules": [s.name for s in cfg.schedules],
                         "peers": {n: q.schedule for n, q in peers.items()}, "headline": cfg.headline,
                         "warmup": cfg.warmup, "repeats": cfg.repeats, "step": STEP,
                         "math_tolerance": equal_math.TOLERANCE.get(cfg.dtype, 1e-3)},
              "results": rows}
    if split is not None:
        ours = next(r for r in rows if r["variant"] == cfg.headline)
        full = next((r for r in rows if r["variant"] == ours.get("full_batch") and r["samples_per_second"]), None)
        if full is not None and ours["samples_per_second"]:
            split["fraction_of_shape_limit"] = ours["samples_per_second"] / breakdown.shape_limit(
                split, p * full["samples_per_second"])
        result["breakdown"] = split
    return result | {"table": table_text(result)}


def summarize(measured: Mapping[str, Measured], checks: Mapping[str, equal_math.MathCheck], flops: int, peak: object,
              batch: int, world_size: int) -> list[dict]:
    """One row per contender; ours get paired speedups vs the paired and best peer and their share of the limit."""
    best = best_of(measured, Group.PEER, checks)
    limits = {"full_batch": fastest(measured, ONE_DEVICE, checks),
              "full_batch_every_rank": fastest(measured, EVERY_RANK, checks)}
    out = []
    for m in measured.values():
        ranks = world_size if m.name in EVERY_RANK else 1  # every rank did a whole batch
        row = base_row(m, checks.get(m.name), flops * ranks, peak, batch * ranks)
        if m.group is Group.OURS and m.spread is not None:
            paired = measured.get(f"peer:{PAIRED[OurSchedule.parse(m.name).kind]}")
            row.update(speedups(m, {"paired_peer": paired, "best_peer": best, **limits}))
            for key, share in (("full_batch", "fraction_of_limit"), ("full_batch_every_rank", "fraction_of_busy_limit")):
                vs_full = row.pop(f"speedup_vs_{key}")
                row[share] = None if vs_full is None else {k: (v / world_size if k != "n" else v) for k, v in vs_full.items()}
        out.append(row)
    return out


def table_text(result: dict) -> str:
    """The `dist` table, from the result's JSON alone."""
    body = [[r["variant"], time_cell(r), "-" if r["samples_per_second"] is None else f"{r['samples_per_second']:.0f}",
             describe_rate(r), ratio_cell(r, "paired_peer"), ratio_cell(r, "best_peer"),
             _fraction(r.get("fraction_of_limit")), _fraction(r.get("fraction_of_busy_limit")), loss_cell(r),
             math_cell(r)] for r in result["results"]]
    text = text_table(["variant", "step (median [p25-p75])", "samples/s", "achieved", "vs paired peer", "vs best peer",
                       "of limit", "of busy limit", "loss", "math"], body)
    if "breakdown" in result:
        split = result["breakdown"]
        text += "\n\n" + breakdown.breakdown_table(split)
        if "fraction_of_shape_limit" in split:
            ideal = sum(r["ideal"] for r in split["ranks"])
            limit = ideal / (ideal + sum(r["shape"] for r in split["ranks"]))
            text += (f"\nshape limit (the physical limit with the GEMMs at these shapes): {limit:.3f} of the physical limit;"
                     f" {split['contender']} reaches {split['fraction_of_shape_limit']:.3f} of it")
    return text


def _fraction(d: dict | None) -> str:
    return "-" if not d else f"{d['median']:.3f} [{d['p25']:.3f}-{d['p75']:.3f}]"
