"""Two predictions of a step, never confused: *this run* (the hardware it runs on now) and *on K devices*.

* This run, stages emulated in one process: every action runs on the one device one after another, so the step is
  the sum over stages of m x (F + B + W, arithmetic plus host overhead) plus the per-step terms. The predicted
  timeline follows the executor's own order (each rank advances until it waits for a message).
* This run under torchrun (one process per rank): ranks overlap, transfers cost what the measured link says; the
  step is the simulator's makespan plus the per-step terms.
* On K devices: the simulator's makespan with a stated link, plus the per-step terms, which each device pays for
  its own stages (the step overhead and the optimizer shared K ways).
* With D pipeline replicas (PP x DP) both add each stage's ring all-reduce of its gradients over the D replicas
  (``CostModel.gradient_all_reduce``: this run on the measured link, K devices on the stated one); K counts the
  devices of every replica.

Both are computed from the cost model alone, before any timed step; nothing here reads a run's own records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from partition.schedule.actions import Action, Op, Schedule
from partition.schedule.comms import insert_comms
from partition.schedule.replay import TimedAction
from partition.schedule.simulate import SimResult, simulate
from partition.timing import LinkModel, StageCost
from partition.units import count
from runtime.calibrate.costs import CostModel

RECEIVES = (Op.RECV_F, Op.RECV_B)


@dataclass(frozen=True)
class Forecast:
    """A predicted step: its seconds, what it stands for, its terms, and its timeline (compute and transfers)."""

    step_time: float
    basis: str
    terms: dict[str, float]
    stage_costs: tuple[StageCost, ...]
    sim: SimResult
    timeline: tuple[TimedAction, ...]
    transfers: tuple[TimedAction, ...] = ()

    @property
    def bubble_fraction(self) -> float:
        """Share of the ranks' time the simulator finds idle (for emulated stages: on K devices)."""
        return self.sim.bubble_fraction

    def to_json(self) -> dict:
        """Step seconds, basis, terms and bubble, JSON-ready (no timeline)."""
        return {"step_time": self.step_time, "basis": self.basis, "terms": dict(self.terms),
                "bubble_fraction": self.bubble_fraction,
                "stage_costs": [{"f": c.f, "b": c.b, "w": c.w} for c in self.stage_costs]}


def this_run(schedule: Schedule, model: CostModel, ranges: Sequence[tuple[int, int]],
             activation_bytes: Sequence[float] | None, concurrent: bool) -> Forecast:
    """The step as it will run here: ``concurrent`` ranks (torchrun) overlap, else they run in turn on one device."""
    costs = model.stage_costs(ranges)
    compute = model.compute_costs(ranges)
    body, sim = step_body(schedule, costs, model.link, activation_bytes, concurrent)
    if concurrent:
        basis = f"this run: {schedule.num_ranks} processes overlap, transfers over the measured link"
        timeline, transfers = sim.timeline, sim.transfers
    else:
        basis = "this run: every stage in this one process, one after another"
        timeline, transfers = emulated_timeline(schedule, costs), ()
    reduce = model.gradient_all_reduce(schedule, sim, concurrent)
    arithmetic, with_overhead = _serial(schedule, compute), _serial(schedule, costs)
    busiest = max(sim.busy) if concurrent else with_overhead  # one process: all the work is on one device
    share = busiest / with_overhead if with_overhead > 0 else 0.0  # under torchrun: the busiest rank's share
    terms = {"compute (profiled)": arithmetic * share, "action overhead": (with_overhead - arithmetic) * share,
             "transfers and waits": body - busiest, "step overhead": model.step_overhead.seconds,
             "optimizer": model.optimizer.seconds, "loss all-reduce": model.loss_all_reduce.seconds,
             "gradient all-reduce": reduce}
    return Forecast(body + reduce + model.per_step, basis, terms, tuple(costs), sim, tuple(timeline), tuple(transfers))


def step_body(schedule: Schedule, costs: Sequence[StageCost], link: LinkModel, activation_bytes: Sequence[float] | None,
              concurrent: bool) -> tuple[float, SimResult]:
    """Seconds of the step's actions and transfers (no per-step terms), and the simulation behind it.

    Overlapping ranks: the simulator's makespan over ``link``. One process: every action and every in-process copy
    one after another.
    """
    if concurrent:
        sim = simulate(schedule, costs, link, activation_bytes)
        return sim.makespan, sim
    sim = simulate(schedule, costs)
    return sum(sim.busy) + _copies(schedule, link, activation_bytes), sim


def on_k_devices(schedule: Schedule, model: CostModel, ranges: Sequence[tuple[int, int]], link: LinkModel,
                 activation_bytes: Sequence[float] | None, link_name: str) -> Forecast:
    """The same plan on ``schedule.num_ranks`` devices joined by ``link`` (named ``link_name`` in the basis)."""
    costs = model.stage_costs(ranges)
    sim = simulate(schedule, costs, link, activation_bytes)
    k = schedule.num_ranks
    shared = (model.step_overhead.seconds + model.optimizer.seconds) / k
    terms = {"makespan": sim.makespan, "step overhead and optimizer (per device)": shared,
             "loss all-reduce": model.loss_all_reduce.seconds if k * model.replicas > 1 else 0.0,
             "gradient all-reduce": model.gradient_all_reduce(schedule, sim, True, link)}
    total = sim.makespan + shared + terms["loss all-reduce"] + terms["gradient all-reduce"]
    devices = count(k, "device") if model.replicas == 1 else \
        f"{count(k * model.replicas, 'device')} ({model.replicas} replicas of {k})"
    return Forecast(total, f"on {devices}, link {link_name} ({link.describe()})", terms, tuple(costs), sim,
                    sim.timeline, sim.transfers)


def _copies(schedule: Schedule, link: LinkModel, activation_bytes: Sequence[float] | None) -> float:
    """Seconds of every message of the step moved one after another (an activation or gradient per hop)."""
    if activation_bytes is None or link.is_free:
        return 0.0
    hops = [a.stage for acts in insert_comms(schedule).actions.values() for a in acts if a.op is Op.SEND_F]
    return 2 * sum(link.time(activation_bytes[s]) for s in hops)


def _serial(schedule: Schedule, costs: Sequence[StageCost]) -> float:
    """Seconds of every compute action of the step run one after another."""
    return sum(_cost(a, costs) for acts in schedule.actions.values() for a in acts if not a.op.is_comm)


def _cost(a: Action, costs: Sequence[StageCost]) -> float:
    c = costs[a.stage]
    return {Op.F: c.f, Op.B: c.b, Op.W: c.w, Op.BW: c.b + c.w}.get(a.op, 0.0)


def emulated_timeline(schedule: Schedule, costs: Sequence[StageCost]) -> list[TimedAction]:
    """Compute actions back to back in the order the single-process executor runs them.

    As the executor: with send/recv inserted, each rank in turn advances through its list until it reaches a
    receive whose message has not been sent yet; sends and receives take no time here (their host cost is in
    the step overhead).
    """
    sched = insert_comms(schedule)
    lists = sched.actions
    ptr = dict.fromkeys(lists, 0)
    sent: set[tuple[Op, int, int]] = set()
    t, out = 0.0, []
    while any(ptr[r] < len(lists[r]) for r in lists):
        progressed = False
        for r in sorted(lists):
            acts = lists[r]
            while ptr[r] < len(acts):
                a = acts[ptr[r]]
                if a.op in RECEIVES and (a.op, a.stage, a.microbatch) not in sent:
                    break
                if a.op is Op.SEND_F:
                    sent.add((Op.RECV_F, a.stage + 1, a.microbatch))
                elif a.op is Op.SEND_B:
                    sent.add((Op.RECV_B, a.stage - 1, a.microbatch))
                elif not a.op.is_comm:
                    cost = _cost(a, costs)
                    out.append(TimedAction(r, a, t, t + cost))
                    t += cost
                ptr[r] += 1
                progressed = True
        if not progressed:
            raise ValueError(f"emulated_timeline: no rank can progress at {ptr}")
    return out


def critical_chain(sim: SimResult, schedule: Schedule) -> list[TimedAction]:
    """The critical path with the transfers on it: between two critical actions on different ranks, the message
    the second waited for (when its flight took time)."""
    compute = {t.action: t for t in sim.timeline}
    flights = {t.action: t for t in sim.transfers}
    chain: list[TimedAction] = []
    prev: Action | None = None
    for a in sim.critical_path:
        if prev is not None and schedule.placement[prev.stage] != schedule.placement[a.stage]:
            op = Op.SEND_F if prev.op is Op.F else Op.SEND_B
            hop = flights.get(Action(prev.stage, op, prev.microbatch))
            if hop is not None:
                chain.append(hop)
        chain.append(compute[a])
        prev = a
    return chain
