"""The report's PNG plots: loss vs samples and vs time, peak memory per device, and the chosen pipeline's Gantt chart."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import MappingProxyType

from partition.schedule.gantt import write_comparison_gantt
from partition.schedule.trace import TraceEvent, write_chrome_trace
from partition.units import binary_unit, format_bytes
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


FAMILIES = MappingProxyType({CandidateKind.PIPELINE.value: ("Blues", "pipelines, PP x DP too (B in microbatches, K devices)"),
                             CandidateKind.ACCUMULATION.value: ("Greens", "gradient accumulation on one device"),
                             CandidateKind.SINGLE.value: ("Oranges", "one device, minibatch b")})


def _family_colours(plt: object, entries: list[dict]) -> dict[str, tuple]:
    """One colour per candidate: its kind's colour family, a distinct shade for each member."""
    colours = {}
    for kind, (cmap, _) in FAMILIES.items():
        members = [e["id"] for e in entries if e["kind"] == kind]
        for i, cid in enumerate(members):
            colours[cid] = plt.get_cmap(cmap)(0.55 + 0.4 * i / max(1, len(members) - 1))
    return colours


def _spread(values: list[float], gap: float) -> list[float]:
    """``values`` (sorted ascending, within [0, 1]) moved apart by at least ``gap`` (less if they cannot all fit),
    keeping their order and staying within [0, 1]."""
    gap = min(gap, 1.0 / max(1, len(values)))
    out = [min(max(v, 0.0), 1.0) for v in values]
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + gap)
    if out and out[-1] > 1.0:
        out[-1] = 1.0
        for i in range(len(out) - 2, -1, -1):
            out[i] = min(out[i], out[i + 1] - gap)
    return out


def _losses(r: dict, path: Path, by_time: bool) -> None:
    plt = _pyplot()
    runs = [e for e in r["candidates"] if e["training"] is not None]
    fig, ax = plt.subplots(figsize=(11, 6))
    colours = _family_colours(plt, runs)
    ends = []
    for e in runs:
        tr = e["training"]
        if by_time:
            xs = list(itertools.accumulate(tr["step_seconds"]))
        else:
            xs = [(i + 1) * e["minibatch"] for i in range(len(tr["step_losses"]))]
        marks = [xs[len(xs) * (i + 1) // len(tr["epochs"]) - 1] for i in range(len(tr["epochs"]))]
        means = [h["train_loss"] for h in tr["epochs"]]
        ax.plot(marks, means, STYLES[e["kind"]], marker="o", markersize=3, color=colours[e["id"]], linewidth=1.6)
        ends.append((means[-1], marks[-1], e["id"], colours[e["id"]]))
    if r["setup"]["target_loss"] is not None:
        ax.axhline(r["setup"]["target_loss"], color="grey", linewidth=0.8, linestyle="-.")
        ax.text(0.0, r["setup"]["target_loss"], " target loss", color="grey", fontsize=8, va="bottom",
                transform=ax.get_yaxis_transform())
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plt.FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(plt.FormatStrFormatter("%.3g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high)
    span = math.log10(high) - math.log10(low) or 1.0
    ends.sort()
    places = _spread([(math.log10(y) - math.log10(low)) / span for y, *_ in ends], 0.035)
    for (y, x, cid, colour), place in zip(ends, places):  # each run named at its last epoch, in the right margin
        ax.annotate(cid, xy=(x, y), xytext=(1.01, place), textcoords="axes fraction", color=colour, fontsize=8,
                    va="center", arrowprops={"arrowstyle": "-", "color": colour, "linewidth": 0.5, "alpha": 0.6})
    handles = [plt.Line2D([], [], color=plt.get_cmap(cmap)(0.8), linestyle=STYLES[kind], marker="o", markersize=3,
                          label=text) for kind, (cmap, text) in FAMILIES.items() if any(e["kind"] == kind for e in runs)]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_xlabel("training seconds (measured)" if by_time else "samples seen", fontsize=10)
    ax.set_ylabel("training loss, mean of each epoch", fontsize=10)
    title = ("Loss vs measured training time on this machine" if by_time else
             "Loss vs samples seen: every run with steps of the whole batch B follows one curve (same math)")
    ax.set_title(title, loc="left", fontsize=11)
    fig.subplots_adjust(left=0.08, right=0.8, top=0.93, bottom=0.09)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _memory(r: dict, path: Path) -> None:
    plt = _pyplot()
    rows = [e for e in r["candidates"] if e["predicted_memory"]]
    values = [d["total"] for e in rows for d in e["predicted_memory"]]
    values += [v for e in rows if e["measured"] for v in e["measured"]["memory_per_device"]]
    unit, scale = binary_unit(max(values + [r["setup"]["memory_cap"] or 0, 1]))
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.8))
    for i, e in enumerate(rows):
        predicted = [d["total"] for d in e["predicted_memory"]]
        measured = e["measured"]["memory_per_device"] if e["measured"] else []
        height = 0.8 / (2 * len(predicted))
        for d, value in enumerate(predicted):
            y = i - 0.4 + height * (2 * d + 0.5)
            ax.barh(y, value / scale, height, color="#9ecae1" if e["feasible"] else "#f4a582", edgecolor="#3182bd",
                    hatch="//")
            ax.text(value / scale, y, f" {format_bytes(value)}", va="center", fontsize=7)
            if d < len(measured):
                ax.barh(y + height, measured[d] / scale, height, color="#3182bd")
                ax.text(measured[d] / scale, y + height, f" {format_bytes(measured[d])}", va="center", fontsize=7)
    if r["setup"]["memory_cap"] is not None:
        ax.axvline(r["setup"]["memory_cap"] / scale, color="#b2182b", linewidth=1)
        ax.text(r["setup"]["memory_cap"] / scale, -0.55, " cap per device", color="#b2182b", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{e['id']} ({e['devices']} dev.)" for e in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(f"peak memory per device ({unit})", fontsize=10)
    ax.margins(x=0.15)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="#9ecae1", edgecolor="#3182bd", hatch="//", label="predicted"),
               plt.Rectangle((0, 0), 1, 1, facecolor="#f4a582", edgecolor="#3182bd", hatch="//",
                             label="predicted, over the cap"),
               plt.Rectangle((0, 0), 1, 1, facecolor="#3182bd", label="measured")]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set_title("Peak memory per device: one pair of bars (predicted, measured) per device of each candidate",
                 loc="left", fontsize=11)
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
                               chosen["predicted"]["predicted_step_time"],
                               dict(enumerate(chosen["predicted"]["memory_per_device"])),
                               dict(enumerate(m["memory_per_device"])) if m else None)
    write_comparison_gantt(path, panels, f"{chosen['label']} ({chosen['id']}): measured and predicted step, per device")
    write_chrome_trace(path.with_suffix(".json"), {p.title: p.events for p in panels})  # the same, for Perfetto


def write_plots(r: dict, folder: Path) -> None:
    """Write the four PNGs of :data:`FIGURES` into ``folder`` (needs matplotlib: pip install 'pipegraph[plot]')."""
    _losses(r, folder / "loss-vs-samples.png", by_time=False)
    _losses(r, folder / "loss-vs-time.png", by_time=True)
    _memory(r, folder / "memory.png")
    _gantt(r, folder / "gantt.png")
