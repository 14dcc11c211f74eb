"""When the prediction is wrong, say where: each term's share of the error, largest first.

Each measured per-action time (stage s, op) replaces its predicted value alone, and the step is predicted again:
the change is that term's contribution (for stages run in turn, m x the difference; with overlapping ranks, only
what reaches the critical path). The step's closing terms measured in the run (its optimizer steps, its closing
all-reduce) contribute their difference from the prediction as they are, once per step. What the step still
takes beyond the prediction made from all of these lies outside the actions: transfers, waits and host time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from partition.schedule.actions import Op, Schedule
from partition.timing import StageCost
from runtime.calibrate.costs import CostModel
from runtime.calibrate.forecast import Forecast, step_body

OUTSIDE = "outside the actions (transfers, waits, host time)"


def _as_recorded(c: StageCost, split: bool) -> StageCost:
    """A stage cost as the records count it: a fused backward BW is all in B."""
    return c if split else StageCost(c.f, c.b + c.w, 0.0)


def explain(forecast: Forecast, schedule: Schedule, model: CostModel, activation_bytes: Sequence[float] | None,
            concurrent: bool, measured_costs: Sequence[StageCost], measured_step: float, top: int = 4,
            measured_terms: Mapping[str, float] | None = None) -> dict:
    """The prediction error and its largest contributors, JSON-ready; ``text`` holds the short printed block.

    ``measured_terms``: per-step terms measured in the run, by the names of ``forecast.terms`` ("optimizer",
    "loss all-reduce")."""
    split = schedule.splits_backward
    predicted = [_as_recorded(c, split) for c in forecast.stage_costs]
    measured = list(measured_costs)
    base, _ = step_body(schedule, predicted, model.link, activation_bytes, concurrent)
    counts = {op: sum(1 for acts in schedule.actions.values() for a in acts if a.op is op) // len(predicted)
              for op in (Op.F, Op.B, Op.W, Op.BW)}
    rows = []
    names = (("f", "F"), ("b", "B" if split else "BW"), ("w", "W"))
    for s, (p, m) in enumerate(zip(predicted, measured)):
        for field, label in names:
            pv, mv = getattr(p, field), getattr(m, field)
            if pv == mv:
                continue
            trial = list(predicted)
            trial[s] = replace(p, **{field: mv})
            effect = step_body(schedule, trial, model.link, activation_bytes, concurrent)[0] - base
            per = counts[Op.F] if field == "f" else counts[Op.W] if field == "w" else counts[Op.B] + counts[Op.BW]
            rows.append({"term": f"stage {s} {label}", "predicted": pv, "measured": mv, "per_step": per,
                         "effect": effect})
    per_step_terms = [{"term": name, "predicted": forecast.terms[name], "measured": value, "per_step": 1,
                       "effect": value - forecast.terms[name]} for name, value in (measured_terms or {}).items()]
    rows += per_step_terms
    body, sim = step_body(schedule, measured, model.link, activation_bytes, concurrent)
    from_measured = (body + model.gradient_all_reduce(schedule, sim, concurrent) + model.per_step
                     + sum(r["effect"] for r in per_step_terms))
    rows.append({"term": OUTSIDE, "predicted": None, "measured": None, "per_step": 1,
                 "effect": measured_step - from_measured})
    rows.sort(key=lambda r: -abs(r["effect"]))
    error = (forecast.step_time - measured_step) / measured_step if measured_step > 0 else None
    shown = rows[:top]
    return {"prediction_error": error, "predicted_from_measured_actions": from_measured, "contributors": shown,
            "text": format_block(forecast.step_time, measured_step, error, shown)}


def format_block(predicted: float, measured: float, error: float | None, rows: Sequence[dict]) -> str:
    """The few lines printed after a run."""
    head = (f"prediction error {error:+.1%} (this run: predicted {predicted * 1e3:.3g} ms, measured "
            f"{measured * 1e3:.3g} ms); largest contributors (+ = the run took longer than predicted):"
            if error is not None else "prediction error: no measured step")
    lines = [head]
    for r in rows:
        if r["predicted"] is None:
            lines.append(f"  {r['term']}: {r['effect'] * 1e3:+.3g} ms per step")
        else:
            lines.append(f"  {r['term']}: measured {r['measured'] * 1e3:.3g} ms vs {r['predicted'] * 1e3:.3g} predicted, "
                         f"x{r['per_step']} per step: {r['effect'] * 1e3:+.3g} ms")
    return "\n".join(lines)
