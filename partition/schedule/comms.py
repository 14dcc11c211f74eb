"""Send/recv insertion: each cross-rank tensor gets a SEND and a RECV, ordered so blocking p2p cannot deadlock.

The rule. Replay the compute lists once with unit costs (F = B = W = 1, BW = 2, free transfers): the reference
run. For a tensor that compute action P on rank a produces and C on rank b consumes:
- the SEND goes right after P;
- the RECV goes right before C, if b starts the action before C (call it C') earlier in the reference run than a
  starts the action after P (P'); otherwise, where a blocking send after P would have to wait for b to pass C',
  which may in turn wait for a (Megatron's interleaved 1F1B and ZB-V have such crossings), the RECV moves earlier:
  before b's first action that starts after P' starts.
- Between two compute actions, sends and receives are ordered by when their transfer happens in the reference
  run: just after the later of P and C' in the first case, just before P' in the second (ties by P's code).
Why it cannot deadlock: sort all compute actions by reference start time (ties by rank) and put each transfer at
its time; that one sequence runs every rank's list in order and meets each send with its receive at once, so it
is an execution under blocking semantics (a send and its receive complete together); as every op names its peer
and message, all executions agree with it. In the reference run no receive waits, so with unit costs the lists
simulate exactly as without communication.
"""

from __future__ import annotations

from bisect import bisect_right

from partition.schedule.actions import Action, Op, Schedule, paused_gc
from partition.schedule.encoding import BW, F, W, encode
from partition.schedule.replay import replay
from partition.schedule.validate import validate


@paused_gc()
def insert_comms(schedule: Schedule) -> Schedule:
    """The schedule with SEND/RECV actions between stages on different ranks (existing ones are replaced).

    Raises ScheduleError (with a step-by-rank table) when the compute lists themselves cannot run.
    """
    enc = encode(schedule)
    if enc.has_comms:
        schedule = schedule.compute_only()
        enc = encode(schedule)
    S, M, place, cross = enc.num_stages, enc.num_microbatches, enc.placement, enc.cross
    SM, p, rows = S * M, schedule.num_ranks, enc.codes
    ones = [1.0] * S
    run = replay(enc, schedule.actions, ones, ones, ones, [0.0] * S, record=False)
    if not run.finished(enc):
        validate(schedule)  # raises with the reason and the table
    start = run.start_of
    pos = [-1] * (4 * SM)  # by code: index in its rank's list, -1 if absent
    for row in rows:
        for i, code in enumerate(row):
            pos[code] = i
    groups: list[dict[int, list[tuple[int, int, Action]]]] = [{} for _ in range(p)]  # before compute i
    keys: list[list[int] | None] = [None] * p  # per rank, reference keys of its compute actions (when needed)
    for a, row in enumerate(rows):
        for i, code in enumerate(row):
            op, idx = divmod(code, SM)
            s, m = divmod(idx, M)
            if op == F and s < S - 1 and cross[s]:
                consumer, send, recv = idx + M, Action(s, Op.SEND_F, m), Action(s + 1, Op.RECV_F, m)
            elif op != F and op != W and s > 0 and cross[s - 1]:
                back = SM + idx - M if pos[SM + idx - M] >= 0 else BW * SM + idx - M  # B(s-1, m) or BW(s-1, m)
                consumer, send, recv = back, Action(s, Op.SEND_B, m), Action(s - 1, Op.RECV_B, m)
            else:
                continue
            b = place[recv.stage]
            k_p = int(start[code]) * p + a
            k_next = int(start[row[i + 1]]) * p + a if i + 1 < len(row) else 1 << 62
            at = pos[consumer]
            k_prev = int(start[rows[b][at - 1]]) * p + b if at else -1
            if k_prev < k_next:
                when = 2 * max(k_p, k_prev) + 1
            else:
                when = 2 * k_next - 1
                if keys[b] is None:
                    keys[b] = [int(start[c]) * p + b for c in rows[b]]
                at = bisect_right(keys[b], k_next)
            groups[a].setdefault(i + 1, []).append((when, code, send))
            groups[b].setdefault(at, []).append((when, code, recv))
    lists = {}
    for r in range(p):
        out: list[Action] = []
        acts, here = schedule.actions[r], groups[r]
        for i in range(len(acts) + 1):
            if i in here:
                out += [comm for _, _, comm in sorted(here[i])]
            if i < len(acts):
                out.append(acts[i])
        lists[r] = tuple(out)
    return schedule.with_actions(lists)
