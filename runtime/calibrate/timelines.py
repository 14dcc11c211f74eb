"""A run's measured and predicted step side by side: Gantt PNG and Chrome trace, per rank, transfers in own lanes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from partition.schedule.gantt import TRANSFER_LANE, Panel, write_comparison_gantt
from partition.schedule.replay import TimedAction
from partition.schedule.trace import TraceEvent, write_chrome_trace
from partition.units import format_bytes
from runtime.calibrate.forecast import Forecast

REST = "rest of the step"  # the predicted per-step terms (step overhead, optimizer, all-reduce), drawn after the actions


def _bubbles(events: Sequence[TraceEvent]) -> dict[int, float]:
    """Per rank: the share of the step's span its compute lane is idle."""
    compute = [e for e in events if not e.lane and e.name != REST]
    if not compute:
        return {}
    span = max(e.end for e in compute) - min(e.start for e in compute)
    busy: dict[int, float] = {}
    for e in compute:
        busy[e.rank] = busy.get(e.rank, 0.0) + e.end - e.start
    return {r: 1.0 - b / span if span > 0 else 0.0 for r, b in busy.items()}


def _labels(events: Sequence[TraceEvent], peaks: Mapping[int, int] | None) -> dict[int, str]:
    out = {}
    for r, bubble in _bubbles(events).items():
        peak = f", peak {format_bytes(peaks[r])}" if peaks and r in peaks else ""
        out[r] = f"bubble {bubble:.0%}{peak}"
    return out


def measured_events(records: Sequence[tuple[int, str, bool, float, float]]) -> list[TraceEvent]:
    """(rank, name, is_transfer, start, end) rows from the clock of each process, shifted to start at 0."""
    if not records:
        return []
    t0 = min(r[3] for r in records)
    return [TraceEvent(rank, name, start - t0, end - t0, TRANSFER_LANE if comm else "")
            for rank, name, comm, start, end in records]


def predicted_events(forecast: Forecast) -> list[TraceEvent]:
    """The forecast's compute timeline and its transfers (sender's lane) as trace events."""
    def event(t: TimedAction, lane: str) -> TraceEvent:
        return TraceEvent(t.rank, str(t.action), t.start, t.end, lane)

    return [event(t, "") for t in forecast.timeline] + [event(t, TRANSFER_LANE) for t in forecast.transfers]


def with_rest(events: Sequence[TraceEvent], step_time: float) -> list[TraceEvent]:
    """``events`` and, on every rank after the last action, the rest of a predicted step of ``step_time`` seconds."""
    end = max((e.end for e in events), default=0.0)
    ranks = sorted({e.rank for e in events if not e.lane})
    return list(events) + [TraceEvent(r, REST, end, max(end, step_time)) for r in ranks]


def comparison_panels(measured: Sequence[TraceEvent], predicted: Sequence[TraceEvent], basis: str, step_time: float,
                      predicted_peaks: Mapping[int, int] | None, measured_peaks: Mapping[int, int] | None) -> list[Panel]:
    """The measured step above its prediction (``basis`` says which; the predicted actions then the rest of its
    ``step_time``), each rank labelled with bubble and peak memory."""
    predicted = with_rest(predicted, step_time)
    return [Panel(f"measured (one step: {_span(measured) * 1e3:.3g} ms)", tuple(measured),
                  _labels(measured, measured_peaks)),
            Panel(f"predicted before the run ({basis}; step {_span(predicted) * 1e3:.3g} ms)", tuple(predicted),
                  _labels(predicted, predicted_peaks))]


def write_timelines(gantt: str | os.PathLike | None, trace: str | os.PathLike | None, measured: Sequence[TraceEvent],
                    forecast: Forecast, predicted_peaks: Mapping[int, int], measured_peaks: Mapping[int, int] | None,
                    title: str) -> None:
    """Measured above predicted (this run), one ms axis: the PNG at ``gantt``, the Chrome trace at ``trace``."""
    panels = comparison_panels(measured, predicted_events(forecast), forecast.basis, forecast.step_time, predicted_peaks,
                               measured_peaks)
    if gantt:
        write_comparison_gantt(gantt, panels, title)
    if trace:
        write_chrome_trace(trace, {p.title: p.events for p in panels})


def _span(events: Sequence[TraceEvent]) -> float:
    return max((e.end for e in events), default=0.0) - min((e.start for e in events), default=0.0)
