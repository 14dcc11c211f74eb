"""The time-aligned chart: unit-cost GPipe and 1F1B drawn as in the papers' figures, written out by hand."""

from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.schedule.timeline import TimeUnit, format_timeline
from partition.timing import StageCost


def chart(kind, p, m):
    result = simulate(generate(kind, p, m), [StageCost(1, 1, 1)] * p)
    return format_timeline(result.timeline, p).splitlines()[1:]


def test_gpipe_p2_m3_by_hand():
    # forward wave, then the fused backward (2 units each) from the last microbatch down
    assert chart(ScheduleKind.GPIPE, 2, 3) == [
        "rank  0 |F0 F1 F2 .  .  .  X2 X2 X1 X1 X0 X0",
        "rank  1 |.  F0 F1 F2 X2 X2 X1 X1 X0 X0 .  .",
    ]


def test_1f1b_p2_m3_by_hand():
    assert chart(ScheduleKind.ONE_F_ONE_B, 2, 3) == [
        "rank  0 |F0 F1 .  .  X0 X0 F2 X1 X1 .  X2 X2",
        "rank  1 |.  F0 X0 X0 F1 X1 X1 F2 X2 X2 .  .",
    ]


def test_slot_defaults_to_shortest_action_and_marks_idle():
    result = simulate(generate(ScheduleKind.GPIPE, 2, 1), [StageCost(2, 0.5, 0.5)] * 2)
    lines = format_timeline(result.timeline, 2).splitlines()
    assert lines[0].startswith("time slot = 1 s")  # BW = 0.5 + 0.5 is the shortest action
    assert lines[1] == "rank  0 |F0 F0 .  .  .  X0"
    assert lines[2] == "rank  1 |.  .  F0 F0 X0 ."


def test_unit_costs_say_cost_units_not_seconds():
    result = simulate(generate(ScheduleKind.ONE_F_ONE_B, 2, 2), [StageCost(1, 1, 1)] * 2)
    assert format_timeline(result.timeline, 2, unit=TimeUnit.COST).startswith("time slot = 1 cost unit;")
    assert format_timeline(result.timeline, 2, slot=2, unit=TimeUnit.COST).startswith("time slot = 2 cost units;")


def test_interleaved_cells_name_the_stage():
    # p = 2 ranks, v = 2: rank 0 holds stages 0 and 2, rank 1 stages 1 and 3 (unit costs)
    result = simulate(generate(ScheduleKind.INTERLEAVED_1F1B, 2, 2, 2), [StageCost(1, 1, 1)] * 4)
    lines = format_timeline(result.timeline, 2).splitlines()
    assert "stage, op, microbatch" in lines[0]
    assert lines[1].split("|")[1].split()[:2] == ["0F0", "0F1"]
    stages = {c[0] for line in lines[1:] for c in line.split("|")[1].split() if c != "."}
    assert stages == {"0", "1", "2", "3"}
    assert {c[0] for c in lines[1].split("|")[1].split() if c != "."} == {"0", "2"}
