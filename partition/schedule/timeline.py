"""A time-aligned ASCII chart of a simulated run: one row per rank, one column per time slot, like the papers' figures."""

from __future__ import annotations

import math
from collections.abc import Sequence

from partition.schedule.replay import TimedAction


def format_timeline(timeline: Sequence[TimedAction], num_ranks: int, slot: float | None = None, max_slots: int = 160) -> str:
    """Draw ``timeline`` with each cell one ``slot`` of time; idle cells are ``.``.

    A cell shows the op letter and microbatch of the action covering the middle of the slot (``F3``,
    ``B0``, ``W7``, ``BW2`` as ``X2``), so with unit costs each action of cost c fills c cells, as in the
    GPipe, PipeDream and zero-bubble figures. ``slot`` defaults to the shortest action's duration.
    """
    compute = [t for t in timeline if t.end > t.start and not t.action.op.is_comm]
    if not compute:
        return "(empty timeline)"
    if slot is None:
        slot = min(t.end - t.start for t in compute)
    makespan = max(t.end for t in compute)
    slots = min(max_slots, max(1, math.ceil(makespan / slot - 1e-9)))
    slot = max(slot, makespan / slots)
    label = {"F": "F", "B": "B", "W": "W", "BW": "X"}
    cells = [["." for _ in range(slots)] for _ in range(num_ranks)]
    for t in compute:
        first = int(t.start / slot + 0.5 - 1e-9)
        last = int(t.end / slot + 0.5 - 1e-9)
        for k in range(first, min(last, slots)):
            cells[t.rank][k] = f"{label[t.action.op.value]}{t.action.microbatch}"
    width = max(len(c) for row in cells for c in row)
    lines = [f"time slot = {slot:.4g} s; X = fused backward (B+W); . = idle"]
    for r, row in enumerate(cells):
        lines.append(f"rank {r:>2} |" + " ".join(c.ljust(width) for c in row).rstrip())
    return "\n".join(lines)
