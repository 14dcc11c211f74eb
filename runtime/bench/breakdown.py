"""Where a pipelined step's time goes, rank by rank: ideal compute, microbatch shape, in-action extra, waits, host.

After the timed rotation, the headline contender runs a few more steps (each after a barrier) keeping its action
records, and every rank then times the bare GEMMs of its own layers (F: x W^T + b, B: g W, W: g^T x, on the
step's kernels, ``runtime.ops.gemm``) at the microbatch's rows and at the whole batch's, all ranks at once, as in
the step. Each rank's mean step is split into terms that add up to it:

* ``ideal``: the FLOPs of the rank's F, B and W GEMMs at the whole-batch rates: what the physical limit assumes;
* ``shape``: the same GEMMs at the rows they ran with (a microbatch's for F and B; for W the rows it fused)
  minus ``ideal``: the price of smaller GEMMs, which any pipeline of that many microbatches pays;
* ``in_actions``: the compute actions' measured time beyond the bare GEMMs: elementwise work, the loss, the
  fused W's concatenation, allocation, cold caches, Python;
* ``transfers``: the send and receive actions, waits for the other rank included (the bubble shows here);
* ``outside``: the step beyond its actions: zero-grad, optimizer, the loss all-reduce, the loop.

The shape limit is the physical limit with ``shape`` added: what a perfect pipeline of these GEMM shapes would
reach (the ranks' work at those shapes, spread evenly, nothing else); ``of shape limit`` divides it into the
contender's own speed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from partition.schedule.actions import Op
from runtime.bench.timing import median_seconds
from runtime.comm import WorldInfo, all_reduce_sum, barrier
from runtime.engine.executor import ActionRecord
from runtime.engine.pipeline import Pipeline
from runtime.ops.equations import linear_forward, linear_grad_input, linear_grad_weight
from runtime.ops.gemm import Gemm
from runtime.output import text_table

TERMS = ("ideal", "shape", "in_actions", "transfers", "outside")
GEMMS = ("F", "B", "W")
STEPS = 6
PROBES = 6


@dataclass(frozen=True)
class RankWork:
    """One rank's GEMM FLOPs in a step, by kind and by the rows each GEMM ran with: {("F", rows): flops}."""

    flops: dict[tuple[str, int], float]

    def seconds(self, rate: Callable[[str, int], float]) -> float:
        """Seconds of these GEMMs when a GEMM of kind k on r rows runs at ``rate(k, r)`` FLOP/s."""
        return sum(f / rate(kind, rows) for (kind, rows), f in self.flops.items())


def rank_work(records: Sequence[ActionRecord], ranges: Sequence[tuple[int, int]], width: int, rows: int) -> RankWork:
    """The GEMMs of one step's compute actions on one rank (every layer ``width`` square; stage 0 skips the input's
    gradient)."""
    flops: dict[tuple[str, int], float] = {}

    def add(kind: str, count: int, r: int) -> None:
        flops[(kind, r)] = flops.get((kind, r), 0.0) + count * 2.0 * r * width * width

    for rec in records:
        a, b = ranges[rec.action.stage]
        layers = b - a
        if rec.action.op is Op.F:
            add("F", layers, rows)
        if rec.action.op in (Op.B, Op.BW):
            add("B", layers - (1 if a == 0 else 0), rows)
        if rec.action.op in (Op.W, Op.BW):
            add("W", layers, rows * rec.fused)
    return RankWork(flops)


def gemm_rates(width: int, layers: int, row_counts: Sequence[int], batch: int, dtype: torch.dtype,
               device: torch.device, gemm: Gemm = Gemm.TORCH) -> dict[tuple[str, int], float]:
    """FLOP/s of each GEMM kind at each row count over ``layers`` distinct weights, a batch's worth of rows a probe,
    every rank at once (a barrier before each probe), with the step's own kernels; the median of ``PROBES``."""
    weights = [torch.randn(width, width, dtype=dtype, device=device) for _ in range(layers)]
    bias = torch.randn(width, dtype=dtype, device=device)
    kinds = {"F": lambda a, g, w: linear_forward(a, w, bias, gemm), "B": lambda a, g, w: linear_grad_input(g, w, gemm),
             "W": lambda a, g, w: linear_grad_weight(g, a)}
    out = {}
    for rows in sorted(set(row_counts)):
        a, g = (torch.randn(rows, width, dtype=dtype, device=device) for _ in range(2))
        calls = max(batch // rows, 1)
        for kind, fn in kinds.items():
            seconds = median_seconds(partial(_gemms, fn, a, g, weights, calls), device, 1, PROBES, before=barrier)
            out[(kind, rows)] = calls * layers * 2.0 * rows * width * width / seconds
    return out


def _gemms(fn: Callable, a: torch.Tensor, g: torch.Tensor, weights: Sequence[torch.Tensor], calls: int) -> None:
    """``fn`` on every weight, ``calls`` times over: one probe's worth of GEMMs."""
    for _ in range(calls):
        for w in weights:
            fn(a, g, w)


def attribute(pipe: Pipeline, x: torch.Tensor | None, y: torch.Tensor | None, batch: int, width: int,
              world: WorldInfo, dtype: torch.dtype, device: torch.device, name: str) -> dict:
    """Run ``STEPS`` steps of ``pipe`` after a barrier each, probe the GEMM rates, and split every rank's mean step
    into ``TERMS`` (milliseconds, means over the steps); every rank returns the same dict."""
    steps, recs = [], []
    for _ in range(STEPS + 1):
        barrier()
        start = time.perf_counter()
        out = pipe.step(x, y, batch)
        steps.append(time.perf_counter() - start)
        recs.append(out.records)
    steps, recs = steps[1:], recs[1:]
    rows = batch // pipe.cfg.microbatches
    layers = sum(pipe.cfg.ranges[s][1] - pipe.cfg.ranges[s][0] for s in pipe.stages)
    work = rank_work(recs[-1], pipe.cfg.ranges, width, rows)
    shapes = [rows, batch]  # every rank probes the same shapes, in the same order (the probes meet at barriers)
    rates = gemm_rates(width, layers, shapes, batch, dtype, device, pipe.cfg.gemm)
    full = {kind: rates[(kind, batch)] for kind in GEMMS}
    ideal = work.seconds(lambda kind, r: full[kind])
    at_rows = work.seconds(lambda kind, r: rates.get((kind, r), full[kind]))  # a W fused from k < m: the batch's
    computing = statistics.fmean(sum(r.end - r.start for r in rs if not r.action.op.is_comm) for rs in recs)
    transfers = statistics.fmean(sum(r.end - r.start for r in rs if r.action.op.is_comm) for rs in recs)
    step = statistics.fmean(steps)  # means, so that the terms add up to the step
    terms = [ideal, at_rows - ideal, computing - at_rows, transfers, step - computing - transfers]
    table = torch.zeros(world.world_size, len(TERMS) + 1 + 2 * len(GEMMS), dtype=torch.float64)
    table[world.rank] = torch.tensor([*terms, step, *(rates[(k, rows)] for k in GEMMS), *full.values()],
                                     dtype=torch.float64)
    table = all_reduce_sum(table).tolist()
    return {"contender": name, "microbatch_rows": rows, "batch": batch, "steps": STEPS,
            "ranks": [{"rank": r, "step_ms": 1e3 * row[len(TERMS)],
                       **{t: 1e3 * v for t, v in zip(TERMS, row)},
                       "gflops_microbatch": {k: v / 1e9 for k, v in zip(GEMMS, row[len(TERMS) + 1:])},
                       "gflops_batch": {k: v / 1e9 for k, v in zip(GEMMS, row[len(TERMS) + 1 + len(GEMMS):])}}
                      for r, row in enumerate(table)]}


def shape_limit(result: dict, limit_samples_per_second: float) -> float:
    """Samples/s of a perfect pipeline whose GEMMs run at the shapes measured: the same work spread evenly over
    the ranks with nothing but compute, i.e. the physical limit times sum(ideal) / sum(ideal + shape)."""
    ideal = sum(r["ideal"] for r in result["ranks"])
    return limit_samples_per_second * ideal / (ideal + sum(r["shape"] for r in result["ranks"]))


def breakdown_table(result: dict) -> str:
    """The per-rank split of the contender's step, in milliseconds and in shares of the step."""
    body = []
    for r in result["ranks"]:
        body.append([str(r["rank"]), f"{r['step_ms']:.1f}", *(f"{r[t]:.1f} ({r[t] / r['step_ms']:.0%})" for t in TERMS),
                     " ".join(f"{k} {r['gflops_microbatch'][k]:.0f}/{r['gflops_batch'][k]:.0f}" for k in GEMMS)])
    head = ["rank", "step ms", *TERMS, f"GFLOP/s at {result['microbatch_rows']}/{result['batch']} rows"]
    return f"where {result['contender']}'s step goes (ms, mean of {result['steps']} steps):\n" + text_table(head, body)
