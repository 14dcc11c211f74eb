"""Sharing per-stage measurements across processes: each stage counted once, whatever the number of replicas."""

import torch

from runtime.train import measure


def fake_world(monkeypatch, processes: int) -> None:
    """A world of ``processes`` ranks in which every replica measured the same figures for its stages."""
    monkeypatch.setattr(measure, "gather_rows", lambda rows: [rows] * processes)


def test_replica_mean_divides_the_world_sum_by_the_replicas(monkeypatch):
    # 4 processes = 2 replicas of a 2-rank pipeline; rank 0 of each replica holds stage 0, rank 1 stage 1
    per_rank = [torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0], [4.0, 5.0, 6.0]])]
    fake_world(monkeypatch, 4)
    monkeypatch.setattr(measure, "all_reduce_sum", lambda t: 2 * (per_rank[0] + per_rank[1]))
    shared = measure.replica_mean(per_rank[0], ranks_per_pipeline=2)
    assert torch.equal(shared, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))


def test_replica_mean_of_one_pipeline_is_the_plain_sum(monkeypatch):
    fake_world(monkeypatch, 2)
    monkeypatch.setattr(measure, "all_reduce_sum", lambda t: t + 1.0)  # the other rank adds 1 everywhere
    assert torch.equal(measure.replica_mean(torch.zeros(2, 3), ranks_per_pipeline=2), torch.ones(2, 3))


def test_replica_mean_without_a_process_group_is_the_table_itself():
    table = torch.tensor([[0.5, 0.25, 0.125]], dtype=torch.float64)
    assert torch.equal(measure.replica_mean(table, ranks_per_pipeline=1), table)


def test_stage_costs_keep_every_position_of_the_step_and_drop_a_rare_slow_step():
    from partition.schedule.actions import Action, Op
    from runtime.engine.executor import ActionRecord

    def rec(stage, op, mb, seconds, fused=1):
        return ActionRecord(0, Action(stage, op, mb), 10.0, 10.0 + seconds, fused)

    steps = []
    for step in range(5):
        slow = 100.0 if step == 3 else 1.0  # one step where everything took 100x: the median over steps drops it
        steps += [rec(0, Op.F, 0, 3.0 * slow), rec(0, Op.F, 1, 1.0 * slow), rec(0, Op.F, 2, 1.0 * slow),
                  rec(0, Op.F, 3, 1.0 * slow), rec(1, Op.BW, 0, 2.0), rec(1, Op.BW, 1, 4.0),
                  rec(1, Op.W, 0, 2.0), rec(1, Op.W, 1, 10.0, fused=3)]
    costs = measure.costs_from_records(steps, 2)
    # stage 0 F: the first microbatch takes 3 every step, the others 1: (3 + 1 + 1 + 1) / 4 (a median over all: 1)
    assert costs[0].f == 1.5 and costs[0].b == 0.0 and costs[0].w == 0.0
    # stage 1: a fused BW counts as B; W ran 1 microbatch alone (2) and 3 fused (10): 12 / 4 a microbatch
    assert (costs[1].f, costs[1].b, costs[1].w) == (0.0, 3.0, 3.0)


def test_closing_medians_leave_out_the_first_step_and_name_the_forecast_terms(monkeypatch):
    assert measure.closing_medians([9.0, 1.0, 2.0, 3.0], [8.0, 4.0, 6.0, 5.0], distributed=False) == {"optimizer": 5.0}
    assert measure.closing_medians([1.0], [1.0], distributed=False) == {}
    # two ranks: the other measured an optimizer of 7 and an all-reduce of 0.5 (it reached the all-reduce last)
    other = torch.tensor([[7.0, -0.5]], dtype=torch.float64)
    monkeypatch.setattr(measure, "gather_rows", lambda rows: [rows, other])
    assert measure.closing_medians([9.0, 1.0, 2.0, 3.0], [8.0, 4.0, 6.0, 5.0], distributed=True) == \
        {"optimizer": 7.0, "loss all-reduce": 0.5}
