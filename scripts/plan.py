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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ahead of scripts/, where this file shadows `partition`

from _cli import add_bias_flags, require_positive, run_main

from partition.choose import JointChoice, choose, schedule_counts
from partition.cost import DType, Optimizer
from partition.dot import to_dot
from partition.graph import build_graph
from partition.layouts import Layout, plan_layouts
from partition.memory import inference_memory, training_memory
from partition.partitioner import Method, Plan, Problem, parse_ranges, partition, plan_for, problem_for
from partition.plan import format_ranges
from partition.schedule.actions import Schedule, ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.spec import Activation, Loss, MLPSpec, parse_widths
from partition.timing import LinkModel
from partition.units import format_bytes, parse_bytes
from runtime.calibrate.run import k_device_link
from runtime.output import text_table, write_json
from runtime.train.profile import Profile, profile_layers

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


def _floats(text: str | None, field: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise ValueError(f"{field}: cannot read {text!r} ({err})") from None


def step_time(plan: Plan, schedule: Schedule, link: LinkModel) -> tuple[float, float]:
    """(step seconds, bubble fraction) the simulator predicts for ``plan`` under ``schedule`` and ``link``."""
    result = simulate(schedule, plan.stage_costs, link=link, activation_bytes=plan.boundary_bytes or None)
    return result.makespan, result.bubble_fraction


def _si(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale or unit == "ns":
            return f"{seconds / scale:.3g} {unit}"
    raise AssertionError("unreachable")


def print_plan(plan: Plan, inflight: tuple[int, ...]) -> None:
    """The per-stage table of one plan."""
    rows = []
    for s, (a, b) in enumerate(plan.ranges):
        c, cap = plan.stage_costs[s], plan.memory_caps[s] if plan.memory_caps else None
        cut = format_bytes(plan.boundary_bytes[s]) if s < len(plan.boundary_bytes) else "-"
        rows.append([s, format_ranges(((a, b),)), f"{plan.parameters[s]:,}", _si(c.f), _si(c.b), _si(c.w),
                     _si(plan.comm_times[s]), cut, inflight[s], format_bytes(plan.memory[s]), format_bytes(cap) if cap else "-"])
    print(text_table(["stage", "layers", "params", "F", "B", "W", "comm", "cut bytes", "in-flight", "peak memory", "cap"],
                     rows, right=set(range(11)) - {1}))


def print_joint(joint: JointChoice) -> None:
    """Each candidate schedule with its best plan, the chosen one in detail, and the levers pulled."""
    rows = []
    for o in joint.options:
        if o.plan is None:
            rows.append([o.kind.value, "-", "-", "-", "-", "-", o.note.split(";")[0]])
            continue
        recompute = ",".join(str(c) for c in o.plan.recompute) if o.plan.recompute else "none"
        rows.append([o.kind.value, o.plan.describe(), recompute, _si(o.step_time), f"{o.bubble_fraction:.1%}",
                     format_bytes(max(o.peak_bytes)), o.note])
    print(text_table(["schedule", "layers", "recompute", "step time", "bubble", "peak memory", "note"], rows,
                     right={3, 4, 5}))
    print(f"\nchosen: {joint.best.kind.value}, layers {joint.best.plan.describe()}")
    for lever in joint.levers:
        print(f"  - {lever}")


def print_layouts(layouts: tuple[Layout, ...]) -> None:
    """The layouts, fastest first, the ones that are out last with the reason."""
    rows = [[x.name, x.rows or "-", x.plan.describe() if x.plan else "-", _si(x.step_time) if x.feasible else "-",
             _si(x.exposed) if x.feasible and x.replicas > 1 else "-", format_bytes(max(x.memory)) if x.memory else "-",
             "" if x.feasible else f"out: {x.why}"] for x in layouts]
    print(text_table(["layout", "rows/microbatch", "layers", "step time", "all-reduce exposed", "memory/device", "note"],
                     rows, right={1, 3, 4, 5}))
    best = layouts[0]
    print(f"\nfastest: {best.name}" if best.feasible else "\nno layout fits")


def memory_report(spec: MLPSpec, batch: int, dtype: str, optimizer: str) -> None:
    """Exercise 3: training vs inference footprint, term by term."""
    train, infer = training_memory(spec, batch, dtype, optimizer), inference_memory(spec, batch, dtype)
    print(f"memory of MLP {'-'.join(map(str, spec.widths))} at batch {batch}, {dtype}, optimizer {optimizer}")
    rows = [[name, format_bytes(t), format_bytes(i)] for (name, t), (_, i) in zip(train.rows(), infer.rows()) if t or i]
    rows.append(["total", format_bytes(train.total), format_bytes(infer.total)])
    print(text_table(["term", "training", "inference"], rows, right={1, 2}))
    print(f"training needs {train.total / infer.total:.2f}x the memory of inference")


def main(argv: list[str] | None = None) -> int:
    """Parse, plan with every method, print the chosen plan and the comparison, write JSON/DOT."""
    a = parse_args(argv)
    require_positive(a, "stages", "microbatch", "microbatches", "batch", "tflops", "bandwidth", "layouts")
    spec = MLPSpec(parse_widths(a.widths), a.activation, a.bias, 0.0, a.loss)
    m = a.microbatches or 2 * a.stages
    if a.memory_report:
        memory_report(spec, a.batch or a.microbatch * m, a.dtype, a.optimizer)
        return 0
    kind = ScheduleKind(a.schedule)
    if a.layouts is None and not 1 <= a.stages <= spec.num_layers:
        raise ValueError(f"stages: cannot place {spec.num_layers} layers on {a.stages} stages; "
                         f"use between 1 and {spec.num_layers} stages")
    if a.max_inflight is not None and (kind is not ScheduleKind.AUTO or a.max_inflight < 1):
        raise ValueError("max-inflight: needs --schedule auto and an integer >= 1")
    link = k_device_link(a.link, LinkModel())[0] if a.link else LinkModel(a.latency, a.bandwidth)
    layer_times, source = None, f"FLOPs at {a.tflops:g} TFLOP/s"
    if a.save_profile:
        profile = profile_layers(spec, a.microbatch, device=a.device, dtype=a.dtype)
        profile.save(a.save_profile)
        print(f"saved the profile measured on {profile.device_name} to {a.save_profile}")
    else:
        profile = Profile.load(a.profile) if a.profile else None
    if profile is not None:
        profile.check(spec, a.microbatch)
        layer_times, source = profile.layers, f"measured on {profile.device_name or profile.device} ({profile.dtype})"
    caps = [parse_bytes(c) for c in a.memory_caps.split(",")] if a.memory_caps else None
    if a.layouts is not None:
        if caps or a.device_speeds:
            raise ValueError("layouts: give one --memory-cap for every device (no --memory-caps or --device-speeds)")
        m = a.microbatches or 2 * a.layouts
        scale = profile.microbatch if profile else 1
        times = (lambda rows: [c.scaled(rows / scale) for c in layer_times]) if layer_times else None
        layouts = plan_layouts(spec, a.layouts, a.batch or a.microbatch * m, m, kind=kind, layer_times=times,
                               flops_per_second=a.tflops * 1e12, link=link, dtype=a.dtype, optimizer=a.optimizer,
                               memory_cap=parse_bytes(a.memory_cap) if a.memory_cap else None)
        print(f"MLP {'-'.join(map(str, spec.widths))}, {a.dtype}, {a.optimizer}; {a.layouts} devices, global batch "
              f"{a.batch or a.microbatch * m} in {m} microbatches per replica, {kind.value}; times: {source}"
              f"{' scaled by rows' if profile else ''}; link: {'free' if link.is_free else link.describe()}")
        print_layouts(layouts)
        if a.json:
            write_json(a.json, {"widths": list(spec.widths), "devices": a.layouts, "microbatches": m,
                                "layouts": [x.to_dict() for x in layouts]})
        return 0
    options = dict(layer_times=layer_times, flops_per_second=a.tflops * 1e12, dtype=a.dtype, optimizer=a.optimizer,
                   link=link, inflight=lambda k: schedule_counts(kind, k, m)[0],
                   deferred_w=lambda k: schedule_counts(kind, k, m)[1],
                   memory_caps=parse_bytes(a.memory_cap) if a.memory_cap else caps,
                   device_speeds=_floats(a.device_speeds, "device-speeds"))
    if kind is ScheduleKind.AUTO:
        def problem_with(inflight, deferred):
            return problem_for(spec, a.stages, a.microbatch, **{**options, "inflight": inflight, "deferred_w": deferred})
        joint = choose(problem_with, a.stages, m, max_inflight=a.max_inflight, recompute=a.recompute)
        print(f"MLP {'-'.join(map(str, spec.widths))}, {a.dtype}, {a.optimizer}; {a.stages} stages, {m} microbatches of "
              f"{a.microbatch}; times: {source}; link: {'free' if link.is_free else link.describe()}")
        print_joint(joint)
        if a.json:
            write_json(a.json, {"widths": list(spec.widths), "microbatches": m, "microbatch": a.microbatch,
                                "joint": joint.to_dict()})
        return 0
    schedule = generate(kind, a.stages, m)
    inflight, deferred = schedule_counts(kind, a.stages, m)
    problem: Problem = problem_for(spec, a.stages, a.microbatch, **options)
    plans = {Method.OPTIMAL: plan_for(spec, a.stages, a.microbatch, Method.OPTIMAL, **options)}
    plans.update({method: partition(problem, method) for method in Method if method is not Method.OPTIMAL})
    if a.ranges:
        plans[None] = problem.evaluate(parse_ranges(a.ranges, spec.num_layers))
    chosen = plans[Method(a.method)]
    print(f"MLP {'-'.join(map(str, spec.widths))} ({spec.activation.value}, bias {spec.bias_name}, "
          f"{spec.loss.value}), {a.dtype}, {a.optimizer}; {a.stages} stages, {m} microbatches of {a.microbatch}, "
          f"{kind.value}; times: {source}; link: {'free' if link.is_free else link.describe()}")
    print(f"\nplan by {chosen.method.value}: layers {chosen.describe()}")
    print_plan(chosen, inflight)
    rows, lines = [], []
    for method, plan in plans.items():
        step, bubble = step_time(plan, schedule, link)
        name = method.value if method else "given"
        rows.append({**plan.to_dict(), "method": name, "step_time": step, "bubble_fraction": bubble})
        lines.append([name, plan.describe(), _si(plan.bottleneck), _si(step), f"{bubble:.1%}", format_bytes(max(plan.memory)),
                      "yes" if plan.fits else "NO"])
    print()
    print(text_table(["method", "layers", "bottleneck", "step time", "bubble", "max memory", "fits"], lines,
                     right={2, 3, 4, 5}))
    print("(bottleneck: slowest stage per microbatch incl. its links; step time and bubble: partition.schedule.simulate)")
    if a.json:
        write_json(a.json, {"widths": list(spec.widths), "schedule": kind.value, "microbatches": m,
                            "microbatch": a.microbatch, "inflight": inflight, "deferred_w": deferred, "plans": rows})
    if a.dot:
        title = f"MLP {'-'.join(map(str, spec.widths))} over {a.stages} stages: layers {chosen.describe()}"
        Path(a.dot).write_text(to_dot(build_graph(spec), stages=chosen.ranges, title=title))
    return 0


if __name__ == "__main__":
    run_main(main, "plan.py")
