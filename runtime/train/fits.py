"""Refuse, before anything is allocated, a run whose predicted peak memory exceeds what its devices have.

The prediction is the memory model's (``partition.memory.plan_memory``: parameters, gradients, optimizer state,
the activations each stage holds at the schedule's peak, and its messages), summed over the stages that share a
device. A GPU offers its free memory; the CPU the system's available memory (MemAvailable). Under torchrun each
process sees only its own stages, so the check is made for single-process runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from partition.cost import Optimizer
from partition.memory import plan_memory
from partition.schedule.simulate import simulate
from partition.timing import StageCost
from partition.units import count, format_bytes
from runtime.comm import launched_by_torchrun
from runtime.train.config import OptimizerKind, TrainConfig
from runtime.train.layout import resolve_devices
from runtime.train.process import pipeline_config


def available_bytes(device: str) -> int:
    """Memory a run may take on ``device``: a GPU's free memory, or the system's available memory for the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _optimizer(cfg: TrainConfig) -> Optimizer:
    if cfg.optimizer is OptimizerKind.ADAM:
        return Optimizer.ADAM
    return Optimizer.MOMENTUM if cfg.momentum > 0 else Optimizer.SGD


def predicted_bytes(cfg: TrainConfig, rows: int | None = None) -> dict[str, int]:
    """Predicted peak bytes per device of the single-process run ``cfg`` describes (``rows`` per microbatch)."""
    pcfg = pipeline_config(cfg, resolve_devices(cfg.device, cfg.devices, cfg.stages))
    sim = simulate(pcfg.build_schedule(), [StageCost(1.0, 1.0, 1.0)] * pcfg.num_stages)
    rows = rows or cfg.batch_size // cfg.microbatches
    stages = plan_memory(cfg.spec, pcfg.ranges, rows, cfg.dtype, _optimizer(cfg), sim.peak_inflight,
                         sim.peak_deferred_w, pcfg.stage_recompute())
    need: dict[str, int] = {}
    for device, report in zip(pcfg.devices, stages):
        need[device] = need.get(device, 0) + report.total
    return need


def check_fits(cfg: TrainConfig, available: Callable[[str], int] = available_bytes) -> None:
    """ValueError (one line, saying what would fit) when a device's predicted peak exceeds ``available(device)``."""
    if launched_by_torchrun() or cfg.data_parallel > 1:  # several processes: each holds only its own stages
        return
    rows = cfg.batch_size // cfg.microbatches
    need = predicted_bytes(cfg, rows)
    over = {d: n for d, n in need.items() if n > available(d)}
    if not over:
        return
    device, bytes_needed = max(over.items(), key=lambda item: item[1] - available(item[0]))
    have = available(device)
    one, two = predicted_bytes(cfg, 1)[device], predicted_bytes(cfg, 2)[device]  # linear in the rows
    per_row, fixed = two - one, 2 * one - two
    why = (f"memory: the run needs {format_bytes(bytes_needed)} on {device} (memory model, "
           f"{count(cfg.stages, 'stage')}), which has {format_bytes(have)} available")
    fitting_rows = (have - fixed) // per_row if per_row > 0 else 0
    if fitting_rows < 1:
        raise ValueError(f"{why}; its parameters, gradients and optimizer state alone need {format_bytes(fixed)}: "
                         "use narrower layers, or spread the stages over more GPUs (--devices)")
    raise ValueError(f"{why}; --batch-size {min(fitting_rows, rows) * cfg.microbatches} would fit")
