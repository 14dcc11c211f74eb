"""Print a pipeline schedule's step-by-rank table and what the simulator predicts for it.

    python scripts/simulate.py --schedule 1f1b --stages 4 --microbatches 8
    python scripts/simulate.py --schedule gpipe --stages 4 --microbatches 8 --cost-f 1 --cost-b 2 --cost-w 0
    python scripts/simulate.py --schedule interleaved-1f1b --stages 4 --microbatches 8 --virtual 2
    python scripts/simulate.py --schedule zb-h1 --stages 4 --microbatches 8 --cost-f 1 --cost-b 1 --cost-w 1
    python scripts/simulate.py --schedule zb-v --stages 4 --microbatches 8 --comms
    python scripts/simulate.py --schedule 1f1b --stages 8 --microbatches 32 --latency 5e-6 --bandwidth 25e9 \\
        --activation-bytes 4e6 --trace out.json --png out.png --json out.json
    python scripts/simulate.py --widths 1024,1024,1024,1024,1024 --microbatch-size 64 --stages 2 --link pcie
    python scripts/simulate.py --widths 784,4096,4096,1024,10 --microbatch-size 64 --profile prof.json --link cached
    python scripts/simulate.py --widths 1024,1024,1024,1024,1024 --stages 2 --data-parallel 2 --link ethernet   # PP 2 x DP 2

--stages is the pipeline depth p, the number of ranks. gpipe, 1f1b and zb-h1 place one stage per rank;
interleaved-1f1b places --virtual (v) stages per rank, p*v stages in all (stage s on rank s % p); zb-v always
places two stages per rank in a V (2p stages). Costs are seconds per microbatch per stage (F, input-gradient B,
weight-gradient W; a fused backward BW costs B + W); every stage gets the same costs. In torch.distributed.pipelining's
letters our B (input gradient) is I and our BW (whole backward) is B; tables here use ours. The trace opens in
chrome://tracing or https://ui.perfetto.dev; --png needs matplotlib. With --widths, the costs are those of that
model instead: every layer profiled here (or read from --profile), summed over the stages of --partition, and the
activation crossing each stage boundary sized from the widths (the --link presets are nominal figures).
--data-parallel D adds each stage's gradient all-reduce over D replicas (a ring: 2 (D - 1) hops of 1/D of the
bytes over the link), started when the stage's last W or BW ends, one at a time per rank, overlapping the rest.
"""

from __future__ import annotations

import argparse
import math
import sys

from _cli import run_main

from partition.data_parallel import stage_gradient_bytes, with_all_reduce
from partition.plan import format_ranges
from partition.schedule.actions import ScheduleKind, format_table
from partition.schedule.comms import insert_comms
from partition.schedule.generators import generate
from partition.schedule.simulate import SimResult, simulate
from partition.schedule.timeline import format_timeline
from partition.schedule.trace import write_chrome_trace, write_gantt_png
from partition.spec import MLPSpec, parse_widths
from partition.timing import LinkModel, StageCost
from partition.units import count
from runtime.calibrate.model_costs import model_costs
from runtime.calibrate.run import k_device_link
from runtime.output import text_table, write_json


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --help explains every flag."""
    p = _Parser(prog="simulate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("schedule")
    g.add_argument("--schedule", default="1f1b", choices=[k.value for k in ScheduleKind], help="(default %(default)s)")
    g.add_argument("--stages", type=int, default=4, help="pipeline depth p = number of ranks (default %(default)s)")
    g.add_argument("--microbatches", type=int, default=8, help="microbatches per step m (default %(default)s)")
    g.add_argument("--virtual", type=int, default=1, help="stages per rank v for interleaved-1f1b (default 1)")
    g.add_argument("--comms", action="store_true", help="insert the send/recv actions and show them in the table")
    g = p.add_argument_group("costs (seconds per microbatch per stage)")
    g.add_argument("--cost-f", type=float, default=1.0, help="forward F (default %(default)s)")
    g.add_argument("--cost-b", type=float, default=1.0, help="input-gradient backward B (default %(default)s)")
    g.add_argument("--cost-w", type=float, default=1.0, help="weight-gradient backward W (default %(default)s)")
    g = p.add_argument_group("a given model instead (its layers profiled here, or read from a saved profile)")
    g.add_argument("--widths", help="layer widths, inputs first, e.g. 1024,1024,1024 (replaces --cost-f/b/w)")
    g.add_argument("--microbatch-size", type=int, default=64, help="rows per microbatch (default %(default)s)")
    g.add_argument("--partition", default="optimal", help="partitioner method or ranges like 0-1,2-3 (default optimal)")
    g.add_argument("--profile", help="per-layer times from plan.py --save-profile instead of profiling now")
    g.add_argument("--device", default="cpu", help="device to profile on (default cpu)")
    g.add_argument("--dtype", default="float32", help="dtype to profile in (default float32)")
    g = p.add_argument_group("link between ranks")
    g.add_argument("--link", help="nvlink, pcie, ethernet, cached (the last link measured between processes on this "
                                  "machine) or LATENCY,BANDWIDTH; overrides --latency/--bandwidth")
    g.add_argument("--latency", type=float, default=0.0, help="seconds per message (default 0)")
    g.add_argument("--bandwidth", type=float, default=float("inf"), help="bytes/second (default: infinite)")
    g.add_argument("--activation-bytes", type=float, default=0.0, help="bytes of one microbatch's activation (default 0)")
    g = p.add_argument_group("data parallel: D replicas, each stage's gradients all-reduced (a ring over the link)")
    g.add_argument("--data-parallel", type=int, default=1, metavar="D", help="replicas of the pipeline (default 1)")
    g.add_argument("--grad-bytes", type=float, default=0.0,
                   help="bytes of each stage's gradients (default 0; with --widths: the model's)")
    g = p.add_argument_group("output")
    g.add_argument("--table", action=argparse.BooleanOptionalAction, default=None,
                   help="print the step-by-rank table (default: when it has at most 64 steps)")
    g.add_argument("--trace", help="write a Chrome/Perfetto trace JSON of the predicted timeline")
    g.add_argument("--png", help="write a Gantt chart PNG of the predicted timeline (needs matplotlib)")
    g.add_argument("--json", help="write the predicted figures as JSON")
    return p.parse_args(argv)


def report(result: SimResult, placement: tuple[int, ...]) -> str:
    """The predicted figures as text: totals, then per rank, then per stage."""
    lines = [f"makespan          {result.makespan:.6g} s",
             f"bubble fraction   {result.bubble_fraction:.4f} ({result.bubble_fraction:.2%})",
             ""]
    ranks = [[r, ",".join(str(s) for s, q in enumerate(placement) if q == r), f"{busy:.6g}", f"{idle:.6g}"]
             for r, (busy, idle) in enumerate(zip(result.busy, result.idle))]
    lines += [text_table(["rank", "stages", "busy", "idle"], ranks, right={0, 2, 3}), ""]
    stages = [[s, held, deferred] for s, (held, deferred) in enumerate(zip(result.peak_inflight, result.peak_deferred_w))]
    lines.append(text_table(["stage", "peak in-flight", "peak deferred W"], stages, right={0, 1, 2}))
    path = [str(a) for a in result.critical_path]
    shown = " ".join(path if len(path) <= 16 else path[:8] + ["..."] + path[-8:])
    lines += ["", f"critical path ({len(path)} actions): {shown}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    kind = ScheduleKind(a.schedule)
    schedule = generate(kind, a.stages, a.microbatches, a.virtual)
    if a.comms:
        schedule = insert_comms(schedule)
    costs = [StageCost(a.cost_f, a.cost_b, a.cost_w)] * schedule.num_stages
    sizes = [a.activation_bytes] * schedule.num_stages
    what = f"per stage F {a.cost_f:g} s, B {a.cost_b:g} s, W {a.cost_w:g} s"
    if a.widths:
        mc = model_costs(MLPSpec(parse_widths(a.widths)), schedule.num_stages, a.microbatch_size, a.partition, a.device,
                         a.dtype, a.profile)
        costs, sizes = list(mc.costs), list(mc.activation_bytes)
        what = f"MLP {a.widths} in stages {format_ranges(mc.ranges)}; costs {mc.source}"
    link = k_device_link(a.link, LinkModel())[0] if a.link else LinkModel(a.latency, a.bandwidth)
    result = simulate(schedule, costs, link, sizes)
    grads = [a.grad_bytes] * schedule.num_stages
    if a.widths:
        grads = stage_gradient_bytes(MLPSpec(parse_widths(a.widths)), mc.ranges, a.dtype)
    dp = with_all_reduce(result, schedule, grads, a.data_parallel, link)
    steps = max(len(acts) for acts in schedule.actions.values())
    print(f"{kind.value}: {count(schedule.num_ranks, 'rank')}, {count(schedule.num_stages, 'stage')}, "
          f"{count(schedule.num_microbatches, 'microbatch')}; {what}; link {link.describe()}")
    if a.table or (a.table is None and steps <= 64):
        print(format_table(schedule))
        print(format_timeline(result.timeline, schedule.num_ranks))
    elif a.table is None:
        print(f"(table of {steps} steps not shown; --table prints it)")
    print(report(result, schedule.placement))
    if a.data_parallel > 1:
        ends = " ".join(f"{s}:{b:.6g}-{e:.6g}" for s, (b, e) in enumerate(zip(dp.reduce_start, dp.reduce_end)))
        print(f"\ndata parallel x{a.data_parallel}: step {dp.makespan:.6g} s with the all-reduces ({dp.exposed:.6g} s "
              f"not hidden behind the schedule); per stage start-end: {ends}")
    title = f"{kind.value}, p={schedule.num_ranks}, m={schedule.num_microbatches}: predicted"
    if a.trace:
        write_chrome_trace(a.trace, result.trace_events(), process_name=title)
    if a.png:
        write_gantt_png(a.png, result.trace_events(), title)
    if a.json:
        figures = {"schedule": kind.value, "num_ranks": schedule.num_ranks, "num_stages": schedule.num_stages,
                   "num_microbatches": schedule.num_microbatches, "placement": list(schedule.placement),
                   "costs": [{"f": c.f, "b": c.b, "w": c.w} for c in costs],
                   "link": {"latency": link.latency, "bandwidth": None if math.isinf(link.bandwidth) else link.bandwidth,
                            "activation_bytes": sizes},
                   **result.to_json(),
                   "data_parallel": {"replicas": a.data_parallel, "grad_bytes": grads, "step": dp.makespan,
                                     "exposed": dp.exposed, "reduce_start": list(dp.reduce_start),
                                     "reduce_end": list(dp.reduce_end)}}
        write_json(a.json, figures)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]), "simulate.py")
