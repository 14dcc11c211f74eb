"""What the partition command line prints: one plan's stages, the joint choice, the layouts, exercise 3's memory."""

from __future__ import annotations

from partition.choose import JointChoice
from partition.layouts import Layout
from partition.memory import inference_memory, training_memory
from partition.partitioner import Plan
from partition.plan import format_ranges
from partition.schedule.actions import Schedule
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import LinkModel
from partition.units import format_bytes
from runtime.output import text_table


def step_time(plan: Plan, schedule: Schedule, link: LinkModel) -> tuple[float, float]:
    """(step seconds, bubble fraction) the simulator predicts for ``plan`` under ``schedule`` and ``link``."""
    result = simulate(schedule, plan.stage_costs, link=link, activation_bytes=plan.boundary_bytes or None)
    return result.makespan, result.bubble_fraction


def si(seconds: float) -> str:
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
        rows.append([s, format_ranges(((a, b),)), f"{plan.parameters[s]:,}", si(c.f), si(c.b), si(c.w),
                     si(plan.comm_times[s]), cut, inflight[s], format_bytes(plan.memory[s]), format_bytes(cap) if cap else "-"])
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
        rows.append([o.kind.value, o.plan.describe(), recompute, si(o.step_time), f"{o.bubble_fraction:.1%}",
                     format_bytes(max(o.peak_bytes)), o.note])
    print(text_table(["schedule", "layers", "recompute", "step time", "bubble", "peak memory", "note"], rows,
                     right={3, 4, 5}))
    print(f"\nchosen: {joint.best.kind.value}, layers {joint.best.plan.describe()}")
    for lever in joint.levers:
        print(f"  - {lever}")


def print_layouts(layouts: tuple[Layout, ...]) -> None:
    """The layouts, fastest first, the ones that are out last with the reason."""
    rows = [[x.name, x.rows or "-", x.plan.describe() if x.plan else "-", si(x.step_time) if x.feasible else "-",
             si(x.exposed) if x.feasible and x.replicas > 1 else "-", format_bytes(max(x.memory)) if x.memory else "-",
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
