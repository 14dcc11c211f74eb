"""The auto schedule: the fastest schedule found that keeps every rank within an activation-memory cap.

Candidates, each simulated with the given costs and link and kept only if it fits: the fixed schedules for the
placement (gpipe, 1f1b, zb-h1 with one stage per rank; zb-v for two stages per rank in a V), every priority rule
of ``capped_rules``, and, where p x m <= 9 (or when asked), the exact branch and bound of ``capped_exact`` over
per-rank orders of F/B/W (and BW). A schedule fits when every rank's activation peak, walked along its list by
``partition.activation_peak``, stays within the rank's budget, and the simulator's peak in-flight count of no
stage exceeds ``max_inflight``. The step times compared are the simulator's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from partition.activation_peak import rank_activation_peaks
from partition.memory import MicrobatchBytes
from partition.schedule.actions import Schedule, ScheduleKind
from partition.schedule.capped_exact import exact_search
from partition.schedule.capped_rules import Rule, refine, rules, run_rule
from partition.schedule.capped_state import Pipe, State
from partition.schedule.generators import generate
from partition.schedule.simulate import FREE_LINK, SimResult, simulate
from partition.schedule.validate import validate
from partition.timing import LinkModel, StageCost
from partition.units import format_bytes

EXACT_UP_TO = 9  # p x m at or below which the exact search runs by default
UNIT_BYTES = MicrobatchBytes(1, 1, 1)  # counts microbatches
REFINE = 3  # how many of the fastest uniform rules get per-stage limits refined


class Placement(Enum):
    """Stages per rank: one (stage s on rank s), or two in a V (as zb-v: rank r holds stages r and 2p-1-r)."""

    LINE = "line"
    V = "v"

    @property
    def kinds(self) -> tuple[ScheduleKind, ...]:
        """The fixed schedules with this placement."""
        if self is Placement.V:
            return (ScheduleKind.ZB_V,)
        return (ScheduleKind.GPIPE, ScheduleKind.ONE_F_ONE_B, ScheduleKind.ZB_H1)


@dataclass(frozen=True)
class ActivationCap:
    """Per-rank activation budget in bytes, what one microbatch holds on each stage, and a cap on microbatches.

    ``stage_bytes``: per stage, the bytes of one microbatch in each phase (``partition.memory.MicrobatchBytes``);
    empty means 1 in every phase, so that the budget counts microbatches held from F until W. ``max_inflight``
    caps every stage's in-flight microbatches as the simulator counts them (None: no count cap).
    """

    budget: float | tuple[float, ...] = math.inf
    stage_bytes: tuple[MicrobatchBytes, ...] = ()
    max_inflight: int | None = None

    def rank_bytes(self, schedule: Schedule) -> tuple[int, ...]:
        """Per rank: the activation peak of the schedule's lists (``partition.activation_peak``)."""
        return rank_activation_peaks(schedule, self.per_stage(schedule.num_stages))

    def fits(self, schedule: Schedule, sim: SimResult) -> bool:
        """Whether every rank's peak is within its budget and the simulated in-flight counts within the cap."""
        if self.max_inflight is not None and max(sim.peak_inflight) > self.max_inflight:
            return False
        return all(b <= cap for b, cap in zip(self.rank_bytes(schedule), self.budgets(schedule.num_ranks)))

    def budgets(self, num_ranks: int) -> tuple[float, ...]:
        """One budget per rank."""
        if isinstance(self.budget, (int, float)):
            return (float(self.budget),) * num_ranks
        if len(self.budget) != num_ranks:
            raise ValueError(f"activation cap: expected one budget or {num_ranks} (one per rank), got {len(self.budget)}")
        return tuple(float(b) for b in self.budget)

    def per_stage(self, num_stages: int) -> tuple[MicrobatchBytes, ...]:
        """One ``MicrobatchBytes`` per stage."""
        if not self.stage_bytes:
            return (UNIT_BYTES,) * num_stages
        if len(self.stage_bytes) != num_stages:
            raise ValueError(f"activation cap: expected bytes for {num_stages} stages, got {len(self.stage_bytes)}")
        return tuple(self.stage_bytes)


@dataclass(frozen=True)
class Candidate:
    """One schedule tried: its simulated step time, whether it fits, and its peak bytes per rank."""

    name: str
    makespan: float
    fits: bool
    rank_bytes: tuple[float, ...]


@dataclass(frozen=True)
class CappedResult:
    """The chosen schedule (kind auto) and what was tried; ``gap``: best rule over the exact optimum, minus 1."""

    schedule: Schedule
    sim: SimResult
    source: str
    candidates: tuple[Candidate, ...]
    exact: str  # "proven optimal", "not proven (node budget)", or "not run"
    gap: float | None

    @property
    def makespan(self) -> float:
        """The simulated step time of the chosen schedule."""
        return self.sim.makespan

    def to_json(self) -> dict:
        """A JSON-ready summary."""
        return {"source": self.source, "makespan": self.makespan, "bubble_fraction": self.sim.bubble_fraction,
                "exact": self.exact, "gap": self.gap,
                "candidates": [{"name": c.name, "makespan": c.makespan, "fits": c.fits, "rank_bytes": list(c.rank_bytes)}
                               for c in self.candidates]}


def capped_schedule(
    num_ranks: int,
    num_microbatches: int,
    costs: Sequence[StageCost],
    cap: ActivationCap,
    link: LinkModel = FREE_LINK,
    activation_bytes: Sequence[float] | None = None,
    placement: Placement = Placement.LINE,
    exact: bool | None = None,
    max_nodes: int = 100_000,
) -> CappedResult:
    """The fastest schedule found for p ranks, m microbatches and per-stage ``costs`` within ``cap`` (see module doc).

    ``exact``: None runs the exact search when p x m <= 9 (and every F and B takes time), True always (within
    ``max_nodes``), False never.
    Raises ValueError (one line) when the cap cannot hold even one microbatch per stage.
    """
    p, m = num_ranks, num_microbatches
    first = generate(placement.kinds[0], p, m)
    pipe = search_problem(p, m, placement, costs, cap, link, activation_bytes)

    def run(name: str, schedule: Schedule) -> tuple[Candidate, Schedule, SimResult]:
        sim = simulate(schedule, costs, link, activation_bytes)
        return Candidate(name, sim.makespan, cap.fits(schedule, sim), cap.rank_bytes(schedule)), schedule, sim

    tried = [run(kind.value, generate(kind, p, m)) for kind in placement.kinds]
    best_rule = _best_rule(pipe)
    if best_rule is not None:
        tried.append(run(f"rule {best_rule[0].name}", _auto(first, best_rule[1].lists)))
        best_rule = tried[-1]
    fitting = [t for t in tried if t[0].fits]
    status, gap = "not run", None
    timed = all(f > 0 and b > 0 for f, b, _ in pipe.cost)  # the exact search's order needs F and B to take time
    if not timed and exact:
        raise ValueError("exact capped search: every stage needs F and B times > 0")
    if timed and (exact if exact is not None else p * m <= EXACT_UP_TO):
        upper = min((c.makespan for c, _, _ in fitting), default=math.inf)
        found = exact_search(pipe, upper, max_nodes)
        if found.lists is not None:
            tried.append(run("exact", _auto(first, found.lists)))
            fitting.append(tried[-1])
        status = "proven optimal" if found.proven else "not proven (node budget)"
        if found.proven and best_rule is not None:
            optimum = min(c.makespan for c, _, _ in fitting)
            gap = best_rule[0].makespan / optimum - 1 if optimum > 0 else 0.0
    if not fitting:
        raise ValueError(_too_small(pipe))
    chosen, schedule, sim = min(fitting, key=lambda t: t[0].makespan)
    schedule = _auto(first, schedule.actions)
    validate(schedule)
    return CappedResult(schedule, sim, chosen.name, tuple(c for c, _, _ in tried), status, gap)


def _best_rule(pipe: Pipe) -> tuple[Rule, State] | None:
    """The fastest uniform-limit rule, then per-stage limits refined from the few fastest rules."""
    found = [(state.makespan, i, rule, state) for i, rule in enumerate(rules(pipe))
             for state in (run_rule(pipe, rule),) if state is not None]
    if not found:
        return None
    found.sort(key=lambda t: t[:2])
    best_time, _, best, state = found[0]
    for time, _, rule, _ in found[:REFINE]:
        tuned, better = refine(pipe, rule, time)
        if better is not None and better.makespan < best_time:
            best_time, best, state = better.makespan, tuned, better
    return best, state


def _auto(template: Schedule, lists) -> Schedule:
    """Lists as a schedule of kind auto with the template's placement."""
    actions = lists if hasattr(lists, "items") else dict(enumerate(lists))
    return Schedule(ScheduleKind.AUTO, template.num_ranks, template.num_stages, template.num_microbatches,
                    template.placement, actions)


def search_problem(
    num_ranks: int,
    num_microbatches: int,
    placement: Placement,
    costs: Sequence[StageCost],
    cap: ActivationCap,
    link: LinkModel = FREE_LINK,
    activation_bytes: Sequence[float] | None = None,
) -> Pipe:
    """The numbers both searches work on (``capped_state.Pipe``), checked against the placement's stage count."""
    p, m = num_ranks, num_microbatches
    where = generate(placement.kinds[0], p, m).placement
    S = len(where)
    costs = list(costs)
    if len(costs) != S or not all(isinstance(c, StageCost) for c in costs):
        raise ValueError(f"costs: expected {S} StageCost values (one per stage), got {len(costs)}")
    sizes = [float(x) for x in activation_bytes] if activation_bytes is not None else []
    sizes += [0.0] * (S - len(sizes))
    transfer = tuple(link.time(sizes[s]) if s < S - 1 and where[s] != where[s + 1] else 0.0 for s in range(S))
    count = cap.max_inflight if cap.max_inflight is not None else m
    if count < 1:
        raise ValueError(f"max in-flight microbatches: expected an integer >= 1, got {count}")
    return Pipe(p, m, where, tuple((c.f, c.b, c.w) for c in costs), transfer, cap.per_stage(S), cap.budgets(p), count)


def _too_small(pipe: Pipe) -> str:
    need = [sum(max(mb.forward, mb.backward, mb.deferred) for mb in (pipe.bytes[s] for s in pipe.stages_of(r)))
            for r in range(pipe.num_ranks)]
    short = [r for r in range(pipe.num_ranks) if need[r] > pipe.budget[r]]
    r = short[0] if short else 0
    return (f"activation cap: no schedule fits {format_bytes(pipe.budget[r])} of activations on rank {r}; one "
            f"microbatch on each of its stages takes up to {format_bytes(need[r])}")
