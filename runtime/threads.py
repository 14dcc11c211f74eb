"""How many CPU threads torch gets: one rule, ``--threads N|auto``, for train.py, compare.py and bench.py.

OpenMP threads spin while they wait for a core; when another process holds one of the cores, every parallel
region waits for it, and a small step can take 100 times longer. So ``auto`` never gambles on a parallel step:

* under torchrun: 1 thread per rank (the ranks are the parallelism);
* in one process: 1 thread when the step is too small to gain (under ``SMALL_STEP_FLOPS``) or the machine has
  one core; otherwise a short probe times the step's largest GEMM with 1 thread and with every core, and all
  cores win only when they are at least ``PROBE_MARGIN`` faster.

An explicit N is used as given (N >= 1). ``HELP`` states the rule for ``--help``.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

from partition.cost import step_flops
from partition.spec import MLPSpec

AUTO = "auto"
SMALL_STEP_FLOPS = 2e9  # below this a step takes a few ms on one core: threads cannot pay for their wake-ups
PROBE_MARGIN = 1.25  # all cores must be this much faster than 1 thread on the probe
PROBE_REPEATS = 5
HELP = (f"torch CPU threads: N, or auto = 1 per rank under torchrun; in one process 1 when a step is under "
        f"{SMALL_STEP_FLOPS / 1e9:g} GFLOP, else the faster of 1 and all cores on a short probe of the largest GEMM "
        f"(all cores must win by {round((PROBE_MARGIN - 1) * 100)}%%); default %(default)s")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count and why it was chosen (for logs and result files)."""

    threads: int
    reason: str


def parse_threads(text: str | int) -> int | None:
    """``"auto"`` -> None, ``"3"`` -> 3; ValueError (naming the flag) for anything else or N < 1."""
    if str(text).strip().lower() == AUTO:
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"threads: expected a number >= 1 or auto, got {text!r}") from None
    if n < 1:
        raise ValueError(f"threads: expected a number >= 1 or auto, got {n}")
    return n


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _probe_seconds(threads: int, rows: int, width_in: int, width_out: int) -> float:
    """Median time of one (rows x width_in) @ (width_in x width_out) product with ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(rows, width_in), torch.randn(width_in, width_out)
        torch.mm(a, b)  # warm-up
        times = []
        for _ in range(PROBE_REPEATS):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        torch.set_num_threads(before)


def choose_threads(requested: int | None, distributed: bool, step_flops: float, gemm: tuple[int, int, int],
                   device: str = "cpu") -> ThreadChoice:
    """The rule of the module docstring; ``gemm`` = (rows, width_in, width_out) of the step's largest product."""
    if requested is not None:
        return ThreadChoice(requested, "as asked")
    if not device.startswith("cpu"):
        return ThreadChoice(1, "auto: the GPU computes; one host thread")
    if distributed:
        return ThreadChoice(1, "auto: one per rank under torchrun")
    n = cores()
    if n == 1:
        return ThreadChoice(1, "auto: one core")
    if step_flops < SMALL_STEP_FLOPS:
        return ThreadChoice(1, f"auto: a step is {step_flops / 1e9:.2g} GFLOP, too small to gain from threads")
    one, many = _probe_seconds(1, *gemm), _probe_seconds(n, *gemm)
    if one >= PROBE_MARGIN * many:
        return ThreadChoice(n, f"auto: the probe took {many * 1e3:.2f} ms on {n} threads vs {one * 1e3:.2f} ms on 1")
    return ThreadChoice(1, f"auto: the probe took {one * 1e3:.2f} ms on 1 thread vs {many * 1e3:.2f} ms on {n}")


def apply_threads(choice: ThreadChoice) -> ThreadChoice:
    """Give torch ``choice.threads`` threads; returns ``choice``."""
    torch.set_num_threads(choice.threads)
    return choice


def choose_for_model(requested: int | None, distributed: bool, spec: MLPSpec, batch: int, microbatches: int,
                     device: str = "cpu") -> ThreadChoice:
    """``choose_threads`` for a step of ``spec`` over ``batch`` rows in ``microbatches`` (the probe: the widest
    layer's forward GEMM at one microbatch)."""
    flops = step_flops(spec, batch)
    widest = max(range(spec.num_layers), key=lambda i: spec.widths[i] * spec.widths[i + 1])
    rows = max(batch // max(microbatches, 1), 1)
    return choose_threads(requested, distributed, flops, (rows, spec.widths[widest], spec.widths[widest + 1]), device)
