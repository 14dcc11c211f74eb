"""The simulator's predictions against closed forms, hand-computed timelines, the trace writers and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from partition.schedule.actions import Action, Op, ScheduleError, ScheduleKind
from partition.schedule.comms import insert_comms
from partition.schedule.encoding import encode
from partition.schedule.generators import generate
from partition.schedule.replay import replay
from partition.schedule.simulate import simulate
from partition.schedule.trace import TraceEvent, drawn_ops, op_of, write_chrome_trace, write_gantt_png
from partition.timing import LinkModel, StageCost

ROOT = Path(__file__).resolve().parents[3]
UNIT = StageCost(1.0, 1.0, 1.0)


def run(kind, p, m, v=1, cost=UNIT, **kw):
    schedule = generate(kind, p, m, v)
    return simulate(schedule, [cost] * schedule.num_stages, **kw)


@pytest.mark.parametrize("kind", [ScheduleKind.GPIPE, ScheduleKind.ONE_F_ONE_B])
@pytest.mark.parametrize("cost", [UNIT, StageCost(1.0, 2.0, 0.5)])
def test_gpipe_and_1f1b_bubble_is_the_closed_form(kind, cost):
    for p in range(1, 9):
        for m in range(1, 17):
            r = run(kind, p, m, cost=cost)
            assert r.makespan == cost.total * (m + p - 1)
            assert math.isclose(r.bubble_fraction, (p - 1) / (m + p - 1), abs_tol=1e-12)
            assert r.busy == (cost.total * m,) * p


def test_interleaved_bubble_is_the_closed_form():
    """(p-1)/(v*m + p-1): see partition.schedule.generators._interleaved for the derivation."""
    for cost in (UNIT, StageCost(2.0, 1.0, 0.5)):
        for p in range(1, 7):
            for v in (1, 2, 3):
                for m in range(p, 17, p):
                    r = run(ScheduleKind.INTERLEAVED_1F1B, p, m, v, cost=cost)
                    assert r.makespan == cost.total * (v * m + p - 1), (p, v, m)
                    assert math.isclose(r.bubble_fraction, (p - 1) / (v * m + p - 1), abs_tol=1e-12)


def test_zb_h1_cuts_the_1f1b_bubble_to_a_third():
    for p in range(2, 9):
        for m in range(p, 3 * p + 1):
            zb, base = run(ScheduleKind.ZB_H1, p, m), run(ScheduleKind.ONE_F_ONE_B, p, m)
            assert zb.makespan == 3 * m + p - 1  # (p-1)(F + B - W) idle per rank instead of (p-1)(F + B + W)
            assert 3 * sum(zb.idle) == sum(base.idle)
            assert math.isclose(zb.bubble_fraction, (p - 1) / (3 * m + p - 1), abs_tol=1e-12)
            assert zb.peak_inflight == (p,) * p  # rank 0's 1F1B peak on every rank: same memory as 1F1B
            assert zb.peak_deferred_w == tuple(r + 1 for r in range(p))


def test_zb_v_bubble_is_near_zero_from_2p_microbatches():
    for p in range(2, 9):
        for m in (2 * p, 3 * p, 4 * p):
            schedule = generate(ScheduleKind.ZB_V, p, m)
            r = simulate(schedule, [UNIT] * 2 * p)
            # rank p-1 cannot start before its first input crossed p-1 chunks: 6m + p - 1 is a lower bound
            assert 6 * m + p - 1 <= r.makespan <= 6 * m + p + 1, (p, m)
            assert r.bubble_fraction < 0.1
            assert r.bubble_fraction < run(ScheduleKind.ZB_H1, p, m).bubble_fraction
            for acts in schedule.actions.values():  # a rank holds at most 2p stage activations, 1F1B's p microbatches
                held = [0]
                for a in acts:
                    held.append(held[-1] + (a.op is Op.F) - (a.op is Op.W))
                assert max(held) <= 2 * p


def test_peak_inflight_matches_gpipe_and_1f1b():
    for p in range(1, 9):
        for m in range(1, 17):
            assert run(ScheduleKind.GPIPE, p, m).peak_inflight == (m,) * p
            assert run(ScheduleKind.ONE_F_ONE_B, p, m).peak_inflight == tuple(min(m, p - s) for s in range(p))
            assert run(ScheduleKind.ONE_F_ONE_B, p, m).peak_deferred_w == (0,) * p


def test_link_time_on_a_hand_computed_timeline():
    link = LinkModel(latency=0.5, bandwidth=4.0)
    r = run(ScheduleKind.ONE_F_ONE_B, 2, 1, link=link, activation_bytes=[2.0, 0.0])
    # 0F0 [0,1], transfer 1 s, 1F0 [2,3], 1BW0 [3,5], transfer back 1 s, 0BW0 [6,8]
    assert [(str(t.action), t.start, t.end) for t in r.timeline] == [("0F0", 0, 1), ("0BW0", 6, 8), ("1F0", 2, 3),
                                                                     ("1BW0", 3, 5)]
    assert r.makespan == 8 and r.busy == (3, 3) and r.idle == (5, 5)
    assert [(t.rank, str(t.action), t.start, t.end) for t in r.transfers] == [(0, "0SEND_F0", 1, 2), (1, "1SEND_B0", 5, 6)]
    assert r.critical_path == (Action(0, Op.F, 0), Action(1, Op.F, 0), Action(1, Op.BW, 0), Action(0, Op.BW, 0))


def test_rendezvous_link_starts_a_transfer_only_when_its_receive_is_posted_one_ahead():
    """Every message 2 s, F = 1, BW = 1, 2 ranks, 2 microbatches, worked out by hand.

    A rank posts its first receive at the start and each next one when it takes the one before. GPipe: rank 1
    takes F0 at 3 (sent at 1), so F1's receive is posted only then although F1 left at 2: it lands at 5 (free
    flight: 4), 1F1 runs [5, 6], 1BW1 [6, 7], 1BW0 [7, 8]. Rank 0 takes B1 at 9 (sent at 7); B0, sent at 8, is
    posted at 9 and lands at 11: 0BW0 [11, 12], where free-flying messages end the step at 10. In 1F1B each
    receive is posted before its message leaves, so the rendezvous changes nothing there.
    """
    cost, sizes = StageCost(1.0, 1.0, 0.0), [1.0, 0.0]
    gpipe, one = generate(ScheduleKind.GPIPE, 2, 2), generate(ScheduleKind.ONE_F_ONE_B, 2, 2)
    assert simulate(gpipe, [cost] * 2, LinkModel(latency=2.0), sizes).makespan == 10.0
    link = LinkModel(latency=2.0, rendezvous=True)
    for sched in (gpipe, insert_comms(gpipe)):  # with or without explicit send/recv actions
        r = simulate(sched, [cost] * 2, link, sizes)
        assert [(str(t.action), t.start, t.end) for t in r.timeline if not t.action.op.is_comm] == [
            ("0F0", 0, 1), ("0F1", 1, 2), ("0BW1", 9, 10), ("0BW0", 11, 12),
            ("1F0", 3, 4), ("1F1", 5, 6), ("1BW1", 6, 7), ("1BW0", 7, 8)]
        assert r.makespan == 12.0
        assert sorted((t.rank, str(t.action), t.start, t.end) for t in r.transfers) == [
            (0, "0SEND_F0", 1, 3), (0, "0SEND_F1", 3, 5), (1, "1SEND_B0", 9, 11), (1, "1SEND_B1", 7, 9)]
        free_1f1b = simulate(one, [cost] * 2, LinkModel(latency=2.0), sizes)
        assert simulate(one, [cost] * 2, link, sizes).timeline == free_1f1b.timeline
    assert "from the receive on" in link.describe() and "receive" not in LinkModel(0.5).describe()


def test_stages_on_one_rank_pass_tensors_for_free():
    slow = LinkModel(latency=10.0)
    r = run(ScheduleKind.INTERLEAVED_1F1B, 1, 4, 3, link=slow, activation_bytes=[1.0] * 3)
    assert r.makespan == 3 * 4 * 3 and r.transfers == ()


def test_with_and_without_comms_simulate_alike():
    costs_links = [(UNIT, LinkModel(), None), (StageCost(1.0, 2.0, 0.5), LinkModel(0.3, 10.0), 2.0)]
    for kind in ScheduleKind.fixed():
        v = 2 if kind is ScheduleKind.INTERLEAVED_1F1B else 1
        for cost, link, size in costs_links:
            schedule = generate(kind, 4, 8, v)
            sizes = None if size is None else [size] * schedule.num_stages
            plain = simulate(schedule, [cost] * schedule.num_stages, link, sizes)
            comms = simulate(insert_comms(schedule), [cost] * schedule.num_stages, link, sizes)
            if cost is UNIT or kind not in (ScheduleKind.INTERLEAVED_1F1B, ScheduleKind.ZB_V):
                assert comms.timeline == plain.timeline and comms.transfers == plain.transfers, kind
            else:  # receives moved earlier for blocking safety can only wait, never speed up
                assert comms.makespan >= plain.makespan


def test_critical_path_is_a_chain_that_sums_to_the_makespan():
    for kind in ScheduleKind.fixed():
        v = 2 if kind is ScheduleKind.INTERLEAVED_1F1B else 1
        cost = StageCost(1.0, 2.0, 0.5)
        r = run(kind, 4, 8, v, cost=cost)
        spans = {t.action: (t.start, t.end) for t in r.timeline}
        path = r.critical_path
        assert spans[path[0]][0] == 0 and spans[path[-1]][1] == r.makespan
        for a, b in zip(path, path[1:]):
            assert spans[a][1] == spans[b][0], (kind, a, b)  # no slack anywhere on the path


def test_simulate_rejects_bad_inputs_and_deadlocks():
    schedule = generate(ScheduleKind.ONE_F_ONE_B, 2, 2)
    with pytest.raises(ValueError, match="expected 2 StageCost"):
        simulate(schedule, [UNIT])
    with pytest.raises(ValueError, match="activation_bytes"):
        simulate(schedule, [UNIT] * 2, activation_bytes=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="activation_bytes"):
        simulate(schedule, [UNIT] * 2, activation_bytes=[-1.0])
    cyclic = schedule.with_actions({0: (Action(0, Op.F, 0), Action(0, Op.BW, 0), Action(0, Op.F, 1), Action(0, Op.BW, 1)),
                                    1: (Action(1, Op.F, 0), Action(1, Op.F, 1), Action(1, Op.BW, 0), Action(1, Op.BW, 1))})
    with pytest.raises(ScheduleError, match="deadlock"):
        simulate(cyclic, [UNIT] * 2)
    zero = simulate(schedule, [StageCost(0, 0, 0)] * 2)
    assert zero.makespan == 0 and zero.bubble_fraction == 0 and zero.critical_path == ()


def test_to_json_is_json():
    r = run(ScheduleKind.ZB_H1, 3, 6)
    out = json.loads(json.dumps(r.to_json(timeline=True)))
    assert out["makespan"] == r.makespan and out["bubble_fraction"] == r.bubble_fraction
    assert out["busy"] == list(r.busy) and out["idle"] == list(r.idle) and out["peak_inflight"] == [3, 3, 3]
    assert len(out["timeline"]) == 3 * 3 * 6 and out["timeline"][0] == [0, "0F0", 0.0, 1.0]


def test_chrome_trace_and_gantt(tmp_path):
    events = run(ScheduleKind.ZB_H1, 2, 2).trace_events()
    write_chrome_trace(tmp_path / "t.json", events, process_name="zb-h1")
    trace = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    spans = [e for e in trace if e["ph"] == "X"]
    assert len(spans) == 12 and {e["tid"] for e in spans} == {0, 1}
    first = next(e for e in spans if e["name"] == "1F0")
    assert (first["ts"], first["dur"], first["cat"]) == (1e6, 1e6, "F")
    assert {e["args"]["name"] for e in trace if e["name"] == "thread_name"} == {"rank 0", "rank 1"}
    write_chrome_trace(tmp_path / "two.json", {"measured": events[:3], "predicted": events})
    trace = json.loads((tmp_path / "two.json").read_text())["traceEvents"]
    assert {e["pid"] for e in trace if e["ph"] == "X"} == {0, 1}
    write_gantt_png(tmp_path / "g.png", events, "zb-h1")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [op_of(n) for n in ("2F0", "1BW3", "0W3x4", "0SEND_F1", "idle")] == ["F", "BW", "W", "SEND_F", ""]
    assert drawn_ops(["1BW3", "0F0", "2F1", "0SEND_F1"]) == ["F", "BW"]  # the legend lists no op that is not drawn
    with pytest.raises(ValueError):
        TraceEvent(0, "x", 2.0, 1.0)


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "scripts/simulate.py", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_cli_prints_and_writes(tmp_path):
    out = _cli("--schedule", "1f1b", "--stages", "4", "--microbatches", "8", "--json", str(tmp_path / "r.json"),
               "--trace", str(tmp_path / "t.json"))
    assert out.returncode == 0, out.stderr
    assert "0BW7" in out.stdout and "makespan          33 s" in out.stdout and "27.27%" in out.stdout
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures["makespan"] == 33 and figures["busy"] == [24] * 4 and figures["peak_inflight"] == [4, 3, 2, 1]
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    help_ = _cli("--help")
    assert help_.returncode == 0 and "python scripts/simulate.py --schedule 1f1b" in help_.stdout


@pytest.mark.parametrize("args", [["--stages", "0"], ["--schedule", "nope"], ["--schedule", "interleaved-1f1b",
                                  "--microbatches", "6", "--virtual", "2"], ["--cost-f", "-1"], ["--stages", "x"]])
def test_cli_bad_arguments_exit_2_with_one_line(args):
    out = _cli(*args)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_rendezvous_posts_receives_in_the_executors_order():
    """Interleaved 1F1B: insert_comms moves some receives earlier than the compute that needs them, and the runtime
    posts them in that order; a rendezvous simulation of the bare lists is the one of the lists the executor runs
    (and later than free-flying messages); the replay refuses the bare lists with a rendezvous link."""
    sched = generate(ScheduleKind.INTERLEAVED_1F1B, 2, 4, 2)
    cost, link, sizes = [StageCost(1.0, 2.0, 0.0)] * 4, LinkModel(latency=0.2, rendezvous=True), [1.0] * 4
    bare, run_lists = simulate(sched, cost, link, sizes), simulate(insert_comms(sched), cost, link, sizes)
    assert bare.timeline == run_lists.timeline and bare.transfers == run_lists.transfers
    assert bare.makespan == run_lists.makespan > simulate(sched, cost, LinkModel(latency=0.2), sizes).makespan
    enc = encode(sched)
    with pytest.raises(ValueError, match="send/recv actions"):
        replay(enc, sched.actions, [1.0] * 4, [2.0] * 4, [0.0] * 4, [0.2] * 4, rendezvous=True)
