"""Benchmarks against the peers (plain autograd, torch.compile, the full batch, torch.distributed.pipelining).

    python scripts/bench.py functions                          # custom Functions vs nn.Sequential (+ torch.compile)
    python scripts/bench.py functions --device cuda --widths 8192 --layers 8 --batch 8192 --dtypes bfloat16,float32 --tf32
    python scripts/bench.py pipeline                           # our schedules vs full batch, accumulation, pipelining
    python scripts/bench.py pipeline --device cuda --width 8192 --batch 8192 --dtypes bfloat16 --json out/pipeline.json
    torchrun --standalone --nproc-per-node=2 scripts/bench.py dist   # ours vs every torch schedule, 2 ranks, + full batch
    python scripts/bench.py simulator                          # predicted vs measured, one process
    torchrun --standalone --nproc-per-node=2 scripts/bench.py simulator   # predicted vs measured step time and bubble, 2 ranks
    python scripts/bench.py pipeline --quick --json /tmp/p.json  # tiny sizes (the smoke test)
    python scripts/bench.py gemms --device cuda --width 8192 --batch 8192 --dtypes bfloat16   # where the time goes
    python scripts/bench.py contention                         # default train.py alone vs next to a busy loop
    python scripts/bench.py layouts --json out/layouts.json    # PP vs PP x DP vs DP under torchrun, 2 and 4 processes
    python scripts/bench.py summary out/*.json                 # short table + target verdicts of saved results
    python scripts/bench.py table runtime/bench/results/X.json # a saved result's table, regenerated from its JSON

Every subcommand prints a table and, with --json, writes the figures (medians, quartiles, paired ratios,
FLOP/s, MFU on known GPUs with the peak it assumed). Timed steps follow warm-up steps and rotate between
contenders; each contender's gradients and loss are then checked against a float64 reference. Targets judge
the headline contender named by --headline, fixed before the run. BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from _cli import run_main

from runtime.threads import HELP as THREADS_HELP

QUICK = MappingProxyType({"width": 16, "widths": "16", "layers": 4, "batch": 32, "warmup": 1, "repeats": 3})
HEADLINES = MappingProxyType({"pipeline": "ours:1f1b+defer-w+direct", "dist": "ours:zb-h1+defer-w+direct+onednn"})


def _add_model_flags(q: argparse.ArgumentParser, name: str) -> None:
    q.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    q.add_argument("--layers", type=int, default=4 if name == "functions" else 8, help="Linear layers (%(default)s)")
    q.add_argument("--batch", type=int, default=1024 if name in ("pipeline", "gemms") else 512,
                   help="rows per step (%(default)s)")
    q.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first (%(default)s)")
    q.add_argument("--repeats", type=int, default=10 if name != "simulator" else 8, help="timed steps (%(default)s)")
    q.add_argument("--tf32", action="store_true", help="float32 GEMMs on TF32 tensor cores (MFU vs the TF32 peak)")
    q.add_argument("--threads", default="auto", help=THREADS_HELP)
    q.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    q.add_argument("--json", default=None, help="write the figures here")


def _add_bench_flags(q: argparse.ArgumentParser, name: str) -> None:
    if name == "gemms":
        q.add_argument("--width", type=int, default=1024, help="(%(default)s)")
        q.add_argument("--microbatches", type=int, default=8, help="(%(default)s)")
        q.add_argument("--dtypes", default="float32", help="(%(default)s)")
        return
    if name == "functions":
        q.add_argument("--widths", default="1024,2048", help="model widths to try (%(default)s)")
        q.add_argument("--dtypes", default="float32,bfloat16", help="(%(default)s)")
        q.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile contender")
        return
    q.add_argument("--width", type=int, default=1024, help="model width (%(default)s)")
    q.add_argument("--microbatches", type=int, default=8, help="(%(default)s)")
    q.add_argument("--schedules", default=None,
                   help="ours, comma-separated, e.g. 1f1b,zb-h1,1f1b+defer-w+direct,zb-h1+defer-w+direct+onednn "
                        "(suffixes in that order; default: the benchmark's list)")
    if name in HEADLINES:
        q.add_argument("--headline", default=HEADLINES[name],
                       help="the contender the targets judge, fixed before the run (%(default)s)")
    if name == "pipeline":
        q.add_argument("--stages", type=int, default=4, help="(%(default)s)")
        q.add_argument("--dtypes", default="float32", help="(%(default)s)")
        q.add_argument("--peers", default="looped-bfs,interleaved-1f1b,interleaved-zb,zbv,dualpipev",
                       help="torch.distributed.pipelining schedules on one rank, or 'none' (%(default)s)")
        q.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled full batch")
        return
    q.add_argument("--dtype", default="float32", help="(%(default)s)")
    q.add_argument("--timeout", type=float, default=120.0, help="seconds any wait on another rank may take")
    if name == "dist":
        q.add_argument("--peers", default="all", help="torch.distributed.pipelining schedules, or 'all' / 'none' (%(default)s)")
    if name == "simulator":
        q.add_argument("--ranks", type=int, default=4, help="pipeline ranks in one process (torchrun: the world)")
        q.add_argument("--cold-cache", type=float, default=None, metavar="MIB",
                       help="profile every layer with caches flushed by a buffer of this many MiB (CPU; 0: hot; "
                            "default: the step's working set, 8x beyond a core's L2, as train.py and compare.py profile)")
        q.add_argument("--fidelity", type=int, default=0, metavar="RUNS",
                       help="instead: the this-run prediction's error over train.py (one process and torchrun, 2 ranks) "
                            "and compare.py --quick, each run RUNS times (0: off)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``bench.py SUBCOMMAND --help`` lists each subcommand's flags."""
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
            ("functions", "one step of the custom-Function MLP vs nn.Sequential under autograd / torch.compile"),
            ("pipeline", "one process: each schedule vs the full batch, accumulation and torch.distributed.pipelining"),
            ("dist", "under torchrun: our schedules vs every torch.distributed.pipelining schedule and the full batch"),
            ("simulator", "predicted vs measured step time and bubble per schedule"),
            ("gemms", "diagnosis: one layer's GEMMs at microbatch vs full-batch shapes, and the fused W's copy")):
        q = sub.add_parser(name, help=text)
        _add_model_flags(q, name)
        _add_bench_flags(q, name)
    q = sub.add_parser("contention", help="the default train.py alone vs next to a busy loop on another core")
    q.add_argument("--epochs", type=int, default=3, help="epochs of each training run (%(default)s)")
    q.add_argument("--rounds", type=int, default=3, help="runs alone and loaded, alternating (%(default)s each)")
    q.add_argument("--busy", type=int, default=1, help="busy-loop processes (%(default)s)")
    q.add_argument("--json", default=None, help="write the figures here")
    q = sub.add_parser("layouts", help="train.py under torchrun as PP, PP x DP and DP on 2 and 4 processes vs the planner")
    q.add_argument("--models", default="1024x8,256x16", help="WIDTHxLAYERS, comma-separated (%(default)s)")
    q.add_argument("--processes", default="2,4", help="process counts, comma-separated (%(default)s)")
    q.add_argument("--batch", type=int, default=256, help="global batch (%(default)s)")
    q.add_argument("--microbatches", type=int, default=4, help="microbatches per replica (%(default)s)")
    q.add_argument("--samples", type=int, default=4096, help="synthetic training examples (%(default)s)")
    q.add_argument("--epochs", type=int, default=2, help="epochs of each run (%(default)s)")
    q.add_argument("--json", default=None, help="write the figures here")
    sub.add_parser("summary", help="short table and target verdicts of saved JSON results").add_argument("files", nargs="+")
    sub.add_parser("table", help="a saved result's table, regenerated from its JSON").add_argument("file")
    return p.parse_args(argv)


def _names(text: str) -> list[str] | None:
    """``all`` -> None (every one), ``none`` -> [], else the comma-separated names."""
    return None if text == "all" else [] if text == "none" else [n.strip() for n in text.split(",") if n.strip()]


def config_from_args(a: argparse.Namespace) -> object:
    """The benchmark's config dataclass from the flags (ValueError names a bad one)."""
    from runtime.bench.contenders import DEFAULT_SCHEDULES, parse_schedules
    from runtime.bench.contention import ContentionConfig
    from runtime.bench.dist import DistBenchConfig
    from runtime.bench.functions import FunctionsConfig
    from runtime.bench.gemms import GemmBenchConfig
    from runtime.bench.pipeline import PipelineBenchConfig
    from runtime.bench.report import parse_dtype, parse_dtypes
    from runtime.bench.run import setup_device
    from runtime.bench.sim import SimBenchConfig

    if a.command == "contention":
        return ContentionConfig(epochs=a.epochs, rounds=a.rounds, busy=a.busy)
    common = {k: QUICK[k] if a.quick else getattr(a, k) for k in ("layers", "batch", "warmup", "repeats")}
    common["device"] = setup_device(a.device, a.tf32)
    width = QUICK["width"] if a.quick else getattr(a, "width", None)
    if a.command == "functions":
        widths = tuple(int(w) for w in (QUICK["widths"] if a.quick else a.widths).split(",") if w.strip())
        return FunctionsConfig(widths=widths, dtypes=tuple(parse_dtypes(a.dtypes)), compile=a.compile and not a.quick,
                               **common)
    if a.command == "gemms":
        return GemmBenchConfig(width=width, microbatches=a.microbatches, dtypes=tuple(parse_dtypes(a.dtypes)),
                               **{k: common[k] for k in ("batch", "device", "warmup", "repeats")})
    model = {"width": width, "microbatches": a.microbatches, **common}
    if a.quick:
        model["batch"] = a.microbatches * 4
    if a.command == "pipeline":
        return PipelineBenchConfig(stages=a.stages, dtypes=tuple(parse_dtypes(a.dtypes)), headline=a.headline,
                                   schedules=parse_schedules(a.schedules, DEFAULT_SCHEDULES),
                                   compile=a.compile and not a.quick, **model)
    extra = {"dtype": parse_dtype(a.dtype), "timeout": a.timeout, **model}
    if a.command == "dist":
        cfg = DistBenchConfig(headline=a.headline, **extra)
        return replace(cfg, schedules=parse_schedules(a.schedules, cfg.schedules))
    cold = None if a.cold_cache is None else int(a.cold_cache * 2**20)
    cfg = SimBenchConfig(ranks=a.ranks, cold_cache_bytes=cold, **extra)
    return replace(cfg, schedules=parse_schedules(a.schedules, cfg.schedules))


def main(argv: list[str] | None = None) -> int:
    """Parse, then run the benchmark (or summarize / re-tabulate saved results)."""
    a = parse_args(argv)
    if a.command in ("summary", "table"):
        from runtime.bench.render import table_of_file
        from runtime.bench.summary import summarize_files

        print(summarize_files(a.files) if a.command == "summary" else table_of_file(a.file))
        return 0
    if a.command == "layouts":
        from runtime.bench.layouts import LayoutBenchConfig, layout_table, parse_models, run_layout_bench

        cfg = LayoutBenchConfig(models=parse_models(a.models), processes=tuple(int(n) for n in a.processes.split(",")),
                                batch=a.batch, microbatches=a.microbatches, samples=a.samples, epochs=a.epochs)
        print(layout_table(run_layout_bench(cfg, a.json)))
        return 0
    if a.command == "simulator" and a.fidelity:
        from runtime.calibrate.fidelity import run_fidelity

        print(run_fidelity(a.fidelity, a.json))
        return 0
    import _peers
    import torch

    from runtime.bench.run import bench_threads, run_bench

    cfg = config_from_args(a)
    threads = bench_threads(cfg, getattr(a, "threads", "auto"))
    if a.command == "contention":
        run_bench(cfg, {}, threads, a.json, [sys.executable, str(Path(__file__).with_name("train.py"))])
    elif a.command == "pipeline":
        with _peers.local_world(torch.device(cfg.device)):
            run_bench(cfg, _peers.peers(_names(a.peers), one_rank=True), threads, a.json)
    else:
        run_bench(cfg, _peers.peers(_names(a.peers)) if a.command == "dist" else {}, threads, a.json)
    return 0


if __name__ == "__main__":
    run_main(main, "bench.py")
