"""Receives posted one ahead: the executor's order of posting and taking, and the simulator's model of it."""

import torch

from partition.schedule.actions import Action, Op, ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.transport import LocalTransport


class Recording(LocalTransport):
    """The in-process mailbox, writing down every posting ahead and every taking, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, object, tuple]] = []

    def prepost(self, msg, shape, dtype, device):
        self.events.append(("post", msg.key, (tuple(shape), dtype)))

    def recv(self, msg, shape, dtype, device):
        self.events.append(("take", msg.key, (tuple(shape), dtype)))
        return super().recv(msg, shape, dtype, device)


def test_each_rank_posts_its_first_receive_at_the_start_and_each_next_one_after_taking_the_one_before():
    spec = MLPSpec((6, 8, 8, 8, 3), "relu")
    cfg = PipelineConfig(spec, ((0, 1), (1, 2), (2, 4)), ScheduleKind.ONE_F_ONE_B, 4, ("cpu",) * 3, torch.float64)
    transport = Recording()
    pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1), transport)
    pipe.step(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,)), 8)
    ev = transport.events
    receives = {r: [a for a in acts if a.op in (Op.RECV_F, Op.RECV_B)] for r, acts in pipe.executor.schedule.actions.items()}
    key = pipe.executor._recv_message  # the message a receive action takes
    firsts = {key(rs[0]).key for rs in receives.values() if rs}
    assert {k for _, k, _ in ev[: len(firsts)]} == firsts and all(kind == "post" for kind, _, _ in ev[: len(firsts)])
    for rank, rs in receives.items():
        keys = [key(a).key for a in rs]
        mine = [(kind, k, spec_) for kind, k, spec_ in ev if k in keys]
        # post r0, take r0, post r1, take r1, ... : each posted once, before it is taken and after the one before
        assert [(kind, k) for kind, k, _ in mine] == [(kind, k) for k in keys for kind in ("post", "take")], rank
        assert all(a[2] == b[2] for a, b in zip(mine[::2], mine[1::2]))  # posted with the buffer it is taken into


def test_the_critical_path_runs_through_the_take_that_posted_a_late_receive():
    """GPipe on 2 ranks, F = BW = 1, every message 2 s (the hand-worked case of test_simulate): 1F1 waits for F1's
    receive, posted when rank 1 took F0 (sent by 0F0), and 0BW0 for B0's, posted when rank 0 took B1 (sent by 1BW1);
    so the chain is 0F0 -> 1F1 -> 1BW1 -> 0BW0, not through 1F0 or 0BW1, which ended before those waits began."""
    link = LinkModel(latency=2.0, rendezvous=True)
    r = simulate(generate(ScheduleKind.GPIPE, 2, 2), [StageCost(1.0, 1.0, 0.0)] * 2, link, [1.0, 0.0])
    assert r.makespan == 12.0
    assert r.critical_path == (Action(0, Op.F, 0), Action(1, Op.F, 1), Action(1, Op.BW, 1), Action(0, Op.BW, 0))
