"""The experiment scheduler's levers: recomputing candidates under a cap, their measured memory, the Pareto front."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from partition.activation_peak import plan_activation_peaks
from partition.cost import DType, Optimizer, flop_times, layer_costs
from partition.memory import layer_memory
from partition.recompute import NO_RECOMPUTE, RECOMPUTE_ALL, Recompute, RecomputeKind, recompute_forward
from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.spec import MLPSpec
from runtime.comm import LocalTransport
from runtime.compare import memory as compare_memory
from runtime.compare.harness import CompareConfig, compare, pareto_table
from runtime.compare.memory import measure_memory
from runtime.compare.pareto import PNG, pareto_across, pareto_front, pareto_summary
from runtime.compare.plan import Setting, fit_recompute, plan_candidates, rank_memory
from runtime.compare.report import FILES
from runtime.compare.types import CandidateKind, LRRule, RecomputePolicy
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.engine.stage import Engine

SPEC = MLPSpec((8, 48, 8))  # two layers: one split over two devices, whatever the profiled times
DEEP = MLPSpec((8, 16, 16, 16, 16, 4))
CAP = 80_000  # between the 1f1b pipeline's peak on device 0 without recomputation (92288 B) and with it (67712 B)


def _times(n, spec=SPEC):
    return flop_times(layer_costs(spec, "float64"), 1e9, n)


def _setting(cap, kinds=(ScheduleKind.ONE_F_ONE_B,), policies=tuple(RecomputePolicy)):
    return Setting(SPEC, 128, 2, cap, DType.FLOAT64, Optimizer.MOMENTUM, kinds, (2,), 2, 0.05, LRRule.LINEAR, policies)


def _pipes(cap, **kw):
    return {c.id: c for c in plan_candidates(_setting(cap, **kw), _times)
            if c.kind is CandidateKind.PIPELINE and c.replicas == 1}  # PP x DP: test_compare_replicas


def test_rank_memory_by_hand():
    # widths 3 -> 4 -> 5 -> 2, float32, SGD, microbatch 10, 1f1b on 2 devices, 2 microbatches, layers 0-1 | 2
    spec = MLPSpec((3, 4, 5, 2))
    layers = layer_memory(spec, 10, DType.FLOAT32, Optimizer.SGD)
    first, last = rank_memory(layers, generate(ScheduleKind.ONE_F_ONE_B, 2, 2), ((0, 2), (2, 3)))
    # device 0: (12 + 4 + 20 + 5) parameters and as many gradients, the h(2) message out, two microbatches in flight
    # each holding x(0) 120 B, x(1) 160 B and the h(2) 200 B phi keeps
    assert (first.parameters, first.gradients, first.optimizer, first.communication) == (164, 164, 0, 200)
    assert first.saved_activations == 2 * (120 + 160 + 200) and first.total == 164 + 164 + 200 + 960
    # device 1: (10 + 2) parameters, the h(2) message in, one microbatch: x(2) 200 B, o 80 B, the target 80 B
    assert (last.parameters, last.communication, last.saved_activations) == (48, 200, 200 + 80 + 80)


def test_recomputing_and_auto_candidates_fit_exactly_when_the_memory_model_says_so():
    kinds = (ScheduleKind.ONE_F_ONE_B, ScheduleKind.AUTO)
    roomy, tight = _pipes(None, kinds=kinds), _pipes(CAP, kinds=kinds)
    # without a cap, fit is no recomputation: no second copy of it
    assert set(roomy) == {"pipe-1f1b-m2", "pipe-1f1b-m2-rc-all", "pipe-auto-m2", "pipe-auto-m2-rc-all"}
    assert set(tight) == set(roomy) | {"pipe-1f1b-m2-rc-fit"}  # auto's fit: none already fits one microbatch a stage
    split = tight["pipe-1f1b-m2-rc-all"].ranges
    assert split == roomy["pipe-1f1b-m2"].ranges == ((0, 1), (1, 2))
    layers = layer_memory(SPEC, 64, DType.FLOAT64, Optimizer.MOMENTUM)
    for c in tight.values():
        sched = c.compute_schedule()
        assert (c.ready is not None) == (c.schedule is ScheduleKind.AUTO) and sched.kind is c.schedule
        static = [sum(layers.static(i) for i in range(a, b)) + (layers.boundary[a - 1] if a else 0)
                  + (layers.boundary[b - 1] if b < SPEC.num_layers else 0) for a, b in c.ranges]
        peaks = plan_activation_peaks(layers, sched, c.ranges, c.recompute)
        model = tuple(s + p for s, p in zip(static, peaks))
        assert c.memory_per_device == model, c.id
        assert c.feasible == (max(model) <= CAP) and (c.reason.startswith("over the cap") or c.feasible), c.id
    none = roomy["pipe-1f1b-m2"]
    full = tight["pipe-1f1b-m2-rc-all"]
    assert max(full.memory_per_device) < CAP < max(none.memory_per_device)
    assert tight["pipe-1f1b-m2"].ranges != split or not tight["pipe-1f1b-m2"].feasible
    assert full.feasible and tight["pipe-1f1b-m2-rc-fit"].feasible
    assert [str(r) for r in tight["pipe-1f1b-m2-rc-fit"].recompute] == ["all", "none"]  # device 1 needs none
    # the searched schedule fits the cap on the fastest split without recomputation, where 1f1b's order does not
    auto = tight["pipe-auto-m2"]
    assert auto.feasible and auto.ranges == split and auto.ready.actions != roomy["pipe-auto-m2"].ready.actions


def _all_choices(n):
    return [NO_RECOMPUTE, *(Recompute(RecomputeKind.FIRST, k) for k in range(1, n)), RECOMPUTE_ALL]


@pytest.mark.parametrize("kind,virtual,ranges", [(ScheduleKind.ONE_F_ONE_B, 1, ((0, 3), (3, 5))),
                                                 (ScheduleKind.ZB_H1, 1, ((0, 2), (2, 5))),
                                                 (ScheduleKind.INTERLEAVED_1F1B, 2, ((0, 2), (2, 3), (3, 4), (4, 5)))])
def test_fit_recompute_is_the_least_extra_forward_time_that_fits_by_brute_force(kind, virtual, ranges):
    sched = generate(kind, 2, 4, virtual)
    layers, times = layer_memory(DEEP, 32, DType.FLOAT64, Optimizer.MOMENTUM), _times(32, DEEP)
    combos = list(itertools.product(*(_all_choices(b - a) for a, b in ranges)))
    need = {combo: max(r.total for r in rank_memory(layers, sched, ranges, combo)) for combo in combos}
    for cap in sorted(set(need.values())):
        fitting = [combo for combo in combos if need[combo] <= cap]
        best = min(sum(recompute_forward(times, a, b, c) for (a, b), c in zip(ranges, combo)) for combo in fitting)
        chosen = fit_recompute(layers, sched, ranges, times, cap)
        assert need[chosen] <= cap
        assert sum(recompute_forward(times, a, b, c) for (a, b), c in zip(ranges, chosen)) == pytest.approx(best)


@pytest.mark.parametrize("kind", [ScheduleKind.ONE_F_ONE_B, ScheduleKind.ZB_H1])
def test_fit_chooses_split_and_recomputation_together_as_brute_force_does(kind):
    # one stage per device: every split x per-stage choice, judged by the exact walk of the schedule
    sched, L = generate(kind, 2, 4), DEEP.num_layers
    layers, times = layer_memory(DEEP, 8, DType.FLOAT64, Optimizer.MOMENTUM), _times(8, DEEP)
    trials = []
    for cut in range(1, L):
        ranges = ((0, cut), (cut, L))
        for combo in itertools.product(*(_all_choices(b - a) for a, b in ranges)):
            need = max(r.total for r in rank_memory(layers, sched, ranges, combo))
            slowest = max(sum(t.total for t in times[a:b]) + recompute_forward(times, a, b, c)
                          for (a, b), c in zip(ranges, combo))
            trials.append((need, slowest))
    for cap in sorted({need for need, _ in trials})[::3]:
        setting = Setting(DEEP, 32, 2, cap, DType.FLOAT64, Optimizer.MOMENTUM, (kind,), (4,), 2, 0.05, LRRule.LINEAR,
                          (RecomputePolicy.FIT,))
        (fit,) = [c for c in plan_candidates(setting, lambda n: _times(n, DEEP))
                  if c.kind is CandidateKind.PIPELINE and c.replicas == 1]
        best = min(slowest for need, slowest in trials if need <= cap)
        got = max(sum(t.total for t in times[a:b]) + recompute_forward(times, a, b, c)
                  for (a, b), c in zip(fit.ranges, fit.recompute))
        assert fit.feasible and got == pytest.approx(best), (cap, fit.ranges, fit.recompute)


def test_measured_memory_sees_the_recompute_window(monkeypatch):
    # 1f1b, 2 stages, 4 microbatches: device 0's peak is with two inputs kept and one microbatch's forward rebuilt
    spec = MLPSpec((4, 48, 40, 3), activation="tanh")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    ranges = ((0, 2), (2, 3))

    def measured(engine, choice):
        cfg = PipelineConfig(spec, ranges, ScheduleKind.ONE_F_ONE_B, 4, ("cpu", "cpu"), torch.float64, engine=engine,
                             recompute=(choice,))
        pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1), LocalTransport())
        return measure_memory(pipe, x, y, 64, False)["per_device"][0], pipe.schedule

    layers = layer_memory(spec, 16, DType.FLOAT64)
    for engine in Engine:
        held, sched = measured(engine, NO_RECOMPUTE)
        rebuilt, _ = measured(engine, RECOMPUTE_ALL)
        model = [plan_activation_peaks(layers, sched, ranges, (c,))[0] for c in (NO_RECOMPUTE, RECOMPUTE_ALL)]
        assert model[0] - model[1] == 11264  # two of three in-flight microbatches keep only their 512 B rows of x
        assert held - rebuilt == model[0] - model[1], engine
    monkeypatch.setattr(compare_memory, "STAGE_METHODS", tuple(m for m in compare_memory.STAGE_METHODS
                                                                 if m != "recompute"))
    blind, _ = measured(Engine.DIRECT, RECOMPUTE_ALL)
    assert blind < rebuilt  # without sampling inside B, the rebuilt forward goes unseen


def test_pareto_front_of_hand_made_points():
    points = [(1, 5), (2, 3), (3, 3), (2, 4), (4, 1), (1, 5), (5, 1)]
    # (3, 3) and (2, 4) lose to (2, 3); (5, 1) to (4, 1); the two (1, 5) tie and neither dominates the other
    assert pareto_front(points) == (0, 1, 4, 5)
    assert pareto_front([]) == () and pareto_front([(7, 7)]) == (0,)


def _entry(cid, minibatch, memory, step, measured=None, feasible=True, k_step=None):
    m = None if measured is None else {"memory_per_device": [measured[0]], "measured_step_time": {"median": measured[1]}}
    return {"id": cid, "kind": "pipeline", "schedule": "1f1b", "recompute": [], "feasible": feasible,
            "minibatch": minibatch, "predicted_memory": [{"total": v} for v in memory], "measured": m,
            "predicted": {"predicted_step_time": step, "predicted_step_time_k_devices": k_step or step / 2}}


def test_pareto_summary_charges_a_smaller_minibatch_its_extra_steps():
    r = {"setup": {"batch": 64}, "candidates": [
        _entry("a", 64, [100, 300], 1.0, (290, 1.2), k_step=0.1),  # peak 300, 1 s per batch (0.1 s on K devices)
        _entry("b", 16, [200], 0.2, (150, 0.5)),  # peak 200, 4 x 0.2 = 0.8 s per batch predicted, 2 s measured
        _entry("c", 64, [250, 250], 2.0, feasible=False),  # dominated by b when predicted; never measured
    ]}
    s = pareto_summary(r)
    per = {q["id"]: q for q in s["points"]}
    assert per["b"]["predicted_seconds_per_batch"] == pytest.approx(0.8) and per["a"]["predicted_peak_bytes"] == 300
    assert per["b"]["measured_seconds_per_batch"] == pytest.approx(2.0) and per["c"]["measured_peak_bytes"] is None
    assert s["predicted_front"] == ["b"] and s["measured_front"] == ["b", "a"] and s["k_devices_front"] == ["b", "a"]
    assert per["a"]["on_measured_front"] and not per["a"]["on_predicted_front"] and not per["c"]["on_measured_front"]


def test_pareto_table_across_caps_lists_what_fits_under_each_cap_largest_first():
    roomy = {"setup": {"batch": 64, "memory_cap": None}, "candidates": [
        _entry("a", 64, [100, 300], 1.0, (290, 1.2)), _entry("b", 16, [200], 0.2, (150, 0.5))]}
    one = dict(_entry("c", 64, [400], 0.5, feasible=False), kind="accumulation")  # an alternative over the cap
    tight = {"setup": {"batch": 64, "memory_cap": 250.0}, "candidates": [
        _entry("a", 64, [100, 300], 1.0, feasible=False), _entry("b", 16, [200], 0.2, (150, 0.5)), one]}
    lines = pareto_across([tight, roomy])
    assert len(lines) == 2 + 4  # header, rule, two rows without a cap, two under 250 B (no pipeline over it)
    assert [line.split(" | ")[:2] for line in lines[2:]] == [["| none", "`b`"], ["| none", "`a`"], ["| 250 B", "`b`"],
                                                            ["| 250 B", "`c`"]]
    assert lines[5] == "| 250 B | `c` | accumulation | none | 400 B | - | 500 ms | - | 250 ms | over the cap |"
    assert lines[3] == "| none | `a` | 1f1b | none | 100 B / 300 B | 290 B | 1 s | 1.2 s | 500 ms | M |"


def test_a_tiny_run_with_the_levers_writes_the_pareto_plot_and_json(tmp_path):
    cfg = CompareConfig(spec=SPEC, dataset="synthetic", samples=256, batch=128, devices=2, epochs=1, dtype="float64",
                        lr=0.05, profile_repeats=2, calibration_steps=2, progress=False, memory_cap=str(CAP),
                        schedules=(ScheduleKind.ONE_F_ONE_B, ScheduleKind.AUTO), microbatches=(2,),
                        recompute=tuple(RecomputePolicy),
                        out=str(tmp_path))
    results = compare(cfg, log=lambda line: None)
    data = json.loads((tmp_path / FILES["json"]).read_text())
    by_id = {e["id"]: e for e in data["candidates"]}
    assert by_id["pipe-1f1b-m2-rc-fit"]["recompute"] == ["all", "none"]
    assert by_id["pipe-1f1b-m2-rc-all"]["measured"] and by_id["pipe-1f1b-m2-rc-fit"]["measured"]
    assert by_id["pipe-auto-m2"]["measured"] and by_id["pipe-auto-m2"]["schedule"] == "auto"
    steps = {e["id"]: e["training"]["step_losses"] for e in data["candidates"] if e["training"] and e["minibatch"] == 128}
    assert len(steps) >= 4 and all(max(abs(a - b) for a, b in zip(v, steps["accum-m2"])) < 1e-10 for v in steps.values())
    assert not by_id["pipe-1f1b-m2"]["feasible"] and by_id["pipe-1f1b-m2"]["measured"] is None
    pareto = data["pareto"]
    assert pareto == json.loads(json.dumps(pareto_summary(results)))
    ran = {e["id"] for e in data["candidates"] if e["measured"]}
    assert {q["id"] for q in pareto["points"] if q["measured_peak_bytes"] is not None} == ran
    assert pareto["measured_front"] and set(pareto["measured_front"]) <= ran
    assert set(pareto["predicted_front"]) <= {q["id"] for q in pareto["points"]}
    assert (tmp_path / PNG).stat().st_size > 1000
    text = (tmp_path / FILES["markdown"]).read_text()
    assert "## Memory-time trade (Pareto front)" in text and f"]({PNG})" in text and "`pipe-1f1b-m2-rc-fit`" in text
    table = pareto_table([tmp_path / FILES["json"]])
    assert all(f"`{cid}`" in table for cid in ran) and "`pipe-1f1b-m2`" not in table
    script = [sys.executable, str(Path(__file__).resolve().parents[3] / "scripts" / "compare.py"), "--pareto-table"]
    printed = subprocess.run(script + [str(tmp_path / FILES["json"])], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0 and printed.stdout == table
    bad = subprocess.run(script + [str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"compare.py: error: pareto-table: cannot read {tmp_path / 'missing.json'}: No such file or directory"]
