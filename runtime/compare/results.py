"""Assembling the experiment's results: one JSON-ready entry per candidate, prediction errors, same-math check, target."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from partition.timing import StageCost
from runtime.calibrate.costs import Origin
from runtime.compare.predict import Prediction, explain_error
from runtime.compare.run import time_to_target
from runtime.compare.types import Candidate, CandidateKind
from runtime.stats import relative_iqr

NOISY = 0.2  # step times whose interquartile range exceeds this share of the median were disturbed

def _error(predicted: float, measured: float) -> float | None:
    """(predicted - measured) / measured, None when undefined."""
    return (predicted - measured) / measured if measured else None


def entry(cand: Candidate, pred: Prediction | None, memory: dict | None, run: dict | None) -> dict:
    """The JSON entry of one candidate: what it is, what was predicted, what was measured, how it trained."""
    out = cand.to_dict()
    out["predicted"] = out["measured"] = out["errors"] = out["training"] = None
    out["timeline"], out["timeline_k_devices"], out["measured_timeline"] = [], [], []
    out["prediction_explained"] = None
    if pred is not None:
        k_step = pred.step_time_k
        out["predicted"] = {
            "predicted_step_time": pred.step_time, "prediction_basis": pred.basis,
            "samples_per_second": cand.minibatch / pred.step_time,
            "predicted_step_time_k_devices": k_step, "samples_per_second_k_devices": cand.minibatch / k_step,
            "bubble_fraction_k_devices": pred.bubble_fraction, "step_overhead": pred.step_overhead,
            "memory_per_device": list(cand.memory_per_device),
            "stage_costs": [{"f": c.f, "b": c.b, "w": c.w} for c in pred.stage_costs],
            "origins": {"layers": Origin.PROFILED.value, "action_overhead": Origin.MEASURED.value,
                        "step_overhead": Origin.MEASURED.value, "optimizer": Origin.MEASURED.value,
                        "link": (Origin.MEASURED if pred.concurrent else Origin.DEFAULT).value},
        }
        if cand.kind is CandidateKind.PIPELINE:
            out["timeline"] = [[e.rank, e.name, e.start, e.end, e.lane] for e in pred.timeline]
            out["timeline_k_devices"] = [[e.rank, e.name, e.start, e.end] for e in pred.timeline_k_devices]
    if run is not None and memory is not None:
        mem = memory["per_device"]
        out["measured"] = {"measured_step_time": run["step_time"], "samples_per_second": run["samples_per_second"],
                           "train_seconds": run["train_seconds"], "memory_per_device": mem,
                           "cuda_max_allocated": memory["cuda_max_allocated"]}
        if cand.kind is CandidateKind.PIPELINE:
            out["measured_timeline"] = run["last_step"]
        out["training"] = {key: run[key] for key in ("epochs", "step_losses", "step_seconds", "optimizer_steps",
                                                       "samples_seen", "final_loss", "test_accuracy")}
        if pred is not None:
            per_device = [_error(p, m) for p, m in zip(cand.memory_per_device, mem)]
            if cand.kind is CandidateKind.PIPELINE:
                measured = [StageCost(c["f"], c["b"], c["w"]) for c in run["measured_stage_costs"]]
                out["prediction_explained"] = explain_error(cand, pred, measured, run["step_time"]["median"])
            out["errors"] = {"prediction_error": _error(pred.step_time, run["step_time"]["median"]),
                             "memory_per_device": per_device,
                             "memory": max(per_device, key=lambda e: abs(e) if e is not None else -1.0)}
    return out


def settle_target(entries: Sequence[dict], given: float | None) -> tuple[float | None, str]:
    """The target loss and where it comes from: given, or the highest epoch loss among the runs half way through.

    Every run reaches that automatic target by half of its epochs, and a run that learns faster reaches it sooner;
    late in training all the curves flatten and would only compare throughput.
    """
    if given is not None:
        return given, "given (--target-loss)"
    runs = [e["training"]["epochs"] for e in entries if e["training"] is not None]
    if not runs:
        return None, "no run"
    half = max(1, math.ceil(max(len(h) for h in runs) / 2))
    target = max(h[min(half, len(h)) - 1]["train_loss"] for h in runs)
    return target, f"not given: the highest mean loss among the runs at epoch {half}, half way, so that every run reaches it"


def add_time_to_target(entries: Sequence[dict], target: float | None) -> None:
    """Record each run's training seconds and samples until its first epoch with mean loss <= ``target``."""
    for e in entries:
        if e["training"] is not None:
            seconds, samples = time_to_target(e["training"]["epochs"], target) if target is not None else (None, None)
            e["training"]["time_to_target"] = seconds
            e["training"]["samples_to_target"] = samples


def same_math(entries: Sequence[dict], batch: int) -> dict:
    """Largest per-step loss difference of every run with steps of the full batch B against one reference run."""
    full = [e for e in entries if e["training"] is not None and e["minibatch"] == batch]
    refs = [e for e in full if e["kind"] != CandidateKind.PIPELINE.value] or full
    if not refs:
        return {"reference": None, "max_abs_step_loss_difference": {}}
    ref = min(refs, key=lambda e: (e["microbatches"], e["id"]))
    base = ref["training"]["step_losses"]
    diffs = {}
    for e in full:
        if e is not ref:
            losses = e["training"]["step_losses"]
            n = min(len(losses), len(base))
            diffs[e["id"]] = max((abs(a - b) for a, b in zip(losses[:n], base[:n])), default=0.0)
    return {"reference": ref["id"], "max_abs_step_loss_difference": diffs}


def error_summary(entries: Sequence[dict]) -> dict:
    """Median and largest absolute prediction errors of step time and memory, and per candidate."""
    out = {}
    kinds = {e["id"]: e["kind"] for e in entries}
    for key in ("prediction_error", "memory"):
        per = {e["id"]: e["errors"][key] for e in entries if e["errors"] and e["errors"][key] is not None}
        pipes = [abs(v) for cid, v in per.items() if kinds[cid] == CandidateKind.PIPELINE.value]
        values = [abs(v) for v in per.values()]
        out[key] = {"per_candidate": per,
                    "median_abs": statistics.median(values) if values else None,
                    "max_abs": max(values) if values else None,
                    "max_abs_pipelines": max(pipes) if pipes else None}
    explained = [e for e in entries if e.get("prediction_explained") and e["errors"]["prediction_error"] is not None]
    worst = max(explained, key=lambda e: abs(e["errors"]["prediction_error"]), default=None)
    out["largest_error"] = None if worst is None else {"id": worst["id"], "text": worst["prediction_explained"]["text"]}
    out["noisy_step_times"] = [e["id"] for e in entries
                               if e["measured"] and relative_iqr(e["measured"]["measured_step_time"]) > NOISY]
    return out




def finite(value: object) -> bool:
    """True for a finite number."""
    return isinstance(value, (int, float)) and math.isfinite(value)
