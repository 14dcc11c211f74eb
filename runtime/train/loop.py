"""The training loop's phases: the data, one epoch of steps on this replica's rows, and the results."""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch

from partition.schedule.actions import format_table
from runtime.calibrate.run import RunPrediction, predict_run, state_kind
from runtime.engine.executor import ActionRecord
from runtime.train.config import TrainConfig
from runtime.train.datasets import Dataset, load_dataset
from runtime.train.measure import RECENT_STEPS, step_figures
from runtime.train.process import Process, evaluate, optimizer_factory
from runtime.train.progress import ProgressBar
from runtime.train.slow_steps import SlowSteps


def load_training_data(cfg: TrainConfig) -> Dataset:
    """The dataset, checked to hold at least one global batch."""
    data = load_dataset(cfg.dataset, cfg.spec, cfg.seed, cfg.samples)
    n = data.x_train.shape[0]
    if n < cfg.batch_size:
        raise ValueError(f"batch-size: {cfg.batch_size} is larger than the {n} training samples")
    return data


def steps_per_epoch(cfg: TrainConfig, data: Dataset) -> int:
    """Optimizer steps in one pass over the training set (the last partial batch is dropped)."""
    return data.x_train.shape[0] // cfg.batch_size


def epoch_order(cfg: TrainConfig, n: int, epoch: int) -> torch.Tensor:
    """The row order of ``epoch``: the same at any layout, so results mean the same at any D."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))


@dataclass
class Tally:
    """What accumulates over the whole run: the step count, step times and the last step's timed actions."""

    step: int
    step_times: list[float] = field(default_factory=list)
    closing: list[float] = field(default_factory=list)  # per step: its closing all-reduce (StepOutput.closing)
    optimizer: list[float] = field(default_factory=list)  # per step: its optimizer steps
    records: list[ActionRecord] = field(default_factory=list)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_STEPS))  # the last steps' action records
    slow: SlowSteps | None = None  # warns once when steps run far over the prediction


def run_epoch(cfg: TrainConfig, proc: Process, data: Dataset, epoch: int, tally: Tally, bar: ProgressBar) -> dict:
    """Train one epoch (each replica on its slice of every global batch); returns its history entry."""
    per_epoch = steps_per_epoch(cfg, data)
    order = epoch_order(cfg, data.x_train.shape[0], epoch)
    fault = planned_fault(proc.rank) if proc.distributed else None
    losses, correct, t_epoch = [], 0, time.perf_counter()
    for k in range(per_epoch):
        idx = proc.replica_rows(order[k * cfg.batch_size : (k + 1) * cfg.batch_size])
        traced = epoch == cfg.epochs - 1 and k == per_epoch - 1
        if fault is not None and fault[0] == tally.step:
            inject_fault(fault[1])
        t0 = time.perf_counter()
        out = proc.pipe.step(data.x_train[idx], data.y_train[idx], idx.shape[0], tally.step, traced,
                             denom=float(cfg.batch_size))
        tally.step_times.append(time.perf_counter() - t0)
        tally.closing.append(out.closing)
        tally.optimizer.append(out.optimizer)
        if tally.slow is not None:
            tally.slow.observe(tally.step_times[-1], tally.step)
        tally.recent.append(out.records)
        if traced:
            tally.records = out.records
        tally.step += 1
        if out.loss is not None:
            losses.append(out.loss)
            correct += out.correct
        bar.update(1, f"epoch {epoch + 1} loss {losses[-1]:.4f}" if losses else "")
    elapsed = time.perf_counter() - t_epoch
    seen = per_epoch * cfg.batch_size
    return {"epoch": epoch + 1, "train_loss": statistics.fmean(losses) if losses else None,
            "train_accuracy": correct / seen if losses else None,
            "test_accuracy": evaluate(proc.pipe, data, proc.distributed), "seconds": elapsed,
            "samples_per_second": seen / elapsed, "step_losses": losses}


def predict(cfg: TrainConfig, proc: Process, data: Dataset) -> RunPrediction:
    """The step-time forecast made before the run, calibrated on this replica's first batch."""
    b = cfg.batch_size // cfg.data_parallel
    return predict_run(proc.pipe, optimizer_factory(cfg), data.x_train[:b], data.y_train[:b], b, proc.distributed,
                       cfg.timeout, cfg.link, state_kind(cfg.optimizer.value, cfg.momentum))


def summarize(cfg: TrainConfig, proc: Process, history: list[dict], tally: Tally, prediction: RunPrediction) -> dict:
    """The results of the run (identical losses and accuracies on every rank)."""
    pipe = proc.pipe
    recent = [r for rs in tally.recent for r in rs]
    figures = step_figures(pipe, tally.records, recent, tally.step_times, cfg, proc.distributed, prediction,
                           (tally.closing, tally.optimizer))
    grid = proc.grid
    return {
        "config": {**asdict(cfg), "spec": {**asdict(cfg.spec), "activation": cfg.spec.activation.value,
                                            "loss": cfg.spec.loss.value}, "optimizer": cfg.optimizer.value,
                   "schedule": cfg.schedule.value, "engine": cfg.engine.value, "gemm": cfg.gemm.value},
        "mode": "torchrun" if proc.distributed else "single-process",
        "reporter": proc.rank == 0,
        "rank": proc.rank,
        "grid": None if grid is None else {"dp": grid.dp_size, "pp": grid.pp_size, "dp_rank": grid.dp_rank,
                                           "pp_rank": grid.pp_rank},
        "num_ranks": pipe.schedule.num_ranks,
        "schedule_table": format_table(pipe.schedule),
        "plan": [list(r) for r in pipe.cfg.ranges],
        "devices": list(pipe.cfg.devices),
        "epochs": history,
        "train_loss": [h["train_loss"] for h in history],
        "step_losses": [loss for h in history for loss in h.get("step_losses", [])],
        "optimizer_steps": tally.step,
        "test_accuracy": [h["test_accuracy"] for h in history],
        "samples_per_second": statistics.median(h["samples_per_second"] for h in history) if history else None,
        "peak_memory_bytes": _peak_memory(proc),
        **figures,
    }


def json_path(cfg: TrainConfig, proc: Process) -> str | None:
    """Where this rank writes its results: every rank when the path holds ``{rank}``, else rank 0 only."""
    if not cfg.json:
        return None
    if "{rank}" in cfg.json:
        return cfg.json.replace("{rank}", str(proc.rank))
    return cfg.json if proc.rank == 0 else None


def planned_fault(rank: int) -> tuple[int, str] | None:
    """Fault injection for tests: PIPEGRAPH_FAULT=RANK:STEP:kill|stop|raise makes that global rank fail there."""
    text = os.environ.get("PIPEGRAPH_FAULT")
    if not text:
        return None
    who, step, mode = text.split(":")
    return (int(step), mode) if int(who) == rank else None


def inject_fault(mode: str) -> None:
    """Fail the way PIPEGRAPH_FAULT asked: SIGKILL (no goodbye), SIGSTOP (a hang) or an exception."""
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    raise RuntimeError("injected fault (PIPEGRAPH_FAULT)")


def _peak_memory(proc: Process) -> int | None:
    """Peak CUDA memory allocated on this process's GPUs (None on CPU)."""
    devs = {st.device for st in proc.pipe.stages.values() if st.device.type == "cuda"}
    return sum(torch.cuda.max_memory_allocated(d) for d in devs) if devs else None
