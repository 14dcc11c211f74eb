"""Exercise 5, partition over devices or a smaller minibatch: the compare harness run short, its answer and figures."""

from __future__ import annotations

import math
from types import MappingProxyType

from partition.schedule.actions import ScheduleKind
from partition.units import format_bytes
from runtime.chapter.common import ChapterConfig, Setting
from runtime.compare.harness import QUICK, CompareConfig, compare

# The tiny setting is for tests: one schedule, one microbatch count, two epochs on a few samples.
TINY = MappingProxyType({"epochs": 2, "profile_repeats": 2, "calibration_steps": 1})
SAMPLES_PER_BATCH = MappingProxyType({Setting.QUICK: 32, Setting.TINY: 8})  # synthetic samples per minibatch B


def compare_config(cfg: ChapterConfig) -> CompareConfig:
    """The experiment for the chapter's model: K = min(2, layers) devices, the auto cap (B does not fit on one)."""
    tiny = cfg.setting is Setting.TINY
    extra = dict(TINY if tiny else QUICK)
    if tiny:
        extra.update(schedules=(ScheduleKind.ONE_F_ONE_B,), microbatches=(2,) if cfg.batch % 2 == 0 else (1,))
    return CompareConfig(spec=cfg.spec, dataset="synthetic", samples=SAMPLES_PER_BATCH[cfg.setting] * cfg.batch,
                         batch=cfg.batch, devices=min(2, cfg.spec.num_layers), dtype=cfg.dtype, seed=cfg.seed,
                         out=cfg.out, progress=False, **extra)


def _figures(e: dict) -> dict:
    training, measured, predicted = e["training"] or {}, e["measured"] or {}, e["predicted"] or {}
    return {"id": e["id"], "label": e["label"], "kind": e["kind"], "minibatch": e["minibatch"],
            "time_to_target_s": training.get("time_to_target"), "samples_per_second": measured.get("samples_per_second"),
            "test_accuracy": training.get("test_accuracy"),
            "predicted_peak_bytes_per_device": max(predicted.get("memory_per_device") or [0]),
            "predicted_step_s_on_k_devices": predicted.get("predicted_step_time_k_devices")}


def _best(entries: list[dict]) -> dict | None:
    def key(e: dict) -> tuple[float, float]:
        t = e["training"]["time_to_target"]
        return (math.inf if t is None else t, -e["measured"]["samples_per_second"])

    return min(entries, key=key) if entries else None


def exercise_partition(cfg: ChapterConfig) -> dict:
    """Run the comparison; the recommendation with its reasons, and the figures of the best of each kind."""
    ccfg = compare_config(cfg)
    results = compare(ccfg, log=lambda line: None)
    ran = [e for e in results["candidates"] if e["feasible"] and e["measured"] is not None and e["training"] is not None]
    pipes = [e for e in ran if e["kind"] == "pipeline"]
    smaller = [e for e in ran if e["kind"] == "single" and e["minibatch"] < ccfg.batch]
    best = {name: _figures(e) for name, e in (("pipeline", _best(pipes)), ("smaller_minibatch", _best(smaller))) if e}
    rec = results["recommendation"]
    return {"exercise": cfg.exercise.value, "setting": cfg.setting.value, "widths": list(cfg.spec.widths),
            "batch": ccfg.batch, "devices": ccfg.devices, "memory_cap": results["setup"]["memory_cap"],
            "target_loss": results["setup"]["target_loss"], "epochs": ccfg.epochs,
            "recommendation": {"id": rec["id"], "label": rec["label"], "reasons": rec["reasons"]},
            "best": best, "candidates": len(results["candidates"]), "ran": len(ran), "report": cfg.out}


def partition_text(r: dict) -> str:
    """The recommendation, why, and the two kinds' figures side by side."""
    cap = "none" if r["memory_cap"] is None else format_bytes(r["memory_cap"])
    lines = [f"exercise 5: MLP {'-'.join(map(str, r['widths']))}, global minibatch B = {r['batch']}, K = {r['devices']} "
             f"devices, memory cap {cap} per device ({r['setting']} setting: {r['ran']} of {r['candidates']} candidates "
             f"trained {r['epochs']} epochs)",
             f"recommendation: {r['recommendation']['label'] or 'nothing fits the cap'}"]
    lines += [f"  - {why}" for why in r["recommendation"]["reasons"]]
    target = "-" if r["target_loss"] is None else f"{r['target_loss']:.4g}"
    for name, f in r["best"].items():
        t = "not reached" if f["time_to_target_s"] is None else f"{f['time_to_target_s']:.3g} s"
        lines.append(f"best {name.replace('_', ' ')}: {f['label']} (minibatch {f['minibatch']}): loss {target} in {t}, "
                     f"{f['samples_per_second']:.0f} samples/s measured, predicted peak "
                     f"{format_bytes(f['predicted_peak_bytes_per_device'])} per device")
    if r["report"]:
        lines.append(f"report: {r['report']}/compare.md")
    return "\n".join(lines)
