"""Calibration in one process: every term measured with its origin, the prediction made of them, files written."""

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from partition.schedule.actions import ScheduleKind
from partition.schedule.generators import generate
from partition.spec import MLPSpec
from partition.timing import LinkPreset, StageCost
from runtime.calibrate import overhead
from runtime.calibrate.costs import CostModel, Origin, Term
from runtime.calibrate.forecast import this_run
from runtime.calibrate.link import cached_link, conditions, ping_sizes, store
from runtime.calibrate.overhead import parameter_seconds
from runtime.calibrate.run import k_device_link
from runtime.ops.gemm import Gemm
from runtime.train.config import TrainConfig
from runtime.train.trainer import train

ROOT = Path(__file__).resolve().parents[3]


def test_an_emulated_run_predicts_from_its_calibration_and_draws_both_timelines(tmp_path):
    gantt, trace = tmp_path / "g.png", tmp_path / "t.json"
    res = train(TrainConfig(spec=MLPSpec((64, 24, 24, 10)), epochs=1, stages=3, microbatches=3, batch_size=48,
                            progress=False, partition="uniform", schedule=ScheduleKind.ZB_H1, gantt=str(gantt),
                            trace=str(trace), link="ethernet"))
    terms = res["predicted_terms"]
    assert res["predicted_step_time"] == pytest.approx(sum(terms.values()), rel=1e-9)
    assert terms["transfers and waits"] == 0.0 and terms["loss all-reduce"] == 0.0 and terms["compute (profiled)"] > 0
    assert res["prediction_basis"].startswith("this run: every stage in this one process")
    assert "link ethernet" in res["prediction_basis_k_devices"]
    assert math.isfinite(res["prediction_error"]) and res["measured_step_time"]["median"] > 0
    model = res["cost_model"]
    assert [model[k]["origin"] for k in ("layers", "action_overhead", "step_overhead", "optimizer", "loss_all_reduce")] \
        == ["profiled", "measured", "measured", "measured", "default"]
    assert model["link"] == {"latency": 0.0, "bandwidth": None, "rendezvous": False, "origin": "measured",
                             "note": "in-process, one device (cpu): no copies"}
    assert len(res["predicted_peak_memory_per_rank"]) == 3 and all(b > 0 for b in res["predicted_peak_memory_per_rank"])
    # the prediction is a function of the calibration alone (made before the timed steps): recomputed from the JSON
    stage = [StageCost(**c) for c in model["action_overhead"]["seconds"]]
    again = CostModel(tuple(StageCost(**c) for c in model["layers"]["seconds"]), Origin.PROFILED, tuple(stage),
                      Origin.MEASURED, *(Term(model[k]["seconds"], Origin(model[k]["origin"]))
                                         for k in ("step_overhead", "optimizer", "loss_all_reduce")))
    fc = this_run(generate(ScheduleKind.ZB_H1, 3, 3), again, [(0, 1), (1, 2), (2, 3)], None, concurrent=False)
    assert fc.step_time == pytest.approx(res["predicted_step_time"], rel=1e-12)
    assert gantt.stat().st_size > 0
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert any(n.startswith("measured") for n in names) and any(n.startswith("predicted before the run") for n in names)
    lanes = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {"rank 0", "rank 0 transfers", "rank 2"} <= lanes


def test_links_by_name_and_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPEGRAPH_CACHE", str(tmp_path))
    assert k_device_link("nvlink", None)[0] == LinkPreset.NVLINK.link
    link, name, origin = k_device_link("1e-5,2e9", None)
    assert (link.latency, link.bandwidth, name, origin.value) == (1e-5, 2e9, "given", "given")
    with pytest.raises(ValueError, match="no link measured"):
        k_device_link("cached", None)
    with pytest.raises(ValueError, match="link: expected"):
        k_device_link("carrier-pigeon", None)
    fitted = LinkPreset.PCIE.link
    store(conditions("gloo", ["cpu"], 2), fitted, [(4, 1e-5), (1024, 2e-5)])
    assert cached_link("gloo")[0] == fitted and k_device_link("cached", None)[0] == fitted
    assert ping_sizes(5000) == [4, 1024, 4096, 16384]


def test_the_partition_cli_takes_a_named_link():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plan.py"), "--stages", "2", "--widths", "16,32,32,8",
                           "--microbatch", "8", "--link", "pcie"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "link: 10 us + bytes / 25 GB/s" in proc.stdout


def test_parameter_seconds_meets_the_other_ranks_before_every_timed_step():
    """``together`` runs before each of the 3 untimed and ``repeats`` timed optimizer steps (a barrier under torchrun,
    so that every rank's timed steps start at once)."""
    met, params = [], [torch.zeros(3, 2), torch.zeros(3)]
    steps = []

    def make(ps):
        opt = torch.optim.SGD(ps, lr=0.5)
        original = opt.step
        opt.step = lambda: (steps.append(len(met)), original())[1]
        return opt

    assert parameter_seconds(params, make, 0.0, repeats=4, together=lambda: met.append(1)) >= 0.0
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # each step after its own meeting


def test_closing_seconds_times_only_this_ranks_late_turn_and_takes_the_median_of_all(monkeypatch):
    """Rank 1 of 2, 3 repeats after one untimed: 8 all-reduces in all, 3 timed (its own turn); the other rank's
    3 timings (10, 20, 30 s) come back from the gather; the median of the 6 is the lower middle, its slowest."""
    calls, sent = [], []
    monkeypatch.setattr(overhead, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(overhead, "all_reduce_sum", lambda flags: calls.append(tuple(flags.shape)))

    def gather(rows):
        sent.append(rows)
        return [torch.tensor([[10.0, 20.0, 30.0]], dtype=torch.float64), rows]

    monkeypatch.setattr(overhead, "gather_rows", gather)
    value = overhead.closing_seconds(1, 2, 3, repeats=3, late_by=0.0)
    assert calls.count((3,)) == 8 and calls.count("barrier") == 8
    (mine,) = sent
    assert mine.shape == (1, 3) and value == float(mine.max()) < 10.0


def test_closing_terms_split_the_skeleton_step(monkeypatch):
    """One process: 5 s beyond the actions, 2 of them optimizer: 3 s step overhead, no all-reduce. Under torchrun
    the skeleton's own closing all-reduce (1 s) leaves too, and the one timed apart (0.7 s) is the term."""
    skel = SimpleNamespace(executor=SimpleNamespace(transport=object()), cfg=SimpleNamespace(num_stages=2))
    step = overhead.SkeletonStep(extra=5.0, closing=1.0, optimizer=2.0)
    assert overhead.closing_terms(skel, step, concurrent=False) == (3.0, 0.0)
    monkeypatch.setattr(overhead, "world_size", lambda: 2)
    monkeypatch.setattr(overhead, "closing_seconds", lambda *args: 0.7 if args == (0, 2, 2) else -1.0)
    assert overhead.closing_terms(skel, step, concurrent=True) == (2.0, 0.7)


def test_ranks_profile_together_where_any_ranks_working_set_is_beyond_its_own_cache(monkeypatch):
    """A 64-256-256-256-10 model at 64 rows touches 1.8 MB: beyond a 1 MiB L2 the ranks meet (the barrier), within
    a 4 MiB one not, unless another rank's is beyond (the agreed largest); one process never meets. The profile's
    numbers come back averaged over the ranks (here one)."""
    from runtime.calibrate import build
    from runtime.train import profile as profile_mod

    seen = []

    def fake_profile(spec, rows, device, dtype, **kw):
        seen.append(kw["together"])
        return SimpleNamespace(layers=tuple(StageCost(1.0, 2.0, 3.0) for _ in range(spec.num_layers)))

    monkeypatch.setattr(build, "profile_layers", fake_profile)
    spec = MLPSpec((64, 256, 256, 256, 10))

    def together(l2, concurrent, others=0.0):
        seen.clear()
        monkeypatch.setattr(profile_mod, "private_cache_bytes", lambda: l2)  # what fits, and the flush it sizes
        monkeypatch.setattr(build, "slowest", lambda mine: max(mine, others))
        layers = build.profile_together(spec, 64, "cpu", "float32", 3, 1, 0, Gemm.TORCH, concurrent)
        assert layers == (StageCost(1.0, 2.0, 3.0),) * 4
        return seen[0] is build.barrier

    assert together(1 << 20, True) and not together(4 << 20, True) and together(4 << 20, True, others=1.0)
    assert not together(1 << 20, False)
