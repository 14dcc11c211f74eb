"""The capped schedule generator: brute force over its space, the cap and validity always, the known points."""

import itertools
import math
import random

import pytest

from partition.activation_peak import rank_activation_peaks
from partition.memory import MicrobatchBytes
from partition.schedule.actions import Action, Op, Schedule, ScheduleError, ScheduleKind
from partition.schedule.capped import EXACT_UP_TO, UNIT_BYTES, ActivationCap, Placement, capped_schedule, search_problem
from partition.schedule.capped_exact import exact_search
from partition.schedule.capped_rules import rules, run_rule
from partition.schedule.comms import insert_comms
from partition.schedule.generators import generate
from partition.schedule.simulate import simulate
from partition.schedule.validate import validate
from partition.timing import LinkModel, StageCost

UNIT = StageCost(1.0, 1.0, 1.0)


def _rank_lists(stages, m):
    """Every list of one rank: F, B, W or BW of its stages, each (stage, op) in microbatch order, B after F, W after B."""
    out, acc = [], []
    count = {(s, op): 0 for s in stages for op in (Op.F, Op.B, Op.W)}

    def extend(parts_left):
        if not parts_left:
            out.append(tuple(acc))
            return
        for s in stages:
            for op in (Op.F, Op.B, Op.W, Op.BW):
                k = count[(s, Op.B if op is Op.BW else op)]
                if k >= m or (op in (Op.B, Op.BW) and count[(s, Op.F)] <= k) or (op is Op.W and count[(s, Op.B)] <= k):
                    continue
                if op is Op.BW and count[(s, Op.W)] != k:
                    continue
                parts = [(s, Op.B), (s, Op.W)] if op is Op.BW else [(s, op)]
                for part in parts:
                    count[part] += 1
                acc.append(Action(s, op, k))
                extend(parts_left - len(parts))
                acc.pop()
                for part in parts:
                    count[part] -= 1

    extend(3 * len(stages) * m)
    return out


def _brute_force(p, m, placement, costs, cap, link, sizes):
    """The fastest combination of rank lists that runs and fits, by the simulator (inf when none fits)."""
    template = generate(placement.kinds[0], p, m)
    per_rank = [_rank_lists(template.stages_of(r), m) for r in range(p)]
    best = math.inf
    for lists in itertools.product(*per_rank):
        schedule = Schedule(ScheduleKind.AUTO, p, template.num_stages, m, template.placement, dict(enumerate(lists)))
        try:
            sim = simulate(schedule, costs, link, sizes)
        except ScheduleError:
            continue
        if cap.fits(schedule, sim):
            best = min(best, sim.makespan)
    return best


def _pipe(p, m, placement, costs, cap, link, sizes):
    return search_problem(p, m, placement, costs, cap, link, sizes)


def _random_case(rng, placement, p, m):
    stages = p * (2 if placement is Placement.V else 1)
    costs = [StageCost(rng.choice([0.1, 1, 2.3]), rng.choice([0.2, 1, 3]), rng.choice([0, 0.1, 1.7])) for _ in range(stages)]
    held = []
    for _ in range(stages):
        forward = rng.choice([1, 2, 3])
        held.append(MicrobatchBytes(forward, forward + rng.choice([0, 0, 1, 2]), rng.choice([0, 1, 2, 3, 4])))
    cap = ActivationCap(rng.choice([math.inf, 3, 4, 5, 6, 8]), tuple(held), rng.choice([None, None, 1, 2]))
    return costs, cap, rng.choice([LinkModel(), LinkModel(0.5)]), [1.0] * stages


def test_exact_search_equals_brute_force_over_its_space_on_40_random_cases():
    rng = random.Random(12)
    shapes = [(Placement.LINE, p, m) for p, m in [(1, 3), (2, 1), (2, 2), (3, 1), (3, 2)]] + [(Placement.V, 2, 1)]
    fitting = 0
    for _ in range(40):
        placement, p, m = rng.choice(shapes)
        costs, cap, link, sizes = _random_case(rng, placement, p, m)
        best = _brute_force(p, m, placement, costs, cap, link, sizes)
        found = exact_search(_pipe(p, m, placement, costs, cap, link, sizes), math.inf)
        assert found.proven and found.makespan == pytest.approx(best, rel=1e-12, abs=0)
        if math.isinf(best):
            with pytest.raises(ValueError, match="activation cap: no schedule fits"):
                capped_schedule(p, m, costs, cap, link, sizes, placement=placement)
            continue
        fitting += 1
        result = capped_schedule(p, m, costs, cap, link, sizes, placement=placement)
        assert result.makespan <= best * (1 + 1e-12) and result.exact == "proven optimal"
    assert fitting >= 25


@pytest.mark.parametrize("placement", list(Placement))
def test_the_result_fits_validates_and_simulates_as_searched(placement):
    rng = random.Random(3)
    for p, m in [(2, 4), (3, 5), (4, 8), (5, 3)]:
        costs, cap, link, sizes = _random_case(rng, placement, p, m)
        cap = ActivationCap(12, cap.stage_bytes, cap.max_inflight)  # room for one microbatch on every stage
        result = capped_schedule(p, m, costs, cap, link, sizes, placement=placement, exact=False)
        schedule = result.schedule
        validate(schedule)
        validate(insert_comms(schedule))
        assert schedule.kind is ScheduleKind.AUTO
        assert all(peak <= cap.budget for peak in rank_activation_peaks(schedule, cap.stage_bytes))
        sim = simulate(schedule, costs, link, sizes)
        assert cap.max_inflight is None or max(sim.peak_inflight) <= cap.max_inflight
        assert sim.makespan == result.makespan
        fitting = [c.makespan for c in result.candidates if c.fits]
        assert result.makespan == min(fitting)


def test_rule_states_match_the_simulator_and_the_peak_walk():
    rng = random.Random(8)
    costs, cap, link, sizes = _random_case(rng, Placement.V, 3, 6)
    cap = ActivationCap(40, cap.stage_bytes)
    pipe = _pipe(3, 6, Placement.V, costs, cap, link, sizes)
    template = generate(ScheduleKind.ZB_V, 3, 6)
    ran = 0
    for rule in rules(pipe):
        state = run_rule(pipe, rule)
        if state is None:
            continue
        ran += 1
        schedule = Schedule(ScheduleKind.AUTO, 3, 6, 6, template.placement, dict(enumerate(state.lists)))
        assert simulate(schedule, costs, link, sizes).makespan == state.makespan
        assert rank_activation_peaks(schedule, cap.stage_bytes) == tuple(state.peak)
    assert ran >= 10


def test_exact_search_is_proven_for_every_line_case_up_to_nine():
    rng = random.Random(9)
    for p in range(1, EXACT_UP_TO + 1):
        for m in range(1, EXACT_UP_TO // p + 1):
            costs = [StageCost(rng.uniform(0.5, 2), rng.uniform(0.5, 2), rng.uniform(0.2, 2)) for _ in range(p)]
            bytes_ = tuple(MicrobatchBytes(2, 3, rng.choice([1, 4])) for _ in range(p))
            budget = rng.choice([math.inf, 4, 6, 9])
            result = capped_schedule(p, m, costs, ActivationCap(budget, bytes_), LinkModel(0.2), [1.0] * p)
            assert result.exact == "proven optimal", (p, m)
            assert result.gap is None or result.gap >= 0


def _rule_only(result):
    return min(c.makespan for c in result.candidates if c.fits and c.name.startswith("rule"))


@pytest.mark.parametrize("cost", [UNIT, StageCost(1.0, 2.0, 1.0), StageCost(2.0, 3.0, 1.0)])
def test_unbounded_rules_alone_match_zb_h1_and_under_1f1b_memory_beat_1f1b(cost):
    for p, m in [(2, 4), (4, 4), (4, 8), (6, 12)]:
        zb = simulate(generate(ScheduleKind.ZB_H1, p, m), [cost] * p).makespan
        free = capped_schedule(p, m, [cost] * p, ActivationCap(), exact=False)
        assert _rule_only(free) <= zb
        one = generate(ScheduleKind.ONE_F_ONE_B, p, m)
        budget = rank_activation_peaks(one, [UNIT_BYTES] * p)  # p - r microbatches on rank r
        capped = capped_schedule(p, m, [cost] * p, ActivationCap(budget), exact=False)
        assert _rule_only(capped) < simulate(one, [cost] * p).makespan
        assert all(b <= cap for b, cap in zip(rank_activation_peaks(capped.schedule, [UNIT_BYTES] * p), budget))


@pytest.mark.parametrize("p,m", [(4, 8), (4, 12), (6, 12)])
def test_v_half_point(p, m):
    """Two stages per rank in a V at V-Half's memory, (p + 2) // 2 microbatches of a whole rank's activations
    (1F1B holds p): the idle time is at most half of 1F1B's, as V-Half's with equal F, B and W."""
    half = StageCost(0.5, 0.5, 0.5)  # each V stage holds half of a rank's layers
    budget = (p + 2) // 2 * 2  # in stage-microbatches, which are half a rank's microbatch each
    result = capped_schedule(p, m, [half] * (2 * p), ActivationCap(budget), placement=Placement.V)
    assert max(rank_activation_peaks(result.schedule, [UNIT_BYTES] * (2 * p))) <= budget
    one = simulate(generate(ScheduleKind.ONE_F_ONE_B, p, m), [UNIT] * p)
    work = m * UNIT.total
    assert one.makespan - work == (p - 1) * UNIT.total
    assert result.makespan - work <= (one.makespan - work) / 2
    zb_v = capped_schedule(p, m, [half] * (2 * p), ActivationCap(2 * p - 1), placement=Placement.V)
    assert "zb-v" not in zb_v.source  # zb-v holds 2p stage-microbatches: it never fits under half of that


def test_auto_is_named_but_not_built_by_generate():
    assert ScheduleKind("auto") is ScheduleKind.AUTO and ScheduleKind.AUTO not in ScheduleKind.fixed()
    with pytest.raises(ValueError, match=r"^the auto schedule needs .*capped_schedule\(\.\.\.\)$"):
        generate(ScheduleKind.AUTO, 2, 4)


def test_a_cap_below_one_microbatch_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"^activation cap: no schedule fits 1 B of activations on rank 0; .*2 B$"):
        capped_schedule(2, 4, [UNIT] * 2, ActivationCap(1, (MicrobatchBytes(2, 2, 2),) * 2))
    with pytest.raises(ValueError, match="expected 2 StageCost"):
        capped_schedule(2, 4, [UNIT] * 3, ActivationCap())


def test_zero_time_forwards_skip_the_exact_search_unless_asked():
    costs = [StageCost(0.0, 1.0, 1.0), StageCost(1.0, 1.0, 0.0)]
    result = capped_schedule(2, 3, costs, ActivationCap(2))
    assert result.exact == "not run" and result.makespan == min(c.makespan for c in result.candidates if c.fits)
    with pytest.raises(ValueError, match="needs F and B times > 0"):
        capped_schedule(2, 3, costs, ActivationCap(2), exact=True)
