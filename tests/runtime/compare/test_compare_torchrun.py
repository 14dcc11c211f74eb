"""compare.py under torchrun with 4 gloo processes: PP x DP candidates train as a dp x pp grid, exactly as emulated.

Reference: the same experiment in one process, where a PP x DP candidate is one pipeline of D x m microbatches
(itself checked against D plain-autograd replicas in test_compare_replicas); in float64 the grid's per-step losses
must agree with it to 1e-12, and every figure must be counted once (one replica's timeline, D equal memories).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ARGS = ["--dataset", "synthetic", "--samples", "64", "--widths", "8,12,12,12,4", "--batch", "16", "--devices", "4",
        "--quick", "--epochs", "2", "--schedules", "1f1b", "--recompute", "none", "--microbatches", "2",
        "--memory-cap", "none", "--dtype", "float64", "--no-progress"]
REPLICATED = {"pipe-1f1b-m2-dp2": 2, "pipe-1f1b-m2-dp4": 1}  # id -> stages of one replica

pytestmark = pytest.mark.dist


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare-torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIPEGRAPH_CACHE": str(out / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
           str(ROOT / "scripts" / "compare.py"), *ARGS, "--out", str(out / "run")]
    one = [sys.executable, str(ROOT / "scripts" / "compare.py"), *ARGS, "--out", str(out / "one")]
    found = []
    for args, name, mode in ((cmd, "run", "torchrun"), (one, "one", "single-process emulation")):
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results = json.loads((out / name / "compare.json").read_text())
        assert results["setup"]["mode"] == mode
        found.append({c["id"]: c for c in results["candidates"]})
    return tuple(found)


def test_pp_x_dp_candidates_train_under_torchrun_with_the_emulated_losses(runs):
    grid, one = runs
    for cid in [*REPLICATED, "pipe-1f1b-m2"]:
        assert grid[cid]["feasible"] and grid[cid]["reason"] == "", cid
        got, want = grid[cid]["training"]["step_losses"], one[cid]["training"]["step_losses"]
        assert len(got) == len(want) >= 4  # two epochs of the training split, several steps each
        assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-12, cid
        assert grid[cid]["training"]["test_accuracy"] == pytest.approx(one[cid]["training"]["test_accuracy"], abs=1e-12)


def test_pp_x_dp_figures_are_finite_and_counted_once(runs):
    grid, _ = runs
    for cid, stages in REPLICATED.items():
        cand = grid[cid]
        pred, meas = cand["predicted"], cand["measured"]
        for value in (pred["predicted_step_time"], pred["predicted_step_time_k_devices"],
                      meas["measured_step_time"]["median"]):
            assert math.isfinite(value) and value > 0, cid
        assert math.isfinite(cand["errors"]["prediction_error"])
        assert pred["prediction_basis"].endswith(f"and the all-reduce over {4 // stages} replicas)")
        # this run's timeline: one replica's ranks, with a ring all-reduce per stage after its last gradient
        reduces = [e for e in cand["timeline"] if e[1].startswith("all-reduce")]
        assert sorted(e[1] for e in reduces) == [f"all-reduce {s}" for s in range(stages)]
        assert all(e[3] > e[2] for e in reduces)
        # the measured last step: replica 0's ranks only, each of its m = 2 microbatches once per stage
        assert {e[0] for e in cand["measured_timeline"]} == set(range(stages))
        assert sum(1 for e in cand["measured_timeline"] if e[1].startswith("0F")) == 2
        memory = meas["memory_per_device"]  # every replica holds the same: D copies of one replica's figures
        assert len(memory) == 4 and memory == memory[:stages] * (4 // stages)
