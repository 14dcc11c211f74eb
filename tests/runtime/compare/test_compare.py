"""The experiment scheduler: every candidate reported, caps respected, same math, recommendations, JSON round trip."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from partition.cost import DType, Optimizer, flop_times, layer_costs
from partition.memory import training_memory
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.compare.harness import CompareConfig, compare
from runtime.compare.plan import Setting, largest_fitting_batch, plan_candidates
from runtime.compare.report import FILES, csv_text, markdown
from runtime.compare.types import CandidateKind, LRRule

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = [sys.executable, str(ROOT / "scripts" / "compare.py")]
SPEC = MLPSpec((8, 24, 24, 24, 4))
BASE = dict(spec=SPEC, dataset="synthetic", samples=200, batch=16, devices=2, epochs=2, dtype="float64", lr=0.05,
            profile_repeats=3, calibration_steps=2, progress=False)


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One experiment over every schedule on a tiny spec, with the auto cap (B itself does not fit one device)."""
    out = tmp_path_factory.mktemp("compare") / "run"
    results = compare(CompareConfig(**BASE, microbatches=(2, 4), out=str(out)), log=_quiet)
    return results, out


def test_every_candidate_is_reported_and_those_over_the_cap_say_why(report):
    results, out = report
    text = (out / FILES["markdown"]).read_text()
    data = json.loads((out / FILES["json"]).read_text())
    ids = [e["id"] for e in data["candidates"]]
    assert ids == [e["id"] for e in results["candidates"]] and len(ids) == len(set(ids))
    assert {f"pipe-{k.value}-m{m}" for k in ScheduleKind.fixed() for m in (2, 4)} <= set(ids)
    assert {"single-b16", "single-b8", "accum-m2", "accum-m4"} <= set(ids)
    for cid in ids:
        assert f"`{cid}`" in text
    cap = data["setup"]["memory_cap"]
    for e in data["candidates"]:
        over = any(d["total"] > cap for d in e["predicted_memory"])
        assert e["feasible"] == (not over and not e["reason"])
        if over:
            assert not e["feasible"] and e["reason"].startswith("over the cap") and e["measured"] is None
            assert e["reason"] in text
    assert not next(e for e in data["candidates"] if e["id"] == "single-b16")["feasible"]
    assert len(csv_text(data).strip().splitlines()) == len(ids) + 1
    for name in ("loss-vs-samples.png", "loss-vs-time.png", "memory.png", "gantt.png"):
        assert (out / name).stat().st_size > 1000
    panels = [e["args"]["name"] for e in json.loads((out / "gantt.json").read_text())["traceEvents"]
              if e["name"] == "process_name"]  # the Gantt chart's Chrome trace: measured, then predicted
    assert panels[0].startswith("measured") and panels[1].startswith("predicted before the run")


def test_pipelines_and_accumulation_compute_the_same_steps(report):
    results, _ = report
    full = [e for e in results["candidates"] if e["training"] and e["minibatch"] == 16]
    assert {e["kind"] for e in full} == {"pipeline", "accumulation"} and len(full) >= 8
    ref = full[0]["training"]["step_losses"]
    for e in full[1:]:
        losses = e["training"]["step_losses"]
        assert len(losses) == len(ref) == e["training"]["optimizer_steps"]
        assert max(abs(a - b) for a, b in zip(losses, ref)) < 1e-10, e["id"]
    small = next(e for e in results["candidates"] if e["id"] == "single-b8")
    assert small["training"]["optimizer_steps"] == 2 * len(ref) and small["lr"] == pytest.approx(0.025)
    assert small["training"]["samples_seen"] == full[0]["training"]["samples_seen"]
    assert max(results["same_math"]["max_abs_step_loss_difference"].values()) < 1e-10


def test_predictions_and_measurements_are_present_and_finite(report):
    results, _ = report
    ran = [e for e in results["candidates"] if e["measured"]]
    assert ran
    for e in ran:
        p, m = e["predicted"], e["measured"]
        figures = [p["predicted_step_time"], p["predicted_step_time_k_devices"], p["samples_per_second"],
                   m["measured_step_time"]["median"], m["samples_per_second"], e["errors"]["prediction_error"],
                   e["errors"]["memory"], *p["memory_per_device"], *m["memory_per_device"]]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in figures), e["id"]
        assert p["predicted_step_time"] > 0 and m["measured_step_time"]["median"] > 0 and min(m["memory_per_device"]) > 0
        assert len(m["memory_per_device"]) == len(p["memory_per_device"]) == e["devices"]
        assert p["origins"]["layers"] == "profiled" and p["origins"]["link"] == "default"  # one process: no link
        if e["kind"] == "pipeline":  # both timelines of the step, every rank of a replica in each; where the error comes from
            ranks = set(range(e["devices"] // e["replicas"]))  # PP x DP here: every replica in turn on one replica's ranks
            assert {row[0] for row in e["timeline"]} == {row[0] for row in e["measured_timeline"]} == ranks
            explained = e["prediction_explained"]
            assert explained["prediction_error"] == pytest.approx(e["errors"]["prediction_error"])
            assert explained["contributors"] and explained["text"].startswith("prediction error")
    assert results["prediction_errors"]["largest_error"]["id"] in {e["id"] for e in ran if e["kind"] == "pipeline"}
    t = results["timings"]
    assert 0 < t["overhead"] < t["total"] and 0 < t["overhead_fraction"] < 1
    assert results["recommendation"]["id"] in {e["id"] for e in ran}


def test_the_recommendation_follows_the_cap():
    quick = dict(BASE, schedules=(ScheduleKind.ONE_F_ONE_B,), microbatches=(2,), epochs=1, out=None)
    roomy = compare(CompareConfig(**quick, memory_cap="none"), log=_quiet)
    assert roomy["recommendation"]["kind"] != "pipeline"
    assert "cannot be faster than accumulation" in roomy["recommendation"]["reasons"][0]
    setting = Setting(SPEC, 16, 2, None, DType.FLOAT64, Optimizer.MOMENTUM, (ScheduleKind.ONE_F_ONE_B,), (2,), 2, 0.05,
                      LRRule.LINEAR)
    pipe = next(c for c in plan_candidates(setting, lambda n: flop_times(layer_costs(SPEC, "float64"), 1e9, n))
                if c.kind is CandidateKind.PIPELINE)
    cap = 1.01 * max(pipe.memory_per_device)
    assert cap < training_memory(SPEC, 1, DType.FLOAT64, Optimizer.MOMENTUM).total  # nothing fits one device
    tight = compare(CompareConfig(**quick, memory_cap=str(int(cap))), log=_quiet)
    assert tight["recommendation"]["kind"] == "pipeline"
    assert "Only pipelines fit" in tight["recommendation"]["reasons"][0]
    assert all(not e["feasible"] for e in tight["candidates"] if e["kind"] != "pipeline")


def test_the_report_is_rewritten_from_its_json(report, tmp_path):
    _, out = report
    again = tmp_path / "again"
    proc = subprocess.run(SCRIPT + ["--from-json", str(out / FILES["json"]), "--out", str(again)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in (FILES["markdown"], FILES["csv"], FILES["json"]):
        assert (again / name).read_text() == (out / name).read_text(), name
    assert (again / "gantt.png").exists()
    assert markdown(json.loads((out / FILES["json"]).read_text())) == (out / FILES["markdown"]).read_text()


@pytest.mark.parametrize("args,needle", [(["--memory-cap", "lots"], "memory size"), (["--devices", "9"], "devices"),
                                         (["--from-json", "/nonexistent.json"], "from-json"),
                                         (["--microbatches", "4,x"], "microbatches")])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    proc = subprocess.run(SCRIPT + args + ["--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_lr_rule_and_largest_fitting_batch():
    assert LRRule.LINEAR.scale(0.1, 32, 128) == pytest.approx(0.025)
    assert LRRule.SQRT.scale(0.1, 32, 128) == pytest.approx(0.05)
    assert LRRule.CONSTANT.scale(0.1, 32, 128) == 0.1
    need = training_memory(SPEC, 10, DType.FLOAT32, Optimizer.SGD).total
    assert largest_fitting_batch(SPEC, need, DType.FLOAT32, Optimizer.SGD) == 10
    assert largest_fitting_batch(SPEC, need - 1, DType.FLOAT32, Optimizer.SGD) == 9
    assert largest_fitting_batch(SPEC, 1, DType.FLOAT32, Optimizer.SGD) == 0
