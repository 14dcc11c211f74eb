"""The replay engine under the simulator and the comm inserter: run every rank's list in time order.

Each rank runs its list in order, one action at a time: F costs f, B costs b, W costs w, BW costs b + w. A compute
action starts when the rank is free and its inputs are there. A tensor between stages on one rank is there when
its producer ends; between ranks it arrives ``tl[s]`` seconds after it is sent (transfers overlap compute and
never congest). Without send/recv actions a tensor is sent when its producer ends. With them, the sends and
receives between two compute actions fire together, as ``batch_isend_irecv`` does: the sends leave when the rank
reaches the group, then the rank waits for each receive's arrival (a compute action needs its RECV done first).
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
) -> Replay:
    """Replay the encoded lists with per-stage costs ``cf``, ``cb``, ``cw`` and boundary transfer times ``tl``.

    ``actions`` are the schedule's lists (the timeline holds those objects); ``record=False`` skips the timeline.
    """
    S, M, cross = enc.num_stages, enc.num_microbatches, enc.cross
    SM = S * M
    has_comms = enc.has_comms
    rows = enc.codes
    p = len(rows)
    end_f, end_b = [-1.0] * SM, [-1.0] * SM
    arr_f, arr_b = [-1.0] * SM, [-1.0] * SM  # arrival of stage s's input / output gradient, by receiver index
    # what a compute action reads: the arrival itself, or with send/recv actions its RECV's completion
    in_f, in_b = ([-1.0] * SM, [-1.0] * SM) if has_comms else (arr_f, arr_b)
    src_f, src_b = [-1] * SM, [-1] * SM  # the compute action whose end set that arrival
    bcode = [-1] * SM  # the code of (s, m)'s backward once it ran
    pred = [-1] * (4 * SM)  # the compute action whose end set this one's start
    start_of = [-1.0] * (4 * SM)
    held, peak_h, deferred, peak_d = [0] * S, [0] * S, [0] * S, [0] * S
    busy = [0.0] * p
    clock, cpred, ptr = [0.0] * p, [-1] * p, [0] * p
    gstart = [0.0] * p  # when the rank reached its current group of sends/receives
    waiting: dict[int, int] = {}  # idx (input) or SM + idx (gradient) -> the rank waiting for its arrival
    timeline: list[list[TimedAction]] = [[] for _ in range(p)]
    transfers: list[TimedAction] = []
    last_end, last_code = 0.0, -1
    stack = list(reversed(range(p)))
    while stack:
        r = stack.pop()
        row, acts, i = rows[r], actions[r], ptr[r]
        t, cp = clock[r], cpred[r]
        while i < len(row):
            code = row[i]
            op, idx = divmod(code, SM)
            s = idx // M
            if op >= SEND_F:
                if op == SEND_F or op == SEND_B:
                    if op == SEND_F:
                        at, prod, key, fly = idx + M, end_f[idx], idx + M, tl[s]
                    else:
                        at, prod, key, fly = idx - M, end_b[idx], SM + idx - M, tl[s - 1]
                    if prod < 0:
                        break  # sending before the producer ran: never runs (validate explains)
                    post = max(gstart[r], prod)
                    arrival = post + fly
                    who = idx if op == SEND_F else bcode[idx]
                    if op == SEND_F:
                        arr_f[at], src_f[at] = arrival, who
                    else:
                        arr_b[at], src_b[at] = arrival, who
                    if fly > 0 and record:
                        transfers.append(TimedAction(r, acts[i], post, arrival))
                    w = waiting.pop(key, None)
                    if w is not None:
                        stack.append(w)
                else:
                    arrival = arr_f[idx] if op == RECV_F else arr_b[idx]
                    if arrival < 0:
                        waiting[idx if op == RECV_F else SM + idx] = r
                        break
                    if op == RECV_F:
                        in_f[idx] = arrival
                    else:
                        in_b[idx] = arrival
                    if arrival > t:
                        t, cp = arrival, (src_f[idx] if op == RECV_F else src_b[idx])
                i += 1
                continue
            # compute: find when its input is there, and which action that was
            if op == F:
                avail, dep = 0.0, -1
                if s > 0:
                    if cross[s - 1]:
                        avail, dep = in_f[idx], src_f[idx]
                        if avail < 0:
                            if not has_comms:
                                waiting[idx] = r
                            break
                    else:
                        avail, dep = end_f[idx - M], idx - M
                        if avail < 0:
                            break
                cost = cf[s]
            elif op == W:
                avail, dep, cost = end_b[idx], bcode[idx], cw[s]
                if avail < 0:
                    break
            else:
                avail, dep = end_f[idx], idx
                if avail < 0:
                    break
                if s < S - 1:
                    if cross[s]:
                        grad, gdep = in_b[idx], src_b[idx]
                        if grad < 0:
                            if not has_comms:
                                waiting[SM + idx] = r
                            break
                    else:
                        grad, gdep = end_b[idx + M], bcode[idx + M]
                        if grad < 0:
                            break
                    if grad > avail:
                        avail, dep = grad, gdep
                cost = cb[s] + cw[s] if op == BW else cb[s]
            if avail > t:
                t, cp = avail, dep
            start, t = t, t + cost
            pred[code], cp, start_of[code] = cp, code, start
            busy[r] += cost
            gstart[r] = t
            if record:
                timeline[r].append(TimedAction(r, acts[i], start, t))
            if t >= last_end:
                last_end, last_code = t, code
            if op == F:
                end_f[idx] = t
                held[s] += 1
                if held[s] > peak_h[s]:
                    peak_h[s] = held[s]
                if not has_comms and s < S - 1 and cross[s]:
                    arr_f[idx + M], src_f[idx + M] = t + tl[s], code
                    if record and tl[s] > 0:
                        transfers.append(TimedAction(r, Action(s, Op.SEND_F, idx - s * M), t, t + tl[s]))
                    w = waiting.pop(idx + M, None)
                    if w is not None:
                        stack.append(w)
            elif op == W:
                held[s] -= 1
                deferred[s] -= 1
            else:
                end_b[idx], bcode[idx] = t, code
                if op == BW:
                    held[s] -= 1
                else:
                    deferred[s] += 1
                    if deferred[s] > peak_d[s]:
                        peak_d[s] = deferred[s]
                if not has_comms and s > 0 and cross[s - 1]:
                    arr_b[idx - M], src_b[idx - M] = t + tl[s - 1], code
                    if record and tl[s - 1] > 0:
                        transfers.append(TimedAction(r, Action(s, Op.SEND_B, idx - s * M), t, t + tl[s - 1]))
                    w = waiting.pop(SM + idx - M, None)
                    if w is not None:
                        stack.append(w)
            i += 1
        ptr[r], clock[r], cpred[r] = i, t, cp
    return Replay(ptr, start_of, pred, busy, last_end, last_code, peak_h, peak_d, timeline, transfers)
