"""The cost model's arithmetic against hand calculations: link fits, transfers on the critical path, this-run sums."""

import math

import numpy as np
import pytest

from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.timing import LinkModel, LinkPreset, StageCost
from runtime.calibrate.costs import CostModel, Origin, Term
from runtime.calibrate.explain import OUTSIDE, explain
from runtime.calibrate.forecast import critical_chain, emulated_timeline, on_k_devices, this_run


def test_link_fit_recovers_latency_and_bandwidth_from_ping_pongs():
    """One-way times of 30 us + n / 2 GB/s with 1% noise, five sizes, ten trips each."""
    rng = np.random.default_rng(0)
    sizes = np.repeat([4.0, 4096.0, 65536.0, 1 << 20, 4 << 20], 10)
    times = (30e-6 + sizes / 2e9) * (1 + 0.01 * rng.standard_normal(sizes.shape))
    link = LinkModel.fit(sizes, times)
    assert link.latency == pytest.approx(30e-6, rel=0.05)
    assert link.bandwidth == pytest.approx(2e9, rel=0.02)


def test_link_fit_exact_line_and_flat_times():
    line = LinkModel.fit([0, 1000], [1e-5, 1e-5 + 1e-6])
    assert line.latency == pytest.approx(1e-5, rel=1e-9) and line.bandwidth == pytest.approx(1e9, rel=1e-9)
    flat = LinkModel.fit([4, 8, 16], [2e-5, 2e-5, 2e-5])
    assert math.isinf(flat.bandwidth) and flat.latency == pytest.approx(2e-5)
    with pytest.raises(ValueError, match="two distinct sizes"):
        LinkModel.fit([4, 4], [1.0, 2.0])


def test_link_presets_are_ordered_by_speed():
    times = [p.link.time(1 << 20) for p in (LinkPreset.NVLINK, LinkPreset.PCIE, LinkPreset.ETHERNET)]
    assert times == sorted(times) and LinkPreset("pcie") is LinkPreset.PCIE


def test_transfers_on_the_critical_path_where_the_hand_calculation_puts_them():
    """1F1B, 2 stages, 2 microbatches, F = 1, fused backward BW = 2, every transfer 0.5 + 500 B / 1 kB/s = 1 s.

    By hand: rank 0 runs F0 [0,1], F1 [1,2]; F0's output lands at 2, so rank 1 runs F0 [2,3], BW0 [3,5]; F1 landed
    at 3, so F1 [5,6], BW1 [6,8]. Gradients land on rank 0 at 6 and 9: BW0 [6,8], BW1 [9,11]. The step is 11 s and
    its critical path is 0F0 -> (F0's activation, 1..2) -> 1F0 1BW0 1F1 1BW1 -> (BW1's gradient, 8..9) -> 0BW1:
    two of the four transfers are on it, the first activation and the last gradient.
    """
    sched = generate(ScheduleKind.ONE_F_ONE_B, 2, 2)
    model = CostModel(layers=(StageCost(1.0, 2.0, 0.0),) * 2, link=LinkModel(0.5, 1e3), link_origin=Origin.GIVEN)
    fc = this_run(sched, model, [(0, 1), (1, 2)], [500.0, 500.0], concurrent=True)
    assert fc.step_time == pytest.approx(11.0)
    chain = [(str(t.action), t.start, t.end) for t in critical_chain(fc.sim, sched)]
    assert chain == [("0F0", 0.0, 1.0), ("0SEND_F0", 1.0, 2.0), ("1F0", 2.0, 3.0), ("1BW0", 3.0, 5.0),
                     ("1F1", 5.0, 6.0), ("1BW1", 6.0, 8.0), ("1SEND_B1", 8.0, 9.0), ("0BW1", 9.0, 11.0)]
    assert fc.terms["transfers and waits"] == pytest.approx(11.0 - 6.0)  # each rank computes 6 s


def test_this_run_for_emulated_stages_is_the_sum_of_costs_plus_overheads():
    """3 layers in 2 stages [0,2) [2,3), zb-h1 (split B/W), 4 microbatches, given costs in ms.

    Stage 0: F 1+2, B 3+4, W 5+6 plus overheads .1 .2 .3 -> 3.1 + 7.2 + 11.3 = 21.6 per microbatch.
    Stage 1: F 7, B 8, W 9 plus overheads .4 .5 .6 -> 7.4 + 8.5 + 9.6 = 25.5 per microbatch.
    4 x (21.6 + 25.5) = 188.4, plus step overhead 2, optimizer 1.5, all-reduce 0.25 = 192.15 ms.
    """
    ms = 1e-3
    layers = (StageCost(1 * ms, 3 * ms, 5 * ms), StageCost(2 * ms, 4 * ms, 6 * ms), StageCost(7 * ms, 8 * ms, 9 * ms))
    model = CostModel(layers, action_overhead=(StageCost(.1 * ms, .2 * ms, .3 * ms), StageCost(.4 * ms, .5 * ms, .6 * ms)),
                      overhead_origin=Origin.GIVEN, step_overhead=Term(2 * ms, Origin.GIVEN),
                      optimizer=Term(1.5 * ms, Origin.GIVEN), loss_all_reduce=Term(0.25 * ms, Origin.GIVEN))
    sched = generate(ScheduleKind.ZB_H1, 2, 4)
    fc = this_run(sched, model, [(0, 2), (2, 3)], None, concurrent=False)
    assert fc.step_time == pytest.approx(192.15 * ms, rel=1e-12)
    assert fc.terms["compute (profiled)"] == pytest.approx(4 * (21 + 24) * ms)
    assert fc.terms["action overhead"] == pytest.approx(4 * 2.1 * ms)
    ends = [t.end for t in fc.timeline]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(188.4 * ms)  # back to back, one device
    k = on_k_devices(sched, model, [(0, 2), (2, 3)], LinkModel(), None, "free")
    assert k.step_time < fc.step_time and "on 2 devices" in k.basis


def test_emulated_timeline_follows_the_executor_order():
    """GPipe, 2 ranks, 2 microbatches: rank 0 runs both forwards, then rank 1 everything it can, then rank 0."""
    sched = generate(ScheduleKind.GPIPE, 2, 2)
    order = [str(t.action) for t in emulated_timeline(sched, [StageCost(1.0, 1.0, 1.0)] * 2)]
    assert order == ["0F0", "0F1", "1F0", "1F1", "1BW1", "1BW0", "0BW1", "0BW0"]


def test_the_error_is_put_where_the_measurement_differs():
    """Emulated 1F1B, 2 stages of one layer, 4 microbatches, F = B = W = 1 ms, 0.5 ms per step beyond the actions.

    Predicted: 4 x 2 x 3 + 0.5 = 24.5 ms. Measured: stage 1's fused backward took 3 ms (predicted B + W = 2),
    every other action as predicted, and the step 30 ms. Stage 1 BW explains 4 x 1 = 4 ms; the remaining
    30 - 28.5 = 1.5 ms lies outside the actions.
    """
    ms = 1e-3
    model = CostModel((StageCost(ms, ms, ms),) * 2, step_overhead=Term(0.5 * ms, Origin.GIVEN))
    sched = generate(ScheduleKind.ONE_F_ONE_B, 2, 4)
    assert not sched.splits_backward and generate(ScheduleKind.ZB_H1, 2, 4).splits_backward
    fc = this_run(sched, model, [(0, 1), (1, 2)], None, concurrent=False)
    assert fc.step_time == pytest.approx(24.5 * ms)
    measured = [StageCost(ms, 2 * ms, 0.0), StageCost(ms, 3 * ms, 0.0)]  # records count a fused backward as B
    out = explain(fc, sched, model, None, False, measured, 30 * ms)
    assert out["prediction_error"] == pytest.approx((24.5 - 30) / 30)
    top = out["contributors"]
    assert [r["term"] for r in top] == ["stage 1 BW", OUTSIDE]
    assert top[0]["effect"] == pytest.approx(4 * ms) and top[0]["per_step"] == 4
    assert top[1]["effect"] == pytest.approx(1.5 * ms)
    assert "stage 1 BW: measured 3 ms vs 2 predicted, x4 per step: +4 ms" in out["text"]


def test_the_closing_terms_measured_in_the_run_take_their_share_of_the_error():
    """The 1F1B step above (24.5 ms predicted, now with a 1 ms optimizer and a 0.25 ms closing all-reduce: 25.75 ms).

    Measured: every action as predicted, the optimizer 2.5 ms, the all-reduce 0.25 ms, the step 29 ms. The
    optimizer explains 1.5 ms (once per step), the all-reduce nothing; 29 - 25.75 - 1.5 = 1.75 ms lies outside.
    """
    ms = 1e-3
    model = CostModel((StageCost(ms, ms, ms),) * 2, step_overhead=Term(0.5 * ms, Origin.GIVEN),
                      optimizer=Term(ms, Origin.GIVEN), loss_all_reduce=Term(0.25 * ms, Origin.GIVEN))
    sched = generate(ScheduleKind.ONE_F_ONE_B, 2, 4)
    fc = this_run(sched, model, [(0, 1), (1, 2)], None, concurrent=False)
    assert fc.step_time == pytest.approx(25.75 * ms)
    measured = [StageCost(ms, 2 * ms, 0.0)] * 2
    out = explain(fc, sched, model, None, False, measured, 29 * ms,
                  measured_terms={"optimizer": 2.5 * ms, "loss all-reduce": 0.25 * ms})
    rows = {r["term"]: r for r in out["contributors"]}
    assert [r["term"] for r in out["contributors"][:2]] == [OUTSIDE, "optimizer"]
    assert rows[OUTSIDE]["effect"] == pytest.approx(1.75 * ms) and rows["optimizer"]["effect"] == pytest.approx(1.5 * ms)
    assert out["predicted_from_measured_actions"] == pytest.approx(27.25 * ms)
    assert "optimizer: measured 2.5 ms vs 1 predicted, x1 per step: +1.5 ms" in out["text"]


def test_replicas_add_each_stages_ring_all_reduce_after_its_last_gradient():
    """The 1F1B step above (11 s; stage 0's last BW ends at 11, stage 1's at 8), now one of D = 2 replicas.

    By hand, a ring all-reduce of n bytes over 2 replicas is 2 (2 - 1) (0.5 + n / 2 / 1 kB/s): stage 0's 1000 bytes
    take 2 s, [11, 13]; stage 1's 3000 bytes take 4 s, [8, 12]. The step ends at 13: 2 s exposed. In one process
    the two run one after another (6 s); on K devices (the same link) 13 s again, on 4 devices.
    """
    sched = generate(ScheduleKind.ONE_F_ONE_B, 2, 2)
    model = CostModel(layers=(StageCost(1.0, 2.0, 0.0),) * 2, link=LinkModel(0.5, 1e3), link_origin=Origin.GIVEN,
                      replicas=2, gradient_bytes=(1000.0, 3000.0))
    fc = this_run(sched, model, [(0, 1), (1, 2)], [500.0, 500.0], concurrent=True)
    assert fc.step_time == pytest.approx(13.0, rel=1e-12) and fc.terms["gradient all-reduce"] == pytest.approx(2.0)
    assert fc.step_time == pytest.approx(sum(fc.terms.values()), rel=1e-12)  # the terms add up to the step
    k = on_k_devices(sched, model, [(0, 1), (1, 2)], LinkModel(0.5, 1e3), [500.0, 500.0], "given")
    assert k.step_time == pytest.approx(13.0, rel=1e-12) and k.terms["gradient all-reduce"] == pytest.approx(2.0)
    assert k.basis.startswith("on 4 devices (2 replicas of 2), link given")
    one = this_run(sched, model, [(0, 1), (1, 2)], None, concurrent=False)
    assert one.terms["gradient all-reduce"] == pytest.approx(6.0)
    assert model.to_json()["gradient_all_reduce"] | {"note": ""} == {
        "replicas": 2, "bytes": [1000.0, 3000.0], "seconds": [2.0, 4.0], "origin": "given", "note": ""}
    plain = CostModel(layers=model.layers, link=model.link)  # one replica: nothing added, said so
    assert this_run(sched, plain, [(0, 1), (1, 2)], [500.0, 500.0], True).terms["gradient all-reduce"] == 0.0
    assert plain.to_json()["gradient_all_reduce"]["origin"] == "default"
