"""Partition over K devices, or train on one device with a smaller minibatch? Plan, predict, measure, recommend.

    python scripts/compare.py --quick --out out/compare           # digits, 64-256-256-256-10, B=128, K=4, auto cap
    python scripts/compare.py --out out/compare                   # the same for 60 epochs, with finer profiling
    python scripts/compare.py --memory-cap 1MiB --devices 4       # a cap no single device meets: only pipelines fit
    python scripts/compare.py --memory-cap none                   # no cap: the whole batch fits on one device
    python scripts/compare.py --target-loss 0.3 --epochs 30       # train each candidate until an epoch's loss <= 0.3
    python scripts/compare.py --dataset synthetic --widths 32,64,64,64,8 --batch 64 --devices 2 --memory-cap 120KiB
    python scripts/compare.py --dataset idx:/data/mnist --widths 784,512,512,512,10 --batch 256 --device cuda
    python scripts/compare.py --schedules 1f1b,zb-h1 --microbatches 4,8,16 --lr-rule sqrt
    python scripts/compare.py --schedules 1f1b,zb-h1,auto --recompute none,fit,all --memory-cap 900KiB   # memory vs time
    python scripts/compare.py --from-json out/compare/compare.json --out out/again   # re-plot, no training
    python scripts/compare.py --pareto-table out/cap1/compare.json out/cap2/compare.json   # one table over caps
    torchrun --standalone --nproc-per-node=4 scripts/compare.py --devices 4 --device cuda   # pipelines, PP x DP on 4 GPUs

Candidates: pipelines over the K devices (each schedule and microbatch count), PP x DP layouts (D replicas of a
K/D-stage pipeline for each D dividing K, ids ending -dpD; in one process emulated as one pipeline of D x m
microbatches, the same arithmetic; under torchrun a dp x pp grid over the K processes), one device at B, at the
largest b that fits the cap and at B/K, and gradient accumulation.

Writes OUT/compare.md (the report and the recommendation), OUT/compare.json (a top-level "candidates" list with
predicted and measured figures, the prediction errors and the scheduler's overhead), OUT/compare.csv and PNG plots.
--memory-cap auto (the default) is 95% of what one device needs for the whole batch B, so that B does not fit.
"""

from __future__ import annotations

import argparse
import sys

from _cli import HelpFormatter, add_bias_flags, run_main

from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec, parse_widths
from runtime.compare.harness import QUICK, CompareConfig, compare, pareto_table, regenerate
from runtime.compare.types import LRRule, RecomputePolicy
from runtime.threads import HELP as THREADS_HELP
from runtime.threads import parse_threads
from runtime.train.config import DTYPES, OptimizerKind


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"microbatches: expected comma-separated integers like 4,8, got {text!r}") from None


def _schedules(text: str) -> tuple[ScheduleKind, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return tuple(ScheduleKind(name) for name in names)
    except ValueError:
        raise ValueError(f"schedules: expected names from {', '.join(k.value for k in ScheduleKind)}, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --help explains every flag."""
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--widths", default="64,256,256,256,10", help="layer widths, inputs first (default %(default)s)")
    g.add_argument("--activation", default="relu", choices=["relu", "tanh", "sigmoid"], help="phi of the hidden layers")
    add_bias_flags(g)
    g.add_argument("--l2", type=float, default=0.0, help="weight decay lambda of the objective J = L + s")
    g.add_argument("--loss", default="cross-entropy", choices=["cross-entropy", "squared-error"], help="the loss L")
    g = p.add_argument_group("experiment")
    g.add_argument("--dataset", default="digits", help="digits (shipped), synthetic, or idx:DIR")
    g.add_argument("--samples", type=int, default=4096, help="examples of the synthetic dataset")
    g.add_argument("--batch", type=int, default=128, help="global batch B (default %(default)s)")
    g.add_argument("--devices", type=int, default=4, help="K devices for the pipelines (default %(default)s)")
    g.add_argument("--memory-cap", default="auto", help="per-device cap: auto, none, or a size like 2MiB (default auto)")
    g.add_argument("--epochs", type=int, default=None, help=f"epochs per candidate (default 60; --quick {QUICK['epochs']})")
    g.add_argument("--target-loss", type=float, default=None, help="stop a candidate at an epoch whose mean loss <= this")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate at B (default %(default)s)")
    g.add_argument("--lr-rule", default="linear", choices=[r.value for r in LRRule], help="lr for a minibatch b < B")
    g.add_argument("--optimizer", default="sgd", choices=[o.value for o in OptimizerKind], help="per-stage optimizer")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--seed", type=int, default=0, help="one seed for weights and data order")
    g.add_argument("--dtype", default="float32", choices=list(DTYPES), help="parameters and activations")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--threads", default="auto", help=THREADS_HELP)
    g.add_argument("--schedules", default=",".join(k.value for k in ScheduleKind), help="pipeline schedules to try "
                   "(auto: searched under the cap; default %(default)s)")
    g.add_argument("--recompute", default="none,fit", help="recomputation of each pipeline: none, fit (split and "
                   "per-stage recomputation chosen to fit the cap), all; comma-separated (default %(default)s)")
    g.add_argument("--microbatches", default=None, help="microbatch counts m to try (default K,2K,4K where they divide B)")
    g.add_argument("--virtual", type=int, default=2, help="stages per device for interleaved-1f1b (default 2)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds a torchrun rank waits for a peer")
    g.add_argument("--quick", action="store_true", help="a short run (under two minutes on 2 CPU cores)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="out/compare", help="folder for compare.md/.json/.csv and the PNGs")
    g.add_argument("--from-json", default=None, help="rewrite the report from this JSON (no planning, no training)")
    g.add_argument("--pareto-table", nargs="+", default=None, metavar="JSON",
                   help="print one memory-time table over these runs' JSON (one model at several caps), then stop")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> CompareConfig:
    """Turn parsed flags into a checked CompareConfig (ValueError names the bad flag); --quick applies QUICK."""
    spec = MLPSpec(parse_widths(a.widths), a.activation, a.bias, a.l2, a.loss)
    extra = dict(QUICK) if a.quick else {}
    if a.epochs is not None:
        extra["epochs"] = a.epochs
    if a.microbatches:
        extra["microbatches"] = _ints(a.microbatches)
    return CompareConfig(
        spec=spec, dataset=a.dataset, samples=a.samples, batch=a.batch, devices=a.devices, memory_cap=a.memory_cap,
        target_loss=a.target_loss, lr=a.lr, lr_rule=LRRule(a.lr_rule), optimizer=OptimizerKind(a.optimizer),
        momentum=a.momentum, seed=a.seed, dtype=a.dtype, device=a.device, threads=parse_threads(a.threads),
        schedules=_schedules(a.schedules), recompute=RecomputePolicy.parse_list(a.recompute), virtual=a.virtual,
        timeout=a.timeout, out=a.out,
        progress=a.progress and sys.stderr.isatty(), **extra,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the experiment (or rewrite its report from JSON) and print where the report is."""
    a = parse_args(argv)
    if a.pareto_table:
        print(pareto_table(a.pareto_table), end="")
        return 0
    if a.from_json:
        regenerate(a.from_json, a.out)
        print(f"report rewritten from {a.from_json}: {a.out}/compare.md")
        return 0
    results = compare(config_from_args(a), log=lambda line: None)
    if results:
        rec, t = results["recommendation"], results["timings"]
        print(f"recommendation: {rec['label'] or 'nothing fits the cap'}")
        for why in rec["reasons"]:
            print(f"  - {why}")
        err = results["prediction_errors"]["prediction_error"]
        print(f"step-time prediction error: median {err['median_abs']:.1%}, largest {err['max_abs']:.1%}; scheduler "
              f"overhead {t['overhead_fraction']:.1%} of {t['total']:.1f} s")
        worst = results["prediction_errors"]["largest_error"]
        if worst:
            print(f"the pipeline predicted worst, `{worst['id']}`: {worst['text']}")
        print(f"report: {a.out}/compare.md")
    return 0


if __name__ == "__main__":
    run_main(main, "compare.py")
