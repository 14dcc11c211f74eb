"""The memory-time trade of the candidates: Pareto fronts of peak bytes per device vs time per batch, table and plot.

A candidate is a point (peak bytes on its fullest device, seconds per global batch B: its step time x B / minibatch,
so that a smaller minibatch is charged the steps it needs to see B samples). One point dominates another when it
is no larger on both axes and smaller on one; the front is the points no other dominates. The predicted front is
taken over every candidate with a prediction (over the cap or not: it draws the whole trade, the cap is a line
across it), the measured front over the candidates that ran. Predicted times are the ones the measurement checks
(this run's basis); the simulator's figure on K devices, and its own front, are listed beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from partition.units import format_bytes
from runtime.output import markdown_table

PNG = "pareto.png"


def pareto_front(points: Sequence[tuple[float, float]]) -> tuple[int, ...]:
    """Indices, in input order, of the points that no other point dominates (smaller is better on both axes)."""
    return tuple(i for i, (x, y) in enumerate(points)
                 if not any(u <= x and v <= y and (u < x or v < y) for u, v in points))


def _per_batch(e: dict, seconds: float, batch: int) -> float:
    return seconds * batch / e["minibatch"]


def pareto_summary(r: dict) -> dict:
    """The points of every predicted candidate, with both fronts (ids in order of growing memory)."""
    batch, points = r["setup"]["batch"], []
    for e in r["candidates"]:
        p, m = e["predicted"], e["measured"]
        if p is None or not e["predicted_memory"]:
            continue
        points.append({
            "id": e["id"], "kind": e["kind"], "schedule": e["schedule"], "recompute": e.get("recompute") or [],
            "feasible": e["feasible"],
            "predicted_peak_bytes": max(d["total"] for d in e["predicted_memory"]),
            "predicted_seconds_per_batch": _per_batch(e, p["predicted_step_time"], batch),
            "predicted_seconds_per_batch_k_devices": _per_batch(e, p["predicted_step_time_k_devices"], batch),
            "measured_peak_bytes": max(m["memory_per_device"]) if m else None,
            "measured_seconds_per_batch": _per_batch(e, m["measured_step_time"]["median"], batch) if m else None,
        })
    fronts = {}
    for side, memory, time in (("predicted", "predicted_peak_bytes", "predicted_seconds_per_batch"),
                               ("measured", "measured_peak_bytes", "measured_seconds_per_batch"),
                               ("k_devices", "predicted_peak_bytes", "predicted_seconds_per_batch_k_devices")):
        have = [q for q in points if q[memory] is not None]
        front = [have[i] for i in pareto_front([(q[memory], q[time]) for q in have])]
        fronts[side] = [q["id"] for q in sorted(front, key=lambda q: (q[memory], q["id"]))]
    for q in points:
        for side, ids in fronts.items():
            q[f"on_{side}_front"] = q["id"] in ids
    return {"axes": ["peak bytes on the fullest device", f"seconds per global batch of {batch} samples"],
            "points": points, **{f"{side}_front": ids for side, ids in fronts.items()}}


def _recompute(choices: Sequence[str]) -> str:
    """Per-stage recomputation as written: one word when every stage does the same."""
    return "none" if not choices else choices[0] if len(set(choices)) == 1 else ",".join(choices)


def _t(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def pareto_markdown(r: dict) -> list[str]:
    """The report's section: one row per point, front members marked, and the plot."""
    summary = pareto_summary(r)
    rows = []
    for q in sorted(summary["points"], key=lambda q: (q["predicted_peak_bytes"], q["id"])):
        marks = "".join(mark for mark, side in (("P", "predicted"), ("M", "measured"), ("K", "k_devices"))
                        if q[f"on_{side}_front"])
        meas = q["measured_peak_bytes"]
        rows.append([f"`{q['id']}`", _recompute(q["recompute"]),
                     format_bytes(q["predicted_peak_bytes"]), "-" if meas is None else format_bytes(meas),
                     _t(q["predicted_seconds_per_batch"]), _t(q["measured_seconds_per_batch"]),
                     _t(q["predicted_seconds_per_batch_k_devices"]), "yes" if q["feasible"] else "no", marks or "-"])
    return ["## Memory-time trade (Pareto front)", "",
            "Each candidate's peak on its fullest device against its time per global batch B (a smaller minibatch "
            "pays the steps it needs for B samples). Front: P on the predicted front (every candidate), M on the "
            "measured one (those that ran), K on the simulator's front on K devices; a point is on a front when no "
            "other is as small on both axes and smaller on one.", "",
            *markdown_table(["candidate", "recompute", "peak predicted", "peak measured", "per B predicted",
                             "per B measured", "per B on K devices (simulator)", "fits the cap", "front"], rows), "",
            f"![memory-time trade: predicted and measured points, each labelled]({PNG})", ""]


def pareto_across(runs: Sequence[dict]) -> list[str]:
    """One table over runs of one model at several caps: per cap, every candidate that fits, with its peak per device
    and time per batch, predicted and measured, and the fronts it is on within its run; the one-device alternatives
    (smaller minibatch, accumulation) also when they do not fit, marked so."""
    rows = []
    for r in sorted(runs, key=lambda r: -(r["setup"]["memory_cap"] or float("inf"))):
        cap = r["setup"]["memory_cap"]
        entries = {e["id"]: e for e in r["candidates"]}
        for q in sorted(pareto_summary(r)["points"], key=lambda q: (q["predicted_peak_bytes"], q["id"])):
            e = entries[q["id"]]
            if not q["feasible"] and e["kind"] == "pipeline":
                continue
            marks = "".join(mark for mark, side in (("P", "predicted"), ("M", "measured"), ("K", "k_devices"))
                            if q[f"on_{side}_front"]) if q["feasible"] else "over the cap"
            measured = e["measured"]["memory_per_device"] if e["measured"] else []
            what = e["schedule"] if e["kind"] == "pipeline" else e["kind"]
            rows.append(["none" if cap is None else format_bytes(cap), f"`{q['id']}`", what,
                         _recompute(q["recompute"]), " / ".join(format_bytes(d["total"]) for d in e["predicted_memory"]),
                         " / ".join(format_bytes(v) for v in measured) or "-", _t(q["predicted_seconds_per_batch"]),
                         _t(q["measured_seconds_per_batch"]), _t(q["predicted_seconds_per_batch_k_devices"]),
                         marks or "-"])
    return markdown_table(["cap", "candidate", "schedule", "recompute", "peak per device predicted", "measured",
                           "per B predicted", "measured", "per B on K devices", "front"], rows)


def write_pareto_plot(r: dict, path: Path) -> None:
    """The trade as scatter plots, every point labelled: this run, predicted (open) against measured (filled), and
    the simulator's prediction on K devices; the fronts drawn, the cap as a line, red where a point is over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = pareto_summary(r)
    points = {q["id"]: q for q in summary["points"]}
    fig, (here, k_dev) = plt.subplots(1, 2, figsize=(15, 6))
    mib, cap = 2.0**20, r["setup"]["memory_cap"]
    for q in points.values():
        colour = "#3182bd" if q["feasible"] else "#d6604d"
        px, py = q["predicted_peak_bytes"] / mib, q["predicted_seconds_per_batch"] * 1e3
        here.scatter([px], [py], facecolors="none", edgecolors=colour, s=36, zorder=3)
        here.annotate(q["id"] + " (predicted)", (px, py), fontsize=6, color=colour, xytext=(4, 3), textcoords="offset points")
        if q["measured_peak_bytes"] is not None:
            mx, my = q["measured_peak_bytes"] / mib, q["measured_seconds_per_batch"] * 1e3
            here.scatter([mx], [my], color=colour, s=24, zorder=3)
            here.plot([px, mx], [py, my], color=colour, linewidth=0.5, alpha=0.5)
            here.annotate(q["id"], (mx, my), fontsize=6, xytext=(4, -8), textcoords="offset points")
        ky = q["predicted_seconds_per_batch_k_devices"] * 1e3
        k_dev.scatter([px], [ky], facecolors="none", edgecolors=colour, s=36, zorder=3)
        k_dev.annotate(q["id"], (px, ky), fontsize=6, color=colour, xytext=(4, 3), textcoords="offset points")
    for ax, side, memory, time, style in ((here, "predicted", "predicted_peak_bytes", "predicted_seconds_per_batch", "--"),
                                          (here, "measured", "measured_peak_bytes", "measured_seconds_per_batch", "-"),
                                          (k_dev, "k_devices", "predicted_peak_bytes",
                                           "predicted_seconds_per_batch_k_devices", "--")):
        front = [points[cid] for cid in summary[f"{side}_front"]]
        if front:
            ax.step([q[memory] / mib for q in front], [q[time] * 1e3 for q in front], style, where="post",
                    color="#444444", linewidth=1, label=f"{side.replace('_', ' ')} front")
    values = [v for q in points.values() for v in (q["predicted_peak_bytes"], q["measured_peak_bytes"]) if v]
    devices, batch = r["setup"]["devices"], r["setup"]["batch"]
    for ax, title in ((here, "This run: predicted (open) and measured (filled)"),
                      (k_dev, f"On {devices} devices, predicted by the simulator")):
        if cap is not None:
            ax.axvline(cap / mib, color="#b2182b", linewidth=1, label="cap per device")
        if values and max(values) > 10 * min(values):
            ax.set_xscale("log")
        ax.set_xlabel("peak MiB on the fullest device (red: over the cap)")
        ax.set_ylabel(f"ms per global batch of {batch} samples")
        ax.set_title(f"Memory-time trade, lower left is better. {title}", loc="left", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
