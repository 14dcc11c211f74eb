"""Benchmark `contention`: the default training command alone vs with a busy loop holding another core.

With torch's default threads (one per core), an OpenMP parallel region waits for every thread; when another
process holds a core, each region waits for it, and a small step slows many times over. The training command's
``--threads auto`` gives such a step one thread. This runs the command as a user would (a subprocess, with its
default flags, a few epochs and no OMP_NUM_THREADS), alternately alone and next to ``busy`` processes spinning in a Python loop,
and compares the median step times the command reports in its JSON (one per run; spread over the rounds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.bench.report import machine, ms
from runtime.output import text_table
from runtime.stats import Spread

BUSY_LOOP = "while True: pass"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ContentionConfig:
    """How long each training run is, how many rounds alternate, how many busy processes, extra flags."""

    epochs: int = 3
    rounds: int = 3
    busy: int = 1
    flags: tuple[str, ...] = ()
    timeout: float = 300.0


@contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """``count`` processes spinning on a core each, stopped on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _median_step(command: Sequence[str], cfg: ContentionConfig) -> float:
    """The median step time one run of the training command reports."""
    with tempfile.TemporaryDirectory(prefix="pipegraph-contention-") as tmp:
        out = Path(tmp) / "train.json"
        args = [*command, "--epochs", str(cfg.epochs), "--no-progress", "--json", str(out), *cfg.flags]
        env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}  # the command's own default
        done = subprocess.run(args, capture_output=True, text=True, timeout=cfg.timeout, env=env)
        if done.returncode != 0:
            raise ValueError(f"contention: the training command failed: {done.stderr.strip().splitlines()[-1:]}")
        result = json.loads(out.read_text())
    return float(result["measured_step_time"]["median"])


def run_contention(cfg: ContentionConfig, command: Sequence[str], log: Callable[[str], None] = print) -> dict:
    """Median step time alone and with busy loops (rounds alternate); JSON-ready, with ``table``."""
    where = machine(torch.device("cpu"))  # the load average before the runs
    alone: list[float] = []
    loaded: list[float] = []
    log(f"contention: {' '.join(command[1:])} for {cfg.epochs} epochs, alone and next to {cfg.busy} busy loop(s) ...")
    for _ in range(cfg.rounds):
        alone.append(_median_step(command, cfg))
        with busy_loops(cfg.busy):
            loaded.append(_median_step(command, cfg))
    a, b = Spread.of(alone), Spread.of(loaded)
    config = {"command": list(command[1:]), "epochs": cfg.epochs, "rounds": cfg.rounds, "busy": cfg.busy,
              "flags": list(cfg.flags)}
    out = {"benchmark": "contention", "machine": where, "config": config,
           "results": [{"case": "alone", "step_time": a.to_json()},
                       {"case": f"with {cfg.busy} busy loop(s)", "step_time": b.to_json()}],
           "ratio": b.median / a.median}
    return out | {"table": table_text(out)}


def table_text(result: dict) -> str:
    """The `contention` table, from the result's JSON alone."""
    body = [[r["case"], ms(r["step_time"])] for r in result["results"]]
    body.append(["ratio (with / alone, medians)", f"{result['ratio']:.2f}x"])
    return text_table(["case", "step (median [p25-p75])"], body)
