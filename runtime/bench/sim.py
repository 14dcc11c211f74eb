"""Benchmark `simulator`: the simulator's step time and bubble, fed with profiled layer costs, vs measured runs.

* One process (all stages on one device): stages run one after another, so the measured step is compared with
  the simulator's total busy time (sum over ranks); the multi-device makespan and bubble are shown as predicted.
* Under torchrun (one rank per stage group): the measured step is the slowest rank's wall time and the
  measured bubble is 1 - sum(busy) / (ranks x step), busy being the rank's F/B/W action time in the step; the
  link is a measured latency + bandwidth between two ranks (runtime.comm's DistTransport ping-pong).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from partition.schedule.actions import Op
from partition.schedule.simulate import SimResult, simulate
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost, range_costs
from runtime.bench.dist import join_world, measure_world
from runtime.bench.flops import describe_rate, device_peak, step_flops, throughput
from runtime.bench.models import bench_spec, make_batch, sgd_frozen, shared_init
from runtime.bench.pipeline import DEFAULT_SCHEDULES, OurSchedule, pipeline_config
from runtime.bench.report import dtype_name, machine, ms, table
from runtime.bench.timing import Measured, Variant, measure
from runtime.comm import Backend, DistTransport, LocalTransport, Message, WorldInfo, all_reduce_sum, launched_by_torchrun
from runtime.engine.pipeline import Pipeline
from runtime.train.layout import resolve_ranges
from runtime.train.measure import costs_from_records
from runtime.train.profile import profile_layers

COMPUTE = (Op.F, Op.B, Op.W, Op.BW)


@dataclass(frozen=True)
class SimBenchConfig:
    """Sizes of the `simulator` benchmark (ranks = stages / stages-per-rank in one process, the world under torchrun)."""

    width: int = 1024
    layers: int = 8
    ranks: int = 4
    microbatches: int = 8
    batch: int = 512
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    schedules: tuple[OurSchedule, ...] = DEFAULT_SCHEDULES
    warmup: int = 2
    repeats: int = 8
    profile_repeats: int = 10
    cold_cache_bytes: int = 0  # > 0: profile with the CPU caches flushed before every timed call
    seed: int = 0
    timeout: float = 120.0


def measure_link(world: WorldInfo, backend: Backend, device: torch.device, nbytes: int, timeout: float,
                 repeats: int = 20) -> LinkModel:
    """Latency and bandwidth between ranks 0 and 1 from ping-pongs of 4 bytes and of ``nbytes`` (DistTransport)."""
    transport = DistTransport(backend, timeout)
    found = torch.zeros(2, dtype=torch.float64)
    for k, size in enumerate((4, max(nbytes, 8))):
        buf = torch.zeros(size // 4, dtype=torch.float32, device=device)
        trips = []
        for i in range(repeats + 3):
            tag = 1_000_000 + 4 * (k * (repeats + 3) + i)
            other = 1 - world.rank  # the peer of ranks 0 and 1 (others only wait in the all-reduce below)
            there, back = Message(("link", k, i, 0), tag, other), Message(("link", k, i, 1), tag + 1, other)
            start = time.perf_counter()
            if world.rank == 0:
                transport.send(there, buf, device)
                transport.recv(back, buf.shape, buf.dtype, device)
            elif world.rank == 1:
                got = transport.recv(there, buf.shape, buf.dtype, device)
                transport.send(back, got, device)
            transport.flush()
            trips.append(time.perf_counter() - start)
        if world.rank == 0:
            found[k] = statistics.median(trips[3:]) / 2
    t_small, t_big = (float(v) for v in all_reduce_sum(found))
    extra = max(nbytes, 8) - 4
    bandwidth = extra / (t_big - t_small) if t_big > t_small else float("inf")
    return LinkModel(latency=max(t_small, 0.0), bandwidth=bandwidth)


def run_sim_bench(cfg: SimBenchConfig, log: Callable[[str], None] = print) -> dict:
    """Predicted vs measured step time (and bubble under torchrun) per schedule; JSON-ready, ``table`` holds the text."""
    distributed = launched_by_torchrun()
    world = None
    if distributed:
        world, device, backend = join_world(cfg.device, cfg.timeout)
        p = world.world_size
    else:
        device, backend, p = torch.device(cfg.device), None, cfg.ranks
    spec, m = bench_spec(cfg.width, cfg.layers), cfg.microbatches
    if cfg.batch % m:
        raise ValueError(f"microbatches: {m} do not divide the batch of {cfg.batch}")
    rows = cfg.batch // m
    layers = _profile(spec, rows, cfg, device, world)
    link, act_bytes = LinkModel(), None
    if distributed and p > 1:
        nbytes = rows * cfg.width * torch.finfo(cfg.dtype).bits // 8
        link = measure_link(world, backend, device, nbytes, cfg.timeout)
        act_bytes = [float(nbytes)] * (2 * p)
    data = make_batch(spec, cfg.batch, cfg.dtype, device)
    cases, skipped = [], {}
    with shared_init(spec, cfg.seed) as params:
        for ours in cfg.schedules:
            per = ours.kind.stages_per_rank(2)
            if p * per > spec.num_layers:
                skipped[ours.name] = f"needs {p * per} stages, the model has {spec.num_layers} layers"
                continue
            ranges = resolve_ranges(spec, p * per, "uniform", rows)
            pcfg = pipeline_config(spec, ranges, ours, m, str(device), cfg.dtype, cfg.seed, per)
            transport = DistTransport(backend, cfg.timeout) if distributed else LocalTransport()
            pipe = Pipeline(pcfg, sgd_frozen, transport, [world.rank] if distributed else None, init=params)
            cases.append(_Case(ours.name, pipe, len(ranges), simulate(pipe.schedule, range_costs(layers, ranges), link,
                                                                      act_bytes[: len(ranges)] if act_bytes else None)))
    if not distributed or world.rank == 0:
        where = f"{p} ranks (torchrun)" if distributed else "one process"
        log(f"simulator: {cfg.layers} x {cfg.width}, batch {cfg.batch}, {m} microbatches, {where} ...")
    variants = [c.variant(data.x, data.y, cfg.batch) for c in cases]
    if distributed:
        measured = measure_world(variants, device, cfg.warmup, cfg.repeats, world)
    else:
        measured = measure(variants, device, cfg.warmup, cfg.repeats)
    results = []
    flops, peak = step_flops(spec, cfg.batch), device_peak(device, cfg.dtype)
    for case in cases:
        rec = measured[case.name]
        per_rank = torch.tensor([sum(b.values()) for b in case.busy[-cfg.repeats:]] or [0.0], dtype=torch.float64)
        timed = [r for step in case.records[-cfg.repeats:] for r in step]  # medians over every timed step's actions
        costs = torch.tensor([[c.f, c.b, c.w] for c in costs_from_records(timed, case.stages)], dtype=torch.float64)
        if distributed:
            per_rank = all_reduce_sum(per_rank)  # every rank's busy time summed, per step
            costs = all_reduce_sum(costs)  # each rank timed only its own stages
        in_step = simulate(case.pipe.schedule, [StageCost(*map(float, row)) for row in costs], link,
                           act_bytes[: case.stages] if act_bytes else None)
        row = _row(case.name, case.sim, in_step, rec, per_rank, p, distributed)
        results.append(row | {"flops": flops, **throughput(flops, rec.spread.median if rec.spread else None, peak)})
    return {"benchmark": "simulator", "machine": machine(device) | ({"world_size": p} if distributed else {}),
            "peaks": {dtype_name(cfg.dtype): peak.assumed if peak else None},
            "mode": "torchrun" if distributed else "one process",
            "link": {"latency": link.latency, "bandwidth": link.bandwidth}, "skipped": skipped,
            "profile": [{"f": c.f, "b": c.b, "w": c.w} for c in layers],
            "config": {"width": cfg.width, "layers": cfg.layers, "ranks": p, "microbatches": m, "batch": cfg.batch,
                       "dtype": dtype_name(cfg.dtype), "schedules": [s.name for s in cfg.schedules],
                       "warmup": cfg.warmup, "repeats": cfg.repeats, "profile_repeats": cfg.profile_repeats,
                       "cold_cache_bytes": cfg.cold_cache_bytes},
            "results": results, "table": _table(results, distributed)}


@dataclass
class _Case:
    """One schedule: its pipeline, stage count, the profile-fed prediction, and what its steps recorded."""

    name: str
    pipe: Pipeline
    stages: int
    sim: SimResult
    busy: list = field(default_factory=list)  # per step: rank -> seconds in F/B/W actions
    records: list = field(default_factory=list)  # per step: its action records

    def variant(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> Variant:
        """The timed contender: one pipeline step, keeping its busy times and records."""

        def step() -> float | None:
            out = self.pipe.step(x, y, batch, sync_timing=True)
            per_rank: dict[int, float] = {}
            for r in out.records:
                if r.action.op in COMPUTE:
                    per_rank[r.rank] = per_rank.get(r.rank, 0.0) + (r.end - r.start)
            self.busy.append(per_rank)
            self.records.append(out.records)
            return out.loss

        def clear() -> None:
            for st in self.pipe.stages.values():
                st.zero_grad()

        return Variant(self.name, step, clear, "ours")


def _profile(spec: MLPSpec, rows: int, cfg: SimBenchConfig, device: torch.device, world: WorldInfo | None) -> list:
    """Per-layer costs from the profiler; under torchrun every rank profiles at once and the mean is used."""
    prof = profile_layers(spec, rows, str(device), dtype_name(cfg.dtype), repeats=cfg.profile_repeats, seed=cfg.seed,
                          cold_cache_bytes=cfg.cold_cache_bytes)
    if world is None:
        return list(prof.layers)
    table_ = all_reduce_sum(torch.tensor([[c.f, c.b, c.w] for c in prof.layers], dtype=torch.float64))
    return [StageCost(*(float(v) / world.world_size for v in row)) for row in table_]


def _row(name: str, sim: SimResult, in_step: SimResult, rec: Measured, busy: torch.Tensor, p: int,
         distributed: bool) -> dict:
    spread = rec.spread
    measured = spread.median if spread else None

    def predicted(result: SimResult) -> float:
        return result.makespan if distributed else sum(result.busy)  # one process: the ranks' work, serially

    def error(value: float) -> float | None:
        return (value - measured) / measured if measured else None

    row = {"schedule": name, "error": rec.error, "measured_step_time": spread.to_json() if spread else None,
           "predicted_step_time": predicted(sim), "predicted_makespan": sim.makespan,
           "predicted_bubble_fraction": sim.bubble_fraction, "busy_seconds": float(busy.median()),
           "error_fraction": error(predicted(sim)),
           "predicted_from_step_costs": predicted(in_step), "error_from_step_costs": error(predicted(in_step))}
    if distributed and spread:
        bubbles = [1.0 - float(b) / (p * t) for b, t in zip(busy.tolist(), rec.times)]
        row["measured_bubble_fraction"] = statistics.median(bubbles)
    else:
        row["measured_bubble_fraction"] = None
        row["outside_actions_seconds"] = measured - float(busy.median()) if measured else None
    return row


def _table(rows: Sequence[dict], distributed: bool) -> str:
    body = []
    for r in rows:
        err = "-" if r["error_fraction"] is None else f"{r['error_fraction']:+.1%}"
        mb = r["measured_bubble_fraction"]
        extra = (f"{mb:.1%}" if mb is not None else "-") if distributed else (
            "-" if r.get("outside_actions_seconds") is None else f"{r['outside_actions_seconds'] * 1e3:.2f} ms")
        err2 = "-" if r["error_from_step_costs"] is None else f"{r['error_from_step_costs']:+.1%}"
        body.append([r["schedule"], f"{r['predicted_step_time'] * 1e3:.2f} ms",
                     ms(r["measured_step_time"]) if not r["error"] else f"failed: {r['error'][:40]}", err, err2,
                     f"{r['predicted_bubble_fraction']:.1%}", extra,
                     f"{r['predicted_makespan'] * 1e3:.2f} ms", describe_rate(r)])
    last = "measured bubble" if distributed else "outside actions"
    first = "predicted step" if distributed else "predicted (one device)"
    return table(["schedule", first, "measured (median [p25-p75])", "error", "error (in-step costs)", "predicted bubble", last,
                  "predicted makespan (ranks)", "achieved"], body)
