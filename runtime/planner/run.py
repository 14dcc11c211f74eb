"""The partition command line's work: plan with every method, choose schedule and recomputation, rank layouts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from partition.choose import choose, schedule_counts
from partition.dot import to_dot
from partition.graph import build_graph
from partition.layouts import plan_layouts
from partition.partitioner import Method, Problem, parse_ranges, partition, plan_for, problem_for
from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.spec import MLPSpec
from partition.timing import LinkModel
from partition.units import format_bytes, parse_bytes
from runtime.calibrate.run import k_device_link
from runtime.output import text_table, write_json
from runtime.planner.report import memory_report, print_joint, print_layouts, print_plan, si, step_time
from runtime.train.profile import Profile, profile_layers


@dataclass(frozen=True)
class PlanConfig:
    """What ``scripts/plan.py`` was asked for (its flags, one field each; see its --help)."""

    spec: MLPSpec
    stages: int = 4
    microbatch: int = 64
    microbatches: int | None = None
    schedule: ScheduleKind = ScheduleKind.ONE_F_ONE_B
    max_inflight: int | None = None
    recompute: bool = True
    method: str = "optimal"
    ranges: str | None = None
    layouts: int | None = None
    memory_cap: str | None = None
    memory_caps: str | None = None
    device_speeds: str | None = None
    tflops: float = 100.0
    bandwidth: float = float("inf")
    latency: float = 0.0
    link: str | None = None
    profile: str | None = None
    save_profile: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    optimizer: str = "sgd"
    json: str | None = None
    dot: str | None = None
    memory_report: bool = False
    batch: int | None = None


def _floats(text: str | None, field: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise ValueError(f"{field}: cannot read {text!r} ({err})") from None


def run_plan(a: PlanConfig) -> int:
    """Plan as asked: the memory report, the layouts of K devices, the joint choice, or every method compared."""
    spec, m = a.spec, a.microbatches or 2 * a.stages
    if a.memory_report:
        memory_report(spec, a.batch or a.microbatch * m, a.dtype, a.optimizer)
        return 0
    if a.layouts is None and not 1 <= a.stages <= spec.num_layers:
        raise ValueError(f"stages: cannot place {spec.num_layers} layers on {a.stages} stages; "
                         f"use between 1 and {spec.num_layers} stages")
    if a.max_inflight is not None and (a.schedule is not ScheduleKind.AUTO or a.max_inflight < 1):
        raise ValueError("max-inflight: needs --schedule auto and an integer >= 1")
    link = k_device_link(a.link, LinkModel())[0] if a.link else LinkModel(a.latency, a.bandwidth)
    profile = _profile(a)
    if a.layouts is not None:
        _layouts(a, profile, link)
    elif a.schedule is ScheduleKind.AUTO:
        _joint(a, m, _options(a, m, profile, link), _source(a, profile), link)
    else:
        _methods(a, m, _options(a, m, profile, link), _source(a, profile), link)
    return 0


def _profile(a: PlanConfig) -> Profile | None:
    """Per-layer times measured now (--save-profile) or earlier (--profile), checked against the model."""
    if a.save_profile:
        profile = profile_layers(a.spec, a.microbatch, device=a.device, dtype=a.dtype)
        profile.save(a.save_profile)
        print(f"saved the profile measured on {profile.device_name} to {a.save_profile}")
    else:
        profile = Profile.load(a.profile) if a.profile else None
    if profile is not None:
        profile.check(a.spec, a.microbatch)
    return profile


def _source(a: PlanConfig, profile: Profile | None) -> str:
    if profile is None:
        return f"FLOPs at {a.tflops:g} TFLOP/s"
    return f"measured on {profile.device_name or profile.device} ({profile.dtype})"


def _header(a: PlanConfig, what: str, source: str, link: LinkModel, model: str = "") -> str:
    return (f"MLP {'-'.join(map(str, a.spec.widths))}{model}, {a.dtype}, {a.optimizer}; {what}; times: {source}; "
            f"link: {'free' if link.is_free else link.describe()}")


def _options(a: PlanConfig, m: int, profile: Profile | None, link: LinkModel) -> dict:
    """The partitioner's keyword arguments shared by the joint choice and the method comparison."""
    caps = [parse_bytes(c) for c in a.memory_caps.split(",")] if a.memory_caps else None
    return dict(layer_times=profile.layers if profile else None, flops_per_second=a.tflops * 1e12, dtype=a.dtype,
                optimizer=a.optimizer, link=link, inflight=lambda k: schedule_counts(a.schedule, k, m)[0],
                deferred_w=lambda k: schedule_counts(a.schedule, k, m)[1],
                memory_caps=parse_bytes(a.memory_cap) if a.memory_cap else caps,
                device_speeds=_floats(a.device_speeds, "device-speeds"))


def _layouts(a: PlanConfig, profile: Profile | None, link: LinkModel) -> None:
    """--layouts K: every PP x DP layout of K devices, ranked."""
    if a.memory_caps or a.device_speeds:
        raise ValueError("layouts: give one --memory-cap for every device (no --memory-caps or --device-speeds)")
    m = a.microbatches or 2 * a.layouts
    scale = profile.microbatch if profile else 1
    times = (lambda rows: [c.scaled(rows / scale) for c in profile.layers]) if profile else None
    batch = a.batch or a.microbatch * m
    layouts = plan_layouts(a.spec, a.layouts, batch, m, kind=a.schedule, layer_times=times,
                           flops_per_second=a.tflops * 1e12, link=link, dtype=a.dtype, optimizer=a.optimizer,
                           memory_cap=parse_bytes(a.memory_cap) if a.memory_cap else None)
    what = f"{a.layouts} devices, global batch {batch} in {m} microbatches per replica, {a.schedule.value}"
    print(_header(a, what, _source(a, profile) + (" scaled by rows" if profile else ""), link))
    print_layouts(layouts)
    if a.json:
        write_json(a.json, {"widths": list(a.spec.widths), "devices": a.layouts, "microbatches": m,
                            "layouts": [x.to_dict() for x in layouts]})


def _joint(a: PlanConfig, m: int, options: dict, source: str, link: LinkModel) -> None:
    """--schedule auto: ranges, recomputation and schedule chosen together."""
    def problem_with(inflight, deferred):
        return problem_for(a.spec, a.stages, a.microbatch, **{**options, "inflight": inflight, "deferred_w": deferred})

    joint = choose(problem_with, a.stages, m, max_inflight=a.max_inflight, recompute=a.recompute)
    print(_header(a, f"{a.stages} stages, {m} microbatches of {a.microbatch}", source, link))
    print_joint(joint)
    if a.json:
        write_json(a.json, {"widths": list(a.spec.widths), "microbatches": m, "microbatch": a.microbatch,
                            "joint": joint.to_dict()})


def _methods(a: PlanConfig, m: int, options: dict, source: str, link: LinkModel) -> None:
    """A fixed schedule: every partitioning method (and --ranges) planned, simulated and compared."""
    spec, kind = a.spec, a.schedule
    schedule = generate(kind, a.stages, m)
    inflight, deferred = schedule_counts(kind, a.stages, m)
    problem: Problem = problem_for(spec, a.stages, a.microbatch, **options)
    plans = {Method.OPTIMAL: plan_for(spec, a.stages, a.microbatch, Method.OPTIMAL, **options)}
    plans.update({method: partition(problem, method) for method in Method if method is not Method.OPTIMAL})
    if a.ranges:
        plans[None] = problem.evaluate(parse_ranges(a.ranges, spec.num_layers))
    chosen = plans[Method(a.method)]
    model = f" ({spec.activation.value}, bias {spec.bias_name}, {spec.loss.value})"
    print(_header(a, f"{a.stages} stages, {m} microbatches of {a.microbatch}, {kind.value}", source, link, model))
    print(f"\nplan by {chosen.method.value}: layers {chosen.describe()}")
    print_plan(chosen, inflight)
    rows, lines = [], []
    for method, plan in plans.items():
        step, bubble = step_time(plan, schedule, link)
        name = method.value if method else "given"
        rows.append({**plan.to_dict(), "method": name, "step_time": step, "bubble_fraction": bubble})
        lines.append([name, plan.describe(), si(plan.bottleneck), si(step), f"{bubble:.1%}", format_bytes(max(plan.memory)),
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
