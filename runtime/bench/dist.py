"""Benchmark `dist` (under torchrun): our GPipe/1F1B over DistTransport vs torch's ScheduleGPipe/Schedule1F1B.

Every rank holds the stage(s) of one uniform split; gloo between CPU processes, NCCL between GPUs. Each step
is a full training step (SGD with lr = 0, see runtime.bench.pipeline) that starts right after a barrier; its
time is the slowest rank's, so samples/s = batch / that time. The per-rank peers come from ``peers``
(scripts/_peers.py), which get this rank's stage module and return ``run(x, y)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from partition.schedule.actions import ScheduleKind
from runtime.bench.flops import describe_rate, device_peak, step_flops, throughput
from runtime.bench.models import (
    bench_spec,
    make_batch,
    reference_loss,
    reference_sequential,
    scaled,
    sgd_frozen,
    shared_init,
    stage_modules,
)
from runtime.bench.pipeline import OurSchedule, pipeline_config
from runtime.bench.report import dtype_name, machine, ms, ratio, table
from runtime.bench.timing import Measured, Variant, measure, speedup_json
from runtime.comm import Backend, DistTransport, WorldInfo, all_reduce_sum, barrier, init_world
from runtime.engine.pipeline import Pipeline
from runtime.train.layout import resolve_ranges

DistPeerBuilder = Callable[..., Callable[[torch.Tensor | None, torch.Tensor | None], object]]
PAIRED = MappingProxyType({ScheduleKind.GPIPE: "gpipe"})  # everything else is paired with the peer's 1f1b


@dataclass(frozen=True)
class DistBenchConfig:
    """Sizes and contenders of the `dist` benchmark."""

    width: int = 1024
    layers: int = 8
    microbatches: int = 8
    batch: int = 512
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    schedules: tuple[OurSchedule, ...] = (OurSchedule(ScheduleKind.GPIPE), OurSchedule(ScheduleKind.ONE_F_ONE_B),
                                          OurSchedule(ScheduleKind.ZB_H1), OurSchedule(ScheduleKind.ONE_F_ONE_B, True))
    warmup: int = 2
    repeats: int = 10
    seed: int = 0
    timeout: float = 120.0


def join_world(device: str, timeout: float) -> tuple[WorldInfo, torch.device, Backend]:
    """Join torchrun's process group: NCCL with one GPU per rank for ``cuda``, gloo for ``cpu``."""
    backend = Backend.NCCL if device.startswith("cuda") else Backend.GLOO
    world = init_world(backend, timeout)
    dev = torch.device(f"cuda:{world.local_rank}") if backend is Backend.NCCL else torch.device("cpu")
    return world, dev, backend


def measure_world(variants: Sequence[Variant], device: torch.device, warmup: int, repeats: int,
                  world: WorldInfo) -> dict[str, Measured]:
    """``measure`` on every rank, steps aligned by a barrier; each step's time is the slowest rank's.

    Losses come from the last rank (the one holding the loss), shared with the others.
    """
    aligned = [Variant(v.name, v.step, _then_barrier(v.clear), v.group) for v in variants]
    barrier()
    local = measure(aligned, device, warmup, repeats)
    names = [v.name for v in variants]
    times = torch.zeros(world.world_size, len(names), repeats, dtype=torch.float64)
    losses = torch.zeros(len(names), dtype=torch.float64)
    for i, name in enumerate(names):
        rec = local[name]
        for r, t in zip(rec.rounds, rec.times):
            times[world.rank, i, r - warmup] = t
        if world.rank == world.world_size - 1 and rec.losses:
            losses[i] = rec.losses[0]
    times, losses = all_reduce_sum(times), all_reduce_sum(losses)
    out = {}
    for i, name in enumerate(names):
        rec = local[name]
        slowest = times[:, i, :].max(dim=0).values
        ok = (times[:, i, :] > 0).all(dim=0)
        rounds = [warmup + r for r in range(repeats) if ok[r]]
        out[name] = Measured(name, rec.group, [float(slowest[r - warmup]) for r in rounds], rounds,
                             [float(losses[i])] if rounds else [], rec.error)
    return out


def _then_barrier(clear: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        clear()
        barrier()

    return run


def run_dist_bench(cfg: DistBenchConfig, peers: Mapping[str, DistPeerBuilder], log: Callable[[str], None] = print) -> dict:
    """Time ours and the peers on this world; every rank returns the same results (print on one)."""
    world, device, backend = join_world(cfg.device, cfg.timeout)
    p, m = world.world_size, cfg.microbatches
    if cfg.batch % m:
        raise ValueError(f"microbatches: {m} do not divide the batch of {cfg.batch}")
    rows = cfg.batch // m
    spec = bench_spec(cfg.width, cfg.layers)
    data = make_batch(spec, cfg.batch, cfg.dtype, device)
    variants = []
    with shared_init(spec, cfg.seed) as params:
        for ours in cfg.schedules:
            per_rank = ours.kind.stages_per_rank(2)
            ranges = resolve_ranges(spec, p * per_rank, "uniform", rows)
            pcfg = pipeline_config(spec, ranges, ours, m, str(device), cfg.dtype, cfg.seed, per_rank)
            pipe = Pipeline(pcfg, sgd_frozen, DistTransport(backend, cfg.timeout), [world.rank], init=params)
            variants.append(_ours_variant(ours.name, pipe, data.x, data.y, cfg.batch))
        ranges = resolve_ranges(spec, p, "uniform", rows)
        seq = reference_sequential(spec, params, cfg.dtype, device)
        module = stage_modules(spec, seq, ranges)[world.rank]
        opt = sgd_frozen(list(module.parameters()))
        for name, build in peers.items():
            run = build(module, world.rank, p, m, scaled(reference_loss(spec), 1.0 / m), device)
            variants.append(Variant(f"peer:{name}", _peer_step(run, opt, data.x, data.y),
                                    lambda: module.zero_grad(set_to_none=True), "peer"))
    if world.rank == 0:
        log(f"dist: {p} ranks ({backend.value}), {cfg.layers} x {cfg.width}, batch {cfg.batch}, {m} microbatches ...")
    measured = measure_world(variants, device, cfg.warmup, cfg.repeats, world)
    flops = step_flops(spec, cfg.batch)
    result_rows = _rows(measured, cfg, flops, device_peak(device, cfg.dtype), p)
    peak = device_peak(device, cfg.dtype)
    return {"benchmark": "dist", "machine": {**machine(device), "world_size": p, "backend": backend.value},
            "peaks": {dtype_name(cfg.dtype): peak.assumed if peak else None},
            "config": {"width": cfg.width, "layers": cfg.layers, "microbatches": m, "batch": cfg.batch,
                       "dtype": dtype_name(cfg.dtype), "schedules": [s.name for s in cfg.schedules], "peers": list(peers),
                       "warmup": cfg.warmup, "repeats": cfg.repeats,
                       "step": "barrier, then zero grads + pipelined forward/backward + SGD(lr=0); slowest rank's time"},
            "results": result_rows, "table": _table(result_rows)}


def _ours_variant(name: str, pipe: Pipeline, x: torch.Tensor, y: torch.Tensor, batch: int) -> Variant:
    def clear() -> None:
        for st in pipe.stages.values():
            st.zero_grad()

    return Variant(f"ours:{name}", lambda: pipe.step(x, y, batch).loss, clear, "ours")


def _peer_step(run: Callable, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    def step() -> object:
        loss = run(x, y)
        opt.step()
        return loss

    return step


def _rows(measured: Mapping[str, Measured], cfg: DistBenchConfig, flops: int, peak: object, world: int) -> list[dict]:
    peers = [m for m in measured.values() if m.group == "peer" and m.spread is not None]
    best = min(peers, key=lambda m: m.spread.median, default=None)
    out = []
    for m in measured.values():
        s = m.spread
        row = {"variant": m.name, "group": m.group, "error": m.error, "step_time": s.to_json() if s else None,
               "samples_per_second": cfg.batch / s.median if s else None, "flops": flops,
               **throughput(flops, s.median if s else None, peak), "loss": m.losses[0] if m.losses else None}
        if m.group == "ours" and s is not None:
            kind = OurSchedule.parse(m.name.removeprefix("ours:")).kind
            paired = measured.get(f"peer:{PAIRED.get(kind, '1f1b')}")
            row["paired_peer"] = paired.name if paired else None
            row["speedup_vs_paired_peer"] = speedup_json(paired, m)
            row["best_peer"] = best.name if best else None
            row["speedup_vs_best_peer"] = speedup_json(best, m)
        out.append(row)
    return out


def _table(rows: Sequence[dict]) -> str:
    body = [[r["variant"], ms(r["step_time"]) if not r["error"] else f"failed: {r['error'][:50]}",
             "-" if r["samples_per_second"] is None else f"{r['samples_per_second']:.0f}", describe_rate(r),
             ratio(r.get("speedup_vs_paired_peer")), ratio(r.get("speedup_vs_best_peer")),
             "-" if r["loss"] is None else f"{r['loss']:.6g}"] for r in rows]
    return table(["variant", "step (median [p25-p75])", "samples/s", "achieved", "vs paired peer", "vs best peer", "loss"],
                 body)
