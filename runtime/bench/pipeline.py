"""Benchmark `pipeline`: single-process pipeline per schedule vs gradient accumulation vs torch's pipelining.

Every contender runs a full training step of the same seeded model on the same batch and microbatches:
zero grads, forward + backward of every microbatch, and an SGD update with lr = 0 (the update's arithmetic
runs, the weights stay seeded, so every step of every contender sees the same weights and its loss is
compared with the reference's). All stages live on one device, so stages run one after another: what differs
is how the work is cut and ordered (fused weight-gradient GEMMs, per-action overhead), not overlap.

torch.distributed.pipelining contenders are built by ``peers`` (scripts/_peers.py: this module does not touch
torch.distributed); each peer builder gets the stage modules, the microbatch count, a per-microbatch loss
and the device, and returns ``run(x, y) -> summed loss`` for one forward + backward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from types import MappingProxyType

import torch
from torch import nn

from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.bench.flops import describe_rate, device_peak, step_flops, throughput
from runtime.bench.models import (
    LossFn,
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
from runtime.bench.report import dtype_name, machine, ms, ratio, table
from runtime.bench.timing import Measured, Variant, measure, release_memory, speedup_json
from runtime.comm import LocalTransport
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.engine.stage import Engine
from runtime.train.layout import resolve_ranges

PeerRun = Callable[[torch.Tensor, torch.Tensor], object]
PeerBuilder = Callable[[list[nn.Module], int, LossFn, torch.device], PeerRun]
DEFER = "+defer-w"
DIRECT = "+direct"
# Which torch.distributed.pipelining schedule (all stages on one rank) does the same job as ours.
PAIRED_PEER = MappingProxyType({
    ScheduleKind.GPIPE: "looped-bfs", ScheduleKind.ONE_F_ONE_B: "interleaved-1f1b",
    ScheduleKind.INTERLEAVED_1F1B: "interleaved-1f1b", ScheduleKind.ZB_H1: "interleaved-zb", ScheduleKind.ZB_V: "interleaved-zb"})
LOSS_TOLERANCE = MappingProxyType({torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2})


@dataclass(frozen=True)
class OurSchedule:
    """One of our contenders: a schedule kind, optionally with every W deferred to the end of the step,
    optionally on the direct engine (the same equations without autograd's engine)."""

    kind: ScheduleKind
    defer_w: bool = False
    direct: bool = False

    @property
    def name(self) -> str:
        """``1f1b``, ``1f1b+defer-w`` or ``1f1b+defer-w+direct``."""
        return self.kind.value + (DEFER if self.defer_w else "") + (DIRECT if self.direct else "")

    @classmethod
    def parse(cls, text: str) -> OurSchedule:
        """``"zb-h1"``, ``"1f1b+defer-w"``, ``"gpipe+direct"``; ValueError names the choices."""
        base, direct = (text[: -len(DIRECT)], True) if text.endswith(DIRECT) else (text, False)
        base, defer = (base[: -len(DEFER)], True) if base.endswith(DEFER) else (base, False)
        try:
            return cls(ScheduleKind(base), defer, direct)
        except ValueError:
            names = ", ".join(k.value for k in ScheduleKind)
            raise ValueError(f"schedules: unknown {text!r}; choose from {names}, each optionally with "
                             f"{DEFER} and/or {DIRECT}") from None


DEFAULT_SCHEDULES = tuple(OurSchedule(k) for k in ScheduleKind) + (
    OurSchedule(ScheduleKind.ONE_F_ONE_B, True),
    OurSchedule(ScheduleKind.GPIPE, False, True),
    OurSchedule(ScheduleKind.ONE_F_ONE_B, False, True),
    OurSchedule(ScheduleKind.ONE_F_ONE_B, True, True),
)


@dataclass(frozen=True)
class PipelineBenchConfig:
    """Sizes and contenders of the `pipeline` benchmark."""

    width: int = 1024
    layers: int = 8
    stages: int = 4
    microbatches: int = 8
    batch: int = 1024
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    device: str = "cpu"
    schedules: tuple[OurSchedule, ...] = DEFAULT_SCHEDULES
    virtual: int = 2
    warmup: int = 2
    repeats: int = 10
    seed: int = 0
    overhead_width: int = 8  # the model width of the fixed-cost run (0: skip it)


def pipeline_config(spec: MLPSpec, ranges: tuple, ours: OurSchedule, m: int, device: str, dtype: torch.dtype,
                    seed: int, virtual: int) -> PipelineConfig:
    """The PipelineConfig of one of our contenders (all stages on ``device``)."""
    if ours.defer_w and "defer_w" not in {f.name for f in fields(PipelineConfig)}:
        raise ValueError(f"schedules: {ours.name} needs PipelineConfig.defer_w, which this runtime lacks")
    extra = {"defer_w": True} if ours.defer_w else {}
    if ours.direct:
        extra["engine"] = Engine.DIRECT
    v = virtual if ours.kind is ScheduleKind.INTERLEAVED_1F1B else 1
    return PipelineConfig(spec, ranges, ours.kind, m, (device,) * len(ranges), dtype, seed, v, True, **extra)


def _ours(cfg: PipelineBenchConfig, spec: MLPSpec, ranges: tuple, ours: OurSchedule, dtype: torch.dtype,
          x: torch.Tensor, y: torch.Tensor, params: Params) -> Variant:
    pipe = Pipeline(pipeline_config(spec, ranges, ours, cfg.microbatches, cfg.device, dtype, cfg.seed, cfg.virtual),
                    sgd_frozen, LocalTransport(), init=params)

    def clear() -> None:
        for st in pipe.stages.values():
            st.zero_grad()

    return Variant(f"ours:{ours.name}", lambda: pipe.step(x, y, x.shape[0]).loss, clear, "ours")


def _with_optimizer(name: str, group: str, seq: nn.Sequential, run: Callable[[], object]) -> Variant:
    opt = sgd_frozen(list(seq.parameters()))

    def step() -> object:
        loss = run()
        opt.step()
        return loss

    return Variant(name, step, lambda: seq.zero_grad(set_to_none=True), group)


def build_variants(cfg: PipelineBenchConfig, spec: MLPSpec, params: Params, dtype: torch.dtype,
                   peers: Mapping[str, PeerBuilder]) -> list[Variant]:
    """Ours (one per schedule), gradient accumulation, and each peer, on one batch of ``cfg.batch`` rows."""
    if cfg.batch % cfg.microbatches:
        raise ValueError(f"microbatches: {cfg.microbatches} do not divide the batch of {cfg.batch}")
    device = torch.device(cfg.device)
    m, rows = cfg.microbatches, cfg.batch // cfg.microbatches
    ranges = resolve_ranges(spec, cfg.stages, "uniform", rows)
    data = make_batch(spec, cfg.batch, dtype, device)
    x, y = data.x, data.y
    seq = reference_sequential(spec, params, dtype, device)
    per_mb = scaled(reference_loss(spec), 1.0 / m)

    def accumulate() -> torch.Tensor:
        total = torch.zeros((), device=device, dtype=dtype)
        for xm, ym in zip(x.split(rows), y.split(rows)):
            loss = per_mb(seq(xm), ym)
            loss.backward()
            total += loss.detach()
        return total

    out = [_ours(cfg, spec, ranges, ours, dtype, x, y, params) for ours in cfg.schedules]
    out.append(_with_optimizer("accumulation", "reference", seq, accumulate))
    for name, build in peers.items():
        try:
            run = build(stage_modules(spec, seq, ranges), m, per_mb, device)
        except Exception as exc:  # noqa: BLE001 - a peer that cannot be built is reported, not fatal
            out.append(Variant.failed(f"peer:{name}", "peer", exc))
            continue
        out.append(_with_optimizer(f"peer:{name}", "peer", seq, lambda run=run: run(x, y)))
    return out


def run_pipeline_bench(cfg: PipelineBenchConfig, peers: Mapping[str, PeerBuilder], log: Callable[[str], None] = print,
                       partial: Callable[[dict], None] | None = None) -> dict:
    """Time every contender per dtype (plus a fixed-cost run at a tiny width); JSON-ready results with ``table``.

    ``partial`` gets the results so far after each dtype (to save them before a later part hangs).
    """
    device = torch.device(cfg.device)
    spec = bench_spec(cfg.width, cfg.layers)
    flops = step_flops(spec, cfg.batch)
    results, texts = [], []
    peaks = {dtype_name(d): (p.assumed if (p := device_peak(device, d)) else None) for d in cfg.dtypes}
    out = {"benchmark": "pipeline", "machine": machine(device), "peaks": peaks,
           "config": {"width": cfg.width, "layers": cfg.layers, "stages": cfg.stages, "microbatches": cfg.microbatches,
                      "batch": cfg.batch, "dtypes": [dtype_name(d) for d in cfg.dtypes], "virtual": cfg.virtual,
                      "schedules": [s.name for s in cfg.schedules], "peers": list(peers), "warmup": cfg.warmup,
                      "repeats": cfg.repeats, "overhead_width": cfg.overhead_width,
                      "step": "zero grads + forward/backward of every microbatch + SGD update with lr=0"},
           "results": results}
    with shared_init(spec, cfg.seed) as params:
        for dtype in cfg.dtypes:
            log(f"pipeline: {cfg.layers} x {cfg.width}, batch {cfg.batch}, {cfg.microbatches} microbatches, "
                f"{cfg.stages} stages, {dtype_name(dtype)} ...")
            measured = measure(build_variants(cfg, spec, params, dtype, peers), device, cfg.warmup, cfg.repeats)
            release_memory(device)
            fixed = _fixed_costs(cfg, dtype, peers)
            rows = summarize(measured, fixed, dtype, flops, device_peak(device, dtype))
            results += rows
            texts.append(f"{dtype_name(dtype)}:\n" + _table(rows))
            out.update(summary=summary(results), table="\n\n".join(texts))
            if partial is not None:
                partial(out)
    return out


def _fixed_costs(cfg: PipelineBenchConfig, dtype: torch.dtype, peers: Mapping[str, PeerBuilder]) -> dict[str, float]:
    """Median step time of every contender at width ``overhead_width``: what a step costs besides the math."""
    if cfg.overhead_width < 1:
        return {}
    tiny = replace(cfg, width=cfg.overhead_width, batch=cfg.microbatches, overhead_width=0)
    spec = bench_spec(tiny.width, tiny.layers)
    with shared_init(spec, tiny.seed) as params:
        measured = measure(build_variants(tiny, spec, params, dtype, peers), torch.device(cfg.device), 3, 15)
    return {name: m.spread.median for name, m in measured.items() if m.spread is not None}


def summarize(measured: Mapping[str, Measured], fixed: Mapping[str, float], dtype: torch.dtype, flops: int,
              peak: object) -> list[dict]:
    """One row per contender: time spread, rate, paired speedups vs accumulation / paired peer / best peer, loss check."""
    base = measured.get("accumulation")
    peer_rows = [m for m in measured.values() if m.group == "peer" and m.spread is not None]
    best_peer = min(peer_rows, key=lambda m: m.spread.median, default=None)
    ref_loss = base.losses[0] if base is not None and base.losses else None
    rows = []
    for m in measured.values():
        spread = m.spread
        row = {"dtype": dtype_name(dtype), "variant": m.name, "group": m.group, "error": m.error,
               "step_time": spread.to_json() if spread else None, "flops": flops,
               **throughput(flops, spread.median if spread else None, peak),
               "fixed_cost_seconds": fixed.get(m.name), "loss": m.losses[0] if m.losses else None}
        row["loss_rel_diff"] = (abs(row["loss"] - ref_loss) / max(abs(ref_loss), 1e-12)
                                if row["loss"] is not None and ref_loss is not None else None)
        row["loss_agrees"] = row["loss_rel_diff"] is not None and row["loss_rel_diff"] <= LOSS_TOLERANCE.get(dtype, 1e-3)
        if m.group == "ours" and spread is not None:
            kind = OurSchedule.parse(m.name.removeprefix("ours:")).kind
            paired = measured.get(f"peer:{PAIRED_PEER[kind]}")
            row["speedup_vs_accumulation"] = speedup_json(base, m)
            row["paired_peer"] = paired.name if paired is not None else None
            row["speedup_vs_paired_peer"] = speedup_json(paired, m)
            row["best_peer"] = best_peer.name if best_peer is not None else None
            row["speedup_vs_best_peer"] = speedup_json(best_peer, m)
        rows.append(row)
    return rows


def summary(rows: Sequence[dict]) -> dict:
    """Per dtype: our fastest schedule and its paired speedups vs accumulation and vs the fastest peer."""
    out = {}
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        ours = [r for r in rows if r["dtype"] == dtype and r["group"] == "ours" and r["step_time"]]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["step_time"]["median"])
        out[dtype] = {"best_ours": best["variant"], "step_time": best["step_time"]["median"],
                      "speedup_vs_accumulation": best.get("speedup_vs_accumulation"),
                      "best_peer": best.get("best_peer"), "speedup_vs_best_peer": best.get("speedup_vs_best_peer"),
                      "all_losses_agree": all(r["loss_agrees"] for r in rows if r["dtype"] == dtype and not r["error"])}
    return out


def _table(rows: Sequence[dict]) -> str:
    body = []
    for r in rows:
        fixed = r.get("fixed_cost_seconds")
        body.append([r["variant"], ms(r["step_time"]) if not r["error"] else f"failed: {r['error'][:50]}", describe_rate(r),
                     ratio(r.get("speedup_vs_accumulation")), ratio(r.get("speedup_vs_paired_peer")),
                     ratio(r.get("speedup_vs_best_peer")), "-" if fixed is None else f"{fixed * 1e3:.2f} ms",
                     "-" if r["loss"] is None else f"{r['loss']:.6g}{'' if r['loss_agrees'] else ' (!)'}"])
    return table(["variant", "step (median [p25-p75])", "achieved", "speedup vs accum", "vs paired peer",
                  "vs best peer", "fixed cost/step", "loss"], body)
