"""The report's PNG plots: loss vs samples and vs time, peak memory per device, and the chosen pipeline's Gantt chart."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import MappingProxyType

from partition.schedule.gantt import write_comparison_gantt
from partition.schedule.trace import TraceEvent
from runtime.calibrate.timelines import comparison_panels, measured_events
from runtime.compare.types import CandidateKind

FIGURES = MappingProxyType({
    "loss-vs-samples.png": "training loss vs samples seen",
    "loss-vs-time.png": "training loss vs training seconds",
    "memory.png": "peak memory per device, predicted and measured",
    "gantt.png": "the chosen pipeline's step: measured above predicted, per device",
})
STYLES = MappingProxyType({CandidateKind.PIPELINE.value: "-", CandidateKind.ACCUMULATION.value: "--",
                           CandidateKind.SINGLE.value: ":"})


def chosen_pipeline(r: dict) -> dict | None:
    """The recommended candidate if it is a pipeline, else the feasible pipeline the simulator finds fastest."""
    pipes = [e for e in r["candidates"] if e["timeline"]]
    rec = [e for e in pipes if e["id"] == r["recommendation"]["id"]]
    fitting = [e for e in pipes if e["feasible"]] or pipes
    if rec:
        return rec[0]
    return min(fitting, key=lambda e: e["predicted"]["predicted_step_time_k_devices"]) if fitting else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _losses(r: dict, path: Path, by_time: bool) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = itertools.cycle(plt.get_cmap("tab20").colors)
    for e in r["candidates"]:
        tr = e["training"]
        if tr is None:
            continue
        colour = next(colours)
        if by_time:
            xs, total = [], 0.0
            for s in tr["step_seconds"]:
                total += s
                xs.append(total)
        else:
            xs = [(i + 1) * e["minibatch"] for i in range(len(tr["step_losses"]))]
        ax.plot(xs, tr["step_losses"], STYLES[e["kind"]], color=colour, alpha=0.35, linewidth=0.8)
        ends = [xs[len(xs) * (i + 1) // len(tr["epochs"]) - 1] for i in range(len(tr["epochs"]))]
        ax.plot(ends, [h["train_loss"] for h in tr["epochs"]], STYLES[e["kind"]], marker="o", markersize=3,
                color=colour, label=e["id"])
    if r["setup"]["target_loss"] is not None:
        ax.axhline(r["setup"]["target_loss"], color="grey", linewidth=0.8, linestyle="-.", label="target")
    ax.set_xlabel("training seconds (measured)" if by_time else "samples seen")
    ax.set_ylabel("training loss (thin: per step; dots: epoch mean)")
    title = ("Loss vs measured training time on this machine" if by_time else
             "Loss vs samples seen: every run with steps of the whole batch B follows one curve (same math)")
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _memory(r: dict, path: Path) -> None:
    plt = _pyplot()
    rows = [e for e in r["candidates"] if e["predicted_memory"]]
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(rows) + 2), 5))
    mib = 2.0**20
    pred_x, pred_h, pred_c, pred_w, meas_x, meas_h, meas_w = [], [], [], [], [], [], []
    for i, e in enumerate(rows):
        predicted = [d["total"] / mib for d in e["predicted_memory"]]
        measured = [v / mib for v in e["measured"]["memory_per_device"]] if e["measured"] else []
        width = 0.8 / (2 * len(predicted))
        for d, value in enumerate(predicted):
            x = i - 0.4 + width * (2 * d + 0.5)
            pred_x.append(x)
            pred_h.append(value)
            pred_c.append("#9ecae1" if e["feasible"] else "#f4a582")
            pred_w.append(width)
            if d < len(measured):
                meas_x.append(x + width)
                meas_h.append(measured[d])
                meas_w.append(width)
    ax.bar(pred_x, pred_h, pred_w, color=pred_c, edgecolor="#3182bd", hatch="//",
           label="predicted (hatched; orange: over the cap)")
    ax.bar(meas_x, meas_h, meas_w, color="#3182bd", label="measured")
    if r["setup"]["memory_cap"] is not None:
        ax.axhline(r["setup"]["memory_cap"] / mib, color="#b2182b", linewidth=1, label="cap per device")
    ax.set_xticks(range(len(rows)), [e["id"] for e in rows], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("peak MiB per device (one bar pair per device)")
    ax.set_title("Peak memory per device", loc="left", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _gantt(r: dict, path: Path) -> None:
    chosen = chosen_pipeline(r)
    if chosen is None:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no pipeline could be planned for this model", ha="center", va="center")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    predicted = [TraceEvent(int(rank), name, start, end, lane) for rank, name, start, end, lane in chosen["timeline"]]
    measured = measured_events([tuple(row) for row in chosen["measured_timeline"]])
    m = chosen["measured"]
    panels = comparison_panels(measured, predicted, chosen["predicted"]["prediction_basis"],
                               dict(enumerate(chosen["predicted"]["memory_per_device"])),
                               dict(enumerate(m["memory_per_device"])) if m else None)
    write_comparison_gantt(path, panels, f"{chosen['label']} ({chosen['id']}): measured and predicted step, per device")


def write_plots(r: dict, folder: Path) -> None:
    """Write the four PNGs of :data:`FIGURES` into ``folder`` (needs matplotlib: pip install 'pipegraph[plot]')."""
    _losses(r, folder / "loss-vs-samples.png", by_time=False)
    _losses(r, folder / "loss-vs-time.png", by_time=True)
    _memory(r, folder / "memory.png")
    _gantt(r, folder / "gantt.png")
