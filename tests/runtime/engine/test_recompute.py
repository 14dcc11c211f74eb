"""Activation recomputation: bitwise-equal training to keeping every activation, and one forward rerun per layer."""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from partition.recompute import NO_RECOMPUTE, RECOMPUTE_ALL, Recompute, parse_recompute
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.comm import LocalTransport
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.engine.stage import Engine

F64 = torch.float64
STEPS = 3
FIRST_1 = Recompute.parse("first:1")

# (schedule, ranges, microbatches, virtual): every schedule kind, stages of one to three layers
PLANS = [
    (ScheduleKind.GPIPE, ((0, 2), (2, 4), (4, 6)), 3, 1),
    (ScheduleKind.ONE_F_ONE_B, ((0, 3), (3, 4), (4, 6)), 4, 1),
    (ScheduleKind.INTERLEAVED_1F1B, ((0, 1), (1, 2), (2, 4), (4, 6)), 4, 2),
    (ScheduleKind.ZB_H1, ((0, 2), (2, 4), (4, 6)), 6, 1),
    (ScheduleKind.ZB_V, ((0, 1), (1, 3), (3, 4), (4, 6)), 4, 1),
]


def batches(spec, batch, steps, seed=11):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, spec.widths[0], generator=g, dtype=F64),
             torch.randint(0, spec.widths[-1], (batch,), generator=g)) for _ in range(steps)]


def make_pipeline(spec, plan, engine, defer_w, recompute, fuse_w=True):
    kind, ranges, m, virtual = plan
    cfg = PipelineConfig(spec, ranges, kind, m, ("cpu",) * len(ranges), F64, 5, virtual, fuse_w, defer_w, engine,
                         recompute)
    return Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), LocalTransport())


def train(spec, plan, engine, defer_w, recompute, data):
    pipe = make_pipeline(spec, plan, engine, defer_w, recompute)
    losses = [pipe.step(x, y, x.shape[0], i).loss for i, (x, y) in enumerate(data)]
    return losses, [p.detach() for s in range(len(plan[1])) for p in pipe.stages[s].parameters()]


def mixed(num_stages):
    """Partial recomputation on some stages (the last one included), all or none on others."""
    return tuple((FIRST_1, RECOMPUTE_ALL, NO_RECOMPUTE)[s % 3] for s in range(num_stages - 1)) + (FIRST_1,)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p[0].value)
@pytest.mark.parametrize("engine", list(Engine), ids=lambda e: e.value)
@pytest.mark.parametrize("defer_w", [False, True], ids=["wsched", "deferw"])
@pytest.mark.parametrize("how", ["all", "mixed"])
def test_recomputation_trains_bitwise_like_keeping_activations(plan, engine, defer_w, how):
    loss = "cross-entropy" if how == "all" else "squared-error"
    spec = MLPSpec((5, 7, 6, 8, 4, 9, 3), "tanh", True, 0.01, loss)
    data = batches(spec, 12, STEPS)
    choice = (RECOMPUTE_ALL,) if how == "all" else mixed(len(plan[1]))
    ref_losses, ref = train(spec, plan, engine, defer_w, (), data)
    losses, got = train(spec, plan, engine, defer_w, choice, data)
    assert losses == ref_losses
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


class _OpCounter(TorchDispatchMode):
    """Counts aten ops by name while ``label`` is set: (label, op name) -> calls."""

    def __init__(self):
        super().__init__()
        self.label = None
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.label is not None:
            self.counts[(self.label, str(func.overloadpacket.__name__))] += 1
        return func(*args, **(kwargs or {}))


def _label_actions(pipe, counter):
    """Make each stage's F and B set (stage, phase) as the counter's label while they run."""
    for s, stage in pipe.stages.items():
        for name, phase in (("forward", "F"), ("backward_input", "B")):
            method = getattr(stage, name)

            def wrapped(*args, _method=method, _label=(s, phase), **kwargs):
                counter.label = _label
                try:
                    return _method(*args, **kwargs)
                finally:
                    counter.label = None

            setattr(stage, name, wrapped)


@pytest.mark.parametrize("engine", list(Engine), ids=lambda e: e.value)
@pytest.mark.parametrize("kind,defer_w", [(ScheduleKind.ONE_F_ONE_B, False), (ScheduleKind.ZB_H1, True)])
def test_each_recomputed_layer_runs_its_forward_once_more_per_microbatch(engine, kind, defer_w):
    # every layer has a bias, so each forward of a layer is exactly one addmm (backward and W use mm and addmm_),
    # and tanh runs in forward only (its derivative is written with h): count both, per stage and phase
    spec = MLPSpec((5, 7, 6, 8, 4, 9, 3), "tanh", True, 0.0)
    ranges, m = ((0, 3), (3, 4), (4, 6)), 4
    choices = parse_recompute("first:2,none,all")
    pipe = make_pipeline(spec, (kind, ranges, m, 1), engine, defer_w, choices)
    counter = _OpCounter()
    _label_actions(pipe, counter)
    x, y = batches(spec, 8, 1)[0]
    with counter:
        pipe.step(x, y, 8)
    for s, ((a, b), choice) in enumerate(zip(ranges, choices)):
        k = choice.count(b - a)
        hidden = [layer for layer in range(a, a + k) if spec.has_activation(layer)]
        assert counter.counts[((s, "F"), "addmm")] == m * (b - a)
        assert counter.counts[((s, "B"), "addmm")] == m * k
        assert counter.counts[((s, "B"), "tanh")] == m * len(hidden)
    assert sum(n for (label, op), n in counter.counts.items() if op == "addmm") == m * (6 + 2 + 2)


def test_recompute_choices_are_checked_against_the_stages():
    spec = MLPSpec((4, 6, 5, 3))
    with pytest.raises(ValueError, match="one per stage"):
        make_pipeline(spec, (ScheduleKind.GPIPE, ((0, 1), (1, 3)), 2, 1), Engine.AUTOGRAD, False,
                      parse_recompute("all,none,all"))
