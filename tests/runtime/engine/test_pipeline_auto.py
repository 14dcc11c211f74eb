"""The runtime executes what the capped generator returns: a ready-made auto schedule trains like accumulation."""

import pytest
import torch
from torch import nn

from partition.schedule.actions import ScheduleKind
from partition.schedule.capped import ActivationCap, Placement, capped_schedule
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import StageCost
from runtime.comm import LocalTransport
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.engine.stage import Engine
from runtime.ops.model import PipeModel
from runtime.train.config import TrainConfig
from runtime.train.process import pipeline_config

F64 = torch.float64
LR, STEPS = 0.05, 3


def reference(spec, seed, data, m):
    """nn.Sequential under plain autograd, gradient accumulation over m microbatches, then SGD."""
    seq = PipeModel.from_spec(spec, seed, F64).to_sequential()
    opt = torch.optim.SGD(seq.parameters(), lr=LR)
    for x, y in data:
        opt.zero_grad()
        for xc, yc in zip(x.chunk(m), y.chunk(m)):
            (nn.functional.cross_entropy(seq(xc), yc, reduction="sum") / x.shape[0]).backward()
        opt.step()
    return [p.detach() for p in seq.parameters()]


@pytest.mark.parametrize("placement,ranges,budget", [
    (Placement.LINE, ((0, 2), (2, 4), (4, 6)), 2),  # 1F1B would hold 3 microbatches on rank 0
    (Placement.V, ((0, 1), (1, 2), (2, 3), (3, 6)), 3),  # zb-v would hold 4 stage-microbatches per rank
])
@pytest.mark.parametrize("engine", list(Engine))
def test_auto_schedule_runs_and_equals_gradient_accumulation(placement, ranges, budget, engine):
    spec = MLPSpec((5, 7, 6, 8, 4, 9, 3), "tanh", True, 0.0)
    m, p = 4, len(ranges) // (2 if placement is Placement.V else 1)
    found = capped_schedule(p, m, [StageCost(1.0, 1.0, 1.0)] * len(ranges), ActivationCap(budget), placement=placement)
    assert found.schedule.kind is ScheduleKind.AUTO and max(ActivationCap(budget).rank_bytes(found.schedule)) <= budget
    assert found.source.startswith(("rule", "exact"))  # no fixed schedule fits this cap
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(8, 5, generator=g, dtype=F64), torch.randint(0, 3, (8,), generator=g)) for _ in range(STEPS)]
    cfg = PipelineConfig(spec, ranges, ScheduleKind.AUTO, m, ("cpu",) * len(ranges), F64, 3, engine=engine,
                         ready=found.schedule)
    pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=LR), LocalTransport())
    assert pipe.schedule is found.schedule and cfg.num_ranks == p
    for i, (x, y) in enumerate(data):
        pipe.step(x, y, x.shape[0], i)
    got = [q.detach() for s in range(len(ranges)) for q in pipe.stages[s].parameters()]
    ref = reference(spec, 3, data, m)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert (a - b).abs().max().item() <= 1e-12


def test_a_ready_schedule_must_match_the_plan():
    spec = MLPSpec((5, 7, 6, 3))
    found = capped_schedule(3, 4, [StageCost(1.0, 1.0, 1.0)] * 3, ActivationCap(2))
    cfg = PipelineConfig(spec, ((0, 1), (1, 2), (2, 3)), ScheduleKind.AUTO, 2, ("cpu",) * 3, ready=found.schedule)
    with pytest.raises(ValueError, match="the given one has 3 stages and 4 microbatches"):
        cfg.build_schedule()


def test_a_training_config_with_schedule_auto_gets_a_generated_schedule():
    cfg = TrainConfig(spec=MLPSpec((16, 32, 32, 8)), stages=3, schedule=ScheduleKind.AUTO, microbatches=6, batch_size=48,
                      max_inflight=2, partition="uniform")
    pcfg = pipeline_config(cfg, ("cpu",) * 3)
    schedule = pcfg.build_schedule()
    assert schedule.kind is ScheduleKind.AUTO and schedule.num_microbatches == 6
    assert max(simulate(schedule, [StageCost(1.0, 1.0, 1.0)] * 3).peak_inflight) <= 2
    with pytest.raises(ValueError, match="auto needs --memory-cap and/or --max-inflight"):
        TrainConfig(stages=3, schedule=ScheduleKind.AUTO, microbatches=2)
