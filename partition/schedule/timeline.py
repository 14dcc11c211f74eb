"""A time-aligned ASCII chart of a simulated run: one row per rank, one column per time slot, like the papers' figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum

from partition.schedule.replay import TimedAction


class TimeUnit(Enum):
    """What the timeline's times are: seconds, or abstract costs (unit costs F = B = W = 1)."""

    SECONDS = "s"
    COST = "cost unit"


def _cell(t: TimedAction, with_stage: bool) -> str:
    letter = {"F": "F", "B": "B", "W": "W", "BW": "X"}[t.action.op.value]
    return f"{t.action.stage if with_stage else ''}{letter}{t.action.microbatch}"


def format_timeline(timeline: Sequence[TimedAction], num_ranks: int, slot: float | None = None, max_slots: int = 160,
                    unit: TimeUnit = TimeUnit.SECONDS) -> str:
    """Draw ``timeline`` with each cell one ``slot`` of time (in ``unit``); idle cells are ``.``.

    A cell shows the op letter and microbatch of the action covering the middle of the slot (``F3``,
    ``B0``, ``W7``, ``BW2`` as ``X2``), so with unit costs each action of cost c fills c cells, as in the
    GPipe, PipeDream and zero-bubble figures. When a rank holds several stages (interleaved, V-shaped
    schedules) every cell starts with the stage: ``2F3`` is stage 2's F of microbatch 3.
    ``slot`` defaults to the shortest action's duration.
    """
    compute = [t for t in timeline if t.end > t.start and not t.action.op.is_comm]
    if not compute:
        return "(empty timeline)"
    if slot is None:
        slot = min(t.end - t.start for t in compute)
    makespan = max(t.end for t in compute)
    slots = min(max_slots, max(1, math.ceil(makespan / slot - 1e-9)))
    slot = max(slot, makespan / slots)
    stages_of: dict[int, set[int]] = {}
    for t in compute:
        stages_of.setdefault(t.rank, set()).add(t.action.stage)
    with_stage = any(len(s) > 1 for s in stages_of.values())
    cells = [["." for _ in range(slots)] for _ in range(num_ranks)]
    for t in compute:
        first = int(t.start / slot + 0.5 - 1e-9)
        last = int(t.end / slot + 0.5 - 1e-9)
        for k in range(first, min(last, slots)):
            cells[t.rank][k] = _cell(t, with_stage)
    width = max(len(c) for row in cells for c in row)
    plural = "" if unit is TimeUnit.SECONDS or math.isclose(slot, 1.0) else "s"
    legend = f"time slot = {slot:.4g} {unit.value}{plural}; "
    legend += "cell = stage, op, microbatch (2F3: stage 2's F of microbatch 3); " if with_stage else ""
    lines = [legend + "X = fused backward (B+W); . = idle"]
    for r, row in enumerate(cells):
        lines.append(f"rank {r:>2} |" + " ".join(c.ljust(width) for c in row).rstrip())
    return "\n".join(lines)
