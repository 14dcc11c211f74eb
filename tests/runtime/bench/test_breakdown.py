"""The step breakdown's arithmetic: GEMM FLOPs counted per action by hand, the shape limit, the table."""

import pytest

from partition.schedule.actions import Action, Op
from runtime.bench.breakdown import TERMS, breakdown_table, rank_work, shape_limit
from runtime.engine.executor import ActionRecord


def rec(stage: int, op: Op, mb: int, fused: int = 1) -> ActionRecord:
    return ActionRecord(0, Action(stage, op, mb), 0.0, 1.0, fused)


def test_rank_work_counts_each_gemm_by_hand():
    ranges = ((0, 2), (2, 5))  # stage 0: 2 layers (its first skips the input's gradient), stage 1: 3 layers
    width, rows = 8, 4
    unit = 2 * rows * width * width  # one layer's GEMM on one microbatch
    first = [rec(0, Op.F, 0), rec(0, Op.F, 1), rec(0, Op.SEND_F, 0), rec(0, Op.B, 0), rec(0, Op.B, 1),
             rec(0, Op.W, 0, fused=2)]
    work = rank_work(first, ranges, width, rows)
    assert work.flops == {("F", 4): 4 * unit, ("B", 4): 2 * 1 * unit, ("W", 8): 2 * 2 * unit}
    last = [rec(1, Op.F, 0), rec(1, Op.BW, 0), rec(1, Op.RECV_F, 1)]
    assert rank_work(last, ranges, width, rows).flops == {("F", 4): 3 * unit, ("B", 4): 3 * unit, ("W", 4): 3 * unit}
    # seconds at given rates: F at 1 FLOP/s, B at 2, W at 4
    rates = {"F": 1.0, "B": 2.0, "W": 4.0}
    assert work.seconds(lambda kind, r: rates[kind]) == pytest.approx(4 * unit + unit + unit)


def result(shape_ms: tuple[float, float]) -> dict:
    ranks = []
    for r, shape in enumerate(shape_ms):
        terms = dict(zip(TERMS, (100.0, shape, 10.0, 20.0, 5.0)))
        ranks.append({"rank": r, "step_ms": sum(terms.values()), **terms,
                      "gflops_microbatch": {"F": 50.0, "B": 40.0, "W": 60.0},
                      "gflops_batch": {"F": 80.0, "B": 80.0, "W": 80.0}})
    return {"contender": "ours:zb-h1", "microbatch_rows": 64, "batch": 512, "steps": 6, "ranks": ranks}


def test_shape_limit_is_the_limit_slowed_by_the_work_the_shapes_add():
    # 200 ms of ideal compute over both ranks becomes 235 ms at the shapes measured: spread evenly, 235 / 200 longer
    assert shape_limit(result((10.0, 25.0)), 1000.0) == pytest.approx(1000.0 * 200 / 235)
    assert shape_limit(result((0.0, 0.0)), 1000.0) == pytest.approx(1000.0)


def test_breakdown_table_shows_each_term_and_its_share():
    text = breakdown_table(result((10.0, 25.0)))
    lines = text.splitlines()
    assert "ours:zb-h1" in lines[0] and "mean of 6 steps" in lines[0]
    assert lines[1].split()[:7] == ["rank", "step", "ms", *TERMS[:4]]
    assert "160.0" in lines[4] and "25.0 (16%)" in lines[4] and "B 40/80" in lines[4]
