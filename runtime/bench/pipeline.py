"""Benchmark `pipeline`: our schedules vs the full batch, accumulation and torch's pipelining, all on one device.

Every contender runs the same training step of the same seeded model on the same batch (see
runtime.bench.contenders: zero grads, forward + backward, SGD with lr = 0, all inside the timer). All stages live
on one device, so stages run one after another: what differs is how the work is cut and ordered (fused
weight-gradient GEMMs, per-action overhead), not overlap; the full-batch pass (m = 1, its torch.compile and,
when one of ours uses oneDNN's GEMM kernel, the same pass on our engine with it) answers "how fast can this
step go on one device": "vs full batch" is against the fastest of them that ran. torch.distributed.pipelining
contenders are the ``peers`` (scripts/_peers.py), on a world of size 1; the looped ones hold the benchmark's
stages, the V-shaped ones 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import torch

from partition.cost import step_flops
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.bench import equal_math
from runtime.bench.contenders import (
    DEFAULT_SCHEDULES,
    ONE_DEVICE,
    OurSchedule,
    Peer,
    accumulation_run,
    full_batch_variants,
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
from runtime.bench.timing import Group, Measured, Variant, measure, release_memory
from runtime.comm import LocalTransport
from runtime.engine.pipeline import Pipeline
from runtime.output import text_table
from runtime.train.layout import resolve_ranges

ACCUMULATION = "accumulation"
# Which torch.distributed.pipelining schedule (one rank) does the same job as ours.
PAIRED_PEER = MappingProxyType({
    ScheduleKind.GPIPE: "looped-bfs", ScheduleKind.ONE_F_ONE_B: "interleaved-1f1b",
    ScheduleKind.INTERLEAVED_1F1B: "interleaved-1f1b", ScheduleKind.ZB_H1: "interleaved-zb", ScheduleKind.ZB_V: "zbv"})
STEP = "zero grads + forward/backward of every microbatch (the full batch: one) + SGD update with lr=0, all timed"


@dataclass(frozen=True)
class PipelineBenchConfig:
    """Sizes and contenders of the `pipeline` benchmark; ``headline`` is the contender the targets judge."""

    width: int = 1024
    layers: int = 8
    stages: int = 4
    microbatches: int = 8
    batch: int = 1024
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    device: str = "cpu"
    schedules: tuple[OurSchedule, ...] = DEFAULT_SCHEDULES
    headline: str = "ours:1f1b+defer-w+direct"
    virtual: int = 2
    warmup: int = 2
    repeats: int = 10
    seed: int = 0
    compile: bool = True
    overhead_width: int = 8  # the model width of the fixed-cost run (0: skip it)


def _peer_variant(name: str, peer: Peer, spec: MLPSpec, seq: torch.nn.Sequential, cfg: PipelineBenchConfig,
                  loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> Variant:
    n = peer.placement.num_stages(1, cfg.stages)
    ranges = resolve_ranges(spec, n, "uniform", cfg.batch // cfg.microbatches)
    modules = dict(enumerate(stage_modules(spec, seq, ranges)))
    try:
        run = peer.build(modules, n, cfg.microbatches, loss_fn, torch.device(cfg.device))
    except Exception as exc:  # noqa: BLE001 - a peer that cannot be built is reported, not fatal
        return Variant.failed(f"peer:{name}", Group.PEER, exc)
    return torch_variant(f"peer:{name}", Group.PEER, list(seq.parameters()), lambda: run(x, y),
                         module_grads([(ranges[s][0], modules[s]) for s in modules]))


def build_variants(cfg: PipelineBenchConfig, spec: MLPSpec, params: Params, dtype: torch.dtype,
                   peers: Mapping[str, Peer], x: torch.Tensor, y: torch.Tensor) -> list[Variant]:
    """Ours (one per schedule), the full batch (and compiled), accumulation, and each peer, on ``x``, ``y``."""
    if cfg.batch % cfg.microbatches:
        raise ValueError(f"microbatches: {cfg.microbatches} do not divide the batch of {cfg.batch}")
    device, m = torch.device(cfg.device), cfg.microbatches
    ranges = resolve_ranges(spec, cfg.stages, "uniform", cfg.batch // m)
    seq = reference_sequential(spec, params, dtype, device)
    per_mb = scaled(reference_loss(spec), 1.0 / m)
    out = []
    for ours in cfg.schedules:
        if (failed := ours.unavailable(device, dtype)) is not None:
            out.append(failed)
            continue
        pcfg = pipeline_config(spec, ranges, ours, m, cfg.device, dtype, cfg.seed, cfg.virtual)
        out.append(ours_variant(ours.name, Pipeline(pcfg, sgd_frozen, LocalTransport(), init=params), x, y, cfg.batch))
    out += full_batch_variants(seq, reference_loss(spec), x, y, cfg.compile)
    if any(ours.onednn for ours in cfg.schedules):
        out.append(onednn_full_batch(spec, params, dtype, device, x, y))
    out.append(torch_variant(ACCUMULATION, Group.BASELINE, list(seq.parameters()), accumulation_run(seq, per_mb, x, y, m),
                             module_grads([(0, seq)])))
    out += [_peer_variant(name, peer, spec, seq, cfg, per_mb, x, y) for name, peer in peers.items()]
    return out


def run_pipeline_bench(cfg: PipelineBenchConfig, peers: Mapping[str, Peer], log: Callable[[str], None] = print,
                       partial: Callable[[dict], None] | None = None) -> dict:
    """Time every contender per dtype, check its math, add a fixed-cost run at a tiny width; JSON-ready, with ``table``.

    ``partial`` gets the results so far after each dtype (to save them before a later part hangs).
    """
    device = torch.device(cfg.device)
    spec = bench_spec(cfg.width, cfg.layers)
    results: list[dict] = []
    out = {"benchmark": "pipeline", "machine": machine(device),
           "peaks": {dtype_name(d): (p.assumed if (p := device_peak(device, d)) else None) for d in cfg.dtypes},
           "config": _config_json(cfg, peers), "results": results}
    with shared_init(spec, cfg.seed) as params:
        for dtype in cfg.dtypes:
            log(f"pipeline: {cfg.layers} x {cfg.width}, batch {cfg.batch}, {cfg.microbatches} microbatches, "
                f"{cfg.stages} stages, {dtype_name(dtype)} ...")
            data = make_batch(spec, cfg.batch, dtype, device)
            variants = build_variants(cfg, spec, params, dtype, peers, data.x, data.y)
            measured = measure(variants, device, cfg.warmup, cfg.repeats)
            checks = equal_math.check_all(variants, *equal_math.reference(spec, params, data.x, data.y), dtype,
                                          skip={n for n, r in measured.items() if r.error})
            del variants
            release_memory(device)
            results += summarize(measured, checks, _fixed_costs(cfg, dtype, peers), dtype, step_flops(spec, cfg.batch),
                                 device_peak(device, dtype), cfg.batch)
            out.update(summary=summary(results, cfg.headline), table=table_text(out))
            if partial is not None:
                partial(out)
    return out


def _config_json(cfg: PipelineBenchConfig, peers: Mapping[str, Peer]) -> dict:
    return {"width": cfg.width, "layers": cfg.layers, "stages": cfg.stages, "microbatches": cfg.microbatches,
            "batch": cfg.batch, "dtypes": [dtype_name(d) for d in cfg.dtypes], "virtual": cfg.virtual,
            "schedules": [s.name for s in cfg.schedules], "peers": {n: p.schedule for n, p in peers.items()},
            "headline": cfg.headline, "compile": cfg.compile, "warmup": cfg.warmup, "repeats": cfg.repeats,
            "overhead_width": cfg.overhead_width, "step": STEP,
            "math_tolerance": {dtype_name(d): equal_math.TOLERANCE.get(d, 1e-3) for d in cfg.dtypes}}


def _fixed_costs(cfg: PipelineBenchConfig, dtype: torch.dtype, peers: Mapping[str, Peer]) -> dict[str, float]:
    """Median step time of every contender at width ``overhead_width``: what a step costs besides the math."""
    if cfg.overhead_width < 1:
        return {}
    tiny = replace(cfg, width=cfg.overhead_width, batch=cfg.microbatches, overhead_width=0, compile=False)
    spec = bench_spec(tiny.width, tiny.layers)
    device = torch.device(cfg.device)
    data = make_batch(spec, tiny.batch, dtype, device)
    with shared_init(spec, tiny.seed) as params:
        measured = measure(build_variants(tiny, spec, params, dtype, peers, data.x, data.y), device, 3, 15)
    return {name: m.spread.median for name, m in measured.items() if m.spread is not None}


def summarize(measured: Mapping[str, Measured], checks: Mapping[str, equal_math.MathCheck], fixed: Mapping[str, float],
              dtype: torch.dtype, flops: int, peak: object, batch: int) -> list[dict]:
    """One row per contender: time spread, rate, equal math, and ours' paired speedups vs the baselines and peers."""
    against = {"full_batch": fastest(measured, ONE_DEVICE, checks), "accumulation": measured.get(ACCUMULATION),
               "best_peer": best_of(measured, Group.PEER, checks)}
    rows = []
    for m in measured.values():
        row = {"dtype": dtype_name(dtype), **base_row(m, checks.get(m.name), flops, peak, batch),
               "fixed_cost_seconds": fixed.get(m.name)}
        if m.group is Group.OURS and m.spread is not None:
            paired = measured.get(f"peer:{PAIRED_PEER[OurSchedule.parse(m.name).kind]}")
            row.update(speedups(m, {**against, "paired_peer": paired}))
        rows.append(row)
    return rows


def summary(rows: Sequence[dict], headline: str) -> dict:
    """Per dtype: the headline contender's name, the fastest of ours (information only), the math failures."""
    out = {}
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        mine = [r for r in rows if r["dtype"] == dtype]
        ok = [r for r in mine if r["group"] == "ours" and r["step_time"] and (r["math"] or {}).get("ok", True)]
        best = min(ok, key=lambda r: r["step_time"]["median"], default=None)
        out[dtype] = {"headline": headline, "fastest_of_ours": best["variant"] if best else None,
                      "math_failures": [r["variant"] for r in mine if r["math"] and not r["math"]["ok"]]}
    return out


def table_text(result: dict) -> str:
    """The tables of a `pipeline` result (one per dtype), from its JSON alone."""
    texts = []
    for dtype in dict.fromkeys(r["dtype"] for r in result["results"]):
        body = []
        for r in (r for r in result["results"] if r["dtype"] == dtype):
            fixed = r.get("fixed_cost_seconds")
            body.append([r["variant"], time_cell(r), describe_rate(r), ratio_cell(r, "full_batch"),
                         ratio_cell(r, "accumulation"), ratio_cell(r, "paired_peer"), ratio_cell(r, "best_peer"),
                         "-" if fixed is None else f"{fixed * 1e3:.2f} ms", loss_cell(r), math_cell(r)])
        texts.append(f"{dtype}:\n" + text_table(
            ["variant", "step (median [p25-p75])", "achieved", "vs full batch", "vs accum", "vs paired peer",
             "vs best peer", "fixed cost/step", "loss", "math"], body))
    return "\n\n".join(texts)
