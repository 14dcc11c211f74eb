"""The executor reports each stage's gradients as final right after its last W, while other stages still work."""

import pytest
import torch

from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.comm import LocalTransport
from runtime.engine.pipeline import Pipeline, PipelineConfig

F64 = torch.float64


class Recording:
    """Collectives of one process that record when each stage was reported ready (sums are the identity)."""

    spans_ranks = True

    def __init__(self) -> None:
        self.pipe: Pipeline | None = None
        self.calls: list[tuple[int, list[torch.Tensor], dict[int, int]]] = []

    def grads_ready(self, stage):
        pending = {s: st.in_flight for s, st in self.pipe.stages.items()}
        self.calls.append((stage.index, [p.grad.clone() for p in stage.parameters()], pending))

    def wait_grads(self):
        pass

    def sum_all(self, values):
        return values

    def sum_pipeline(self, values):
        return values


@pytest.mark.parametrize("kind,virtual", [(ScheduleKind.ONE_F_ONE_B, 1), (ScheduleKind.ZB_H1, 1),
                                          (ScheduleKind.INTERLEAVED_1F1B, 2)])
def test_grads_ready_once_per_stage_with_final_gradients_and_other_work_pending(kind, virtual):
    spec = MLPSpec((5, 7, 6, 8, 4))
    stages = 2 * virtual
    ranges = tuple((i, i + 1) for i in range(stages)) if stages == 4 else ((0, 2), (2, 4))
    cfg = PipelineConfig(spec, ranges, kind, 4, ("cpu",) * stages, F64, 0, virtual)
    rec = Recording()
    pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1), LocalTransport(), collectives=rec)
    rec.pipe = pipe
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, generator=g, dtype=F64), torch.randint(0, 4, (8,), generator=g)
    pipe.step(x, y, 8)
    assert sorted(s for s, _, _ in rec.calls) == list(range(stages))  # once per stage
    for s, grads, _ in rec.calls:  # nothing was added to a stage's gradients after it was reported ready
        assert all(torch.equal(a, p.grad) for a, p in zip(grads, pipe.stages[s].parameters()))
    # the first report comes while another stage still holds microbatches: the reduction can overlap that work
    assert sum(rec.calls[0][2].values()) > 0
