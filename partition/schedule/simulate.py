"""Discrete-event simulation of a schedule: makespan, per-rank busy/idle, bubble, critical path, peak memory.

The model is ``partition.schedule.replay``'s: ranks run their lists in order, compute waits for its inputs, transfers
between ranks take ``link.time(activation_bytes[s])`` and overlap compute, and the sends and receives between
two compute actions fire together; so a schedule simulates the same with or without the actions
``insert_comms`` adds, except where a receive had to move earlier to keep blocking communication deadlock-free.
With a rendezvous link (``LinkModel.rendezvous``: gloo, NCCL point-to-point) a transfer starts only once its
receive is posted, and each rank posts its receives one ahead, as the runtime does under gloo, in the order of the
receives ``insert_comms`` places (the executor's lists): so a schedule without them is simulated with them added.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from partition.schedule.actions import Action, Schedule, ScheduleError, paused_gc
from partition.schedule.comms import insert_comms
from partition.schedule.encoding import encode
from partition.schedule.replay import TimedAction, replay
from partition.schedule.trace import TraceEvent
from partition.schedule.validate import validate
from partition.timing import LinkModel, StageCost

FREE_LINK = LinkModel()  # transfers take no time (a frozen value, shared safely)


@dataclass(frozen=True)
class SimResult:
    """What ``simulate`` predicts; ``timeline`` is ordered by rank, then time."""

    makespan: float
    busy: tuple[float, ...]  # per rank: seconds of compute
    idle: tuple[float, ...]  # per rank: makespan - busy
    bubble_fraction: float  # sum(idle) / (num_ranks * makespan)
    critical_path: tuple[Action, ...]  # compute actions, first to last, whose chain sets the makespan
    peak_inflight: tuple[int, ...]  # per stage: most microbatches whose activations are held at once
    peak_deferred_w: tuple[int, ...]  # per stage: most microbatches with B done and W pending
    timeline: tuple[TimedAction, ...]
    transfers: tuple[TimedAction, ...] = ()  # cross-rank messages that take time, by departure

    def to_json(self, timeline: bool = False) -> dict:
        """A JSON-ready dict of the figures (the timeline too when asked: it can be large)."""
        out = {
            "makespan": self.makespan,
            "bubble_fraction": self.bubble_fraction,
            "busy": list(self.busy),
            "idle": list(self.idle),
            "peak_inflight": list(self.peak_inflight),
            "peak_deferred_w": list(self.peak_deferred_w),
            "critical_path": [str(a) for a in self.critical_path],
        }
        if timeline:
            out["timeline"] = [[t.rank, str(t.action), t.start, t.end] for t in self.timeline]
        return out

    def trace_events(self) -> list[TraceEvent]:
        """The timeline as trace events for ``partition.schedule.trace`` (one row per rank)."""
        return [TraceEvent(t.rank, str(t.action), t.start, t.end) for t in self.timeline]


@paused_gc()
def simulate(
    schedule: Schedule,
    costs: Sequence[StageCost],
    link: LinkModel = FREE_LINK,
    activation_bytes: Sequence[float] | None = None,
) -> SimResult:
    """Predict how ``schedule`` runs given per-stage ``costs`` and the ``link`` between ranks.

    ``activation_bytes[s]``: bytes sent from stage s to s + 1 per microbatch (its gradient travels back with the
    same size); S - 1 or S entries (the last stage's is unused); None means nothing crosses (free transfers).
    Raises ValueError on mismatched inputs and ScheduleError when the schedule cannot run to its end.
    """
    enc = encode(schedule)
    if link.rendezvous and not enc.has_comms:  # receives are posted in the executor's order (module docstring)
        schedule = insert_comms(schedule)
        enc = encode(schedule)
    cf, cb, cw, tl = _stage_arrays(enc.num_stages, enc.cross, costs, link, activation_bytes)
    run = replay(enc, schedule.actions, cf, cb, cw, tl, rendezvous=link.rendezvous)
    if not run.finished(enc):
        validate(schedule)  # raises with the reason and the table
        raise ScheduleError("the schedule stops before its end under simulation", schedule)
    return _result(enc, run)


def _stage_arrays(S, cross, costs, link, activation_bytes):
    """Per-stage f, b, w costs and the transfer time of each stage boundary (0 within a rank)."""
    costs = list(costs)
    if len(costs) != S or not all(isinstance(c, StageCost) for c in costs):
        raise ValueError(f"costs: expected {S} StageCost values (one per stage), got {len(costs)}")
    if activation_bytes is None:
        sizes = [0.0] * S
    else:
        sizes = [float(x) for x in activation_bytes]
        if len(sizes) not in (S - 1, S) or not all(math.isfinite(x) and x >= 0 for x in sizes):
            raise ValueError(f"activation_bytes: expected {max(S - 1, 1)} or {S} finite sizes >= 0, got {list(activation_bytes)}")
        sizes += [0.0] * (S - len(sizes))
    tl = [link.time(sizes[s]) if s < S - 1 and cross[s] else 0.0 for s in range(S)]
    return [c.f for c in costs], [c.b for c in costs], [c.w for c in costs], tl


def _result(enc, run) -> SimResult:
    path = []
    code = run.last_code
    while code >= 0 and run.last_end > 0:
        path.append(enc.action(code))
        code = run.pred[code]
    makespan, p = run.last_end, len(run.busy)
    idle = tuple(makespan - b for b in run.busy)
    bubble = sum(idle) / (p * makespan) if makespan > 0 else 0.0
    flat = tuple(t for row in run.timeline for t in row)
    return SimResult(makespan, tuple(run.busy), idle, bubble, tuple(reversed(path)), tuple(run.peak_inflight),
                     tuple(run.peak_deferred_w), flat,
                     tuple(sorted(run.transfers, key=lambda t: (t.start, t.rank, t.action))))
