"""PP x DP layouts of K devices: step times, memory and exclusions computed by hand on tiny models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from partition.layouts import plan_layouts
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost

TWO_LAYERS = MLPSpec((2, 2, 2))


def per_row(rows: int) -> list[StageCost]:
    """Each of the two layers costs F = B = W = 1 s per row of the microbatch."""
    return [StageCost(rows, rows, rows)] * 2


def by_name(layouts):
    return {x.name: x for x in layouts}


def test_two_devices_free_link_one_device_per_replica_wins():
    # batch 8, m = 2. PP2: 4 rows per microbatch, F = B = W = 4 per stage; 1f1b p = 2, m = 2 takes 9 unit slots
    # (F0 F1 . . X0 X0 . X1 X1 on rank 0, BW = 2 units) -> 36 s. DP2: 2 rows, the whole model on one device:
    # F = B = W = 4 per microbatch, F BW F BW = 2 x (4 + 8) = 24 s; a free link makes the all-reduce free.
    layouts = plan_layouts(TWO_LAYERS, 2, 8, 2, layer_times=per_row)
    assert [x.name for x in layouts] == ["DP2", "PP2"]
    assert [x.step_time for x in layouts] == [24.0, 36.0]
    assert [x.rows for x in layouts] == [2, 4]
    assert layouts[1].plan.ranges == ((0, 1), (1, 2))


def test_latency_adds_the_ring_and_the_pipeline_messages():
    # 1 s per message. DP2: one ring over 2 replicas = 2 (2 - 1) hops = 2 s after the step's last BW: 26 s.
    # PP2 (4 rows): rank 1 F0 [5, 9] (sent at 4, 1 s on the way), BW0 [9, 17], F1 [17, 21], BW1 [21, 29];
    # rank 0 BW0 [18, 26] (gradient 1 s on the way), BW1 [30, 38]: 38 s, and no all-reduce at D = 1.
    layouts = by_name(plan_layouts(TWO_LAYERS, 2, 8, 2, layer_times=per_row, link=LinkModel(1.0)))
    assert (layouts["DP2"].step_time, layouts["DP2"].pipeline_time, layouts["DP2"].exposed) == (26.0, 24.0, 2.0)
    assert (layouts["PP2"].step_time, layouts["PP2"].exposed) == (38.0, 0.0)


def test_four_devices_every_factorisation_and_why_one_is_out():
    # batch 16, m = 2. DP4: 2 rows, 24 s + a ring over 4 replicas = 2 x 3 hops of 1 s: 30 s.
    # PP2xDP2: 4 rows, the PP2 pipeline above (38 s); stage 1's last BW ends at 29 and its ring takes [29, 31]
    # (hidden), stage 0's ends at 38 -> [38, 40]: 40 s. PP4 needs four layers.
    layouts = plan_layouts(TWO_LAYERS, 4, 16, 2, layer_times=per_row, link=LinkModel(1.0))
    assert [(x.name, x.step_time) for x in layouts] == [("DP4", 30.0), ("PP2xDP2", 40.0), ("PP4", None)]
    assert layouts[1].exposed == 2.0
    assert layouts[2].why == "4 stages need 4 layers; the model has 2"


def test_memory_per_device_by_hand():
    # DP2, 2 rows, float32, SGD, one device: 12 parameters + 12 gradients = 96 bytes; 1f1b holds one microbatch:
    # layer 0 saves x (2 x 2 x 4 = 16), layer 1 saves h (16), o (16) and the int64 targets (2 x 8 = 16): 160 bytes.
    layouts = by_name(plan_layouts(TWO_LAYERS, 2, 8, 2, layer_times=per_row))
    assert layouts["DP2"].memory == (160,)


def test_a_model_over_the_cap_rules_out_data_parallelism():
    # widths 64,64,64: each layer's parameters and gradients take (64 x 64 + 64) x 4 x 2 = 33,280 bytes, so the
    # whole model needs at least 66,560 bytes on one device; a 50,000-byte cap admits only the pipeline.
    spec = MLPSpec((64, 64, 64))
    layouts = by_name(plan_layouts(spec, 2, 8, 2, memory_cap=50_000))
    assert layouts["PP2"].feasible and max(layouts["PP2"].memory) <= 50_000
    out = layouts["DP2"]
    assert not out.feasible and out.memory[0] >= 66_560
    assert "over the cap" in out.why
    assert list(by_name(plan_layouts(spec, 2, 8, 2, memory_cap=50_000)))[-1] == "DP2"  # ranked last


def test_a_batch_that_does_not_split_and_bad_arguments():
    layouts = by_name(plan_layouts(TWO_LAYERS, 2, 6, 2, layer_times=per_row))
    assert layouts["PP2"].step_time == 27.0  # 3 rows: 9 slots x 3 s
    assert layouts["DP2"].why == "batch 6 does not split into 2 replicas x 2 microbatches"
    with pytest.raises(ValueError, match="one stage per device"):
        plan_layouts(TWO_LAYERS, 2, 8, 2, kind=ScheduleKind.INTERLEAVED_1F1B)
    with pytest.raises(ValueError, match="devices must be"):
        plan_layouts(TWO_LAYERS, 0, 8, 2)


def test_zero_bubble_reductions_wait_for_the_last_w():
    # zb-h1, DP2, 2 rows: F B W F B W on one device, each 4 s: 24 s, then the 2 s ring (nothing left to hide it)
    layouts = by_name(plan_layouts(TWO_LAYERS, 2, 8, 2, kind=ScheduleKind.ZB_H1, layer_times=per_row,
                                   link=LinkModel(1.0)))
    assert layouts["DP2"].step_time == 26.0


def test_under_data_parallelism_the_split_accounts_for_the_exposed_reduction():
    # widths 2,2,2,2: three layers of 24 gradient bytes each, 8 activation bytes a cut at 1 row; every layer
    # F = B = W = 1 s; the link moves 8 bytes/s (a message takes 1 s; a ring over 2 replicas of n bytes: n / 8 s).
    # Both splits have the same bottleneck (6 s of work + 2 s of messages). 1f1b, m = 2:
    #   0-0,1-2: rank 0 F0 [0,1] F1 [1,2] BW0 [9,11] BW1 [15,17]; rank 1 F0 [2,4] BW0 [4,8] F1 [8,10] BW1 [10,14]
    #            -> 17 s; rings: stage 1 (48 bytes, 6 s) [14,20], stage 0 (24 bytes, 3 s) [17,20] -> 20 s
    #   0-1,2-2: rank 0 F0 [0,2] F1 [2,4] BW0 [7,11] BW1 [11,15]; rank 1 F0 [3,4] BW0 [4,6] F1 [6,7] BW1 [7,9]
    #            -> 15 s; rings: stage 0 (48 bytes) [15,21], stage 1 [9,12] -> 21 s
    # so under DP 2 the slower pipeline is the faster step. Batch 4 = 2 replicas x 2 microbatches x 1 row.
    def unit(rows):
        return [StageCost(1, 1, 1)] * 3

    layouts = by_name(plan_layouts(MLPSpec((2, 2, 2, 2)), 4, 4, 2, layer_times=unit, link=LinkModel(0.0, 8.0)))
    both = layouts["PP2xDP2"]
    assert both.plan.ranges == ((0, 1), (1, 3))
    assert (both.pipeline_time, both.step_time, both.exposed) == (17.0, 20.0, 3.0)
    assert layouts["DP4"].why == "batch 4 does not split into 4 replicas x 2 microbatches"


def test_plan_cli_ranks_the_layouts(tmp_path):
    # FLOP-based times on a free link: 8 x 1024 layers, 4 devices, batch 256 in 4 microbatches. Every layout does
    # the same FLOPs; a free link makes the all-reduce free, so DP4 (no bubble) must come first and PP4 last.
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "layouts.json"
    done = subprocess.run([sys.executable, str(root / "scripts" / "plan.py"), "--layouts", "4", "--widths",
                           ",".join(["1024"] * 9), "--batch", "256", "--microbatches", "4", "--json", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "fastest: DP4" in done.stdout
    rows = json.loads(out.read_text())["layouts"]
    assert [r["name"] for r in rows] == ["DP4", "PP2xDP2", "PP4"]
    assert [r["rows"] for r in rows] == [16, 32, 64]
    bad = subprocess.run([sys.executable, str(root / "scripts" / "plan.py"), "--layouts", "2", "--memory-caps", "1,2"],
                         capture_output=True, text=True, timeout=120, cwd=root)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


def test_beyond_the_search_limit_the_partitioner_itself_sees_the_reductions(monkeypatch):
    # widths 64,2,2,2: layer 0 holds 130 weights (520 gradient bytes), layers 1 and 2 six each (24 bytes). Per layer
    # F+B+W = 1, 2, 2 s; at 1 row a cut carries 8 bytes, 1 s at 8 bytes/s (2 s a side: activation and gradient).
    # Per microbatch without reductions: 0-0,1-2 max(1 + 2, 4 + 2) = 6; 0-1,2-2 max(3 + 2, 2 + 2) = 5 -> 0-1,2-2.
    # PP2xDP2 with m = 2: a ring over 2 replicas of n bytes takes n / 8 s a step, n / 16 a microbatch:
    # 0-0,1-2 max(3 + 32.5, 6 + 3) = 35.5; 0-1,2-2 max(5 + 34, 4 + 1.5) = 39 -> 0-0,1-2, without simulating any split.
    monkeypatch.setattr("partition.layouts.SEARCH_LIMIT", 0)

    def costs(rows):
        return [StageCost(1, 0, 0), StageCost(1, 1, 0), StageCost(0, 1, 1)]

    layouts = by_name(plan_layouts(MLPSpec((64, 2, 2, 2)), 4, 4, 2, layer_times=costs, link=LinkModel(0.0, 8.0)))
    assert layouts["PP4"].why and layouts["PP2xDP2"].plan.ranges == ((0, 1), (1, 3))
    assert layouts["PP2xDP2"].plan.bottleneck == 35.5
