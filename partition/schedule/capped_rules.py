"""Priority-rule list scheduling under a memory cap: the heuristic side of the capped schedule generator.

One rule is an order of the three ops (e.g. B before F before W, the zero-bubble choice: the backward chain
never waits, F fills what it can, W fills the rest), a bound on each stage's in-flight microbatches, and
whether a rank may idle for a preferred action. The scheduler advances time: the rank that can start something
earliest picks, among what it can start then, the first op in the rule's order (for B and W the oldest
microbatch, for F the later stage of the rank, which drains a V first); with ``wait`` it instead idles for a
preferred action that becomes ready before the earliest one would end. An action is allowed only while its
rank's bytes stay within the budget (``capped_state``); a B whose deferred set would not fit runs fused as BW
instead. A rule that leaves every rank unable to move stops early and is dropped by the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from partition.schedule.capped_state import BW, B, F, Pipe, State, W


@dataclass(frozen=True)
class Rule:
    """One priority rule: an op order, per-stage in-flight limits, and whether a rank may idle for a better op."""

    order: tuple[int, int, int]
    limits: tuple[int, ...]
    wait: bool

    @property
    def name(self) -> str:
        """A short label for reports, e.g. ``B>F>W limit 4 wait`` or ``B>F>W limits 4,3,2,1``."""
        ops = ">".join("FBW"[op] for op in self.order)
        same = len(set(self.limits)) == 1
        limits = f"limit {self.limits[0]}" if same else "limits " + ",".join(map(str, self.limits))
        return f"{ops} {limits}" + (" wait" if self.wait else "")

    def with_limit(self, stage: int, limit: int) -> Rule:
        """The same rule with one stage's limit changed."""
        limits = list(self.limits)
        limits[stage] = limit
        return Rule(self.order, tuple(limits), self.wait)


ORDERS = ((B, F, W), (B, W, F), (F, B, W))


def rules(pipe: Pipe) -> Iterator[Rule]:
    """The rules tried first: every op order x one limit for all stages (1, 2, 3, 4, 6, 9, ... up to m) x wait."""
    top = min(pipe.num_microbatches, pipe.max_inflight)
    limits, n = [], 1
    while n < top:
        limits.append(n)
        n = n + 1 if n < 4 else n * 3 // 2
    limits.append(top)
    for order in ORDERS:
        for limit in limits:
            for wait in (False, True):
                yield Rule(order, (limit,) * pipe.num_stages, wait)


def refine(pipe: Pipe, rule: Rule, makespan: float) -> tuple[Rule, State | None]:
    """Coordinate descent on the per-stage limits from ``rule``: move one stage's limit by 1 while that helps."""
    top = min(pipe.num_microbatches, pipe.max_inflight)
    best: State | None = None
    improved = True
    while improved:
        improved = False
        for s in range(pipe.num_stages):
            for step in (-1, 1):
                limit = rule.limits[s] + step
                if not 1 <= limit <= top:
                    continue
                trial = rule.with_limit(s, limit)
                state = run_rule(pipe, trial)
                if state is not None and state.makespan < makespan * (1 - 1e-12):
                    rule, best, makespan, improved = trial, state, state.makespan, True
    return rule, best


def run_rule(pipe: Pipe, rule: Rule) -> State | None:
    """The lists ``rule`` builds for ``pipe`` (a complete State), or None when it stalls."""
    state = State(pipe)
    placement, S = pipe.placement, pipe.num_stages
    cached: list[tuple[float, int, int] | None] = [None] * pipe.num_ranks
    dirty = [True] * pipe.num_ranks
    while state.done < state.total:
        for r in range(pipe.num_ranks):
            if dirty[r]:
                cached[r], dirty[r] = _choice(state, rule, r), False
        live = [(c[0], r) for r, c in enumerate(cached) if c is not None]
        if not live:
            return None
        _, r = min(live)
        _, op, s, start = cached[r]
        state.apply(op, s, start)
        dirty[r] = True
        if op == F and s + 1 < S:
            dirty[placement[s + 1]] = True
        elif op in (B, BW) and s > 0:
            dirty[placement[s - 1]] = True
    return state


def _choice(state: State, rule: Rule, r: int) -> tuple[float, int, int, float] | None:
    """(earliest start, op, stage, start) of what rank ``r`` would run next under ``rule``; None if nothing can run."""
    options = []
    for op in (F, B, W):
        for s in state.rank_stages[r]:
            at = state.ready(op, s)
            if at < 0 or (op == F and state.inflight[s] >= rule.limits[s]):
                continue
            run = op
            if not state.allowed(op, s):
                if op != B or not state.allowed(BW, s):
                    continue
                run = BW  # no room to defer this W: run it with its B
            options.append((max(at, state.free[r]), run, s))
    if not options:
        return None
    earliest = min(t for t, _, _ in options)
    choice = min((o for o in options if o[0] == earliest), key=lambda o: _key(state, o, rule))
    if rule.wait:  # idle for a preferred action that is ready before the choice would end
        horizon = earliest + state.cost(choice[1], choice[2])
        rank = _rank(rule, choice[1])
        later = [o for o in options if earliest < o[0] < horizon and _rank(rule, o[1]) < rank]
        if later:
            choice = min(later, key=lambda o: _key(state, o, rule))
    return (earliest, choice[1], choice[2], choice[0])


def _rank(rule: Rule, op: int) -> int:
    """The op's place in the rule's order (a BW takes its B's)."""
    return rule.order.index(B if op == BW else op)


def _key(state: State, option: tuple[float, int, int], rule: Rule) -> tuple:
    """Rule order first; then the oldest microbatch (B, W) or the later stage (F)."""
    t, op, s = option
    k = state.next[B if op == BW else op][s]
    return (_rank(rule, op), -s, k, t) if op == F else (_rank(rule, op), k, -s, t)
