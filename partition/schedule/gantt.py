"""Measured vs predicted timelines as one Gantt chart: a panel each, one millisecond axis, transfers in their own lanes.

Each panel lists its ranks top down, each rank a compute lane and, where it sends or receives, a transfer lane
under it; a rank's label carries its bubble share and peak memory. Needs matplotlib (``pip install 'pipegraph[plot]'``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from partition.schedule.trace import COLOURS, TraceEvent, drawn_ops, op_of

TRANSFER = "#8172b3"
TRANSFER_LANE = "transfers"


@dataclass(frozen=True)
class Panel:
    """One timeline: its title, its spans (``lane`` "transfers" for messages) and a label per rank."""

    title: str
    events: tuple[TraceEvent, ...]
    labels: Mapping[int, str] = field(default_factory=dict)


def lanes(panel: Panel) -> list[tuple[int, str]]:
    """The (rank, lane) rows of a panel, top down: each rank's compute lane, then its transfer lane if it has one."""
    used = {(e.rank, e.lane) for e in panel.events}
    ranks = sorted({r for r, _ in used} | set(panel.labels))
    return [(r, lane) for r in ranks for lane in ("", TRANSFER_LANE) if lane == "" or (r, lane) in used]


def write_comparison_gantt(path: str | os.PathLike, panels: Sequence[Panel], title: str) -> None:
    """Draw ``panels`` one above the other on a shared time axis in milliseconds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError("the Gantt chart needs matplotlib: pip install 'pipegraph[plot]' (or matplotlib)") from exc
    rows = [lanes(p) for p in panels]
    heights = [max(len(r), 1) + 0.8 for r in rows]
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                             figsize=(12, 0.45 * sum(heights) + 1.2), gridspec_kw={"height_ratios": heights})
    end = max((e.end for p in panels for e in p.events), default=1e-3) * 1e3 or 1.0
    for ax, panel, order in zip(axes[:, 0], panels, rows):
        index = {row: i for i, row in enumerate(order)}
        for e in panel.events:
            y = index.get((e.rank, e.lane))
            if y is None:
                continue
            colour = TRANSFER if e.lane else COLOURS.get(op_of(e.name), "#999999")
            ax.broken_barh([(e.start * 1e3, (e.end - e.start) * 1e3)], (y - 0.4, 0.8), facecolors=colour,
                           edgecolor="white", linewidth=0.3)
            if len(panel.events) <= 300 and (e.end - e.start) * 1e3 > end / 60:
                ax.text((e.start + e.end) * 500, y, e.name, ha="center", va="center", fontsize=6, color="white")
        ax.set_yticks(range(len(order)), [_label(panel, r, lane) for r, lane in order], fontsize=7)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.set_title(panel.title, loc="left", fontsize=9)
    axes[-1, 0].set_xlabel("milliseconds from the start of the step")
    handles = [Patch(color=COLOURS[op], label=op) for op in drawn_ops(e.name for p in panels for e in p.events if not e.lane)]
    handles += [Patch(color=TRANSFER, label="transfer")] if any(e.lane for p in panels for e in p.events) else []
    axes[0, 0].legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.05), fontsize=7, ncols=5, frameon=False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(panel: Panel, rank: int, lane: str) -> str:
    if lane:
        return f"rank {rank} {lane}"
    extra = panel.labels.get(rank, "")
    return f"rank {rank}\n{extra}" if extra else f"rank {rank}"
