"""A schedule transform: split every fused backward and run the weight gradients of a step at its end.

Each BW(s, m) becomes B(s, m); each rank then ends its list with W(s, 0..m-1) for its stages, last stage
first. The executor fuses consecutive W of a stage into one GEMM per layer over all microbatches' rows,
so dJ/dW runs at the full-batch GEMM rate (the weight-gradient GEMM g^T x is markedly slower with few
rows). The price is memory: every microbatch's layer inputs and output gradients stay alive until the end
of the step, like GPipe's activations. W already split out (zero-bubble schedules) is moved as well.

Filling the drain: after its last forward a rank runs its remaining backward steps, and between two of them it
may wait for the next gradient from downstream (in 1F1B the last stage still runs a forward and a backward per
microbatch while the one before it runs only a backward). Such a wait can hold one microbatch's W instead, which
then no longer lengthens the rank's tail. A W is moved into a wait only where the schedule simulated with unit
costs (F = B = W = 1) says the rank then finishes earlier and the step no later: so not in GPipe, whose backward
steps follow one another without waits.
"""

from __future__ import annotations

from partition.schedule.actions import Action, Op, Schedule
from partition.schedule.simulate import simulate
from partition.timing import StageCost


def defer_all_w(schedule: Schedule, fill_drain: bool = True) -> Schedule:
    """``schedule`` with every weight gradient postponed to the end of its rank's list (see module doc), and with
    ``fill_drain`` the waits of the drain holding one each where that shortens the rank's tail."""
    lists: dict[int, tuple[Action, ...]] = {}
    for rank, acts in schedule.actions.items():
        body: list[Action] = []
        deferred: dict[int, list[int]] = {}
        for a in acts:
            if a.op is Op.BW:
                body.append(Action(a.stage, Op.B, a.microbatch))
                deferred.setdefault(a.stage, []).append(a.microbatch)
            elif a.op is Op.W:
                deferred.setdefault(a.stage, []).append(a.microbatch)
            else:
                body.append(a)
        tail = [Action(s, Op.W, m) for s in sorted(deferred, reverse=True) for m in deferred[s]]
        lists[rank] = tuple(body + tail)
    deferred_schedule = schedule.with_actions(lists)
    return _fill_drain(deferred_schedule) if fill_drain else deferred_schedule


def _fill_drain(schedule: Schedule) -> Schedule:
    """Move single W from the tail into the waits between a rank's last backward steps (module doc)."""
    unit = [StageCost(1.0, 1.0, 1.0)] * schedule.num_stages
    current = schedule
    makespan, ends = _finishes(current, unit)
    for rank in sorted(schedule.actions):
        acts = list(current.actions[rank])
        forwards = [i for i, a in enumerate(acts) if a.op is Op.F]
        if not forwards:
            continue
        drain = [a for a in acts[forwards[-1] + 1:] if a.op is Op.B][1:]  # the B that may wait for its gradient
        for b in drain:
            pos = acts.index(b)
            done = {(a.stage, a.microbatch) for a in acts[:pos] if a.op is Op.B}
            movable = [i for i in range(pos + 1, len(acts)) if acts[i].op is Op.W and (acts[i].stage, acts[i].microbatch) in done]
            if not movable:
                break
            trial_acts = acts[:pos] + [acts[movable[0]]] + [a for i, a in enumerate(acts) if i >= pos and i != movable[0]]
            trial = current.with_actions({**current.actions, rank: tuple(trial_acts)})
            span, trial_ends = _finishes(trial, unit)
            if span <= makespan and trial_ends[rank] < ends[rank]:
                current, acts, makespan, ends = trial, trial_acts, span, trial_ends
    return current


def _finishes(schedule: Schedule, costs: list[StageCost]) -> tuple[float, dict[int, float]]:
    """The simulated makespan and the time each rank ends its last action."""
    sim = simulate(schedule, costs)
    ends: dict[int, float] = {}
    for t in sim.timeline:
        ends[t.rank] = max(ends.get(t.rank, 0.0), t.end)
    return sim.makespan, ends
