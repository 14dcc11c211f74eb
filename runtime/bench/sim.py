"""Benchmark `simulator`: the simulator's step time and bubble, fed with profiled layer costs, vs measured runs.

* One process (all stages on one device): stages run one after another, so the measured step is compared with
  the simulator's total busy time (sum over ranks); the multi-device makespan and bubble are shown as predicted.
* Under torchrun (one rank per stage group): the measured step is the slowest rank's wall time and the
  measured bubble is 1 - sum(busy) / (ranks x step), busy being the rank's F/B/W action time in the step; the
  link is a measured latency + bandwidth between two ranks (runtime.comm's DistTransport ping-pong).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from partition.cost import step_flops
from partition.schedule.actions import Op
from partition.schedule.simulate import SimResult, simulate
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost, range_costs
from runtime.bench.contenders import DEFAULT_SCHEDULES, OurSchedule, pipeline_config
from runtime.bench.flops import describe_rate, device_peak, throughput
from runtime.bench.models import bench_spec, make_batch, sgd_frozen, shared_init
from runtime.bench.report import dtype_name, machine, ms
from runtime.bench.timing import Measured, Variant, measure
from runtime.bench.world import join_world, measure_link, measure_world
from runtime.comm import Backend, DistTransport, LocalTransport, WorldInfo, all_reduce_sum, launched_by_torchrun
from runtime.engine.pipeline import Pipeline
from runtime.output import text_table
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
    cold_cache_bytes: int | None = None  # None: the step's working set (the profiler's default); 0: hot
    seed: int = 0
    timeout: float = 120.0


@dataclass(frozen=True)
class _Where:
    """Where the benchmark runs: the world under torchrun (None in one process), the device, the ranks."""

    world: WorldInfo | None
    device: torch.device
    backend: Backend | None
    ranks: int

    @property
    def distributed(self) -> bool:
        """Under torchrun."""
        return self.world is not None

    @property
    def reporter(self) -> bool:
        """The process that logs (rank 0, or the only one)."""
        return self.world is None or self.world.rank == 0


def _where(cfg: SimBenchConfig) -> _Where:
    if launched_by_torchrun():
        world, device, backend = join_world(cfg.device, cfg.timeout)
        return _Where(world, device, backend, world.world_size)
    return _Where(None, torch.device(cfg.device), None, cfg.ranks)


def _link(cfg: SimBenchConfig, where: _Where, rows: int) -> tuple[LinkModel, list[float] | None]:
    """The measured link and the bytes crossing each stage boundary (a free link in one process)."""
    if not where.distributed or where.ranks < 2:
        return LinkModel(), None
    nbytes = rows * cfg.width * torch.finfo(cfg.dtype).bits // 8
    link = measure_link(where.world, where.backend, where.device, nbytes, cfg.timeout)
    return link, [float(nbytes)] * (2 * where.ranks)


def _cases(cfg: SimBenchConfig, spec: MLPSpec, where: _Where, layers: list, link: LinkModel,
           act_bytes: list[float] | None, rows: int) -> tuple[list[_Case], dict[str, str]]:
    """One pipeline per schedule that fits the model, with its profile-fed prediction; the skipped ones and why."""
    cases, skipped = [], {}
    with shared_init(spec, cfg.seed) as params:
        for ours in cfg.schedules:
            per = ours.kind.stages_per_rank(2)
            if ours.onednn:
                skipped[ours.name] = "the simulator bench profiles torch's GEMM kernel only"
                continue
            if where.ranks * per > spec.num_layers:
                skipped[ours.name] = f"needs {where.ranks * per} stages, the model has {spec.num_layers} layers"
                continue
            ranges = resolve_ranges(spec, where.ranks * per, "uniform", rows)
            pcfg = pipeline_config(spec, ranges, ours, cfg.microbatches, str(where.device), cfg.dtype, cfg.seed, per)
            transport = DistTransport(where.backend, cfg.timeout) if where.distributed else LocalTransport()
            pipe = Pipeline(pcfg, sgd_frozen, transport, [where.world.rank] if where.distributed else None, init=params)
            sim = simulate(pipe.schedule, range_costs(layers, ranges), link, act_bytes[: len(ranges)] if act_bytes else None)
            cases.append(_Case(ours.name, pipe, len(ranges), sim))
    return cases, skipped


def run_sim_bench(cfg: SimBenchConfig, log: Callable[[str], None] = print) -> dict:
    """Predicted vs measured step time (and bubble under torchrun) per schedule; JSON-ready, ``table`` holds the text."""
    where = _where(cfg)
    spec, m = bench_spec(cfg.width, cfg.layers), cfg.microbatches
    if cfg.batch % m:
        raise ValueError(f"microbatches: {m} do not divide the batch of {cfg.batch}")
    rows = cfg.batch // m
    layers = _profile(spec, rows, cfg, where.device, where.world)
    link, act_bytes = _link(cfg, where, rows)
    cases, skipped = _cases(cfg, spec, where, layers, link, act_bytes, rows)
    data = make_batch(spec, cfg.batch, cfg.dtype, where.device)
    if where.reporter:
        place = f"{where.ranks} ranks (torchrun)" if where.distributed else "one process"
        log(f"simulator: {cfg.layers} x {cfg.width}, batch {cfg.batch}, {m} microbatches, {place} ...")
    variants = [c.variant(data.x, data.y, cfg.batch) for c in cases]
    if where.distributed:
        measured = measure_world(variants, where.device, cfg.warmup, cfg.repeats, where.world)
    else:
        measured = measure(variants, where.device, cfg.warmup, cfg.repeats)
    flops, peak = step_flops(spec, cfg.batch), device_peak(where.device, cfg.dtype)
    results = [_case_row(c, measured[c.name], cfg.repeats, link, act_bytes, where) | {
        "flops": flops, **throughput(flops, measured[c.name].spread.median if measured[c.name].spread else None, peak)}
        for c in cases]
    world_size = {"world_size": where.ranks} if where.distributed else {}
    out = {"benchmark": "simulator", "machine": machine(where.device) | world_size,
           "peaks": {dtype_name(cfg.dtype): peak.assumed if peak else None},
           "mode": "torchrun" if where.distributed else "one process",
           "link": {"latency": link.latency, "bandwidth": link.bandwidth}, "skipped": skipped,
           "profile": [{"f": c.f, "b": c.b, "w": c.w} for c in layers],
           "config": {"width": cfg.width, "layers": cfg.layers, "ranks": where.ranks, "microbatches": m, "batch": cfg.batch,
                      "dtype": dtype_name(cfg.dtype), "schedules": [s.name for s in cfg.schedules],
                      "warmup": cfg.warmup, "repeats": cfg.repeats, "profile_repeats": cfg.profile_repeats,
                      "cold_cache_bytes": cfg.cold_cache_bytes},
           "results": results}
    return out | {"table": table_text(out)}


def _case_row(case: _Case, rec: Measured, repeats: int, link: LinkModel, act_bytes: list[float] | None,
              where: _Where) -> dict:
    """The prediction fed with the step's own action times next to the profile-fed one, and the measurement."""
    per_rank = torch.tensor([sum(b.values()) for b in case.busy[-repeats:]] or [0.0], dtype=torch.float64)
    timed = [r for step in case.records[-repeats:] for r in step]  # medians over every timed step's actions
    costs = torch.tensor([[c.f, c.b, c.w] for c in costs_from_records(timed, case.stages)], dtype=torch.float64)
    if where.distributed:
        per_rank = all_reduce_sum(per_rank)  # every rank's busy time summed, per step
        costs = all_reduce_sum(costs)  # each rank timed only its own stages
    in_step = simulate(case.pipe.schedule, [StageCost(*map(float, row)) for row in costs], link,
                       act_bytes[: case.stages] if act_bytes else None)
    return _row(case.name, case.sim, in_step, rec, per_rank, where.ranks, where.distributed)


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

        return Variant(self.name, step)


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
           "prediction_error": error(predicted(sim)),
           "predicted_from_step_costs": predicted(in_step), "error_from_step_costs": error(predicted(in_step))}
    if distributed and spread:
        bubbles = [1.0 - float(b) / (p * t) for b, t in zip(busy.tolist(), rec.times)]
        row["measured_bubble_fraction"] = statistics.median(bubbles)
    else:
        row["measured_bubble_fraction"] = None
        row["outside_actions_seconds"] = measured - float(busy.median()) if measured else None
    return row


def table_text(result: dict) -> str:
    """The `simulator` table, from the result's JSON alone."""
    rows, distributed = result["results"], result["mode"] == "torchrun"
    body = []
    for r in rows:
        err = "-" if r["prediction_error"] is None else f"{r['prediction_error']:+.1%}"
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
    return text_table(["schedule", first, "measured (median [p25-p75])", "error", "error (in-step costs)",
                       "predicted bubble", last, "predicted makespan (ranks)", "achieved"], body)
