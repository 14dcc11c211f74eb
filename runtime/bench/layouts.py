"""PP vs PP x DP vs DP on N processes: train.py under torchrun per layout, measured against the planner's ranking.

For each model and each process count N, every layout of N devices (``partition.layouts``) trains as its own
``torchrun --standalone`` job of ``train.py``; its JSON gives the measured median step and the run's own prediction.
The planner then ranks the same layouts from per-layer times profiled here (one thread) at each layout's microbatch
rows and the link the runs measured, and the report says which layout won and whether the planner picked it. With
more processes than cores the runs are oversubscribed (the planner assumes one core per device): the report says so.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from partition.layouts import Layout, plan_layouts
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost
from runtime.calibrate.fidelity import Case, run_case
from runtime.calibrate.link import cached_link
from runtime.output import markdown_table, write_json
from runtime.train.profile import profile_layers


@dataclass(frozen=True)
class LayoutBenchConfig:
    """Models as (width, layers); each trained as every layout of each process count in ``processes``."""

    models: tuple[tuple[int, int], ...] = ((1024, 8), (256, 16))
    processes: tuple[int, ...] = (2, 4)
    batch: int = 256
    microbatches: int = 4
    samples: int = 4096
    epochs: int = 2
    schedule: ScheduleKind = ScheduleKind.ONE_F_ONE_B
    timeout: float = 900.0

    def __post_init__(self) -> None:
        if not self.models or any(w < 1 or n < 1 for w, n in self.models):
            raise ValueError(f"models: expected WIDTHxLAYERS with both >= 1, got {list(self.models)}")
        if not self.processes or min(self.processes) < 1:
            raise ValueError(f"processes: expected counts >= 1, got {list(self.processes)}")


def parse_models(text: str) -> tuple[tuple[int, int], ...]:
    """``"1024x8,256x16"`` as ((1024, 8), (256, 16)); ValueError names a malformed entry."""
    models = []
    for part in text.split(","):
        try:
            width, layers = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"models: expected WIDTHxLAYERS like 1024x8, got {part.strip()!r}") from None
        models.append((width, layers))
    return tuple(models)


def _args(cfg: LayoutBenchConfig, width: int, layers: int, layout: Layout) -> tuple[str, ...]:
    return ("--dataset", "synthetic", "--samples", str(cfg.samples), "--widths", ",".join([str(width)] * (layers + 1)),
            "--batch-size", str(cfg.batch), "--microbatches", str(cfg.microbatches), "--epochs", str(cfg.epochs),
            "--schedule", cfg.schedule.value, "--stages", str(layout.stages), "--data-parallel", str(layout.replicas))


def run_layout_bench(cfg: LayoutBenchConfig, json_path: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Train every layout, rank them with the planner, and return (and write) the rows and verdicts."""
    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    rows, verdicts = [], []
    for width, layers in cfg.models:
        spec = MLPSpec((width,) * (layers + 1))
        for n in cfg.processes:
            measured = {}
            for layout in plan_layouts(spec, n, cfg.batch, cfg.microbatches, kind=cfg.schedule):
                if not layout.feasible:
                    log(f"{width}x{layers}, {layout.name}: out ({layout.why})")
                    continue
                log(f"{width}x{layers}, {n} processes: {layout.name}")
                with tempfile.TemporaryDirectory() as tmp:
                    case = Case(layout.name, "train.py", _args(cfg, width, layers, layout), ranks=n)
                    try:
                        measured[layout.name] = run_case(case, Path(tmp), cfg.timeout)[0]
                    except (RuntimeError, OSError, subprocess.TimeoutExpired, KeyError, ValueError) as err:
                        log(f"  failed: {err}")
            ranked = plan_layouts(spec, n, cfg.batch, cfg.microbatches, kind=cfg.schedule, link=_link(),
                                  layer_times=_profiled(spec))
            rows += [_row(width, layers, n, cores, i, x, measured.get(x.name)) for i, x in enumerate(ranked)]
            verdicts.append(_verdict(width, layers, n, cores, ranked, measured))
    config = {"models": [list(m) for m in cfg.models], "processes": list(cfg.processes), "batch": cfg.batch,
              "microbatches": cfg.microbatches, "schedule": cfg.schedule.value, "epochs": cfg.epochs}
    result = {"benchmark": "layouts", "cores": cores, "config": config, "rows": rows, "verdicts": verdicts}
    result["table"] = layout_table(result)
    if json_path:
        write_json(json_path, result)
    return result


def _link() -> LinkModel:
    """The link the torchrun runs measured on this machine (free if none was recorded)."""
    try:
        return cached_link()[0]
    except ValueError:
        return LinkModel()


def _profiled(spec: MLPSpec) -> Callable[[int], Sequence[StageCost]]:
    """Per-layer times at a microbatch of ``rows``, profiled once per size."""
    seen: dict[int, Sequence[StageCost]] = {}

    def times(rows: int) -> Sequence[StageCost]:
        if rows not in seen:
            seen[rows] = profile_layers(spec, rows).layers
        return seen[rows]

    return times


def _oversubscribed(n: int, cores: int) -> str:
    return f"{n} processes on {cores} cores" + (" (oversubscribed)" if n > cores else "")


def _row(width: int, layers: int, n: int, cores: int, rank: int, x: Layout, got: dict | None) -> dict:
    return {"model": f"{width}x{layers}", "processes": _oversubscribed(n, cores), "layout": x.name,
            "planner_rank": rank + 1 if x.feasible else None, "planner_step_time": x.step_time, "why_out": x.why,
            "measured_step_time": got["measured"] if got else None, "run_prediction": got["predicted"] if got else None,
            "run_prediction_error": got["error"] if got else None}


def _verdict(width: int, layers: int, n: int, cores: int, ranked: Sequence[Layout], measured: dict) -> str:
    where = f"{width}x{layers}, {_oversubscribed(n, cores)}"
    if not measured:
        return f"{where}: no layout ran"
    won = min(measured, key=lambda name: measured[name]["measured"])
    picked = next((x.name for x in ranked if x.feasible), None)
    runs = min(measured, key=lambda name: measured[name]["predicted"])
    return (f"{where}: {won} won ({measured[won]['measured'] * 1e3:.3g} ms a step); the planner picked {picked}: "
            f"{'yes' if picked == won else 'no'}; the runs' own predictions picked {runs}")


def layout_table(result: dict) -> str:
    """The rows as a Markdown table, then the verdicts."""
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.3g}"

    body = [[r["model"], r["processes"], r["layout"], ms(r["measured_step_time"]), ms(r["run_prediction"]),
             "-" if r["run_prediction_error"] is None else f"{r['run_prediction_error']:+.0%}", ms(r["planner_step_time"]),
             r["planner_rank"] or f"out: {r['why_out']}"] for r in result["rows"]]
    lines = markdown_table(["model", "processes", "layout", "measured ms", "run's prediction ms", "error",
                            "planner ms", "planner rank"], body)
    return "\n".join([*lines, "", *result["verdicts"]])
