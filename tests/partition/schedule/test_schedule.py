"""Schedules as data: actions, literal tables from the papers, generators, comm insertion and validation."""

from __future__ import annotations

import pytest

from partition.schedule.actions import Action, Op, Schedule, ScheduleError, ScheduleKind, format_table, parse_table
from partition.schedule.comms import insert_comms
from partition.schedule.generators import generate
from partition.schedule.validate import validate

COMPUTE = (Op.F, Op.B, Op.W, Op.BW)


def grid():
    """Every generator over p 1..8, m 1..16, v 1..3 where the arguments are allowed."""
    for kind in ScheduleKind.fixed():
        for p in range(1, 9):
            for m in range(1, 17):
                for v in (1, 2, 3) if kind is ScheduleKind.INTERLEAVED_1F1B else (1,):
                    if kind is ScheduleKind.INTERLEAVED_1F1B and m % p:
                        continue
                    yield kind, p, m, v


def test_action_prints_and_parses():
    assert str(Action(2, Op.F, 0)) == "2F0"
    assert [str(a) for a in (Action(1, Op.B, 3), Action(0, Op.W, 7), Action(1, Op.BW, 2))] == ["1B3", "0W7", "1BW2"]
    assert str(Action(0, Op.SEND_F, 3)) == "0SEND_F3" and str(Action(1, Op.RECV_B, 2)) == "1RECV_B2"
    for op in Op:
        a = Action(12, op, 34)
        assert Action.parse(str(a)) == a
    assert Action.parse(" 1BW2 ") == Action(1, Op.BW, 2)
    assert Action.parse("1I3") == Action(1, Op.B, 3) and str(Action.parse("1I3")) == "1B3"  # torch's letter for B
    with pytest.raises(TypeError, match="expected an Op"):
        Action(0, "F", 0)


@pytest.mark.parametrize("junk", ["", "F0", "1X2", "-1F0", "1F", "1f0", "1F0x", "1 F0", "1SEND0", None, 3])
def test_action_parse_rejects_junk(junk):
    with pytest.raises(ValueError, match="not an action"):
        Action.parse(junk)


def test_actions_sort_by_stage_then_op_then_microbatch():
    acts = [Action(1, Op.F, 0), Action(0, Op.BW, 1), Action(0, Op.F, 2), Action(0, Op.F, 1)]
    assert sorted(acts) == [Action(0, Op.F, 1), Action(0, Op.F, 2), Action(0, Op.BW, 1), Action(1, Op.F, 0)]


# The figures' rows, read left to right without the idle gaps: row i of these tables is each rank's i-th action.
# GPipe (Huang et al. 2019, fig. 2c): all forwards, then the backwards from the last microbatch to the first.
GPIPE_P2_M4 = """
step | rank 0 | rank 1
-----+--------+-------
   0 | 0F0    | 1F0
   1 | 0F1    | 1F1
   2 | 0F2    | 1F2
   3 | 0F3    | 1F3
   4 | 0BW3   | 1BW3
   5 | 0BW2   | 1BW2
   6 | 0BW1   | 1BW1
   7 | 0BW0   | 1BW0
"""
GPIPE_P3_M3 = """
step | rank 0 | rank 1 | rank 2
-----+--------+--------+-------
   0 | 0F0    | 1F0    | 2F0
   1 | 0F1    | 1F1    | 2F1
   2 | 0F2    | 1F2    | 2F2
   3 | 0BW2   | 1BW2   | 2BW2
   4 | 0BW1   | 1BW1   | 2BW1
   5 | 0BW0   | 1BW0   | 2BW0
"""
# PipeDream-Flush (Narayanan et al. 2021, fig. 4): rank r runs p-r-1 forwards, then one forward and one backward.
ONE_F_ONE_B_P2_M4 = """
step | rank 0 | rank 1
-----+--------+-------
   0 | 0F0    | 1F0
   1 | 0F1    | 1BW0
   2 | 0BW0   | 1F1
   3 | 0F2    | 1BW1
   4 | 0BW1   | 1F2
   5 | 0F3    | 1BW2
   6 | 0BW2   | 1F3
   7 | 0BW3   | 1BW3
"""
ONE_F_ONE_B_P3_M3 = """
step | rank 0 | rank 1 | rank 2
-----+--------+--------+-------
   0 | 0F0    | 1F0    | 2F0
   1 | 0F1    | 1F1    | 2BW0
   2 | 0F2    | 1BW0   | 2F1
   3 | 0BW0   | 1F2    | 2BW1
   4 | 0BW1   | 1BW1   | 2F2
   5 | 0BW2   | 1BW2   | 2BW2
"""

# Interleaved 1F1B (Narayanan et al. 2021, section 2.2 and fig. 4), p=2, v=2, m=4: rank r runs stages r and r+p;
# microbatches go through a stage in groups of p; warm-up has (p-r-1)*2 + (v-1)*p forwards (4 on rank 0, 2 on
# rank 1), then one forward and one backward in turn, backwards of the later stage first in each group. The same
# order is what torch.distributed.pipelining's ScheduleInterleaved1F1B builds (its B is our BW).
INTERLEAVED_P2_M4_V2 = """
step | rank 0 | rank 1
-----+--------+-------
   0 | 0F0    | 1F0
   1 | 0F1    | 1F1
   2 | 2F0    | 3F0
   3 | 2F1    | 3BW0
   4 | 0F2    | 3F1
   5 | 2BW0   | 3BW1
   6 | 0F3    | 1F2
   7 | 2BW1   | 1BW0
   8 | 2F2    | 1F3
   9 | 0BW0   | 1BW1
  10 | 2F3    | 3F2
  11 | 0BW1   | 3BW2
  12 | 2BW2   | 3F3
  13 | 2BW3   | 3BW3
  14 | 0BW2   | 1BW2
  15 | 0BW3   | 1BW3
"""
# ZB-H1 (Qi et al., ICLR 2024, section 3.1 and fig. 3), p=3, m=4: 1F1B's order of F and B, each W right after
# its B on rank 0 and r microbatches later on rank r, so that every rank holds p microbatches, rank 0's peak.
ZB_H1_P3_M4 = """
step | rank 0 | rank 1 | rank 2
-----+--------+--------+-------
   0 | 0F0    | 1F0    | 2F0
   1 | 0F1    | 1F1    | 2B0
   2 | 0F2    | 1B0    | 2F1
   3 | 0B0    | 1F2    | 2B1
   4 | 0W0    | 1B1    | 2F2
   5 | 0F3    | 1W0    | 2B2
   6 | 0B1    | 1F3    | 2W0
   7 | 0W1    | 1B2    | 2F3
   8 | 0B2    | 1W1    | 2B3
   9 | 0W2    | 1B3    | 2W1
  10 | 0B3    | 1W2    | 2W2
  11 | 0W3    | 1W3    | 2W3
"""
# ZB-V (Qi et al. 2024, "Pipeline Parallelism with Controllable Memory", fig. of ZB-V), p=2, m=4: rank 0 holds
# stages 0 and 3, rank 1 stages 1 and 2; warm-up, steady F-B-W and cool-down phases as the paper draws them
# (torch.distributed.pipelining's ScheduleZBVZeroBubble builds the same order; its I is our B).
ZB_V_P2_M4 = """
step | rank 0 | rank 1
-----+--------+-------
   0 | 0F0    | 1F0
   1 | 0F1    | 2F0
   2 | 0F2    | 1F1
   3 | 3F0    | 2F1
   4 | 3B0    | 2B0
   5 | 3W0    | 2W0
   6 | 3F1    | 1F2
   7 | 3B1    | 1B0
   8 | 3W1    | 1W0
   9 | 0F3    | 2F2
  10 | 0B0    | 2B1
  11 | 0W0    | 2W1
  12 | 3F2    | 1F3
  13 | 3B2    | 1B1
  14 | 3W2    | 1W1
  15 | 0B1    | 2F3
  16 | 0W1    | 2B2
  17 | 3F3    | 2W2
  18 | 3B3    | 1B2
  19 | 3W3    | 2B3
  20 | 0B2    | 1B3
  21 | 0W2    | 1W2
  22 | 0B3    | 2W3
  23 | 0W3    | 1W3
"""


@pytest.mark.parametrize(
    ("kind", "p", "m", "table"),
    [
        (ScheduleKind.GPIPE, 2, 4, GPIPE_P2_M4),
        (ScheduleKind.GPIPE, 3, 3, GPIPE_P3_M3),
        (ScheduleKind.ONE_F_ONE_B, 2, 4, ONE_F_ONE_B_P2_M4),
        (ScheduleKind.ONE_F_ONE_B, 3, 3, ONE_F_ONE_B_P3_M3),
        (ScheduleKind.INTERLEAVED_1F1B, 2, 4, INTERLEAVED_P2_M4_V2),
        (ScheduleKind.ZB_H1, 3, 4, ZB_H1_P3_M4),
        (ScheduleKind.ZB_V, 2, 4, ZB_V_P2_M4),
    ],
)
def test_literal_tables_from_the_papers(kind, p, m, table):
    schedule = generate(kind, p, m, virtual=2 if kind is ScheduleKind.INTERLEAVED_1F1B else 1)
    assert format_table(schedule) == table.strip("\n")
    assert parse_table(table) == dict(schedule.actions)


# ZB-V, p=3, m=6, as the paper (and ScheduleZBVZeroBubble) orders it, I written as B. Ours differs only in the
# order of the W that follow a rank's last B (rank 1: 4W5 1W4 for the paper's 1W4 4W5; rank 2: 2W4 3W5 for 3W5
# 2W4). Nothing waits for those W and the rank runs all of them back to back, so every finish time is the same
# and the held activations only shrink: no slower, no more memory. We keep ours (first held, first run).
ZB_V_P3_M6_PAPER = (
    "0F0 0F1 0F2 0F3 0F4 5F0 5B0 5W0 5F1 5B1 5W1 5F2 5B2 5W2 0F5 0B0 0W0 5F3 5B3 5W3 0B1 0W1 5F4 5B4 5W4 0B2 0W2 "
    "5F5 5B5 5W5 0B3 0W3 0B4 0W4 0B5 0W5",
    "1F0 1F1 1F2 4F0 1F3 4F1 4B0 4W0 4F2 4B1 4W1 1F4 1B0 1W0 4F3 4B2 4W2 1F5 1B1 1W1 4F4 4B3 4W3 1B2 1W2 4F5 4B4 "
    "4W4 1B3 4B5 1B4 1W3 1B5 1W4 4W5 1W5",
    "2F0 3F0 2F1 3F1 2F2 3F2 3B0 3W0 2F3 2B0 2W0 3F3 3B1 3W1 2F4 2B1 2W1 3F4 3B2 3W2 2F5 2B2 2W2 3F5 3B3 3W3 2B3 "
    "3B4 2B4 3B5 2B5 2W3 3W4 3W5 2W4 2W5",
)


def test_zb_v_follows_the_paper_up_to_the_order_of_trailing_weight_gradients():
    ours = generate(ScheduleKind.ZB_V, 3, 6)
    paper = ours.with_actions({r: tuple(Action.parse(a) for a in row.split()) for r, row in enumerate(ZB_V_P3_M6_PAPER)})
    validate(paper)
    for r in range(3):
        mine, theirs = list(ours.actions[r]), list(paper.actions[r])
        last_b = max(i for i, a in enumerate(theirs) if a.op is Op.B)
        assert mine[: last_b + 1] == theirs[: last_b + 1]
        assert sorted(mine[last_b + 1:]) == sorted(theirs[last_b + 1:]) and all(a.op is Op.W for a in mine[last_b + 1:])
    assert [list(ours.actions[0]), list(ours.actions[1])[:29]] == [list(paper.actions[0]), list(paper.actions[1])[:29]]


def test_table_marks_and_crops_around_the_marked_action():
    schedule = generate(ScheduleKind.ONE_F_ONE_B, 2, 16)
    full = format_table(schedule, mark=Action(1, Op.BW, 2))
    assert ">1BW2<" in full and full.count(">") == 1
    cropped = format_table(schedule, mark=Action(1, Op.BW, 2), context=1)
    rows = cropped.splitlines()
    assert rows[2].strip() == "..." and rows[-1].strip() == "..."
    assert [r.split("|")[0].strip() for r in rows[3:-1]] == ["4", "5", "6"]
    assert parse_table(full) == dict(schedule.actions)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("1f1b", 0, 4), "num_ranks must be an integer >= 1"),
        (("1f1b", 2, 0), "num_microbatches must be an integer >= 1"),
        (("gpipe", 2, 4, 2), "applies only to interleaved-1f1b"),
        (("interleaved-1f1b", 4, 6, 2), "multiple of num_ranks=4: got 6, try 4 or 8"),
        (("interleaved-1f1b", 4, 3, 2), "try 4"),
        (("interleaved-1f1b", 2, 4, 0), "virtual must be an integer >= 1"),
        (("zb-v", 2, 4, 3), "virtual must be 1 \\(default\\) or 2"),
        (("pipedream", 2, 4), "unknown schedule kind 'pipedream': choose one of gpipe, 1f1b"),
        (("1f1b", 2.0, 4), "num_ranks must be an integer"),
    ],
)
def test_generate_rejects_impossible_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        generate(*args)


def test_placements():
    assert generate(ScheduleKind.INTERLEAVED_1F1B, 3, 3, 2).placement == (0, 1, 2, 0, 1, 2)
    zbv = generate(ScheduleKind.ZB_V, 3, 6)
    assert zbv.placement == (0, 1, 2, 2, 1, 0) and zbv.num_stages == 6
    assert zbv.stages_of(0) == (0, 5) and zbv.rank_of(3) == 2
    assert generate(ScheduleKind.ZB_V, 3, 6, virtual=2) == zbv


def test_every_generator_validates_over_the_grid_with_and_without_comms():
    for kind, p, m, v in grid():
        schedule = generate(kind, p, m, v)
        assert schedule.kind is kind and schedule.num_ranks == p and schedule.num_microbatches == m
        validate(schedule)
        with_comms = insert_comms(schedule)
        validate(with_comms)
        assert with_comms.compute_only() == schedule
        split = kind in (ScheduleKind.ZB_H1, ScheduleKind.ZB_V)
        ops = {a.op for acts in schedule.actions.values() for a in acts}
        assert ops == ({Op.F, Op.B, Op.W} if split else {Op.F, Op.BW})


def _producer(a: Action) -> tuple[int, set[Op]]:
    return (a.stage, {Op.F}) if a.op is Op.SEND_F else (a.stage, {Op.B, Op.BW})


def test_sends_follow_their_producer_and_receives_precede_their_consumer():
    crossing = {(ScheduleKind.INTERLEAVED_1F1B, 2), (ScheduleKind.ZB_V, 1)}  # both directions on one pair of ranks
    for kind, p, m, v in [(k, 4, 8, 1) for k in ScheduleKind.fixed()] + [(ScheduleKind.INTERLEAVED_1F1B, 4, 8, 2)]:
        schedule = insert_comms(generate(kind, p, m, v))
        early = 0
        for acts in schedule.actions.values():
            compute = [i for i, a in enumerate(acts) if a.op in COMPUTE]
            for i, a in enumerate(acts):
                if a.op in (Op.SEND_F, Op.SEND_B):
                    before = acts[max(c for c in compute if c < i)]
                    assert (before.stage, before.microbatch) == (a.stage, a.microbatch)
                    assert before.op in _producer(a)[1]
                elif a.op in (Op.RECV_F, Op.RECV_B):
                    after = acts[min(c for c in compute if c > i)]
                    want = (a.stage, {Op.F} if a.op is Op.RECV_F else {Op.B, Op.BW}, a.microbatch)
                    early += (after.stage, after.op in want[1], after.microbatch) != (want[0], True, want[2])
        # only the crossing schedules need receives moved earlier
        assert (early > 0) == ((kind, v) in crossing), (kind, v)


def test_comms_only_between_ranks_and_insert_is_idempotent():
    one_rank = generate(ScheduleKind.INTERLEAVED_1F1B, 1, 3, 3)
    assert insert_comms(one_rank) == one_rank
    zbv = insert_comms(generate(ScheduleKind.ZB_V, 3, 6))  # stages 2 and 3 share rank 2
    inner = {Action(2, Op.SEND_F, k) for k in range(6)} | {Action(3, Op.RECV_F, k) for k in range(6)}
    inner |= {Action(3, Op.SEND_B, k) for k in range(6)} | {Action(2, Op.RECV_B, k) for k in range(6)}
    assert not inner & set(zbv.actions[2])
    assert insert_comms(zbv) == zbv
    assert sum(a.op.is_comm for acts in zbv.actions.values() for a in acts) == 4 * 4 * 6  # 4 cross boundaries


def _edit(schedule: Schedule, rank: int, acts: list[Action]) -> Schedule:
    return schedule.with_actions({**schedule.actions, rank: tuple(acts)})


def _broken(schedule: Schedule, message: str, mark: str) -> None:
    with pytest.raises(ScheduleError, match=message) as info:
        validate(schedule)
    assert f">{mark}<" in str(info.value) and "step | rank 0" in str(info.value)


def test_validate_fails_on_a_backward_before_its_forward():
    s = generate(ScheduleKind.ZB_H1, 2, 2)
    acts = list(s.actions[1])
    acts[0], acts[1] = acts[1], acts[0]  # 1B0 before 1F0
    _broken(_edit(s, 1, acts), "bad order: 1B0 runs before 1F0 on rank 1", "1B0")
    acts = list(s.actions[0])
    i = acts.index(Action(0, Op.W, 0))
    acts.insert(acts.index(Action(0, Op.B, 0)), acts.pop(i))  # 0W0 before 0B0
    _broken(_edit(s, 0, acts), "0W0 runs before 0B0", "0W0")


def test_validate_fails_on_a_missing_w_and_other_broken_structure():
    s = generate(ScheduleKind.ZB_H1, 2, 3)
    _broken(_edit(s, 0, [a for a in s.actions[0] if a != Action(0, Op.W, 1)]), "0W1 is missing", "0B1")
    _broken(_edit(s, 0, list(s.actions[0]) + [Action(0, Op.F, 1)]), "0F1 appears twice", "0F1")
    _broken(_edit(s, 0, list(s.actions[0]) + [Action(1, Op.F, 9)]), "out of range", "1F9")
    _broken(_edit(s, 0, list(s.actions[0]) + [Action(1, Op.BW, 2)]), "listed on rank 0 but stage 1", "1BW2")
    _broken(_edit(s, 1, list(s.actions[1]) + [Action(1, Op.BW, 2)]), "both BW and a split B/W", "1BW2")
    with pytest.raises(ScheduleError, match="0F2 is missing"):
        validate(_edit(s, 0, [a for a in s.actions[0] if a.microbatch != 2]))


def test_validate_fails_on_a_send_without_its_receive():
    s = insert_comms(generate(ScheduleKind.ONE_F_ONE_B, 2, 2))
    _broken(_edit(s, 1, [a for a in s.actions[1] if a != Action(1, Op.RECV_F, 1)]),
            "0SEND_F1 has no matching 1RECV_F1 on rank 1", "0SEND_F1")
    _broken(_edit(s, 0, [a for a in s.actions[0] if a != Action(0, Op.SEND_F, 1)]),
            "1RECV_F1 has no matching 0SEND_F1 on rank 0", "1RECV_F1")
    both = s.with_actions({r: tuple(a for a in acts if a.microbatch != 1 or a.op not in (Op.SEND_B, Op.RECV_B))
                           for r, acts in s.actions.items()})
    _broken(both, "0BW1 needs a tensor from another rank", "0BW1")
    zbv = generate(ScheduleKind.ZB_V, 2, 2)  # stages 1 and 2 share rank 1
    _broken(_edit(zbv, 1, list(zbv.actions[1]) + [Action(1, Op.SEND_F, 0)]), "between stages 1 and 2, which share a rank",
            "1SEND_F0")
    _broken(_edit(zbv, 0, list(zbv.actions[0]) + [Action(0, Op.RECV_F, 0)]), "no stage before 0", "0RECV_F0")


def test_validate_fails_on_a_cyclic_wait_with_blocking_comms():
    s = insert_comms(generate(ScheduleKind.ONE_F_ONE_B, 2, 4))
    acts = list(s.actions[0])
    send, recv = acts.index(Action(0, Op.SEND_F, 1)), acts.index(Action(0, Op.RECV_B, 0))
    assert abs(send - recv) == 1  # one group: the safe order has exactly one of the two ranks receive first
    acts[send], acts[recv] = acts[recv], acts[send]
    flipped = _edit(s, 0, acts)
    with pytest.raises(ScheduleError, match=r"deadlock \(cyclic wait under blocking send/recv\)") as info:
        validate(flipped)
    assert "rank 0 waits at" in str(info.value) and "rank 1 waits at" in str(info.value)
    assert str(info.value).count(">") == 1


def test_validate_fails_on_a_cyclic_wait_between_compute_lists():
    s = generate(ScheduleKind.ONE_F_ONE_B, 2, 2)
    cyclic = s.with_actions({0: (Action(0, Op.F, 0), Action(0, Op.BW, 0), Action(0, Op.F, 1), Action(0, Op.BW, 1)),
                             1: (Action(1, Op.F, 0), Action(1, Op.F, 1), Action(1, Op.BW, 0), Action(1, Op.BW, 1))})
    with pytest.raises(ScheduleError, match=r"deadlock \(cyclic wait\): rank 0 waits at 0BW0 for 1BW0 from rank 1") as info:
        validate(cyclic)
    assert ">0BW0<" in str(info.value)
    with pytest.raises(ScheduleError, match="deadlock"):
        insert_comms(cyclic)


def test_schedule_checks_its_fields():
    with pytest.raises(ValueError, match="placement"):
        Schedule(ScheduleKind.GPIPE, 2, 2, 1, (0, 2), {})
    with pytest.raises(ValueError, match="ranks \\[5\\] do not exist"):
        Schedule(ScheduleKind.GPIPE, 2, 2, 1, (0, 1), {5: ()})
    with pytest.raises(ValueError, match="num_microbatches"):
        Schedule(ScheduleKind.GPIPE, 2, 2, 0, (0, 1), {})
    s = Schedule(ScheduleKind.GPIPE, 2, 2, 1, (0, 1), {0: [Action(0, Op.F, 0)]})
    assert s.actions[1] == () and isinstance(s.actions[0], tuple)
    with pytest.raises(TypeError):
        s.actions[0] = ()


@pytest.mark.parametrize("p", [2, 3, 4, 6])
def test_zb_v_rank_never_holds_more_than_1f1b_rank_0(p):
    for m in (1, p, 2 * p, 4 * p + 1):
        for acts in generate(ScheduleKind.ZB_V, p, m).actions.values():
            held = peak = 0
            for a in acts:  # F brings a stage's activations in, W frees them (the stage holds half a rank's layers)
                held += (a.op is Op.F) - (a.op is Op.W)
                peak = max(peak, held)
            assert peak <= 2 * p and held == 0
