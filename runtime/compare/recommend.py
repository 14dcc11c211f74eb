"""The recommendation under the cap: among the candidates that fit and ran, the fastest to the target loss, with reasons.

The rule, in order:

1. Only candidates that fit the cap (and ran) compete. If none fits, nothing is recommended and the reason names
   the smallest per-device need among the candidates.
2. On one real device (the K pipeline devices emulated in one process), a pipeline runs the arithmetic of gradient
   accumulation on that device plus its scheduling work, so it cannot be faster than accumulation there: pipelines
   compete only when nothing else fits, and then among themselves by the simulator's K-device step time (emulation
   shows no bubble; they all compute the same steps). With K real devices (torchrun, or one GPU per stage) every
   candidate competes on its measured time.
3. The winner reaches the target loss (an epoch's mean training loss) in the least measured training time; ties,
   and candidates that never reach it, are ordered by measured samples per second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from partition.units import count, format_bytes
from runtime.compare.types import CandidateKind

PIPELINE = CandidateKind.PIPELINE.value  # candidates arrive as JSON entries: kinds by value


def _key(entry: dict) -> tuple[float, float]:
    t = entry["training"]["time_to_target"]
    return (math.inf if t is None else t, -entry["measured"]["samples_per_second"])


def _seconds(value: float) -> str:
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def _describe(entry: dict, target: float) -> str:
    tr = entry["training"]
    name = f"`{entry['id']}` ({entry['label']})"
    if tr["time_to_target"] is None:
        return (f"{name} did not reach loss {target:.4g} (last epoch {tr['final_loss']:.4g}); "
                f"{entry['measured']['samples_per_second']:.0f} samples/s")
    return (f"{name} reaches loss {target:.4g} in {tr['time_to_target']:.3g} s of training "
            f"({tr['samples_to_target']} samples, {entry['measured']['samples_per_second']:.0f} samples/s)")


def recommend(entries: Sequence[dict], setup: dict) -> dict:
    """``{"id", "label", "kind", "reasons"}``: the candidate to use under the cap and why (see the module docstring)."""
    ran = [e for e in entries if e["feasible"] and e["measured"] is not None]
    K, B, target = setup["devices"], setup["batch"], setup["target_loss"]
    if not ran:
        needs = [max(d["total"] for d in e["predicted_memory"]) for e in entries if e["predicted_memory"]]
        why = f"no candidate fits the cap of {format_bytes(setup['memory_cap'])} per device"
        if needs:
            why += f"; the smallest need among them is {format_bytes(min(needs))} per device"
        return {"id": None, "label": None, "kind": None, "reasons": [why]}
    pipes = [e for e in ran if e["kind"] == PIPELINE]
    others = [e for e in ran if e["kind"] != PIPELINE]
    emulated = setup["one_real_device"]
    reasons = []
    if emulated and others:
        reasons.append(f"The {K} pipeline devices are emulated on one real device here: every stage runs in turn on it, "
                       "so a pipeline does the arithmetic of gradient accumulation plus its scheduling work and cannot be "
                       "faster than accumulation on the same device. Pipelines are therefore not recommended on this machine.")
    elif not others:
        reasons.append("Only pipelines fit the cap: no single device can hold the model with any minibatch, so the graph "
                       f"must be partitioned over {count(K, 'device')}.")
    if emulated and not others:  # emulation shows no bubble: rank by the simulator's K-device step (same math, same steps)
        best = min(pipes, key=lambda e: (e["predicted"]["predicted_step_time_k_devices"], e["id"]))
        p = best["predicted"]
        reasons.append(f"In emulation the stages run in turn and no pipeline bubble shows, so the pipelines (all the same "
                       f"math) are ranked by the simulator's step on {count(K, 'device')}: `{best['id']}` ({best['label']}) at "
                       f"{_seconds(p['predicted_step_time_k_devices'])} per step "
                       f"({p['samples_per_second_k_devices']:.0f} samples/s, "
                       f"bubble {p['bubble_fraction_k_devices']:.0%}); emulated here it measured "
                       f"{_seconds(best['measured']['measured_step_time']['median'])} per step.")
        return {"id": best["id"], "label": best["label"], "kind": best["kind"], "reasons": reasons}
    ranked = sorted(others if emulated else ran, key=_key)
    best = ranked[0]
    reasons.append(f"Fastest to the target: {_describe(best, target)}.")
    if len(ranked) > 1:
        reasons.append(f"Next: {_describe(ranked[1], target)}.")
    tr = best["training"]
    if best["kind"] == CandidateKind.SINGLE.value and best["minibatch"] < B:
        reasons.append(f"It trains with a smaller minibatch b={best['minibatch']} < B={B}: {tr['optimizer_steps']} optimizer "
                       f"steps where B takes {tr['samples_seen'] // B}, each gradient averaged over b samples (noisier), "
                       f"learning rate {best['lr']:.4g} by {setup['lr_rule']}. Its loss curve is not the full batch's.")
    elif best["kind"] != PIPELINE:
        how = "in one pass" if best["microbatches"] == 1 else f"in {best['microbatches']} accumulated microbatches"
        reasons.append(f"It computes exactly the step of the full batch B={B} (the same math as the pipelines), {how}.")
    if pipes and emulated:
        fast = min(pipes, key=lambda e: e["predicted"]["predicted_step_time_k_devices"])
        mine = best["predicted"]["predicted_step_time_k_devices"]
        theirs = fast["predicted"]["predicted_step_time_k_devices"]
        ratio = (mine / best["minibatch"]) / (theirs / B)
        verdict = f"{ratio:.2f}x the predicted throughput of the recommendation" + (", no gain" if ratio < 1 else "")
        reasons.append(f"On {K} real devices the simulator predicts {fast['label']} at {_seconds(theirs)} per step of B "
                       f"({B / theirs:.0f} samples/s, {verdict}); that is a prediction, to be measured with torchrun.")
    elif pipes and best["kind"] != PIPELINE:
        fast = min(pipes, key=_key)
        reasons.append(f"The best pipeline measured on {count(K, 'device')}: {_describe(fast, target)}.")
    return {"id": best["id"], "label": best["label"], "kind": best["kind"], "reasons": reasons}
