"""Integer encoding of a schedule's actions and the structural checks (counts, placement, send/recv pairs)."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from partition.schedule.actions import Action, Op, Schedule, ScheduleError

# Op -> small integer; an action's code is op_code * S*M + stage * M + microbatch.
OP_CODE = MappingProxyType({op: i for i, op in enumerate(Op)})
F, B, W, BW, SEND_F, RECV_F, SEND_B, RECV_B = range(8)
OPS = tuple(Op)


@dataclass(frozen=True)
class Encoded:
    """A schedule's action lists as integer codes, with what the dependency rules need."""

    num_stages: int
    num_microbatches: int
    placement: tuple[int, ...]
    codes: tuple[tuple[int, ...], ...]  # rank -> codes in list order
    cross: tuple[bool, ...]  # cross[s]: stages s and s + 1 live on different ranks (s < S - 1)
    has_comms: bool

    def action(self, code: int) -> Action:
        """The action a code stands for."""
        op, idx = divmod(code, self.num_stages * self.num_microbatches)
        stage, mb = divmod(idx, self.num_microbatches)
        return Action(stage, OPS[op], mb)

    def backward_code(self, stage: int, mb: int) -> int:
        """The code of the backward of (stage, mb) as the schedule lists it: B if its rank lists that B, else BW."""
        SM = self.num_stages * self.num_microbatches
        idx = stage * self.num_microbatches + mb
        return B * SM + idx if B * SM + idx in self.codes[self.placement[stage]] else BW * SM + idx


def encode(schedule: Schedule) -> Encoded:
    """Check that every action is well placed and every (stage, microbatch) is complete, then encode the lists.

    Raises ScheduleError for: an action outside the stage/microbatch range or on a rank that does not hold its
    stage; a duplicate; a missing F or backward (BW, or both B and W; mixing BW with B/W is an error); a send/recv
    between stages on one rank or past either end; and, when the schedule has send/recv actions at all, a send
    without its receive (or the reverse) or a cross-rank input with neither.
    """
    S, M, place = schedule.num_stages, schedule.num_microbatches, schedule.placement
    SM = S * M
    seen = bytearray(8 * SM)
    cross = tuple(place[s] != place[s + 1] for s in range(S - 1))
    codes = []
    has_comms = False
    for r in range(schedule.num_ranks):
        row = []
        for a in schedule.actions[r]:
            s, m = a.stage, a.microbatch
            if not (isinstance(s, int) and 0 <= s < S and isinstance(m, int) and 0 <= m < M):
                raise ScheduleError(f"{a} is out of range: stages are 0..{S - 1}, microbatches 0..{M - 1}", schedule, a)
            if place[s] != r:
                raise ScheduleError(f"{a} is listed on rank {r} but stage {s} is placed on rank {place[s]}", schedule, a)
            op = OP_CODE[a.op]
            code = op * SM + s * M + m
            if seen[code]:
                raise ScheduleError(f"{a} appears twice", schedule, a)
            seen[code] = 1
            if op >= SEND_F:
                has_comms = True
                _check_comm_ends(schedule, a, op, cross)
            row.append(code)
        codes.append(tuple(row))
    if not _all_complete(seen, SM):
        for idx in range(SM):
            _check_complete(schedule, seen, idx, SM)
    if has_comms:
        _check_pairs(schedule, seen, cross)
    return Encoded(S, M, place, tuple(codes), cross, has_comms)


def _check_comm_ends(schedule: Schedule, a: Action, op: int, cross: tuple[bool, ...]) -> None:
    s = a.stage
    # the boundary the message crosses: (s, s+1) for SEND_F and RECV_B, (s-1, s) for RECV_F and SEND_B
    low = s if op in (SEND_F, RECV_B) else s - 1
    if not 0 <= low < len(cross):
        raise ScheduleError(f"{a} has no peer stage: there is no stage {'after' if low == s else 'before'} {s}", schedule, a)
    if not cross[low]:
        raise ScheduleError(f"{a} communicates between stages {low} and {low + 1}, which share a rank", schedule, a)


def _all_complete(seen: bytearray, SM: int) -> bool:
    """Fast path: every F once, and per (stage, microbatch) either BW alone or B and W (flags are 0 or 1)."""
    ones = b"\x01" * SM
    rows = [bytes(seen[op * SM:(op + 1) * SM]) for op in (F, B, W, BW)]
    b_plus_bw = int.from_bytes(rows[1], "little") + int.from_bytes(rows[3], "little")
    return rows[0] == ones and rows[1] == rows[2] and b_plus_bw == int.from_bytes(ones, "little")


def _check_complete(schedule: Schedule, seen: bytearray, idx: int, SM: int) -> None:
    M = schedule.num_microbatches
    s, m = divmod(idx, M)
    f, b, w, bw = (seen[op * SM + idx] for op in (F, B, W, BW))
    if f and ((bw and not (b or w)) or (b and w and not bw)):
        return
    if bw and (b or w):
        raise ScheduleError(f"stage {s} microbatch {m} has both BW and a split B/W", schedule, Action(s, Op.BW, m))
    if not f:
        mark = Action(s, Op.BW, m) if bw else Action(s, Op.B, m) if b else Action(s, Op.W, m) if w else None
        raise ScheduleError(f"{Action(s, Op.F, m)} is missing", schedule, mark)
    if not (b or w or bw):
        raise ScheduleError(f"stage {s} microbatch {m} has no backward ({Action(s, Op.BW, m)}, or a B and a W)",
                            schedule, Action(s, Op.F, m))
    missing, present = (Action(s, Op.W, m), Action(s, Op.B, m)) if b else (Action(s, Op.B, m), Action(s, Op.W, m))
    raise ScheduleError(f"{missing} is missing ({present} is there)", schedule, present)


def _check_pairs(schedule: Schedule, seen: bytearray, cross: tuple[bool, ...]) -> None:
    """Every cross-rank tensor travels by exactly one SEND and its RECV."""
    M = schedule.num_microbatches
    SM = schedule.num_stages * M
    ones = b"\x01" * M
    for s, crosses in enumerate(cross):
        rows = ((SEND_F, s), (RECV_F, s + 1), (SEND_B, s + 1), (RECV_B, s))
        if not crosses or all(seen[op * SM + st * M:op * SM + st * M + M] == ones for op, st in rows):
            continue
        for m in range(M):
            # forward: SEND_F(s, m) -> RECV_F(s+1, m); backward: SEND_B(s+1, m) -> RECV_B(s, m)
            pairs = ((Action(s, Op.SEND_F, m), Action(s + 1, Op.RECV_F, m), Action(s + 1, Op.F, m)),
                     (Action(s + 1, Op.SEND_B, m), Action(s, Op.RECV_B, m), None))
            for send, recv, consumer in pairs:
                has_send = seen[OP_CODE[send.op] * SM + send.stage * M + m]
                has_recv = seen[OP_CODE[recv.op] * SM + recv.stage * M + m]
                if has_send and not has_recv:
                    raise ScheduleError(f"{send} has no matching {recv} on rank {schedule.placement[recv.stage]}",
                                        schedule, send)
                if has_recv and not has_send:
                    raise ScheduleError(f"{recv} has no matching {send} on rank {schedule.placement[send.stage]}",
                                        schedule, recv)
                if not has_send:
                    consumer = consumer or _backward_of(seen, SM, s, m, M)
                    raise ScheduleError(f"{consumer} needs a tensor from another rank but there is no {send} / {recv} pair",
                                        schedule, consumer)


def _backward_of(seen: bytearray, SM: int, s: int, m: int, M: int) -> Action:
    return Action(s, Op.BW if seen[BW * SM + s * M + m] else Op.B, m)
