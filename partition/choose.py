"""Ranges, per-stage recomputation and the schedule chosen together, by simulating each candidate schedule.

For every fixed schedule (one stage per device) the joint partition (``partition.joint``: exact ranges x
recomputation under the caps, memory by the exact walk of that schedule's lists) gives its plan, which is then
simulated with that schedule. The auto schedule (``partition.schedule.capped``) is tried on each of those plans and on the one
planned for a single microbatch in flight (the leanest any schedule can be): each device's activation budget is
its cap minus its static bytes (parameters, gradients, optimizer state, message buffers), and the generator
finds the fastest schedule within it. The fastest option that fits wins; ``levers`` says, in words, which of
ranges, recomputation and schedule the caps moved, and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from partition.activation_peak import rank_activation_peaks
from partition.cost import DType, Optimizer
from partition.joint import joint_partition, stage_need
from partition.partitioner import Plan, Problem, partition, problem_for
from partition.plan import Ranges
from partition.recompute import NO_RECOMPUTE, Recompute, per_stage, recompute_forward
from partition.schedule.actions import Schedule, ScheduleKind
from partition.schedule.capped import ActivationCap, CappedResult, capped_schedule
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import StageCost
from partition.units import format_bytes

CANDIDATES = (ScheduleKind.GPIPE, ScheduleKind.ONE_F_ONE_B, ScheduleKind.ZB_H1, ScheduleKind.AUTO)


@dataclass(frozen=True)
class ScheduleOption:
    """One candidate schedule with its best plan; ``step_time`` is inf and ``note`` says why when nothing fits."""

    kind: ScheduleKind
    plan: Plan | None
    schedule: Schedule | None
    step_time: float
    bubble_fraction: float
    peak_bytes: tuple[int, ...]  # per device: static bytes + the exact activation peak of the schedule
    note: str
    problem: Problem | None = None  # what the plan was made for (its in-flight counts)

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {"schedule": self.kind.value, "fits": self.plan is not None, "step_time": self.step_time,
                "bubble_fraction": self.bubble_fraction, "peak_bytes": list(self.peak_bytes), "note": self.note,
                "plan": None if self.plan is None else self.plan.to_dict()}


@dataclass(frozen=True)
class JointChoice:
    """Every option, the fastest that fits, and the levers pulled (one sentence each)."""

    options: tuple[ScheduleOption, ...]
    best: ScheduleOption
    levers: tuple[str, ...]

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {"chosen": self.best.kind.value, "step_time": self.best.step_time, "levers": list(self.levers),
                "options": [o.to_dict() for o in self.options]}


def schedule_counts(kind: ScheduleKind, num_stages: int, num_microbatches: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per stage: the peak microbatches in flight and peak deferred W of a fixed schedule, as the simulator counts."""
    result = simulate(generate(kind, num_stages, num_microbatches), [StageCost(1.0, 1.0, 1.0)] * num_stages)
    return result.peak_inflight, result.peak_deferred_w


def choose(
    problem_for: Callable[[tuple[int, ...], tuple[int, ...]], Problem],
    num_stages: int,
    num_microbatches: int,
    kinds: tuple[ScheduleKind, ...] = CANDIDATES,
    max_inflight: int | None = None,
    recompute: bool = True,
) -> JointChoice:
    """The fastest fitting (ranges, recomputation, schedule) over ``kinds`` (one stage per device).

    ``problem_for(inflight, deferred_w)`` builds the problem for per-stage counts; ``max_inflight`` caps the
    microbatches any stage holds; ``recompute=False`` keeps every stage's activations. ValueError (one line)
    when no candidate fits, naming each one's reason.
    """
    k, m = num_stages, num_microbatches
    options, plans = [], []
    for kind in (kd for kd in kinds if kd is not ScheduleKind.AUTO):
        schedule = generate(kind, k, m)
        inflight, deferred = schedule_counts(kind, k, m)
        problem = problem_for(inflight, deferred)
        if max_inflight is not None and max(inflight) > max_inflight:
            options.append(_unfit(kind, f"holds {max(inflight)} microbatches in flight, over the cap of {max_inflight}"))
            continue
        try:
            plan = joint_partition(problem, recompute, schedule)
        except ValueError as err:
            options.append(_unfit(kind, str(err)))
            continue
        plans.append((plan, problem))
        options.append(_option(kind, plan, schedule, problem))
    if ScheduleKind.AUTO in kinds:
        lean = problem_for((1,) * k, (0,) * k)
        try:
            plans.append((joint_partition(lean, recompute), lean))
        except ValueError:
            pass
        options.append(_auto(plans, m, max_inflight))
    fitting = [o for o in options if o.plan is not None]
    if not fitting:
        raise ValueError("no schedule fits: " + "; ".join(f"{o.kind.value}: {o.note}" for o in options))
    best = min(fitting, key=lambda o: o.step_time)
    return JointChoice(tuple(options), best, _levers(problem_for, best, options))


def _option(kind: ScheduleKind, plan: Plan, schedule: Schedule, problem: Problem, note: str = "") -> ScheduleOption:
    sim = simulate(schedule, plan.stage_costs, problem.link, plan.boundary_bytes or None)
    peaks = _peaks(problem, plan, schedule)
    return ScheduleOption(kind, plan, schedule, sim.makespan, sim.bubble_fraction, peaks, note, problem)


def _unfit(kind: ScheduleKind, why: str) -> ScheduleOption:
    return ScheduleOption(kind, None, None, math.inf, math.nan, (), why)


def _static(problem: Problem, plan: Plan) -> list[int]:
    """Per device: everything but activations (parameters, gradients, optimizer state, message buffers)."""
    choices = per_stage(plan.recompute or (), plan.num_stages)
    return [problem.memory.stage(a, b, 0, 0, c).total for (a, b), c in zip(plan.ranges, choices)]


def _peaks(problem: Problem, plan: Plan, schedule: Schedule) -> tuple[int, ...]:
    if problem.memory is None:
        return ()
    choices = per_stage(plan.recompute or (), plan.num_stages)
    held = rank_activation_peaks(schedule, [problem.memory.microbatch(a, b, c) for (a, b), c in zip(plan.ranges, choices)])
    return tuple(s + h for s, h in zip(_static(problem, plan), held))


def auto_schedule(problem: Problem, plan: Plan, num_microbatches: int, max_inflight: int | None = None) -> CappedResult:
    """The auto schedule for ``plan`` (one stage per device): each device's activation budget is its cap minus its
    static bytes, each stage's bytes per microbatch follow its recomputation; ValueError (one line) if none fits."""
    if problem.memory is None:
        raise ValueError("auto schedule: the problem needs a memory model")
    caps = problem.memory_caps or (math.inf,) * problem.num_stages
    budgets = tuple(c - s for c, s in zip(caps, _static(problem, plan)))
    choices = per_stage(plan.recompute or (), plan.num_stages)
    stage_bytes = tuple(problem.memory.microbatch(a, b, c) for (a, b), c in zip(plan.ranges, choices))
    return capped_schedule(problem.num_stages, num_microbatches, plan.stage_costs,
                           ActivationCap(budgets, stage_bytes, max_inflight), problem.link, plan.boundary_bytes or None)


def auto_for_ranges(
    spec: MLPSpec,
    ranges: Ranges,
    microbatch: int,
    num_microbatches: int,
    memory_cap: float | None = None,
    max_inflight: int | None = None,
    recompute: Sequence[Recompute] = (),
    dtype: DType | str = DType.FLOAT32,
    optimizer: Optimizer | str = Optimizer.SGD,
) -> Schedule:
    """The auto schedule for fixed layer ranges (one stage per device), with FLOP-based stage times: what a
    training run uses. ``memory_cap``: bytes per device (None: only ``max_inflight`` limits)."""
    problem = problem_for(spec, len(ranges), microbatch, dtype=dtype, optimizer=optimizer, memory_caps=memory_cap)
    return auto_schedule(problem, problem.evaluate(tuple(ranges), recompute=recompute), num_microbatches, max_inflight).schedule


def _auto(plans: list[tuple[Plan, Problem]], m: int, max_inflight: int | None) -> ScheduleOption:
    """The auto schedule on each distinct plan: the fastest that fits its budgets."""
    best, why = None, "no plan leaves room for activations"
    seen = set()
    for plan, problem in plans:
        key = (plan.ranges, plan.recompute)
        if key in seen or problem.memory is None:
            continue
        seen.add(key)
        try:
            found = auto_schedule(problem, plan, m, max_inflight)
        except ValueError as err:
            why = str(err)
            continue
        option = _option(ScheduleKind.AUTO, plan, found.schedule, problem, _auto_note(found))
        if best is None or option.step_time < best.step_time:
            best = option
    return best or _unfit(ScheduleKind.AUTO, why)


def _auto_note(found: CappedResult) -> str:
    """Where the auto schedule came from, whether the exact search proved it optimal, and the rules' gap to it."""
    gap = "" if found.gap is None else f", best priority rule {found.gap:.1%} slower"
    return f"{found.source}; exact search {found.exact}{gap}"


def _levers(problem_for, best: ScheduleOption, options: tuple[ScheduleOption, ...]) -> tuple[str, ...]:
    """Which of ranges, recomputation and schedule the caps moved, and why, one sentence each."""
    plan, problem, out = best.plan, best.problem, []
    free = problem_for((1,) * plan.num_stages, (0,) * plan.num_stages)
    fastest = partition(Problem(free.layer_times, free.num_stages, free.boundary_bytes, free.link, free.device_speeds))
    if fastest.ranges != plan.ranges:
        out.append(f"ranges: {plan.describe()} instead of the fastest split {fastest.describe()} "
                   f"(bottleneck {plan.bottleneck:.4g} s vs {fastest.bottleneck:.4g} s per microbatch) to fit the caps")
    for s, choice in enumerate(plan.recompute or ()):
        if choice != NO_RECOMPUTE:
            a, b = plan.ranges[s]
            need = stage_need(problem, s, a, b, NO_RECOMPUTE, best.schedule)
            extra = recompute_forward(problem.layer_times, a, b, choice) / problem.device_speeds[s]
            out.append(f"recomputation: stage {s} (layers {a}-{b - 1}) recomputes {choice}: without it the stage needs "
                       f"{format_bytes(need)} over its cap of {format_bytes(problem.memory_caps[s])}, or a slower "
                       f"split; it costs {extra:.3g} s more B per microbatch")
    if not out:
        out.append(f"ranges and recomputation: the fastest split {plan.describe()} fits with no recomputation")
    others = "; ".join(f"{o.kind.value} {_summary(o, fastest)}" for o in options if o is not best)
    out.append(f"schedule: {best.kind.value}, the fastest simulated step that fits ({best.step_time:.4g} s; {others})")
    if best.peak_bytes:
        out.append(f"memory: the busiest device peaks at {format_bytes(max(best.peak_bytes))}")
    return tuple(out)


def _summary(option: ScheduleOption, fastest: Plan) -> str:
    """A losing option in a few words: its step time and what it had to give up, or why it does not fit."""
    if option.plan is None:
        return "does not fit"
    gave = [what for what, moved in (("other ranges", option.plan.ranges != fastest.ranges),
                                     ("recomputation", option.plan.recompute is not None)) if moved]
    return f"{option.step_time:.4g} s" + (f" with {' and '.join(gave)}" if gave else "")
