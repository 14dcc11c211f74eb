"""The replay engine under the simulator and the comm inserter: run every rank's list in time order.

Each rank runs its list in order, one action at a time: F costs f, B costs b, W costs w, BW costs b + w. A compute
action starts when the rank is free and its inputs are there. A tensor between stages on one rank is there when
its producer ends; between ranks it arrives ``tl[s]`` seconds after it is sent (transfers overlap compute and
never congest). Without send/recv actions a tensor is sent when its producer ends. With them, the sends and
receives between two compute actions fire together, as ``batch_isend_irecv`` does: the sends leave when the rank
reaches the group, then the rank waits for each receive's arrival (a compute action needs its RECV done first).
With ``rendezvous`` (gloo and NCCL point-to-point), a transfer starts only once the receiver is ready for it as well
(its receive posted), and the runtime posts a rank's receives one ahead under gloo: the first at the start of the
step, each next one when the rank has taken the one before. So a message sent before its receive is posted arrives
``tl`` after the posting, not after the send, and the receives of one rank are posted one after another, in the
order of the RECV actions (``insert_comms`` moves some earlier for interleaved and V schedules), as the runtime
does; so a rendezvous replay needs the send/recv actions. (Under NCCL the runtime posts each receive at its action,
which this model does not distinguish.)
Activations of (stage, microbatch) are held from its F until its BW, or until its W when B and W are split.
Linear time: a rank advances until an input is missing and is woken by that input's arrival only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from partition.schedule.actions import Action, Op
from partition.schedule.encoding import BW, RECV_F, SEND_B, SEND_F, Encoded, F, W


class TimedAction(NamedTuple):
    """An action placed in time (seconds); for a transfer, the rank is the sender and the span its flight."""

    rank: int
    action: Action
    start: float
    end: float


@dataclass(frozen=True)
class Replay:
    """What a replay found; ``ptr[r] < len(codes[r])`` for a rank that could not finish."""

    ptr: list[int]
    start_of: list[float]  # by action code (-1 where it did not run)
    pred: list[int]  # by code: the compute action whose end set this one's start (-1 at time 0)
    busy: list[float]
    last_end: float
    last_code: int
    peak_inflight: list[int]
    peak_deferred_w: list[int]
    timeline: list[list[TimedAction]]  # per rank, when recorded
    transfers: list[TimedAction]

    def finished(self, enc: Encoded) -> bool:
        """True when every rank ran its whole list."""
        return all(i == len(row) for i, row in zip(self.ptr, enc.codes))


def replay(
    enc: Encoded,
    actions: Mapping[int, Sequence[Action]],
    cf: Sequence[float],
    cb: Sequence[float],
    cw: Sequence[float],
    tl: Sequence[float],
    record: bool = True,
    rendezvous: bool = False,
) -> Replay:
    """Replay the encoded lists with per-stage costs ``cf``, ``cb``, ``cw`` and boundary transfer times ``tl``.

    ``actions`` are the schedule's lists (the timeline holds those objects); ``record=False`` skips the timeline;
    ``rendezvous``: a transfer starts when it is sent and its receive is posted, one ahead (see the module docstring);
    it needs the lists' send/recv actions where stages on different ranks meet (ValueError without them).
    """
    if rendezvous and not enc.has_comms and any(enc.cross):
        raise ValueError("replay: a rendezvous link needs the send/recv actions (partition.schedule.comms.insert_comms)")
    return _Replayer(enc, actions, cf, cb, cw, tl, record, rendezvous).run()


class _Replayer:
    """The state of one replay; ``run`` advances each rank until an input is missing (see the module docstring)."""

    def __init__(self, enc: Encoded, actions: Mapping[int, Sequence[Action]], cf: Sequence[float],
                 cb: Sequence[float], cw: Sequence[float], tl: Sequence[float], record: bool,
                 rendezvous: bool = False) -> None:
        self.enc, self.actions, self.cf, self.cb, self.cw, self.tl, self.record = enc, actions, cf, cb, cw, tl, record
        self.rendezvous = rendezvous
        S, M = enc.num_stages, enc.num_microbatches
        self.S, self.M, self.SM, self.cross, self.has_comms = S, M, S * M, enc.cross, enc.has_comms
        SM, p = S * M, len(enc.codes)
        self.end_f, self.end_b = [-1.0] * SM, [-1.0] * SM
        self.arr_f, self.arr_b = [-1.0] * SM, [-1.0] * SM  # arrival of stage s's input / output gradient, by receiver
        # what a compute action reads: the arrival itself, or with send/recv actions its RECV's completion
        self.in_f, self.in_b = ([-1.0] * SM, [-1.0] * SM) if enc.has_comms else (self.arr_f, self.arr_b)
        self.src_f, self.src_b = [-1] * SM, [-1] * SM  # the compute action whose end set that arrival
        self.bcode = [-1] * SM  # the code of (s, m)'s backward once it ran
        self.pred = [-1] * (4 * SM)  # the compute action whose end set this one's start
        self.start_of = [-1.0] * (4 * SM)
        self.held, self.peak_h, self.deferred, self.peak_d = [0] * S, [0] * S, [0] * S, [0] * S
        self.busy = [0.0] * p
        self.clock, self.cpred, self.ptr = [0.0] * p, [-1] * p, [0] * p
        self.gstart = [0.0] * p  # when the rank reached its current group of sends/receives
        self.posted = [0.0] * p  # with rendezvous: when the rank's next receive is posted (it took the one before)
        self.posted_by = [-1] * p  # the action whose end set that time (-1: the start of the step)
        self.waiting: dict[int, int] = {}  # idx (input) or SM + idx (gradient) -> the rank waiting for its arrival
        self.timeline: list[list[TimedAction]] = [[] for _ in range(p)]
        self.transfers: list[TimedAction] = []
        self.last_end, self.last_code = 0.0, -1
        self.stack = list(reversed(range(p)))

    def run(self) -> Replay:
        """Advance ranks from the stack until none can move; a rank that stops waits for an arrival to wake it."""
        while self.stack:
            self._advance(self.stack.pop())
        return Replay(self.ptr, self.start_of, self.pred, self.busy, self.last_end, self.last_code, self.peak_h,
                      self.peak_d, self.timeline, self.transfers)

    def _advance(self, r: int) -> None:
        """Run rank ``r``'s list from where it stopped until an action's input is missing."""
        row, SM, M = self.enc.codes[r], self.SM, self.M
        i, t, cp = self.ptr[r], self.clock[r], self.cpred[r]
        while i < len(row):
            code = row[i]
            op, idx = divmod(code, SM)
            s = idx // M
            if op >= SEND_F:
                if op == SEND_F or op == SEND_B:
                    if not self._send(r, i, op, idx, s):
                        break
                else:
                    moved = self._receive(r, op, idx, t, cp)
                    if moved is None:
                        break
                    t, cp = moved
                i += 1
                continue
            ready = self._inputs(r, op, idx, s)
            if ready is None:
                break
            avail, dep, cost = ready
            if avail > t:
                t, cp = avail, dep
            start, t = t, t + cost
            self.pred[code], cp, self.start_of[code] = cp, code, start
            self._finish(r, i, code, op, idx, s, start, t, cost)
            i += 1
        self.ptr[r], self.clock[r], self.cpred[r] = i, t, cp

    def _send(self, r: int, i: int, op: int, idx: int, s: int) -> bool:
        """A SEND leaves when the rank reaches its group and the producer has run; False if the producer never ran."""
        M, SM = self.M, self.SM
        if op == SEND_F:
            at, prod, key, fly, who = idx + M, self.end_f[idx], idx + M, self.tl[s], idx
        else:
            at, prod, key, fly, who = idx - M, self.end_b[idx], SM + idx - M, self.tl[s - 1], self.bcode[idx]
        if prod < 0:
            return False  # sending before the producer ran: never runs (validate explains)
        post = max(self.gstart[r], prod)
        arrival = post + fly
        if op == SEND_F:
            self.arr_f[at], self.src_f[at] = arrival, who
        else:
            self.arr_b[at], self.src_b[at] = arrival, who
        if fly > 0 and self.record and not self.rendezvous:
            self.transfers.append(TimedAction(r, self.actions[r][i], post, arrival))
        self._wake(key)
        return True

    def _receive(self, r: int, op: int, idx: int, t: float, cp: int) -> tuple[float, int] | None:
        """A RECV completes at the arrival; None (and the rank waits) if nothing has been sent yet."""
        arrival = self.arr_f[idx] if op == RECV_F else self.arr_b[idx]
        if arrival < 0:
            self.waiting[idx if op == RECV_F else self.SM + idx] = r
            return None
        source = self.src_f[idx] if op == RECV_F else self.src_b[idx]
        if self.rendezvous:
            arrival, source = self._rendezvous(r, F if op == RECV_F else BW, idx, idx // self.M, t, cp, arrival, source)
        if op == RECV_F:
            self.in_f[idx] = arrival
        else:
            self.in_b[idx] = arrival
        if arrival > t:
            return arrival, source
        return t, cp

    def _rendezvous(self, r: int, op: int, idx: int, s: int, t: float, cp: int, avail: float,
                    dep: int) -> tuple[float, int]:
        """A receive feeding ``op`` (F or BW) on (stage s, microbatch), taken by rank ``r`` (free at ``t``), when its
        transfer can start only once the receive is posted (module doc): ``avail`` unless it was posted after the
        send; records the flight and posts the rank's next receive when this one is taken."""
        M = self.M
        if op == F:
            if s == 0 or not self.cross[s - 1]:
                return avail, dep
            fly, sender, send = self.tl[s - 1], s - 1, Op.SEND_F
        elif op != W and s < self.S - 1 and self.cross[s]:
            fly, sender, send = self.tl[s], s + 1, Op.SEND_B
        else:
            return avail, dep
        if fly <= 0:
            self._take(r, t, cp, avail, dep)
            return avail, dep
        arrived = self.arr_f[idx] if send is Op.SEND_F else self.arr_b[idx]  # send + fly: the transfer alone
        start = max(arrived - fly, self.posted[r])
        if self.record:
            self.transfers.append(TimedAction(self.enc.placement[sender], Action(sender, send, idx % M), start,
                                              start + fly))
        # held back by its posting: what posted this receive (the take of the one before) delayed it
        got, by = (start + fly, self.posted_by[r]) if start + fly > avail else (avail, dep)
        self._take(r, t, cp, got, by)
        return got, by

    def _take(self, r: int, t: float, cp: int, got: float, by: int) -> None:
        """Rank ``r`` (free at ``t`` after ``cp``) takes a receive whose tensor is there at ``got`` (delivered by
        ``by``) and posts its next receive then."""
        self.posted[r], self.posted_by[r] = (t, cp) if t >= got else (got, by)

    def _inputs(self, r: int, op: int, idx: int, s: int) -> tuple[float, int, float] | None:
        """When a compute action's inputs are there, which action delivered the last, and its cost; None if missing."""
        M, S = self.M, self.S
        if op == F:
            avail, dep = 0.0, -1
            if s > 0:
                if self.cross[s - 1]:
                    avail, dep = self.in_f[idx], self.src_f[idx]
                    if avail < 0:
                        if not self.has_comms:
                            self.waiting[idx] = r
                        return None
                else:
                    avail, dep = self.end_f[idx - M], idx - M
                    if avail < 0:
                        return None
            return avail, dep, self.cf[s]
        if op == W:
            avail = self.end_b[idx]
            return None if avail < 0 else (avail, self.bcode[idx], self.cw[s])
        avail, dep = self.end_f[idx], idx
        if avail < 0:
            return None
        if s < S - 1:
            if self.cross[s]:
                grad, gdep = self.in_b[idx], self.src_b[idx]
                if grad < 0:
                    if not self.has_comms:
                        self.waiting[self.SM + idx] = r
                    return None
            else:
                grad, gdep = self.end_b[idx + M], self.bcode[idx + M]
                if grad < 0:
                    return None
            if grad > avail:
                avail, dep = grad, gdep
        return avail, dep, (self.cb[s] + self.cw[s] if op == BW else self.cb[s])

    def _finish(self, r: int, i: int, code: int, op: int, idx: int, s: int, start: float, t: float,
                cost: float) -> None:
        """Book-keeping once a compute action ran: ends, held activations, and (without send/recv) its transfer."""
        M, S = self.M, self.S
        self.busy[r] += cost
        self.gstart[r] = t
        if self.record:
            self.timeline[r].append(TimedAction(r, self.actions[r][i], start, t))
        if t >= self.last_end:
            self.last_end, self.last_code = t, code
        if op == F:
            self.end_f[idx] = t
            self.held[s] += 1
            self.peak_h[s] = max(self.peak_h[s], self.held[s])
            if not self.has_comms and s < S - 1 and self.cross[s]:
                self._transfer(r, Op.SEND_F, s, idx, idx + M, self.arr_f, self.src_f, t, self.tl[s], code, idx + M)
        elif op == W:
            self.held[s] -= 1
            self.deferred[s] -= 1
        else:
            self.end_b[idx], self.bcode[idx] = t, code
            if op == BW:
                self.held[s] -= 1
            else:
                self.deferred[s] += 1
                self.peak_d[s] = max(self.peak_d[s], self.deferred[s])
            if not self.has_comms and s > 0 and self.cross[s - 1]:
                self._transfer(r, Op.SEND_B, s, idx, idx - M, self.arr_b, self.src_b, t, self.tl[s - 1], code,
                               self.SM + idx - M)

    def _transfer(self, r: int, op: Op, s: int, idx: int, at: int, arrivals: list[float], sources: list[int],
                  t: float, fly: float, code: int, key: int) -> None:
        """Without send/recv actions, an output leaves as soon as it is made and arrives ``fly`` later."""
        arrivals[at], sources[at] = t + fly, code
        if self.record and fly > 0:  # (a rendezvous replay has send/recv actions: it never gets here)
            self.transfers.append(TimedAction(r, Action(s, op, idx - s * self.M), t, t + fly))
        self._wake(key)

    def _wake(self, key: int) -> None:
        """Put the rank that waits for arrival ``key`` (if any) back on the stack."""
        w = self.waiting.pop(key, None)
        if w is not None:
            self.stack.append(w)
