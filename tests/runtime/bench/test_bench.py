"""Benchmarks at tiny sizes: the JSON has its fields, ratios are finite and positive, and every contender
(every torch.distributed.pipelining schedule included) passes the equal-math check on the same weights."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runtime.bench.breakdown import TERMS
from runtime.bench.functions import FunctionsConfig, run_functions
from runtime.bench.pipeline import PipelineBenchConfig, run_pipeline_bench
from runtime.bench.render import table_text
from runtime.bench.sim import SimBenchConfig, run_sim_bench
from runtime.bench.timing import Variant, measure, paired_ratio
from runtime.bench.verdict import verdicts
from runtime.stats import Spread

ROOT = Path(__file__).resolve().parents[3]
BENCH = [sys.executable, str(ROOT / "scripts" / "bench.py")]
SPREAD_KEYS = {"median", "p25", "p75", "min", "max", "n"}


def load_peers():
    spec = importlib.util.spec_from_file_location("_peers", ROOT / "scripts" / "_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same_table_from_json(res):
    """The table printed by the run is the one rebuilt from its JSON alone."""
    assert table_text(json.loads(json.dumps(res, default=str))) == res["table"]


def positive_ratio(d):
    assert d is not None and set(d) == SPREAD_KEYS
    assert all(math.isfinite(d[k]) and d[k] > 0 for k in ("median", "p25", "p75", "min", "max"))
    assert d["p25"] <= d["median"] <= d["p75"]


def test_spread_and_paired_ratio_on_known_samples():
    s = Spread.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.p25, s.p75, s.min, s.max, s.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    ticks = iter(range(100))
    out = measure([Variant("a", lambda: next(ticks)), Variant("b", lambda: 1.0)], torch.device("cpu"), 1, 4)
    assert out["a"].rounds == [1, 2, 3, 4] and out["a"].losses == [1.0, 2.0, 3.0, 4.0] and out["b"].losses == [1.0] * 4
    positive_ratio(paired_ratio(out["a"], out["b"]).to_json())
    broken = measure([Variant("x", lambda: 1 / 0)], torch.device("cpu"), 0, 2)["x"]
    assert broken.error.startswith("ZeroDivisionError") and broken.times == []


def test_functions_bench_fields_and_equal_losses():
    res = run_functions(FunctionsConfig(widths=(16,), layers=3, batch=32, warmup=1, repeats=3, compile=False), log=lambda s: None)
    assert res["benchmark"] == "functions" and res["machine"]["date"] and "table" in res
    rows = res["results"]
    assert {(r["dtype"], r["variant"]) for r in rows} == {
        (d, v) for d in ("float32", "bfloat16") for v in ("autograd", "custom", "custom-split")}
    for r in rows:
        assert r["error"] is None and r["flops"] > 0 and r["flops_per_second"] > 0 and r["mfu"] is None
        if r["variant"] != "autograd":
            positive_ratio(r["speedup_vs_autograd"])
    for dtype, tol in (("float32", 1e-6), ("bfloat16", 2e-2)):
        losses = [r["loss"] for r in rows if r["dtype"] == dtype]
        assert max(losses) - min(losses) <= tol * abs(losses[0])
    assert all(r["math"]["ok"] for r in rows), [r["math"] for r in rows]
    lines = verdicts(res)  # CPU targets start at width 1024: only the equal-math line
    assert lines == ["MET     functions: equal math: every contender's loss and gradients match the float64 reference"]
    same_table_from_json(res)


def test_pipeline_bench_every_contender_and_peer_agrees():
    peers = load_peers()
    cfg = PipelineBenchConfig(width=16, layers=4, stages=4, microbatches=4, batch=16, warmup=1, repeats=3, overhead_width=4,
                              compile=False)
    with peers.local_world(torch.device("cpu")):
        res = run_pipeline_bench(cfg, peers.peers(one_rank=True), log=lambda s: None)
    rows = {r["variant"]: r for r in res["results"]}
    expected = {"ours:gpipe", "ours:1f1b", "ours:interleaved-1f1b", "ours:zb-h1", "ours:zb-v", "ours:1f1b+defer-w",
                "ours:gpipe+direct", "ours:1f1b+direct", "ours:1f1b+defer-w+direct", "full-batch", "accumulation",
                "peer:looped-bfs", "peer:interleaved-1f1b", "peer:interleaved-zb", "peer:zbv", "peer:dualpipev"}
    assert set(rows) == expected
    for name, r in rows.items():
        assert r["error"] is None, (name, r["error"])
        assert r["flops_per_second"] > 0 and r["fixed_cost_seconds"] > 0
        assert r["math"]["ok"], (name, r["math"])
        if r["group"] == "ours":
            for key in ("speedup_vs_full_batch", "speedup_vs_accumulation", "speedup_vs_paired_peer",
                        "speedup_vs_best_peer"):
                positive_ratio(r[key])
    ours = rows["ours:1f1b"]["loss"]
    for peer in ("peer:looped-bfs", "peer:interleaved-1f1b", "peer:interleaved-zb", "peer:zbv", "peer:dualpipev"):
        assert rows[peer]["loss"] == pytest.approx(ours, rel=1e-5)
    summary = res["summary"]["float32"]
    assert summary["math_failures"] == [] and summary["headline"] == cfg.headline
    lines = verdicts(res)
    assert len(lines) == 5 and cfg.headline in lines[0] and lines[-1].startswith("MET")
    same_table_from_json(res)


def test_simulator_bench_one_process():
    cfg = SimBenchConfig(width=16, layers=4, ranks=2, microbatches=4, batch=16, warmup=1, repeats=3, profile_repeats=2)
    res = run_sim_bench(cfg, log=lambda s: None)
    assert res["mode"] == "one process" and len(res["profile"]) == 4
    assert {r["schedule"] for r in res["results"]} == {
        "gpipe", "1f1b", "interleaved-1f1b", "zb-h1", "zb-v", "1f1b+defer-w", "gpipe+direct", "1f1b+direct",
        "1f1b+defer-w+direct"}
    for r in res["results"]:
        assert r["error"] is None and r["predicted_step_time"] > 0 and 0 <= r["predicted_bubble_fraction"] < 1
        assert math.isfinite(r["prediction_error"]) and r["measured_step_time"]["median"] > 0
    same_table_from_json(res)


def test_cli_writes_json_and_rejects_bad_flags(tmp_path):
    out = tmp_path / "p.json"
    run = subprocess.run(BENCH + ["pipeline", "--quick", "--schedules", "1f1b", "--peers", "interleaved-1f1b",
                                  "--headline", "ours:1f1b", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    assert [r["variant"] for r in data["results"]] == ["ours:1f1b", "full-batch", "accumulation", "peer:interleaved-1f1b"]
    assert data["verdicts"] and "vs accum" in run.stdout and data["machine"]["threads"]["chosen"] == 1
    again = subprocess.run(BENCH + ["table", str(out)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == data["table"] + "\n"
    bad = subprocess.run(BENCH + ["pipeline", "--quick", "--schedules", "2f2b"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "schedules: unknown '2f2b'" in bad.stderr


@pytest.mark.dist
def test_dist_bench_two_gloo_ranks(tmp_path):
    out = tmp_path / "d.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(ROOT / "scripts" / "bench.py"),
                          "dist", "--quick", "--schedules", "gpipe,1f1b,zb-v,zb-h1+defer-w+direct",
                          "--peers", "gpipe,1f1b,zbv", "--headline", "ours:1f1b", "--dtype", "float64", "--json", str(out)],
                         capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"ours:gpipe", "ours:1f1b", "ours:zb-v", "ours:zb-h1+defer-w+direct", "full-batch",
                         "full-batch:every-rank", "peer:gpipe", "peer:1f1b", "peer:zbv"}
    assert data["config"]["math_tolerance"] == 1e-9
    for name, r in rows.items():
        assert r["error"] is None and r["samples_per_second"] > 0, (name, r["error"])
        assert r["loss"] == pytest.approx(rows["peer:1f1b"]["loss"], rel=1e-12)
        # float64: gradients gathered from both ranks match the single-process reference to 1e-9
        assert r["math"]["ok"] and r["math"]["worst_relative_error"] < 1e-12, (name, r["math"])
    positive_ratio(rows["ours:1f1b"]["speedup_vs_paired_peer"])
    assert rows["ours:zb-v"]["paired_peer"] == "peer:zbv" and rows["ours:1f1b"]["fraction_of_limit"]["median"] > 0
    assert rows["ours:1f1b"]["fraction_of_busy_limit"]["median"] > 0
    assert data["verdicts"][0].startswith(("MET", "MISSED")) and "headline ours:1f1b" in data["verdicts"][0]
    split = data["breakdown"]  # the headline's step, split rank by rank into terms that add up to it
    assert split["contender"] == "ours:1f1b" and [r["rank"] for r in split["ranks"]] == [0, 1]
    for r in split["ranks"]:
        assert sum(r[t] for t in TERMS) == pytest.approx(r["step_ms"], rel=1e-9) and r["ideal"] > 0
        assert r["in_actions"] + r["shape"] + r["ideal"] > 0 and r["transfers"] > 0
    assert 0 < split["fraction_of_shape_limit"] and "where ours:1f1b's step goes" in data["table"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pipeline_bench_on_cuda_with_nccl_world_of_one():
    """The device check's pipeline part in small: NCCL world of size 1, every contender runs and agrees."""
    peers = load_peers()
    cfg = PipelineBenchConfig(width=512, layers=4, stages=4, microbatches=4, batch=256, dtypes=(torch.bfloat16,),
                              device="cuda:0", warmup=1, repeats=2, overhead_width=0, compile=False)
    with peers.local_world(torch.device("cuda:0")):
        res = run_pipeline_bench(cfg, peers.peers(one_rank=True), log=lambda s: None)
    for r in res["results"]:
        assert r["error"] is None, (r["variant"], r["error"])
        assert r["math"]["ok"], (r["variant"], r["math"])
    assert res["peaks"]["bfloat16"] is None or "TFLOP/s" in res["peaks"]["bfloat16"]


@pytest.mark.dist
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dist_bench_with_the_onednn_kernel_and_its_full_batch(tmp_path, dtype):
    """float32: the +onednn contender and both oneDNN full batches run and pass the math check, and the limit is the
    faster full batch; float64 (where oneDNN cannot run): those rows fail with the reason on both ranks, the rest runs."""
    out = tmp_path / "d.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(ROOT / "scripts" / "bench.py"),
                          "dist", "--quick", "--schedules", "1f1b,zb-h1+defer-w+direct+onednn", "--peers", "1f1b",
                          "--headline", "ours:1f1b", "--dtype", dtype, "--json", str(out)],
                         capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    onednn = ("ours:zb-h1+defer-w+direct+onednn", "full-batch:onednn", "full-batch:onednn:every-rank")
    assert set(rows) == {"ours:1f1b", "full-batch", "full-batch:every-rank", "peer:1f1b", *onednn}
    for name in ("ours:1f1b", "full-batch", "full-batch:every-rank", "peer:1f1b"):
        assert rows[name]["error"] is None and rows[name]["math"]["ok"], (name, rows[name])
    if dtype == "float64":
        for name in onednn:
            assert "onednn computes in float32 only, not float64" in rows[name]["error"], rows[name]
        assert rows["ours:1f1b"]["full_batch"] == "full-batch"
        return
    for name in onednn:
        assert rows[name]["error"] is None and rows[name]["math"]["ok"], (name, rows[name])
    faster = min(("full-batch", "full-batch:onednn"), key=lambda n: rows[n]["step_time"]["median"])
    busier = min(("full-batch:every-rank", "full-batch:onednn:every-rank"), key=lambda n: rows[n]["step_time"]["median"])
    head = rows["ours:1f1b"]
    assert head["full_batch"] == faster and head["full_batch_every_rank"] == busier
    # every-rank rows did a whole batch on each of the 2 ranks
    assert rows[busier]["samples_per_second"] == pytest.approx(2 * 32 / rows[busier]["step_time"]["median"])
