"""Benchmarks against the peers (plain autograd, torch.compile, torch.distributed.pipelining), side by side.

    python scripts/bench.py functions                          # custom Functions vs nn.Sequential (+ torch.compile)
    python scripts/bench.py functions --device cuda --widths 8192 --layers 8 --batch 8192 --dtypes bfloat16,float32 --tf32
    python scripts/bench.py pipeline                           # each schedule vs accumulation vs pipelining, 1 process
    python scripts/bench.py pipeline --device cuda --width 8192 --batch 8192 --dtypes bfloat16 --json out/pipeline.json
    torchrun --nproc_per_node=2 scripts/bench.py dist          # our 1F1B/GPipe vs Schedule1F1B/ScheduleGPipe, 2 ranks
    python scripts/bench.py simulator                          # predicted vs measured, one process
    torchrun --nproc_per_node=2 scripts/bench.py simulator     # predicted vs measured step time and bubble, 2 ranks
    python scripts/bench.py pipeline --quick --json /tmp/p.json  # tiny sizes (the smoke test)
    python scripts/bench.py gemms --device cuda --width 8192 --batch 8192 --dtypes bfloat16   # where the time goes
    python scripts/bench.py summary out/*.json                 # short table + target verdicts of saved results

Every subcommand prints a table and, with --json, writes the figures (medians, quartiles, paired ratios,
FLOP/s, MFU on known GPUs with the peak it assumed). Timed steps follow warm-up steps and rotate between
contenders. BENCHMARKS.md records the figures and what they mean.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from types import MappingProxyType

from _cli import run_main

QUICK = MappingProxyType({"width": 16, "widths": "16", "layers": 4, "batch": 32, "warmup": 1, "repeats": 3})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``bench.py SUBCOMMAND --help`` lists each subcommand's flags."""
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    parsers = {name: sub.add_parser(name, help=text) for name, text in (
        ("functions", "one step of the custom-Function MLP vs nn.Sequential under autograd / torch.compile"),
        ("pipeline", "single-process pipeline per schedule vs accumulation vs torch.distributed.pipelining"),
        ("dist", "under torchrun: our 1F1B/GPipe vs torch's Schedule1F1B/ScheduleGPipe"),
        ("simulator", "predicted vs measured step time and bubble per schedule"),
        ("gemms", "diagnosis: one layer's GEMMs at microbatch vs full-batch shapes, and the fused W's copy"))}
    sub.add_parser("summary", help="short table and target verdicts of saved JSON results").add_argument("files", nargs="+")
    for name, q in parsers.items():
        q.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
        q.add_argument("--layers", type=int, default=4 if name == "functions" else 8, help="Linear layers (%(default)s)")
        q.add_argument("--batch", type=int, default=1024 if name in ("pipeline", "gemms") else 512,
                       help="rows per step (%(default)s)")
        q.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first (%(default)s)")
        q.add_argument("--repeats", type=int, default=10 if name != "simulator" else 8, help="timed steps (%(default)s)")
        q.add_argument("--tf32", action="store_true", help="float32 GEMMs on TF32 tensor cores (MFU vs the TF32 peak)")
        q.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
        q.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
        q.add_argument("--json", default=None, help="write the figures here")
        if name == "gemms":
            q.add_argument("--width", type=int, default=1024, help="(%(default)s)")
            q.add_argument("--microbatches", type=int, default=8, help="(%(default)s)")
            q.add_argument("--dtypes", default="float32", help="(%(default)s)")
            continue
        if name == "functions":
            q.add_argument("--widths", default="1024,2048", help="model widths to try (%(default)s)")
            q.add_argument("--dtypes", default="float32,bfloat16", help="(%(default)s)")
            q.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile contender")
            continue
        q.add_argument("--width", type=int, default=1024, help="model width (%(default)s)")
        q.add_argument("--microbatches", type=int, default=8, help="(%(default)s)")
        q.add_argument("--schedules", default=None, help="ours, comma-separated, e.g. 1f1b,zb-h1,1f1b+defer-w")
        if name == "pipeline":
            q.add_argument("--stages", type=int, default=4, help="(%(default)s)")
            q.add_argument("--dtypes", default="float32", help="(%(default)s)")
            q.add_argument("--peers", default="looped-bfs,interleaved-1f1b,interleaved-zb",
                           help="torch.distributed.pipelining schedules on one rank, or 'none' (%(default)s)")
        else:
            q.add_argument("--dtype", default="float32", help="(%(default)s)")
            q.add_argument("--timeout", type=float, default=120.0, help="seconds any wait on another rank may take")
        if name == "simulator":
            q.add_argument("--ranks", type=int, default=4, help="pipeline ranks in one process (torchrun: the world)")
            q.add_argument("--cold-cache", type=float, default=0.0, metavar="MIB",
                           help="profile every layer with caches flushed by a buffer of this many MiB (CPU; 0: hot)")
    return p.parse_args(argv)


def _common(a: argparse.Namespace) -> dict:
    keys = ("device", "layers", "batch", "warmup", "repeats")
    out = {k: getattr(a, k) for k in keys}
    if a.quick:
        out.update({k: QUICK[k] for k in ("layers", "batch", "warmup", "repeats")})
    return out


def _schedules(a: argparse.Namespace, default: tuple) -> tuple:
    from runtime.bench.pipeline import OurSchedule

    return tuple(OurSchedule.parse(s.strip()) for s in a.schedules.split(",") if s.strip()) if a.schedules else default


def run(a: argparse.Namespace) -> dict | None:
    """Run the chosen benchmark; the results (None on torchrun ranks other than 0)."""
    import torch

    from runtime.bench.report import BENCH_DTYPES, parse_dtypes, write_json

    if a.tf32:
        torch.set_float32_matmul_precision("high")
    if a.threads is not None:
        if a.threads < 1:
            raise ValueError(f"threads: expected >= 1, got {a.threads}")
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and torch.cuda.is_available():
        a.device = f"cuda:{torch.cuda.current_device()}"  # one explicit index for every contender (pipelining compares)
    if a.command != "dist":
        from runtime.train.layout import check_device

        check_device(a.device)
    common = _common(a)
    width = QUICK["width"] if a.quick else getattr(a, "width", None)
    if a.command == "functions":
        from runtime.bench.functions import FunctionsConfig, run_functions

        widths = tuple(int(w) for w in (QUICK["widths"] if a.quick else a.widths).split(",") if w.strip())
        cfg = FunctionsConfig(widths=widths, dtypes=tuple(parse_dtypes(a.dtypes)), compile=a.compile and not a.quick, **common)
        return run_functions(cfg, partial=lambda r: write_json(a.json, r))
    if a.command == "gemms":
        from runtime.bench.gemms import GemmBenchConfig, run_gemm_bench

        return run_gemm_bench(GemmBenchConfig(width=width, batch=common["batch"], microbatches=a.microbatches,
                                              dtypes=tuple(parse_dtypes(a.dtypes)), device=a.device,
                                              warmup=common["warmup"], repeats=common["repeats"]))
    if a.command == "pipeline":
        from _peers import local_world, one_rank_builders

        from runtime.bench.pipeline import DEFAULT_SCHEDULES, PipelineBenchConfig, run_pipeline_bench

        names = [] if a.peers == "none" else [n.strip() for n in a.peers.split(",") if n.strip()]
        cfg = PipelineBenchConfig(width=width, stages=a.stages, microbatches=a.microbatches, dtypes=tuple(parse_dtypes(a.dtypes)),
                                  schedules=_schedules(a, DEFAULT_SCHEDULES), **common)
        if a.quick:
            cfg = replace(cfg, batch=cfg.microbatches * 4)
        try:
            peers = one_rank_builders(names)
        except KeyError as exc:
            raise ValueError(f"peers: unknown {exc}; choose from looped-bfs, interleaved-1f1b, interleaved-zb") from None
        with local_world(torch.device(cfg.device)):
            return run_pipeline_bench(cfg, peers, partial=lambda r: write_json(a.json, r))
    if a.dtype not in BENCH_DTYPES:
        raise ValueError(f"dtype: unknown {a.dtype!r}; choose from {', '.join(BENCH_DTYPES)}")
    dtype = BENCH_DTYPES[a.dtype]
    extra = {"width": width, "microbatches": a.microbatches, "dtype": dtype, "timeout": a.timeout}
    from runtime.comm import launched_by_torchrun

    if a.command == "dist":
        if not launched_by_torchrun():
            raise ValueError("dist: run it under torchrun, e.g. torchrun --nproc_per_node=2 scripts/bench.py dist")
        from _peers import per_rank_builders

        from runtime.bench.dist import DistBenchConfig, run_dist_bench

        cfg = DistBenchConfig(**extra, **common)
        cfg = replace(cfg, schedules=_schedules(a, cfg.schedules), batch=cfg.microbatches * 4 if a.quick else cfg.batch)
        result = run_dist_bench(cfg, per_rank_builders())
    else:
        from runtime.bench.sim import SimBenchConfig, run_sim_bench

        cfg = SimBenchConfig(ranks=a.ranks, cold_cache_bytes=int(a.cold_cache * 2**20), **extra, **common)
        cfg = replace(cfg, schedules=_schedules(a, cfg.schedules), batch=cfg.microbatches * 4 if a.quick else cfg.batch)
        result = run_sim_bench(cfg)
    return result if int(os.environ.get("RANK", "0")) == 0 else None


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print the table and the verdicts, write the JSON."""
    from runtime.bench.report import write_json
    from runtime.bench.verdict import verdicts

    a = parse_args(argv)
    if a.command == "summary":
        from runtime.bench.summary import summarize_files

        print(summarize_files(a.files))
        return 0
    result = run(a)
    if result is None:
        return 0
    result["verdicts"] = verdicts(result)
    print(result["table"])
    for line in result["verdicts"]:
        print(line)
    write_json(a.json, result)
    return 0


if __name__ == "__main__":
    run_main(main, "bench.py")
