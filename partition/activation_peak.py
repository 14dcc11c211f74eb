"""Exact peak activation bytes per rank for a schedule: its action lists walked in order, phase by phase.

Each microbatch on a stage holds ``MicrobatchBytes.forward`` from its F until its B; during that B, once the
recomputed forward has run, ``backward``; after a split B, ``deferred`` until its W; nothing after a fused BW or
after W. A rank runs its list in order, so the bytes its stages hold after every action (and at that moment inside
every B) are a running sum, and its peak is their maximum. Parameters, optimizer state and messages are not
counted here (``partition.memory`` adds them); temporaries inside one action are not counted either.
"""

from __future__ import annotations

from collections.abc import Sequence

from partition.memory import LayerMemory, MicrobatchBytes
from partition.recompute import Recompute, per_stage
from partition.schedule.actions import Op, Schedule


def rank_activation_peaks(schedule: Schedule, stage_bytes: Sequence[MicrobatchBytes]) -> tuple[int, ...]:
    """Per rank: the most activation bytes its stages hold at once while it runs its action list."""
    if len(stage_bytes) != schedule.num_stages:
        raise ValueError(f"stage_bytes: expected {schedule.num_stages} (one per stage), got {len(stage_bytes)}")
    peaks = []
    for rank in range(schedule.num_ranks):
        held = peak = 0
        for a in schedule.actions[rank]:
            mb = stage_bytes[a.stage]
            if a.op is Op.F:
                held += mb.forward
            elif a.op in (Op.B, Op.BW):
                peak = max(peak, held - mb.forward + mb.backward)
                held += (mb.deferred if a.op is Op.B else 0) - mb.forward
            elif a.op is Op.W:
                held -= mb.deferred
            peak = max(peak, held)
        peaks.append(peak)
    return tuple(peaks)


def plan_activation_peaks(
    layers: LayerMemory, schedule: Schedule, ranges: Sequence[tuple[int, int]], recompute: Sequence[Recompute] = ()
) -> tuple[int, ...]:
    """Per rank: the exact activation peak of ``schedule`` with stages owning ``ranges`` and per-stage ``recompute``."""
    if len(ranges) != schedule.num_stages:
        raise ValueError(f"ranges: expected {schedule.num_stages} layer ranges (one per stage), got {len(ranges)}")
    choices = per_stage(recompute, len(ranges))
    return rank_activation_peaks(schedule, [layers.microbatch(a, b, r) for (a, b), r in zip(ranges, choices)])
