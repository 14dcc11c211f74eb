"""PP x DP candidates: planned for K devices, emulated exactly in one process, predicted by hand, run end to end."""

import math

import pytest
import torch
from torch import nn

from partition.cost import DType, Optimizer, flop_times, layer_costs
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost
from runtime.compare.harness import CompareConfig, compare
from runtime.compare.plan import Setting, plan_candidates
from runtime.compare.predict import Calibration, predict
from runtime.compare.report import csv_text, markdown
from runtime.compare.run import RunContext, build
from runtime.compare.types import Candidate, CandidateKind, LRRule
from runtime.ops.model import PipeModel
from runtime.train.config import OptimizerKind

F64 = torch.float64
SPEC = MLPSpec((6, 10, 8, 12, 3), "tanh", l2=0.01)
LR, MOMENTUM = 0.05, 0.9
FIXED = (ScheduleKind.GPIPE, ScheduleKind.ONE_F_ONE_B, ScheduleKind.INTERLEAVED_1F1B, ScheduleKind.ZB_H1)


def _candidates(batch, microbatches=(2, 4), schedules=FIXED, cap=None):
    setting = Setting(SPEC, batch, 4, cap, DType.FLOAT64, Optimizer.MOMENTUM, schedules, microbatches, 2, LR,
                      LRRule.LINEAR)
    return {c.id: c for c in plan_candidates(setting, lambda n: flop_times(layer_costs(SPEC, "float64"), 1e9, n))}


def test_four_devices_add_pp2_x_dp2_per_schedule_and_dp4_once_when_the_batch_splits():
    cands = _candidates(16)
    replicated = {cid: c for cid, c in cands.items() if c.replicas > 1}
    # D = 2: P = 2, the fewest m >= 2 with 16 % (2 m) == 0 is 2; D = 4: P = 1, m = 2 (16 = 4 x 2 x 2), first schedule
    assert set(replicated) == {"pipe-gpipe-m2-dp2", "pipe-1f1b-m2-dp2", "pipe-zb-h1-m2-dp2", "pipe-gpipe-m2-dp4"}
    both, dp = replicated["pipe-1f1b-m2-dp2"], replicated["pipe-gpipe-m2-dp4"]
    assert (both.num_stages, both.num_ranks, both.microbatches, both.microbatch_size) == (2, 4, 2, 4)
    assert (dp.num_stages, dp.num_ranks, dp.microbatches, dp.microbatch_size, dp.ranges) == (1, 4, 2, 2, ((0, 4),))
    assert both.kind is CandidateKind.PIPELINE and both.feasible and len(both.ranges) == 2
    assert "2 devices x 2 replicas (PP2 x DP2)" in both.label and "(DP4)" in dp.label
    assert len(both.memory_per_device) == 4 and both.memory_per_device[:2] == both.memory_per_device[2:]
    assert both.to_dict()["replicas"] == 2 and both.to_dict()["microbatch_size"] == 4
    # 12 rows: 2 x m splits at m = 2 (3 rows) only, 4 x m never: no DP4
    assert {cid for cid, c in _candidates(12).items() if c.replicas > 1} == {
        "pipe-gpipe-m2-dp2", "pipe-1f1b-m2-dp2", "pipe-zb-h1-m2-dp2"}
    assert not any(c.replicas > 1 for c in _candidates(10).values())  # 10 rows split into neither
    only = _candidates(16, schedules=(ScheduleKind.INTERLEAVED_1F1B,))  # no one-stage-per-device schedule chosen
    assert not any(c.replicas > 1 for c in only.values())


def test_over_the_cap_a_replica_says_so():
    cands = _candidates(16, cap=3000.0)
    dp = cands["pipe-gpipe-m2-dp4"]  # 305 parameters: 2440 bytes in float64, with gradients and momentum 7320 bytes
    assert not dp.feasible and dp.reason.startswith("over the cap: device 0 needs")


def _replicas_reference(data, replicas, m):
    """D copies under plain autograd, each on its B/D rows in m microbatches; their gradients summed, then SGD."""
    master = PipeModel.from_spec(SPEC, 3, F64).to_sequential()
    opt = torch.optim.SGD(master.parameters(), lr=LR, momentum=MOMENTUM)
    for x, y in data:
        copies = [PipeModel.from_spec(SPEC, 3, F64).to_sequential() for _ in range(replicas)]
        for copy in copies:
            copy.load_state_dict(master.state_dict())
        for d, copy in enumerate(copies):
            mine = x.chunk(replicas)[d], y.chunk(replicas)[d]
            for xc, yc in zip(mine[0].chunk(m), mine[1].chunk(m)):
                (nn.functional.cross_entropy(copy(xc), yc, reduction="sum") / x.shape[0]).backward()
        lins = [mod for mod in master if isinstance(mod, nn.Linear)]
        opt.zero_grad()
        (SPEC.l2 / 2 * sum(lin.weight.pow(2).sum() for lin in lins)).backward()
        for p, *grads in zip(master.parameters(), *(c.parameters() for c in copies)):
            summed = sum(g.grad for g in grads)
            p.grad = summed if p.grad is None else p.grad + summed  # biases have no l2 gradient
        opt.step()
    return [p.detach() for p in master.parameters()]


def test_the_emulated_candidate_trains_as_d_replicas_summing_their_gradients():
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(16, 6, generator=g, dtype=F64), torch.randint(0, 3, (16,), generator=g)) for _ in range(3)]
    ctx = RunContext(dtype="float64", optimizer=OptimizerKind.SGD, momentum=MOMENTUM, seed=3)
    for cid in ("pipe-1f1b-m2-dp2", "pipe-zb-h1-m2-dp2", "pipe-gpipe-m2-dp4"):
        cand = _candidates(16)[cid]
        pipe = build(ctx, SPEC, cand)
        assert pipe.cfg.microbatches == cand.replicas * cand.microbatches  # every replica's microbatches in turn
        for i, (x, y) in enumerate(data):
            pipe.step(x, y, 16, i)
        got = [p.detach() for s in range(cand.num_stages) for p in pipe.stages[s].parameters()]
        ref = _replicas_reference(data, cand.replicas, cand.microbatches)
        assert len(got) == len(ref) == 8
        assert max(float((a - b).abs().max()) for a, b in zip(got, ref)) < 1e-12, cid
        assert max(float((a - b).abs().max()) for a, b in zip(ref, _replicas_reference(data, 1, 1))) < 1e-12


class _Profiler:
    """Every layer F = B = W = 1 s for any microbatch; float32 gradients."""

    spec = MLPSpec((2, 2, 2, 2, 2))  # four layers of 2 x 2 + 2 = 6 parameters: 24 gradient bytes each in float32
    ctx = RunContext(dtype="float32")

    def layers(self, n):
        return (StageCost(1.0, 1.0, 1.0),) * 4


@pytest.mark.parametrize("stages,replicas,k_step,here", [
    # PP2 x DP2, 1f1b, m = 2: stages of F = B = W = 2 s (BW 4 s); one replica's 1f1b takes 9 slots of 2 s = 18 s,
    # stage 1's last BW ends at 14 s, stage 0's at 18 s. A ring of 48 bytes over 2 replicas on 1 s + bytes / 48 B/s:
    # 2 hops of 24 bytes, 1.5 s each = 3 s: [14, 17] (hidden) and [18, 21]. Plus E / P = 4 / 2: 23 s.
    # Here: 2 x 2 microbatches through both stages in turn, 4 x 12 s, plus E: 52 s.
    (2, 2, 23.0, 52.0),
    # DP4: one stage of F = B = W = 4 s, F BW F BW = 24 s; a ring of 96 bytes over 4 replicas: 6 hops of 24 bytes,
    # 1.5 s each = 9 s after the last BW: 33 s, plus E: 37 s. Here: 4 x 2 microbatches of 12 s, plus E: 100 s.
    (1, 4, 37.0, 100.0),
])
def test_the_k_device_prediction_is_one_replica_simulated_plus_its_ring_all_reduces(stages, replicas, k_step, here):
    ranges = ((0, 2), (2, 4)) if stages == 2 else ((0, 4),)
    cand = Candidate("c", "c", CandidateKind.PIPELINE, ScheduleKind.ONE_F_ONE_B, stages, 4, 2, 4 * replicas, 0.1,
                     ranges=ranges, replicas=replicas)
    calib = Calibration((StageCost(0.0, 0.0, 0.0),) * stages, 4.0)
    pred = predict(cand, _Profiler(), calib, 0.0, False, LinkModel(1.0, 48.0))
    assert pred.step_time_k == pytest.approx(k_step, rel=1e-12)
    assert pred.step_time == pytest.approx(here, rel=1e-12)
    reductions = [e for e in pred.timeline_k_devices if e.name.startswith("all-reduce")]
    assert max(e.end for e in reductions) == pytest.approx(k_step - 4.0 / stages)


def test_a_small_run_measures_and_predicts_the_pp_x_dp_candidates(tmp_path):
    cfg = CompareConfig(spec=SPEC, dataset="synthetic", samples=64, batch=16, devices=4, epochs=1, dtype="float64",
                        lr=LR, profile_repeats=2, calibration_steps=2, progress=False, memory_cap="none",
                        schedules=(ScheduleKind.ONE_F_ONE_B,), microbatches=(2,), out=None)
    results = compare(cfg, log=lambda line: None)
    entries = {e["id"]: e for e in results["candidates"]}
    for cid in ("pipe-1f1b-m2-dp2", "pipe-1f1b-m2-dp4"):
        e = entries[cid]
        p, m = e["predicted"], e["measured"]
        figures = [p["predicted_step_time"], p["predicted_step_time_k_devices"], m["measured_step_time"]["median"],
                   e["errors"]["prediction_error"], *m["memory_per_device"]]
        assert all(isinstance(v, float | int) and math.isfinite(v) and v > -1 for v in figures), cid
        assert len(m["memory_per_device"]) == len(p["memory_per_device"]) == 4 and e["replicas"] in (2, 4)
        assert "every replica's microbatches" in p["prediction_basis"]
        assert results["same_math"]["max_abs_step_loss_difference"][cid] < 1e-10  # in the same-math check
    text, table = markdown(results), csv_text(results)
    assert "`pipe-1f1b-m2-dp2`" in text and "2 x 2 x 4" in text and "PP x DP candidates" in text
    assert table.splitlines()[0].split(",")[5] == "replicas"
