"""Exact equivalence: pipeline training equals single-device gradient accumulation (float64, plain autograd)."""

import time

import pytest
import torch
from torch import nn

from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.comm import LocalTransport
from runtime.engine.pipeline import NonFiniteLoss, Pipeline, PipelineConfig
from runtime.engine.stage import Engine
from runtime.ops.model import PipeModel

F64 = torch.float64
LR, MOMENTUM, STEPS = 0.05, 0.9, 3


def batches(spec, batch, steps, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, spec.widths[0], generator=g, dtype=F64), torch.randint(0, spec.widths[-1], (batch,), generator=g))
        for _ in range(steps)
    ]


def reference(spec, seed, data, m):
    """nn.Sequential under plain autograd, gradient accumulation over m microbatches, then SGD."""
    seq = PipeModel.from_spec(spec, seed, F64).to_sequential()
    opt = torch.optim.SGD(seq.parameters(), lr=LR, momentum=MOMENTUM)
    lins = [mod for mod in seq if isinstance(mod, nn.Linear)]
    for x, y in data:
        opt.zero_grad()
        for xc, yc in zip(x.chunk(m), y.chunk(m)):
            out = seq(xc)
            if spec.loss.value == "cross-entropy":
                loss = nn.functional.cross_entropy(out, yc, reduction="sum") / x.shape[0]
            else:
                loss = 0.5 * (out - nn.functional.one_hot(yc, spec.widths[-1]).to(F64)).pow(2).sum() / x.shape[0]
            loss.backward()
        (spec.l2 / 2 * sum(lin.weight.pow(2).sum() for lin in lins)).backward()
        opt.step()
    return [p.detach() for p in seq.parameters()]


def run_pipeline(spec, seed, data, kind, ranges, m, virtual=1, fuse_w=True, defer_w=False, engine=Engine.AUTOGRAD):
    cfg = PipelineConfig(spec, ranges, kind, m, ("cpu",) * len(ranges), F64, seed, virtual, fuse_w, defer_w, engine)
    pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM), LocalTransport())
    for i, (x, y) in enumerate(data):
        pipe.step(x, y, x.shape[0], i)
    return [p.detach() for s in range(len(ranges)) for p in pipe.stages[s].parameters()]


CASES = [
    (ScheduleKind.GPIPE, ((0, 2), (2, 4), (4, 6)), 3, 1),
    (ScheduleKind.GPIPE, ((0, 1), (1, 6)), 4, 1),
    (ScheduleKind.ONE_F_ONE_B, ((0, 2), (2, 4), (4, 6)), 6, 1),
    (ScheduleKind.ONE_F_ONE_B, ((0, 1), (1, 2), (2, 3), (3, 6)), 2, 1),
    (ScheduleKind.ONE_F_ONE_B, ((0, 6),), 3, 1),
    (ScheduleKind.INTERLEAVED_1F1B, ((0, 1), (1, 2), (2, 3), (3, 4)), 4, 2),
    (ScheduleKind.INTERLEAVED_1F1B, ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)), 3, 2),
    (ScheduleKind.ZB_H1, ((0, 2), (2, 4), (4, 6)), 6, 1),
    (ScheduleKind.ZB_H1, ((0, 3), (3, 6)), 2, 1),
    (ScheduleKind.ZB_V, ((0, 1), (1, 2), (2, 3), (3, 6)), 4, 1),
]


@pytest.mark.parametrize("kind,ranges,m,virtual", CASES, ids=lambda v: getattr(v, "value", str(v)))
@pytest.mark.parametrize("bias,loss", [(True, "cross-entropy"), (False, "squared-error")])
@pytest.mark.parametrize("engine", list(Engine))
def test_pipeline_equals_gradient_accumulation(kind, ranges, m, virtual, bias, loss, engine):
    spec = MLPSpec((5, 7, 6, 8, 4, 9, 3), "tanh", bias, 0.01, loss)
    n_layers = ranges[-1][1]
    if n_layers != spec.num_layers:
        spec = MLPSpec(spec.widths[: n_layers + 1], "tanh", bias, 0.01, loss)
    data = batches(spec, 12, STEPS)
    ref = reference(spec, 3, data, m)
    got = run_pipeline(spec, 3, data, kind, ranges, m, virtual, engine=engine)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-12


@pytest.mark.parametrize("kind,ranges,m,virtual", CASES[::2], ids=lambda v: getattr(v, "value", str(v)))
def test_deferring_all_weight_gradients_keeps_the_math(kind, ranges, m, virtual):
    """W moved to the end of the step and fused over all microbatches: same parameters to 1e-12."""
    spec = MLPSpec((5, 7, 6, 8, 4, 9, 3)[: ranges[-1][1] + 1], "relu", True, 0.02)
    data = batches(spec, 12, STEPS)
    ref = reference(spec, 2, data, m)
    got = run_pipeline(spec, 2, data, kind, ranges, m, virtual, defer_w=True)
    for a, b in zip(got, ref):
        assert (a - b).abs().max().item() <= 1e-12


def test_defer_all_w_moves_every_weight_gradient_to_the_end():
    from partition.schedule.generators import generate
    from partition.schedule.transforms import defer_all_w
    from partition.schedule.validate import validate

    sched = defer_all_w(generate(ScheduleKind.ONE_F_ONE_B, 3, 4), fill_drain=False)
    validate(sched)
    for acts in sched.actions.values():
        ops = [a.op.name for a in acts]
        assert "BW" not in ops and ops.count("W") == 4 and ops.count("B") == 4
        assert ops[-4:] == ["W"] * 4


def test_filling_the_drain_moves_one_w_into_the_wait_the_unit_simulation_shows():
    """2 ranks, 4 microbatches, unit costs (worked by hand): with every W at the end rank 0 runs B3 in [9, 10] and
    its four W until 14 while rank 1 ends at 13; rank 0 waits in [8, 9] for B3's gradient, so W0 goes there and
    the step ends at 13. GPipe's backward steps never wait, so it keeps every W at the end."""
    from partition.schedule.generators import generate
    from partition.schedule.simulate import simulate
    from partition.schedule.transforms import defer_all_w
    from partition.schedule.validate import validate
    from partition.timing import StageCost

    unit = [StageCost(1.0, 1.0, 1.0)] * 2
    plain = defer_all_w(generate(ScheduleKind.ZB_H1, 2, 4), fill_drain=False)
    filled = defer_all_w(generate(ScheduleKind.ZB_H1, 2, 4))
    assert " ".join(map(str, filled.actions[0])) == "0F0 0F1 0B0 0F2 0B1 0F3 0B2 0W0 0B3 0W1 0W2 0W3"
    assert filled.actions[1] == plain.actions[1]
    assert simulate(plain, unit).makespan == 14.0 and simulate(filled, unit).makespan == 13.0
    gpipe = generate(ScheduleKind.GPIPE, 2, 4)
    assert defer_all_w(gpipe).actions == defer_all_w(gpipe, fill_drain=False).actions
    # 1F1B on 4 ranks, 8 microbatches: rank r's drain has 3 - r waits between its last backward steps; one W in
    # each brings the step from 30 units to 27 (the last rank's 3 of fill + 8 F + 8 B + 8 W)
    four = generate(ScheduleKind.ONE_F_ONE_B, 4, 8)
    unit4 = [StageCost(1.0, 1.0, 1.0)] * 4
    filled4 = defer_all_w(four)
    validate(filled4)
    assert simulate(defer_all_w(four, fill_drain=False), unit4).makespan == 30.0 and simulate(filled4, unit4).makespan == 27.0
    last_b = {r: max(i for i, a in enumerate(acts) if a.op.name == "B") for r, acts in filled4.actions.items()}
    assert [sum(a.op.name == "W" for a in acts[: last_b[r]]) for r, acts in sorted(filled4.actions.items())] == [3, 2, 1, 0]


def test_unfused_weight_gradients_are_bitwise_equal_to_one_stage_accumulation():
    """Same summation order (W per microbatch, in order) as one stage accumulating: bitwise equal."""
    spec = MLPSpec((4, 6, 5, 3), "relu", True, 0.0)
    data = batches(spec, 8, STEPS)
    single = run_pipeline(spec, 1, data, ScheduleKind.ONE_F_ONE_B, ((0, 3),), 4, fuse_w=False)
    piped = run_pipeline(spec, 1, data, ScheduleKind.ONE_F_ONE_B, ((0, 1), (1, 2), (2, 3)), 4, fuse_w=False)
    for a, b in zip(single, piped):
        assert torch.equal(a, b)


@pytest.mark.parametrize("act,loss", [("relu", "cross-entropy"), ("sigmoid", "squared-error"), ("tanh", "cross-entropy")])
def test_direct_engine_is_bitwise_equal_to_autograd_engine(act, loss):
    """The same equations in the same order: the two engines give identical parameters."""
    spec = MLPSpec((5, 7, 6, 8, 3), act, True, 0.01, loss)
    data = batches(spec, 12, STEPS)
    ranges = ((0, 1), (1, 3), (3, 4))
    a = run_pipeline(spec, 4, data, ScheduleKind.ZB_H1, ranges, 4, engine=Engine.AUTOGRAD)
    b = run_pipeline(spec, 4, data, ScheduleKind.ZB_H1, ranges, 4, engine=Engine.DIRECT)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_non_finite_loss_names_step_and_stage_and_keeps_parameters():
    spec = MLPSpec((4, 6, 5, 3), "relu", True, 0.0)
    cfg = PipelineConfig(spec, ((0, 1), (1, 2), (2, 3)), ScheduleKind.GPIPE, 2, ("cpu",) * 3, F64, 0)
    pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1), LocalTransport())
    before = [p.detach().clone() for s in range(3) for p in pipe.stages[s].parameters()]
    with torch.no_grad():
        pipe.stages[1].params[0][0][0, 0] = float("nan")
    x, y = batches(spec, 4, 1)[0]
    with pytest.raises(NonFiniteLoss, match="step 5.*stage 1"):
        pipe.step(x, y, 4, step_index=5)
    after = [p.detach() for s in range(3) for p in pipe.stages[s].parameters()]
    assert torch.equal(before[0], after[0]) and torch.equal(before[-1], after[-1])


def two_stage_gpipe(m):
    spec = MLPSpec((4, 6, 3))
    cfg = PipelineConfig(spec, ((0, 1), (1, 2)), ScheduleKind.GPIPE, m, ("cpu",) * 2, F64, 0)
    return spec, Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1), LocalTransport())


def test_rows_must_match_the_batch():
    spec, pipe = two_stage_gpipe(2)
    x, y = batches(spec, 6, 1)[0]
    with pytest.raises(ValueError, match="x has 6 rows"):
        pipe.step(x, y, 8)


def test_microbatches_must_divide_batch():
    spec, pipe = two_stage_gpipe(3)
    x, y = batches(spec, 4, 1)[0]
    with pytest.raises(ValueError, match="microbatches"):
        pipe.step(x, y, 4)


def test_a_step_times_its_closing_checks_and_its_optimizer_steps():
    """StepOutput.optimizer covers every stage's optimizer step (each timed from inside here) and closing the
    all-reduce of the metrics; both lie within the step, after its actions."""
    spec = MLPSpec((6, 5, 4, 3))
    inside = []

    class Timed(torch.optim.SGD):
        def step(self, closure=None):
            t0 = time.perf_counter()
            out = super().step(closure)
            inside.append(time.perf_counter() - t0)
            return out

    cfg = PipelineConfig(spec, ((0, 1), (1, 2), (2, 3)), ScheduleKind.ONE_F_ONE_B, 2, ("cpu",) * 3, F64)
    pipe = Pipeline(cfg, lambda ps: Timed(ps, lr=LR), LocalTransport())
    (x, y), = batches(spec, 4, 1)
    t0 = time.perf_counter()
    out = pipe.step(x, y, 4)
    wall = time.perf_counter() - t0
    assert len(inside) == 3 and out.optimizer >= sum(inside) > 0 and out.closing > 0
    assert max(r.end for r in out.records) + out.closing + out.optimizer <= t0 + wall
