"""Benchmark `gemms`: where a pipelined step's time goes, one layer's GEMMs at microbatch vs full-batch shapes.

For a Linear(n, n) and a batch of R rows cut into m microbatches of r = R / m rows, per training step:

* ``F`` / ``B``: m products x W^T (+ b) and g W with r rows each, vs one with R rows;
* ``W`` accumulated: m products g_i^T x_i added into one gradient (reduction depth r), what 1F1B does;
* ``W`` fused: torch.cat of the m g_i and x_i, then one product of depth R (runtime.ops.wgrad.flush_fused);
* ``W`` contiguous: the same product on tensors already contiguous, i.e. what a zero-copy layout would cost;
* ``cat``: the two concatenations alone (the price the fused W pays for the copy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from runtime.bench.flops import TERA, device_peak
from runtime.bench.report import dtype_name, machine
from runtime.bench.timing import median_seconds
from runtime.output import text_table


@dataclass(frozen=True)
class GemmBenchConfig:
    """Sizes of the `gemms` benchmark."""

    width: int = 1024
    batch: int = 1024
    microbatches: int = 8
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 10


def _cases(n: int, big: int, m: int, dtype: torch.dtype, device: torch.device) -> dict[str, tuple[Callable, int]]:
    """name -> (one step's work for one layer, its FLOPs)."""
    gen = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(n, n, generator=gen, device=device, dtype=dtype) / n**0.5
    b = torch.zeros(n, device=device, dtype=dtype)
    xs = list(torch.randn(big, n, generator=gen, device=device, dtype=dtype).split(big // m))
    gs = [t.clone() for t in xs]
    xs = [t.clone() for t in xs]  # separate allocations, as microbatch tensors are in a pipeline
    x_all, g_all = torch.cat(xs), torch.cat(gs)
    grad = torch.zeros(n, n, device=device, dtype=dtype)
    gemm = 2 * big * n * n

    def w_accumulated() -> None:
        grad.zero_()
        for g, x in zip(gs, xs):
            grad.addmm_(g.t(), x)

    return {
        "F microbatches": (lambda: [torch.addmm(b, x, w.t()) for x in xs], gemm),
        "F full batch": (lambda: torch.addmm(b, x_all, w.t()), gemm),
        "B microbatches": (lambda: [g.matmul(w) for g in gs], gemm),
        "B full batch": (lambda: g_all.matmul(w), gemm),
        "W accumulated (m x depth r)": (w_accumulated, gemm),
        "W fused (cat + depth R)": (lambda: torch.cat(gs).t().matmul(torch.cat(xs)), gemm),
        "W contiguous (depth R)": (lambda: g_all.t().matmul(x_all), gemm),
        "cat of g and x": (lambda: (torch.cat(gs), torch.cat(xs)), 0),
    }


def run_gemm_bench(cfg: GemmBenchConfig, log: Callable[[str], None] = print) -> dict:
    """Per dtype, the median time and FLOP rate of every case; JSON-ready results with ``table``."""
    if cfg.batch % cfg.microbatches:
        raise ValueError(f"microbatches: {cfg.microbatches} do not divide the batch of {cfg.batch}")
    device = torch.device(cfg.device)
    results = []
    for dtype in cfg.dtypes:
        log(f"gemms: Linear({cfg.width}, {cfg.width}), batch {cfg.batch} = {cfg.microbatches} x "
            f"{cfg.batch // cfg.microbatches} rows, {dtype_name(dtype)} ...")
        peak = device_peak(device, dtype)
        for name, (fn, flops) in _cases(cfg.width, cfg.batch, cfg.microbatches, dtype, device).items():
            sec = median_seconds(fn, device, cfg.warmup, cfg.repeats)
            rate = flops / sec if flops else None
            results.append({"dtype": dtype_name(dtype), "case": name, "seconds": sec, "flops": flops,
                            "flops_per_second": rate, "mfu": rate / peak.flops if rate and peak else None})
    out = {"benchmark": "gemms", "machine": machine(device),
           "config": {"width": cfg.width, "batch": cfg.batch, "microbatches": cfg.microbatches,
                      "dtypes": [dtype_name(d) for d in cfg.dtypes], "warmup": cfg.warmup, "repeats": cfg.repeats},
           "results": results}
    return out | {"table": table_text(out)}


def table_text(result: dict) -> str:
    """The `gemms` table, from the result's JSON alone."""
    rows = []
    for r in result["results"]:
        rate = r["flops_per_second"]
        shown = "-" if rate is None else (f"{rate / TERA:.1f} TFLOP/s" if rate >= TERA else f"{rate / 1e9:.1f} GFLOP/s")
        rows.append([r["dtype"], r["case"], f"{r['seconds'] * 1e3:.3f} ms", shown])
    return text_table(["dtype", "case (one layer, one step)", "median", "rate"], rows)
