"""Partitioner: exact against brute force, never worse than the baselines, caps, links, speeds, errors, speed."""

import itertools
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from partition import minmax
from partition.activation_peak import plan_activation_peaks
from partition.baselines import by_parameters, time_blocks, uniform
from partition.choose import CANDIDATES, choose
from partition.joint import joint_partition, recompute_options
from partition.memory import LayerMemory, layer_memory, plan_memory
from partition.partitioner import (
    Method,
    Problem,
    parse_ranges,
    partition,
    plan_for,
    plan_ranges,
    problem_for,
    smallest_cap,
)
from partition.recompute import NO_RECOMPUTE
from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost


def _all_ranges(num_layers, num_stages):
    for cuts in itertools.combinations(range(1, num_layers), num_stages - 1):
        bounds = (0, *cuts, num_layers)
        yield tuple(zip(bounds[:-1], bounds[1:]))


def _brute_force(problem):
    """(best bottleneck among plans within the caps, smallest max stage memory over all plans)."""
    best, need = math.inf, math.inf
    for ranges in _all_ranges(problem.num_layers, problem.num_stages):
        plan = problem.evaluate(ranges)
        need = min(need, max(plan.memory))
        if plan.fits:
            best = min(best, plan.bottleneck)
    return best, need


def _random_problem(rng):
    layers = rng.randint(1, 9)
    stages = rng.randint(1, layers)
    spec = MLPSpec(tuple(rng.randint(1, 300) for _ in range(layers + 1)), bias=rng.random() < 0.5,
                   loss=rng.choice(["cross-entropy", "squared-error"]))
    times = [StageCost(rng.random(), rng.random(), rng.random() * rng.choice([0, 1])) for _ in range(layers)]
    link = LinkModel(rng.choice([0.0, rng.random() * 0.2]), rng.choice([math.inf, 1e4, 1e5]))
    free = problem_for(
        spec, stages, rng.randint(1, 16), layer_times=times, link=link, optimizer=rng.choice(["sgd", "adam"]),
        dtype=rng.choice(["float32", "bfloat16"]), device_speeds=[rng.choice([0.5, 1.0, 3.0]) for _ in range(stages)],
        inflight=[rng.randint(0, 6) for _ in range(stages)], deferred_w=[rng.randint(0, 3) for _ in range(stages)])
    need, _ = smallest_cap(free)
    caps = tuple(need * rng.uniform(0.85, 1.6) for _ in range(stages)) if rng.random() < 0.8 else ()
    replicas, microbatches = rng.choice([1, 1, 2, 4]), rng.randint(1, 4)  # some all-reduce their gradients
    return Problem(free.layer_times, stages, free.boundary_bytes, link, free.device_speeds, free.memory, caps,
                   free.inflight, free.deferred_w, free.parameters, free.grad_bytes, replicas, microbatches)


@pytest.mark.parametrize("chunks", [(1, 2), (minmax.FIRST_CHUNK, minmax.MAX_CHUNK)])
def test_optimal_equals_brute_force_and_beats_every_baseline_on_200_random_instances(chunks, monkeypatch):
    # tiny scan chunks make the pruning by lower bounds decide which starts are looked at
    monkeypatch.setattr(minmax, "FIRST_CHUNK", chunks[0])
    monkeypatch.setattr(minmax, "MAX_CHUNK", chunks[1])
    rng = random.Random(2024)
    infeasible = 0
    for _ in range(200):
        problem = _random_problem(rng)
        best, need = _brute_force(problem)
        assert smallest_cap(problem)[0] == need
        if math.isinf(best):
            infeasible += 1
            with pytest.raises(ValueError, match="smallest cap that fits"):
                partition(problem)
            continue
        plan = partition(problem)
        assert plan.fits and plan.method is Method.OPTIMAL
        assert plan.bottleneck == pytest.approx(best, rel=1e-12)
        for method in (Method.UNIFORM, Method.PARAMETERS, Method.TIME_BLOCKS):
            other = partition(problem, method)
            if other.fits:
                assert plan.bottleneck <= other.bottleneck * (1 + 1e-12)
    assert 10 <= infeasible <= 120  # the random caps exercise both outcomes


def test_stage_time_counts_device_speed_and_both_cuts():
    spec = MLPSpec((4, 8, 2, 8, 4))
    problem = problem_for(spec, 3, 10, layer_times=[StageCost(1, 2, 3)] * 4, device_speeds=[1, 2, 1],
                          link=LinkModel(latency=0.5, bandwidth=80.0), dtype="float32")
    plan = problem.evaluate(((0, 1), (1, 3), (3, 4)))
    # the middle stage: 2 layers x 6 s at speed 2; cut after layer 0 carries 10*8*4 = 320 bytes, after layer 2 also
    assert plan.stage_costs == (StageCost(1, 2, 3), StageCost(1.0, 2.0, 3.0), StageCost(1, 2, 3))
    assert plan.boundary_bytes == (320, 320)
    assert plan.comm_times == (2 * 4.5, 4 * 4.5, 2 * 4.5)
    assert plan.stage_times == (15.0, 24.0, 15.0) and plan.bottleneck == 24.0


def test_the_all_reduce_moves_the_cut_away_from_a_layer_of_big_weights_and_little_compute():
    # F + B + W per layer 1, 2, 2 s; gradient bytes 4, 1, 1; no cut messages (0 boundary bytes). A ring over
    # D = 2 replicas at 1 byte/s takes 2 (D - 1) hops of n / 2 bytes: n seconds, a 1/m share per microbatch.
    #   D = 1:        0-0 | 1-2: max(1, 4) = 4;                  0-1 | 2-2: max(3, 2) = 3      -> 0-1 | 2-2
    #   D = 2, m = 1: 0-0 | 1-2: max(1 + 4, 4 + 2) = 6;          0-1 | 2-2: max(3 + 5, 2 + 1) = 8  -> 0-0 | 1-2
    #   D = 2, m = 4: 0-0 | 1-2: max(1 + 1, 4 + 0.5) = 4.5;      0-1 | 2-2: max(3 + 1.25, 2.25) = 4.25 -> 0-1 | 2-2
    def problem(replicas, m):
        return Problem((StageCost(1, 0, 0), StageCost(1, 1, 0), StageCost(0, 1, 1)), 2, link=LinkModel(0.0, 1.0),
                       grad_bytes=(4.0, 1.0, 1.0), replicas=replicas, microbatches=m)

    alone = partition(problem(1, 1))
    assert (alone.ranges, alone.bottleneck, alone.reduce_times) == (((0, 2), (2, 3)), 3.0, ())
    both = partition(problem(2, 1))
    assert (both.ranges, both.bottleneck, both.reduce_times) == (((0, 1), (1, 3)), 6.0, (4.0, 2.0))
    assert both.to_dict()["stages"][0]["reduce"] == 4.0
    amortized = partition(problem(2, 4))
    assert (amortized.ranges, amortized.bottleneck, amortized.reduce_times) == (((0, 2), (2, 3)), 4.25, (1.25, 0.25))
    # problem_for takes the gradient bytes from the spec (widths 3,4,2 in float32: 64 and 40 bytes)
    spec = problem_for(MLPSpec((3, 4, 2)), 2, 1, layer_times=[StageCost(1, 1, 1)] * 2, link=LinkModel(0.5),
                       replicas=4, microbatches=2)
    assert spec.grad_bytes == (64.0, 40.0)
    assert spec.evaluate(((0, 1), (1, 2))).reduce_times == (1.5, 1.5)  # 6 hops x 0.5 s = 3 s a step, over m = 2
    with pytest.raises(ValueError, match="replicas"):
        Problem((StageCost(1, 1, 1),), 1, replicas=0)


def test_expensive_links_move_the_cut_to_a_narrow_layer():
    spec = MLPSpec((8, 4096, 4096, 1, 4096, 8))  # cutting after layer 2 crosses one value per sample
    times = [StageCost(1, 1, 1)] * 5
    assert partition(problem_for(spec, 2, 8, layer_times=times)).ranges in (((0, 2), (2, 5)), ((0, 3), (3, 5)))
    slow = partition(problem_for(spec, 2, 8, layer_times=times, link=LinkModel(bandwidth=1e5)))
    assert slow.ranges == ((0, 3), (3, 5)) and slow.boundary_bytes == (8 * 1 * 4,)


def test_faster_device_gets_more_layers_and_caps_push_layers_away():
    spec = MLPSpec((16,) * 13)
    times = [StageCost(1, 1, 1)] * 12
    assert partition(problem_for(spec, 2, 4, layer_times=times, device_speeds=[3, 1])).ranges == ((0, 9), (9, 12))
    free = problem_for(spec, 2, 4, layer_times=times)
    assert partition(free).ranges == ((0, 6), (6, 12))
    # stage 0 holds 2 microbatches (1F1B), so its memory grows faster; a tight cap on it shifts the cut
    cap0 = free.evaluate(((0, 4), (4, 12))).memory[0]
    capped = partition(problem_for(spec, 2, 4, layer_times=times, memory_caps=[cap0, 10**9]))
    assert capped.ranges == ((0, 4), (4, 12)) and capped.fits


def test_deferred_weight_gradients_cost_memory():
    spec = MLPSpec((64,) * 9)
    plain = plan_for(spec, 2, 32, inflight=[2, 1])
    split = plan_for(spec, 2, 32, inflight=[2, 1], deferred_w=[2, 1])
    extra = [s.total - p.total for s, p in zip(split.memory_terms, plain.memory_terms)]
    assert extra == [2 * 32 * 64 * 4 * 4, 1 * 32 * 64 * 4 * 4]  # 4 layers each, g = 32 x 64 float32 per layer


def test_plan_memory_matches_the_memory_model():
    spec = MLPSpec((10, 30, 20, 40, 5))
    plan = plan_for(spec, 3, 7, optimizer="adam", inflight=[3, 2, 1], deferred_w=[1, 1, 0])
    assert plan.memory_terms == plan_memory(spec, plan.ranges, 7, optimizer="adam", inflight=(3, 2, 1),
                                            deferred_w=(1, 1, 0))
    assert plan.parameters == tuple(sum(spec.num_parameters(i) for i in range(a, b)) for a, b in plan.ranges)


def test_baselines_by_hand():
    assert uniform(7, 3) == ((0, 3), (3, 5), (5, 7))
    assert by_parameters([10, 1, 1, 10], 2) == ((0, 2), (2, 4))
    assert by_parameters([5, 1, 1, 1, 1, 5], 3) == ((0, 1), (1, 5), (5, 6))
    # normalized to [1, 0, 0, 0, 0, 1]: equal-count blocks already satisfy max <= min + 1 (times 6, 2, 6)
    assert time_blocks([5, 1, 1, 1, 1, 5], 3) == ((0, 2), (2, 4), (4, 6))
    # [0, .2, .4, .6, .8, 1]: blocks 0.6 | 2.4 -> move layer 3 left -> 1.2 | 1.8, balanced within 1
    assert time_blocks([1, 2, 3, 4, 5, 6], 2) == ((0, 4), (4, 6))
    problem = Problem(tuple(StageCost(t, 0, 0) for t in (5, 1, 1, 1, 1, 5)), 3)
    assert partition(problem).bottleneck == 5 < partition(problem, "time-blocks").bottleneck == 6


def test_parse_ranges():
    assert parse_ranges("0-2,3-5", 6) == ((0, 3), (3, 6))
    assert parse_ranges("0, 1-3 ,4", 5) == ((0, 1), (1, 4), (4, 5))
    for text, message in [("0-2,4-5", "expected a range starting at layer 3"), ("0-2", "covers layers 0..2"),
                          ("1-5", "starting at layer 0"), ("0-a", "inclusive layer ranges"), ("3-1,", "ends before")]:
        with pytest.raises(ValueError, match=message):
            parse_ranges(text, 6)


def test_infeasible_requests_say_how_to_fix_them():
    spec = MLPSpec((32,) * 5)
    with pytest.raises(ValueError, match="use at most 4 stages"):
        plan_for(spec, 5, 8)
    free = problem_for(spec, 2, 8)
    need, ranges = smallest_cap(free)
    assert need == min(max(free.evaluate(r).memory) for r in _all_ranges(4, 2))
    with pytest.raises(ValueError, match=f"smallest cap that fits is .* \\({int(need)} bytes\\)"):
        plan_for(spec, 2, 8, memory_caps=need - 1)
    assert plan_for(spec, 2, 8, memory_caps=need).fits
    # one cap for every device: more stages (each holding fewer layers) fit where 2 do not
    four = smallest_cap(problem_for(spec, 4, 8, inflight=lambda k: [1] * k))[0]
    three = smallest_cap(problem_for(spec, 3, 8, inflight=lambda k: [1] * k))[0]
    assert four < three
    with pytest.raises(ValueError, match="or use at least 4 stages"):
        plan_for(spec, 2, 8, memory_caps=four, inflight=lambda k: [1] * k)
    with pytest.raises(ValueError, match="more stages would not help"):
        plan_for(spec, 2, 8, memory_caps=four - 1, inflight=lambda k: [1] * k)


def test_bad_inputs():
    with pytest.raises(ValueError, match="memory_caps"):
        Problem((StageCost(1, 1, 1),) * 3, 2, memory_caps=(1e9, 1e9))
    lm = layer_memory(MLPSpec((4, 4, 4, 4)), 2)
    with pytest.raises(ValueError, match="expected 2 caps"):
        Problem((StageCost(1, 1, 1),) * 3, 2, memory=lm, memory_caps=(1e9,))
    with pytest.raises(ValueError, match="device_speeds"):
        Problem((StageCost(1, 1, 1),) * 3, 2, device_speeds=(1.0, 0.0))
    with pytest.raises(ValueError, match="inflight: expected 2"):
        Problem((StageCost(1, 1, 1),) * 3, 2, inflight=(1,))
    with pytest.raises(ValueError):
        partition(Problem((StageCost(1, 1, 1),) * 3, 2), "fastest")
    assert isinstance(lm, LayerMemory)
    assert plan_ranges(MLPSpec((4, 4, 4, 4)), 3, "uniform", 2) == ((0, 1), (1, 2), (2, 3))


def test_thousand_layers_over_64_stages_with_caps():
    """Correctness at scale; the speed (under a second) is a benchmark line: scripts/bench.py planning."""
    rng = random.Random(7)
    spec = MLPSpec(tuple(rng.randint(64, 4096) for _ in range(1001)))
    base = dict(layer_times=None, link=LinkModel(1e-5, 25e9), device_speeds=[rng.choice([1.0, 2.0]) for _ in range(64)],
                optimizer="adam", dtype="bfloat16")
    need, _ = smallest_cap(problem_for(spec, 64, 32, **base))
    problem = problem_for(spec, 64, 32, memory_caps=[need * rng.uniform(1.0, 1.3) for _ in range(64)], **base)
    plan = partition(problem)
    assert plan.fits and len(plan.ranges) == 64
    assert plan.bottleneck <= partition(problem, "uniform").bottleneck
    # adversarial for the pruning: one slow layer first, 999 cheap ones after it
    skewed = Problem((StageCost(10, 10, 10),) + (StageCost(1e-3, 1e-3, 1e-3),) * 999, 64)
    assert partition(skewed).bottleneck == 30


ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "scripts" / "plan.py")]


def _cli(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_plans_compares_and_writes_json_and_dot(tmp_path):
    out, dot = tmp_path / "plan.json", tmp_path / "plan.dot"
    proc = _cli("--widths", "784,4096,4096,1024,1024,10", "--stages", "4", "--microbatch", "64", "--schedule", "zb-h1",
                "--memory-cap", "300MiB", "--optimizer", "adam", "--bandwidth", "25e9", "--ranges", "0-1,2,3,4",
                "--json", str(out), "--dot", str(dot))
    assert proc.returncode == 0, proc.stderr
    for word in ("peak memory", "bottleneck", "step time", "optimal", "uniform", "parameters", "time-blocks", "given"):
        assert word in proc.stdout
    res = json.loads(out.read_text())
    # zb-h1 (p = 4): activations are held until W; B-to-W waits grow towards the last stage
    assert res["inflight"] == [4, 4, 4, 4] and res["deferred_w"] == [1, 2, 3, 4]
    plans = {p["method"]: p for p in res["plans"]}
    assert plans["optimal"]["fits"] and not plans["given"]["fits"]  # 0-1 on one device exceeds 300 MiB with Adam
    assert all(plans["optimal"]["bottleneck"] <= p["bottleneck"] for p in plans.values() if p["fits"])
    assert plans["optimal"]["stages"][0]["memory"]["deferred_w"] > 0
    text = dot.read_text()
    assert text.startswith("digraph") and all(f"cluster_stage{s}" in text for s in range(4))


def test_cli_profile_round_trip_and_memory_report(tmp_path):
    prof = tmp_path / "prof.json"
    base = ["--widths", "32,64,64,10", "--stages", "2", "--microbatch", "8", "--schedule", "gpipe"]
    proc = _cli(*base, "--save-profile", str(prof), "--json", str(tmp_path / "a.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "a.json").read_text())["inflight"] == [4, 4]  # gpipe: all m = 2 x stages
    proc = _cli(*base, "--profile", str(prof))
    assert proc.returncode == 0 and "measured on cpu" in proc.stdout, proc.stderr
    proc = _cli("--memory-report", "--widths", "784,256,10", "--batch", "128", "--optimizer", "adam")
    assert proc.returncode == 0, proc.stderr
    assert "saved activations" in proc.stdout and "live activations" in proc.stdout and "optimizer" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--stages", "9"], "use between 1 and 5 stages"),
    (["--memory-cap", "10MiB"], "smallest cap that fits is"),
    (["--memory-cap", "lots"], "memory size"),
    (["--ranges", "0-1,3,4"], "contiguous"),
])
def test_cli_bad_input_is_one_line(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def _brute_force_joint(problem):
    """The smallest bottleneck over every split x every per-stage recomputation choice that fits the caps."""
    best, fits_without = math.inf, False
    for ranges in _all_ranges(problem.num_layers, problem.num_stages):
        for choices in itertools.product(*(recompute_options(b - a) for a, b in ranges)):
            plan = problem.evaluate(ranges, recompute=choices)
            if plan.fits:
                best = min(best, plan.bottleneck)
                fits_without |= all(c == NO_RECOMPUTE for c in choices)
    return best, fits_without


def _activation_heavy_problem(rng):
    """A small random problem whose activations outweigh its parameters, so that recomputing can make it fit."""
    layers = rng.randint(1, 6)
    stages = rng.randint(1, min(layers, 4))
    spec = MLPSpec(tuple(rng.randint(2, 48) for _ in range(layers + 1)), bias=rng.random() < 0.5,
                   loss=rng.choice(["cross-entropy", "squared-error"]))
    times = [StageCost(rng.random(), rng.random(), rng.random()) for _ in range(layers)]
    free = problem_for(spec, stages, rng.randint(32, 256), layer_times=times, link=LinkModel(rng.choice([0.0, 0.05]), 1e6),
                       device_speeds=[rng.choice([0.5, 1.0, 2.0]) for _ in range(stages)],
                       inflight=[rng.randint(1, 6) for _ in range(stages)], deferred_w=[rng.randint(0, 3) for _ in range(stages)])
    need, _ = smallest_cap(free)
    caps = tuple(need * rng.uniform(0.55, 1.05) for _ in range(stages))
    return Problem(free.layer_times, stages, free.boundary_bytes, free.link, free.device_speeds, free.memory, caps,
                   free.inflight, free.deferred_w, free.parameters)


def test_joint_partition_equals_brute_force_over_ranges_and_recomputation_on_150_random_instances():
    rng = random.Random(77)
    recomputed = infeasible = 0
    for _ in range(150):
        problem = _activation_heavy_problem(rng)
        best, fits_without = _brute_force_joint(problem)
        if math.isinf(best):
            infeasible += 1
            with pytest.raises(ValueError, match="even recomputing every stage"):
                joint_partition(problem)
            continue
        plan = joint_partition(problem)
        assert plan.fits and plan.bottleneck == pytest.approx(best, rel=1e-12)
        if plan.recompute is not None:
            recomputed += 1
            if fits_without:  # a plan without recomputation fits too: the joint one is no slower
                assert plan.bottleneck <= partition(problem).bottleneck * (1 + 1e-12)
    assert recomputed >= 30 and 5 <= infeasible <= 100, (recomputed, infeasible)


def _chooser(cap, **kw):
    spec = MLPSpec((784, 4096, 4096, 1024, 1024, 10))

    def problem_with(inflight, deferred):
        return problem_for(spec, 4, 1024, inflight=inflight, deferred_w=deferred, memory_caps=cap)

    return choose(problem_with, 4, 8, **kw), problem_with


def test_choose_simulates_every_candidate_and_keeps_the_fastest_that_fits():
    free, _ = _chooser(None)
    assert [o.kind for o in free.options] == list(CANDIDATES) and all(o.plan is not None for o in free.options)
    assert free.best.step_time == min(o.step_time for o in free.options)
    assert free.levers[0].startswith("ranges and recomputation: the fastest split")
    cap = 220 * 2**20  # zb-h1 cannot fit, 1f1b fits only by recomputing, a generated schedule fits without
    tight, problem_with = _chooser(cap)
    by_kind = {o.kind: o for o in tight.options}
    assert by_kind[ScheduleKind.ZB_H1].plan is None and "even recomputing every stage" in by_kind[ScheduleKind.ZB_H1].note
    assert by_kind[ScheduleKind.ONE_F_ONE_B].plan.recompute is not None
    assert tight.best.kind is ScheduleKind.AUTO and tight.best.plan.recompute is None
    for option in tight.options:
        if option.plan is not None:
            assert max(option.peak_bytes) <= cap
            assert simulate(option.schedule, option.plan.stage_costs).makespan == option.step_time  # free link
    assert tight.best.step_time < by_kind[ScheduleKind.ONE_F_ONE_B].step_time
    assert any(lever.startswith("schedule: auto") and "zb-h1 does not fit" in lever for lever in tight.levers)
    counted, _ = _chooser(cap, max_inflight=2, recompute=False)
    assert [o.kind for o in counted.options if o.plan is not None] == [ScheduleKind.AUTO]
    assert max(simulate(counted.best.schedule, counted.best.plan.stage_costs).peak_inflight) <= 2


def test_choose_says_why_recomputation_was_needed():
    spec = MLPSpec((64, 512, 512, 512, 10))
    options = dict(inflight=None, deferred_w=None, memory_caps=None)

    def problem_with(inflight, deferred, cap=None):
        return problem_for(spec, 2, 512, **{**options, "inflight": inflight, "deferred_w": deferred, "memory_caps": cap})

    plain = choose(problem_with, 2, 4, kinds=(ScheduleKind.ONE_F_ONE_B,))
    need = max(plain.best.peak_bytes)
    squeezed = choose(lambda i, d: problem_with(i, d, need * 0.8), 2, 4, kinds=(ScheduleKind.ONE_F_ONE_B,))
    assert squeezed.best.plan.recompute is not None
    assert any(lever.startswith("recomputation: stage") and "over its cap" in lever for lever in squeezed.levers)


def test_cli_schedule_auto_reports_levers_and_every_candidate(tmp_path):
    out = tmp_path / "joint.json"
    proc = _cli("--stages", "4", "--microbatch", "1024", "--memory-cap", "250MiB", "--schedule", "auto",
                "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "chosen: auto" in proc.stdout and "- schedule: auto" in proc.stdout
    joint = json.loads(out.read_text())["joint"]
    assert joint["chosen"] == "auto" and [o["schedule"] for o in joint["options"]] == ["gpipe", "1f1b", "zb-h1", "auto"]
    assert all(o["step_time"] > 0 for o in joint["options"] if o["fits"]) and joint["levers"]
    proc = _cli("--schedule", "1f1b", "--max-inflight", "2")
    assert proc.returncode == 2 and "needs --schedule auto" in proc.stderr


def test_joint_partition_with_a_known_schedule_uses_its_exact_walk_and_equals_brute_force():
    rng = random.Random(31)
    recomputed = feasible = 0
    for _ in range(100):
        problem = _activation_heavy_problem(rng)
        k = problem.num_stages
        schedule = generate(rng.choice([ScheduleKind.GPIPE, ScheduleKind.ONE_F_ONE_B, ScheduleKind.ZB_H1]), k, rng.randint(1, 6))
        best = math.inf
        for ranges in _all_ranges(problem.num_layers, k):
            for choices in itertools.product(*(recompute_options(b - a) for a, b in ranges)):
                walk = plan_activation_peaks(problem.memory, schedule, ranges, choices)  # the schedule's exact peaks
                static = [problem.memory.stage(a, b, 0, 0, c).total for (a, b), c in zip(ranges, choices)]
                peaks = [x + y for x, y in zip(static, walk)]
                if all(p <= cap for p, cap in zip(peaks, problem.memory_caps)):
                    bottleneck = problem.evaluate(ranges, recompute=choices).bottleneck
                    best = min(best, bottleneck)
        if math.isinf(best):
            with pytest.raises(ValueError, match="even recomputing every stage"):
                joint_partition(problem, schedule=schedule)
            continue
        feasible += 1
        plan = joint_partition(problem, schedule=schedule)
        assert plan.bottleneck == pytest.approx(best, rel=1e-12) and plan.fits
        assert plan.memory == plan.peaks and all(p <= cap for p, cap in zip(plan.peaks, problem.memory_caps))
        recomputed += plan.recompute is not None
    assert feasible >= 30 and recomputed >= 10, (feasible, recomputed)
