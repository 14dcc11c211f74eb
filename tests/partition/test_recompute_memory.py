"""Memory with recomputation: each phase by hand, and exact per-rank peaks against the bytes a pipeline holds (CPU)."""

import pytest
import torch

from partition.activation_peak import plan_activation_peaks
from partition.memory import MicrobatchBytes, layer_memory, plan_memory
from partition.recompute import (
    NO_RECOMPUTE,
    RECOMPUTE_ALL,
    Recompute,
    RecomputeKind,
    parse_recompute,
    per_stage,
    recompute_forward,
    recompute_stage_cost,
)
from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import StageCost
from runtime.comm import LocalTransport
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.engine.stage import Engine


def test_recompute_phases_by_hand():
    # widths 3 -> 4 -> 5 -> 2, float32, cross-entropy, microbatch 10: x bytes 120, 160, 200; h bytes 160, 200;
    # g bytes 160, 200, 80; o 80 and the int64 class index target 80
    layers = layer_memory(MLPSpec((3, 4, 5, 2)), 10, "float32")
    none = layers.microbatch(0, 2)
    assert none == MicrobatchBytes(forward=120 + 160 + 200, backward=480, deferred=120 + 160 + 160 + 200)
    full = layers.microbatch(0, 2, RECOMPUTE_ALL)  # keeps x; B rebuilds x(1) and h(2)
    assert full == MicrobatchBytes(forward=120, backward=480, deferred=640, recomputed=2)
    part = layers.microbatch(0, 2, Recompute.parse("first:1"))  # keeps x, x(1) = h(1), h(2); B rebuilds h(1) again
    assert part == MicrobatchBytes(forward=120 + 160 + 200, backward=480 + 160, deferred=640, recomputed=1)
    last = layers.microbatch(1, 3, RECOMPUTE_ALL)  # keeps x(1) and the target; B rebuilds x(2), o
    assert last == MicrobatchBytes(forward=160 + 80, backward=160 + 200 + 80 + 80, deferred=160 + 200 + 200 + 80,
                                   recomputed=2)
    assert layers.microbatch(1, 3, Recompute.parse("first:5")) == last
    # counts: two in flight (one in its recompute window), one of them deferred
    report = layers.stage(0, 2, inflight=2, deferred_w=1, recompute=RECOMPUTE_ALL)
    assert report.saved_activations == 2 * 120 + (480 - 120) and report.deferred_w == 160 + 200 + 160
    assert report.total >= report.parameters + report.gradients + report.communication + 120 + 640


def test_recompute_choices_parse_and_cost():
    assert parse_recompute("none") == (NO_RECOMPUTE,) and str(Recompute.parse("First:3")) == "first:3"
    assert parse_recompute("all,none,first:2") == (RECOMPUTE_ALL, NO_RECOMPUTE, Recompute(RecomputeKind.FIRST, 2))
    assert per_stage((), 2) == (NO_RECOMPUTE,) * 2 and per_stage((RECOMPUTE_ALL,), 3) == (RECOMPUTE_ALL,) * 3
    for bad in ("some", "first:0", "first:x"):
        with pytest.raises(ValueError, match="recompute"):
            parse_recompute(bad)
    with pytest.raises(ValueError, match="one per stage"):
        per_stage((NO_RECOMPUTE, RECOMPUTE_ALL), 3)
    costs = [StageCost(1.0, 2.0, 3.0), StageCost(10.0, 20.0, 30.0), StageCost(100.0, 200.0, 300.0)]
    assert recompute_forward(costs, 0, 3, Recompute.parse("first:2")) == 11.0
    assert recompute_stage_cost(costs, 1, 3, RECOMPUTE_ALL) == StageCost(110.0, 220.0 + 110.0, 330.0)
    assert recompute_stage_cost(costs, 1, 3, NO_RECOMPUTE) == StageCost(110.0, 220.0, 330.0)


def _held_bytes(stage, params):
    """Bytes of the distinct non-parameter tensors a stage holds for its microbatches: the saved tensors of every
    live autograd graph it keeps (not the graph's output itself: an h its node saves, or the loss value), the
    direct engine's saved lists, the kept inputs and targets, and the store's deferred g and x."""
    found = {}

    def add(t):
        if t.data_ptr() not in params:
            found[(t.data_ptr(), t.numel() * t.element_size())] = t.numel() * t.element_size()

    def walk(root):
        nodes, seen = [root], set()
        while nodes:
            node = nodes.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            for t in getattr(node, "saved_tensors", ()):
                add(t)
            nodes.extend(child for child, _ in node.next_functions)

    def visit(value):
        if isinstance(value, torch.Tensor):
            walk(value.grad_fn) if value.grad_fn is not None else add(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                visit(getattr(value, name))
        elif hasattr(value, "pending"):  # the weight-gradient store: its tensors are held as they are
            for item in value.pending:
                add(item.g)
                add(item.x)

    for saved in stage._saved.values():
        visit(saved)
    return sum(found.values())


def measured_rank_peaks(pipe, x, y):
    """One step; after every stage action (and inside each B, once its recomputation ran) the bytes every rank's
    stages hold; the largest per rank."""
    params = {p.data_ptr() for st in pipe.stages.values() for p in st.parameters()}
    placement, peaks = pipe.schedule.placement, [0] * pipe.schedule.num_ranks

    def sample():
        held = [0] * len(peaks)
        for s, st in pipe.stages.items():
            held[placement[s]] += _held_bytes(st, params)
        peaks[:] = [max(a, b) for a, b in zip(peaks, held)]

    for stage in pipe.stages.values():
        for name in ("forward", "backward_input", "backward_weight_fused", "recompute"):
            method = getattr(stage, name)

            def wrapped(*args, _method=method, **kwargs):
                try:
                    return _method(*args, **kwargs)
                finally:
                    sample()

            setattr(stage, name, wrapped)
    pipe.step(x, y, x.shape[0])
    return tuple(peaks)


THREE, FOUR = ((0, 3), (3, 4), (4, 6)), ((0, 3), (3, 4), (4, 5), (5, 6))
# (schedule, microbatches, virtual, ranges, partial choice): one stage per rank, and two (interleaved, V)
MEMORY_PLANS = [
    (ScheduleKind.GPIPE, 3, 1, THREE, "first:2,first:1,first:1"),
    (ScheduleKind.ONE_F_ONE_B, 5, 1, THREE, "first:2,first:1,first:1"),
    (ScheduleKind.ZB_H1, 6, 1, THREE, "first:2,first:1,first:1"),
    (ScheduleKind.INTERLEAVED_1F1B, 4, 2, FOUR, "first:2,none,all,first:1"),
    (ScheduleKind.ZB_V, 4, 1, FOUR, "all,first:1,none,first:2"),
]


@pytest.mark.parametrize("kind,m,virtual,ranges,partial", MEMORY_PLANS, ids=lambda v: getattr(v, "value", None))
@pytest.mark.parametrize("how", ["none", "all", "partial"])
@pytest.mark.parametrize("engine", ["autograd", "direct"])
@pytest.mark.parametrize("defer_w", [False, True], ids=["wsched", "deferw"])
def test_schedule_peaks_with_recomputation_match_bytes_held_by_the_pipeline(kind, m, virtual, ranges, partial, how,
                                                                            engine, defer_w):
    choice = {"none": (), "all": (RECOMPUTE_ALL,), "partial": parse_recompute(partial)}[how]
    loss = "squared-error" if how == "partial" else "cross-entropy"
    spec = MLPSpec((6, 9, 4, 7, 5, 8, 3), activation="sigmoid", loss=loss)
    rows, n = 4, len(ranges)
    cfg = PipelineConfig(spec, ranges, kind, m, ("cpu",) * n, torch.float64, 0, virtual, True, defer_w, Engine(engine),
                         choice)
    pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1), LocalTransport())
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(rows * m, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (rows * m,), generator=g)
    layers = layer_memory(spec, rows, "float64")
    predicted = plan_activation_peaks(layers, pipe.schedule, ranges, choice)
    assert measured_rank_peaks(pipe, x, y) == predicted
    # the count-based stage figures, with the simulator's counts, summed per rank bound the exact one from above
    sim = simulate(pipe.schedule, [StageCost(1.0, 1.0, 1.0)] * n)
    reports = plan_memory(spec, ranges, rows, "float64", inflight=sim.peak_inflight, deferred_w=sim.peak_deferred_w,
                          recompute=choice)
    bound = [0] * pipe.schedule.num_ranks
    for s, r in enumerate(reports):
        bound[pipe.schedule.placement[s]] += r.saved_activations + r.deferred_w
    assert all(b >= p for b, p in zip(bound, predicted))


def test_recomputation_lowers_the_held_peak_by_hand():
    # 1F1B, 3 stages, 5 microbatches: stage 0 holds 3 in flight; all-recompute keeps only each one's input
    spec = MLPSpec((6, 9, 4, 7, 5, 8, 3), activation="sigmoid")
    layers, ranges = layer_memory(spec, 4, "float64"), ((0, 3), (3, 4), (4, 6))
    sched = generate(ScheduleKind.ONE_F_ONE_B, 3, 5)
    none = plan_activation_peaks(layers, sched, ranges)
    full = plan_activation_peaks(layers, sched, ranges, (RECOMPUTE_ALL,))
    row = 4 * 8  # bytes per feature of one microbatch
    assert none[0] == 3 * row * (6 + 9 + 4 + 7)  # x(0), x(1), x(2) and the h(3) sigmoid keeps
    assert full[0] == 2 * row * 6 + row * (6 + 9 + 4 + 7)  # two kept inputs, one microbatch in its window
