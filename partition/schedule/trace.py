"""Timeline writers: Chrome/Perfetto trace JSON and a Gantt chart PNG, for predicted and measured runs alike."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from partition.schedule.actions import Action

# Colours of the Gantt bars by the op of an action name such as "2F0" or "1BW3".
COLOURS = MappingProxyType({"F": "#4c72b0", "B": "#dd8452", "W": "#55a868", "BW": "#c44e52"})  # one colour per op


@dataclass(frozen=True)
class TraceEvent:
    """One span on one rank's row: ``name`` (e.g. "2F0") from ``start`` to ``end`` seconds.

    ``lane`` names a second row of the rank (e.g. "transfers"); "" is the rank's compute row.
    """

    rank: int
    name: str
    start: float
    end: float
    lane: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end) and self.end >= self.start):
            raise ValueError(f"TraceEvent {self.name!r}: expected finite start <= end, got {self.start}..{self.end}")


def drawn_ops(names: Iterable[str]) -> list[str]:
    """The ops among these action names, in legend order: a legend names only what a chart draws."""
    seen = {op_of(name) for name in names}
    return [op for op in COLOURS if op in seen]


def op_of(name: str) -> str:
    """The op of an action name ("1BW3" -> "BW"; a fused-count suffix as in "0W3x4" is ignored), else ""."""
    try:
        return Action.parse(name.split("x")[0]).op.value
    except ValueError:
        return ""


def write_chrome_trace(
    path: str | os.PathLike,
    events: Iterable[TraceEvent] | Mapping[str, Iterable[TraceEvent]],
    process_name: str = "pipegraph",
) -> None:
    """Write ``chrome://tracing`` / Perfetto JSON: one thread row per rank, times in microseconds.

    ``events`` is one timeline (shown as ``process_name``) or a mapping of names to timelines, each shown as its
    own process (e.g. {"measured": ..., "predicted": ...}) so that they line up one above the other.
    """
    timelines = dict(events) if isinstance(events, Mapping) else {process_name: events}
    trace: list[dict] = []
    for pid, (name, timeline) in enumerate(timelines.items()):
        timeline = list(timeline)
        trace.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}})
        trace.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}})
        for rank, lane in sorted({(e.rank, e.lane) for e in timeline}):
            tid = _tid(rank, lane)
            name = f"rank {rank} {lane}" if lane else f"rank {rank}"
            trace.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}})
            trace.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                          "args": {"sort_index": 2 * rank + (1 if lane else 0)}})
        for e in timeline:
            trace.append({"name": e.name, "cat": op_of(e.name) or "other", "ph": "X", "pid": pid, "tid": _tid(e.rank, e.lane),
                          "ts": e.start * 1e6, "dur": (e.end - e.start) * 1e6})
    with open(path, "w") as f:
        json.dump({"traceEvents": trace, "displayTimeUnit": "ms"}, f)


def _tid(rank: int, lane: str) -> int:
    """A rank's compute row is its number; its other lane sits 100000 above."""
    return rank + (100_000 if lane else 0)


def write_gantt_png(path: str | os.PathLike, events: Iterable[TraceEvent], title: str) -> None:
    """Draw one row per rank, bars coloured by op (F, B, W, BW; others grey); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError("write_gantt_png needs matplotlib: pip install 'pipegraph[plot]' (or matplotlib)") from exc
    events = list(events)
    ranks = sorted({e.rank for e in events}) or [0]
    width = max((e.end for e in events), default=1.0) or 1.0
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(ranks) + 1.5))
    for rank in ranks:
        row = [e for e in events if e.rank == rank]
        spans = [(e.start, e.end - e.start) for e in row]
        ax.broken_barh(spans, (rank - 0.4, 0.8), facecolors=[COLOURS.get(op_of(e.name), "#999999") for e in row],
                       edgecolor="white", linewidth=0.3)
        if len(events) <= 400:
            for e in row:
                if e.end - e.start > width / 80:
                    ax.text((e.start + e.end) / 2, rank, e.name, ha="center", va="center", fontsize=6, color="white")
    ax.set_yticks(ranks, [f"rank {r}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(title, loc="left")
    ax.legend(handles=[Patch(color=COLOURS[op], label=op) for op in drawn_ops(e.name for e in events)], loc="lower right",
              bbox_to_anchor=(1.0, 1.0), fontsize=7, ncols=4, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
