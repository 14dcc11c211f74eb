"""Partition the chapter's MLP over pipeline stages and compare partitioners; or print exercise 3's memory report.

    python scripts/plan.py --widths 784,4096,4096,1024,1024,10 --stages 4 --microbatch 64 --schedule 1f1b
    python scripts/plan.py --widths 784,4096,4096,1024,1024,10 --stages 4 --microbatch 64 --memory-cap 2GiB
    python scripts/plan.py --stages 4 --memory-caps 1GiB,1GiB,2GiB,2GiB --device-speeds 1,1,2,2 --optimizer adam
    python scripts/plan.py --stages 4 --bandwidth 25e9 --latency 5e-6 --method time-blocks --json plan.json
    python scripts/plan.py --stages 4 --link pcie                  # a named link (nvlink, pcie, ethernet, cached)
    python scripts/plan.py --stages 4 --dot plan.dot && dot -Tsvg plan.dot -o plan.svg
    python scripts/plan.py --stages 4 --ranges 0-1,2,3,4            # also evaluate a hand-made split
    python scripts/plan.py --microbatch 64 --save-profile prof.json --device cuda   # measure, save, use
    python scripts/plan.py --stages 4 --microbatch 64 --profile prof.json          # reuse measured times
    python scripts/plan.py --memory-report --widths 784,256,10 --batch 128 --dtype float32 --optimizer adam
    python scripts/plan.py --stages 4 --microbatch 1024 --memory-cap 250MiB --schedule auto   # choose all three
    python scripts/plan.py --stages 4 --microbatch 1024 --memory-cap 250MiB --schedule auto --max-inflight 2 --no-recompute
    python scripts/plan.py --layouts 4 --batch 512 --microbatches 4 --link ethernet --memory-cap 200MiB  # PP4, PP2xDP2, DP4

Times come from FLOP counts at --tflops unless a profile is given. Peak memory per stage is parameters +
gradients + optimizer state + (peak in-flight microbatches under the schedule) x saved bytes + deferred
weight-gradient buffers + communication buffers; the in-flight counts and step times come from partition.schedule.simulate.
With --schedule auto the ranges, each stage's recomputation and the schedule (gpipe, 1f1b, zb-h1 or one generated
under the cap) are chosen together (partition.choose): --memory-cap stays the total bytes per device, and the
generated schedule's activation budget is that cap minus the device's static bytes. With --layouts K every way to use
K devices (PP K, PP x DP for each factorisation, DP K with the whole model on each device) is planned and ranked
(partition.layouts): each replica takes 1/D of --batch in --microbatches microbatches, and its step adds each stage's
ring all-reduce over the D replicas (from the stage's last weight gradient on, overlapping the rest).
"""

from __future__ import annotations

import argparse

from _cli import add_bias_flags, require_positive, run_main

from partition.cost import DType, Optimizer
from partition.partitioner import Method
from partition.schedule.actions import ScheduleKind
from partition.spec import Activation, Loss, MLPSpec, parse_widths
from runtime.planner.run import PlanConfig, run_plan

ONE_STAGE_PER_RANK = (ScheduleKind.GPIPE, ScheduleKind.ONE_F_ONE_B, ScheduleKind.ZB_H1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --help explains every flag."""
    p = argparse.ArgumentParser(prog="plan.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--widths", default="784,4096,4096,1024,1024,10", help="layer widths, inputs first (default %(default)s)")
    g.add_argument("--activation", default="relu", choices=[a.value for a in Activation])
    add_bias_flags(g)
    g.add_argument("--loss", default="cross-entropy", choices=[lo.value for lo in Loss])
    g.add_argument("--dtype", default="float32", choices=[d.value for d in DType])
    g.add_argument("--optimizer", default="sgd", choices=[o.value for o in Optimizer], help="state: 0, 1 or 2 x params")
    g = p.add_argument_group("pipeline")
    g.add_argument("--stages", type=int, default=4, help="pipeline stages, one per device (default %(default)s)")
    g.add_argument("--microbatch", type=int, default=64, help="samples per microbatch (default %(default)s)")
    g.add_argument("--microbatches", type=int, help="microbatches per step (default: 2 x stages)")
    g.add_argument("--schedule", default="1f1b", choices=[k.value for k in (*ONE_STAGE_PER_RANK, ScheduleKind.AUTO)],
                   help="auto: ranges, recomputation and schedule chosen together (default %(default)s)")
    g.add_argument("--max-inflight", type=int, help="with --schedule auto: at most this many microbatches in flight "
                                                    "on any stage (default: no count cap)")
    g.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=True,
                   help="with --schedule auto: let stages recompute activations to fit (default: yes)")
    g.add_argument("--method", default="optimal", choices=[m.value for m in Method], help="plan shown in detail")
    g.add_argument("--ranges", help="also evaluate these inclusive layer ranges, e.g. 0-1,2,3-4")
    g.add_argument("--layouts", type=int, metavar="K", help="instead: rank the PP x DP layouts of K devices for the "
                                                           "global --batch (default: off)")
    g = p.add_argument_group("devices and links")
    caps = g.add_mutually_exclusive_group()
    caps.add_argument("--memory-cap", help="one memory cap for every device, e.g. 2GiB")
    caps.add_argument("--memory-caps", help="one cap per stage, e.g. 1GiB,1GiB,2GiB,2GiB")
    g.add_argument("--device-speeds", help="relative speed per stage, e.g. 1,1,2,2 (default all 1)")
    g.add_argument("--tflops", type=float, default=100.0, help="FLOP rate for FLOP-based times (default %(default)s)")
    g.add_argument("--bandwidth", type=float, default=float("inf"), help="link bytes/second (default: free)")
    g.add_argument("--latency", type=float, default=0.0, help="link latency in seconds per message (default 0)")
    g.add_argument("--link", help="nvlink, pcie, ethernet (nominal figures), cached (the last link measured between "
                                  "processes on this machine) or LATENCY,BANDWIDTH; overrides --latency/--bandwidth")
    g = p.add_argument_group("profiles")
    g.add_argument("--profile", help="use per-layer times measured earlier (JSON from --save-profile)")
    g.add_argument("--save-profile", help="measure per-layer times on --device, save them as JSON, and use them")
    g.add_argument("--device", default="cpu", help="device for --save-profile: cpu or cuda (default cpu)")
    g = p.add_argument_group("output")
    g.add_argument("--json", help="write every method's plan and the predictions as JSON")
    g.add_argument("--dot", help="write the computational graph with each stage as a coloured cluster (DOT)")
    g.add_argument("--memory-report", action="store_true", help="print training vs inference memory (exercise 3)")
    g.add_argument("--batch", type=int, help="minibatch for --memory-report, global batch for --layouts "
                                             "(default: microbatch x microbatches)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse, check, and plan (runtime.planner.run_plan)."""
    a = parse_args(argv)
    require_positive(a, "stages", "microbatch", "microbatches", "batch", "tflops", "bandwidth", "layouts")
    spec = MLPSpec(parse_widths(a.widths), a.activation, a.bias, 0.0, a.loss)
    fields = {k: v for k, v in vars(a).items() if k not in ("widths", "activation", "bias", "loss", "schedule")}
    return run_plan(PlanConfig(spec=spec, schedule=ScheduleKind(a.schedule), **fields))


if __name__ == "__main__":
    run_main(main, "plan.py")
