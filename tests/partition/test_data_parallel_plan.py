"""The planner's data-parallel step: ring all-reduce cost and its overlap with the schedule, by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from partition.data_parallel import ring_all_reduce_time, stage_gradient_bytes, with_all_reduce
from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost

UNIT = StageCost(1.0, 1.0, 1.0)


def test_ring_all_reduce_is_two_d_minus_one_hops_of_a_dth_of_the_bytes():
    # D = 4, 8 bytes: 6 hops of 2 bytes, each 0.5 s latency + 2 / 4 s
    assert ring_all_reduce_time(8.0, 4, LinkModel(0.5, 4.0)) == pytest.approx(6.0)
    assert ring_all_reduce_time(8.0, 1, LinkModel(0.5, 4.0)) == 0.0
    assert ring_all_reduce_time(0.0, 4, LinkModel(0.5, 4.0)) == 0.0
    with pytest.raises(ValueError, match="replicas"):
        ring_all_reduce_time(8.0, 0, LinkModel())


def test_stage_gradient_bytes_count_weights_and_biases():
    # widths 3,4,2 in float32: layer 0 has 4x3 + 4 = 16 parameters (64 bytes), layer 1 2x4 + 2 = 10 (40 bytes)
    assert stage_gradient_bytes(MLPSpec((3, 4, 2)), [(0, 1), (1, 2)], "float32") == [64.0, 40.0]
    assert stage_gradient_bytes(MLPSpec((3, 4, 2)), [(0, 2)], "float64") == [208.0]


def test_1f1b_reductions_start_at_each_stage_last_backward():
    # 1f1b, p = 2, m = 2, F = B = W = 1 (BW = 2):
    #   rank 0 |F0 F1 .  .  X0 X0 .  X1 X1     stage 0's last BW ends at 9 (the makespan)
    #   rank 1 |.  F0 X0 X0 F1 X1 X1           stage 1's last BW ends at 7
    schedule = generate(ScheduleKind.ONE_F_ONE_B, 2, 2)
    sim = simulate(schedule, [UNIT] * 2)
    step = with_all_reduce(sim, schedule, [10.0, 10.0], 2, LinkModel(1.0))  # 2 hops x 1 s latency = 2 s
    assert (step.pipeline, step.makespan, step.exposed) == (9.0, 11.0, 2.0)
    assert step.reduce_start == (9.0, 7.0) and step.reduce_end == (11.0, 9.0)  # stage 1's hides behind rank 0


def test_two_stages_of_a_rank_share_its_link_one_after_the_other():
    # interleaved-1f1b, p = 2, v = 2, m = 2, unit costs; stages 0, 2 on rank 0 and 1, 3 on rank 1; last BW ends:
    # stage 3 at 9, stage 2 at 11, stage 1 at 13, stage 0 at 15 (the makespan). 4 bytes over 2 replicas at
    # 0.5 B/s: 2 hops of 2 bytes, 4 s each = 8 s per stage.
    schedule = generate(ScheduleKind.INTERLEAVED_1F1B, 2, 2, 2)
    sim = simulate(schedule, [UNIT] * 4)
    step = with_all_reduce(sim, schedule, [4.0] * 4, 2, LinkModel(0.0, 0.5))
    # rank 1: stage 3 [9, 17], stage 1 ready at 13 waits for the link: [17, 25]
    # rank 0: stage 2 [11, 19], stage 0 ready at 15 waits: [19, 27]
    assert step.reduce_start == (19.0, 17.0, 11.0, 9.0)
    assert step.reduce_end == (27.0, 25.0, 19.0, 17.0)
    assert (step.pipeline, step.makespan) == (15.0, 27.0)


def test_zero_bubble_reductions_wait_for_the_deferred_w():
    # zb-h1, p = 2, m = 2: the last W of both stages ends at 7 (= the makespan), so nothing is hidden
    schedule = generate(ScheduleKind.ZB_H1, 2, 2)
    sim = simulate(schedule, [UNIT] * 2)
    step = with_all_reduce(sim, schedule, [10.0, 10.0], 2, LinkModel(1.0))
    assert step.reduce_start == (7.0, 7.0) and step.exposed == 2.0
    assert with_all_reduce(sim, schedule, [10.0, 10.0], 1, LinkModel(1.0)).exposed == 0.0  # one replica: no reduction


def test_simulate_cli_reports_the_data_parallel_step(tmp_path):
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "sim.json"
    done = subprocess.run([sys.executable, str(root / "scripts" / "simulate.py"), "--schedule", "1f1b", "--stages", "2",
                           "--microbatches", "2", "--data-parallel", "2", "--grad-bytes", "10", "--latency", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "data parallel x2: step 11 s with the all-reduces (2 s not hidden" in done.stdout
    dp = json.loads(out.read_text())["data_parallel"]
    assert (dp["step"], dp["exposed"], dp["reduce_end"]) == (11.0, 2.0, [11.0, 9.0])
