"""``validate(schedule)``: structure, dependency order and freedom from deadlock, proved by replaying it."""

from __future__ import annotations

from partition.schedule.actions import Action, Op, Schedule, ScheduleError, paused_gc
from partition.schedule.encoding import RECV_B, RECV_F, SEND_B, SEND_F, Encoded, F, W, encode
from partition.schedule.replay import Replay, replay


@paused_gc()
def validate(schedule: Schedule) -> None:
    """Raise ScheduleError (a ValueError whose message ends with a step-by-rank table) unless the schedule is sound.

    Checks: every action sits on the rank of its stage; every (stage, microbatch) has one F and one backward
    (BW, or B and W); sends and receives pair up and join stages on different ranks; and the lists run to the end
    with F(s, m) after F(s-1, m), B(s, m) after F(s, m) and B(s+1, m), W after B. Running is checked by replay
    under blocking point-to-point semantics (a send and its receive complete together): a schedule with sends
    and receives is replayed as written. One without them is replayed with its data dependencies alone; that
    is exactly when ``insert_comms`` can give it sends and receives that run without deadlock.
    """
    enc = encode(schedule)
    if enc.has_comms:
        _replay_with_comms(schedule, enc)
        return
    ones = [1.0] * enc.num_stages
    run = replay(enc, schedule.actions, ones, ones, ones, [0.0] * enc.num_stages, record=False)
    if not run.finished(enc):
        raise _explain_compute(schedule, enc, run)


def _replay_with_comms(schedule: Schedule, enc: Encoded) -> None:
    """Run the lists as written: compute when its inputs are here, a send/recv pair when both ranks reach it."""
    S, M, place, cross = enc.num_stages, enc.num_microbatches, enc.placement, enc.cross
    SM = S * M
    rows = enc.codes
    done_f, done_b = bytearray(SM), bytearray(SM)
    got_f, got_b = bytearray(SM), bytearray(SM)  # RECV_F(s, m) / RECV_B(s, m) has completed on stage s's rank
    ptr = [0] * len(rows)
    stack = list(reversed(range(len(rows))))
    while stack:
        r = stack.pop()
        row, i = rows[r], ptr[r]
        while i < len(row):
            op, idx = divmod(row[i], SM)
            s = idx // M
            if op == F:
                if s > 0 and not (got_f[idx] if cross[s - 1] else done_f[idx - M]):
                    break
                done_f[idx] = 1
            elif op == W:
                if not done_b[idx]:
                    break
            elif op < SEND_F:  # B or BW
                if not done_f[idx] or (s < S - 1 and not (got_b[idx] if cross[s] else done_b[idx + M])):
                    break
                done_b[idx] = 1
            else:
                # the partner's head must be the matching half, and the data must exist on the sending side
                if op == SEND_F:
                    peer, want, ready, got, at = place[s + 1], RECV_F * SM + idx + M, done_f[idx], got_f, idx + M
                elif op == RECV_F:
                    peer, want, ready, got, at = place[s - 1], SEND_F * SM + idx - M, done_f[idx - M], got_f, idx
                elif op == SEND_B:
                    peer, want, ready, got, at = place[s - 1], RECV_B * SM + idx - M, done_b[idx], got_b, idx - M
                else:
                    peer, want, ready, got, at = place[s + 1], SEND_B * SM + idx + M, done_b[idx + M], got_b, idx
                if not ready or ptr[peer] >= len(rows[peer]) or rows[peer][ptr[peer]] != want:
                    break
                got[at] = 1
                ptr[peer] += 1
                stack.append(peer)
            i += 1
            ptr[r] = i
        ptr[r] = i
    stuck = [r for r, row in enumerate(rows) if ptr[r] < len(row)]
    if stuck:
        raise _explain(schedule, enc, stuck, ptr, done_f, done_b, got_f, got_b)


def _explain(schedule: Schedule, enc: Encoded, stuck, ptr, done_f, done_b, got_f, got_b) -> ScheduleError:
    """An action waiting for something later on its own rank is a bad order; otherwise the ranks wait in a cycle."""
    S, M, place, cross = enc.num_stages, enc.num_microbatches, enc.placement, enc.cross
    SM = S * M
    ordering, waits = [], []
    for r in stuck:
        code = enc.codes[r][ptr[r]]
        head = enc.action(code)
        op, idx = divmod(code, SM)
        s, m = head.stage, head.microbatch
        need: Action | None = None
        if op == F:
            need = Action(s, Op.RECV_F, m) if cross[s - 1] else Action(s - 1, Op.F, m)
        elif op == W:
            need = Action(s, Op.B, m)
        elif op < SEND_F:
            if not done_f[idx]:
                need = Action(s, Op.F, m)
            elif cross[s]:
                need = Action(s, Op.RECV_B, m)
            else:
                need = enc.action(enc.backward_code(s + 1, m))
        elif op == SEND_F and not done_f[idx]:
            need = Action(s, Op.F, m)
        elif op == SEND_B and not done_b[idx]:
            need = enc.action(enc.backward_code(s, m))
        if need is not None:
            ordering.append((head, f"{head} runs before {need} on rank {r}"))
            continue
        peer = place[s + 1] if op in (SEND_F, RECV_B) else place[s - 1]
        at = enc.action(enc.codes[peer][ptr[peer]]) if ptr[peer] < len(enc.codes[peer]) else "its end"
        waits.append((head, f"rank {r} waits at {head} for rank {peer}, which is at {at}"))
    found = ordering or waits
    kind = "bad order" if ordering else "deadlock (cyclic wait under blocking send/recv)"
    return ScheduleError(f"{kind}: " + "; ".join(text for _, text in found), schedule, found[0][0])



def _explain_compute(schedule: Schedule, enc: Encoded, run: Replay) -> ScheduleError:
    """Why compute-only lists stop: an action before its input on its own rank, else ranks waiting in a cycle."""
    M, place = enc.num_microbatches, enc.placement
    SM = enc.num_stages * M
    ordering, waits = [], []
    for r, i in enumerate(run.ptr):
        if i == len(enc.codes[r]):
            continue
        code = enc.codes[r][i]
        head = enc.action(code)
        op, idx = divmod(code, SM)
        s, m = head.stage, head.microbatch
        if op == W or (op != F and run.start_of[idx] < 0):
            ordering.append((head, f"{head} runs before {Action(s, Op.B if op == W else Op.F, m)} on rank {r}"))
            continue
        src = s - 1 if op == F else s + 1
        need = Action(src, Op.F, m) if op == F else enc.action(enc.backward_code(src, m))
        if place[src] == r:
            ordering.append((head, f"{head} runs before {need} on rank {r}"))
        else:
            waits.append((head, f"rank {r} waits at {head} for {need} from rank {place[src]}"))
    found = ordering or waits
    kind = "bad order" if ordering else "deadlock (cyclic wait)"
    return ScheduleError(f"{kind}: " + "; ".join(text for _, text in found), schedule, found[0][0])
