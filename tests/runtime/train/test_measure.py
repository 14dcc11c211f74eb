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
