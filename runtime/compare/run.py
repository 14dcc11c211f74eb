"""Running one candidate: its pipeline (in one process, or one stage per torchrun process) and a seeded training loop.

Every candidate sees the same samples in the same order: each epoch takes the first floor(N/B)*B indices of the
permutation seeded by (seed, epoch), as ``runtime.train.trainer`` does, cut into steps of the candidate's minibatch.
A step's time covers gathering its rows, moving them to the device and the pipeline step (optimizer included);
the per-epoch test accuracy is evaluated outside the timed steps. Samples per second are the minibatch over the
median step time (the steady state); ``train_seconds`` is the sum of every step's time.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from partition.plan import format_ranges
from partition.spec import MLPSpec
from partition.timing import StageCost
from runtime.comm import LocalTransport, all_reduce_sum
from runtime.compare.types import Candidate
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.stats import spread_json
from runtime.train.config import OptimizerKind, TrainConfig, parse_dtype
from runtime.train.datasets import Dataset
from runtime.train.layout import resolve_devices
from runtime.train.measure import RECENT_STEPS, costs_from_records, gather_records
from runtime.train.trainer import build_pipeline, evaluate, optimizer_factory


@dataclass(frozen=True)
class RunContext:
    """How every candidate runs: device, dtype, optimizer and seed; ``distributed`` when launched by torchrun."""

    device: str = "cpu"
    dtype: str = "float32"
    optimizer: OptimizerKind = OptimizerKind.SGD
    momentum: float = 0.9
    seed: int = 0
    timeout: float = 60.0
    distributed: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        """The compute dtype."""
        return parse_dtype(self.dtype)

    def spans_processes(self, cand: Candidate) -> bool:
        """Whether ``cand`` runs one stage group per torchrun process (else it runs whole in this process)."""
        return self.distributed and cand.num_ranks > 1


def build(ctx: RunContext, spec: MLPSpec, cand: Candidate, one_replica: bool = False) -> Pipeline:
    """The candidate's pipeline: every stage here, or this rank's stages when it spans the torchrun processes.

    A searched (auto) schedule is handed over as it is, so only a pipeline built here can run it. Built here, a PP x
    DP candidate's pipeline runs every replica's microbatches in turn (the same arithmetic as the replicas summing
    their gradients), or with ``one_replica`` one replica's m microbatches (for its memory).
    """
    if ctx.spans_processes(cand):
        tcfg = TrainConfig(spec=spec, batch_size=cand.minibatch, lr=cand.lr, optimizer=ctx.optimizer,
                           momentum=ctx.momentum, seed=ctx.seed, dtype=ctx.dtype, device=ctx.device,
                           stages=cand.num_stages, schedule=cand.schedule, microbatches=cand.microbatches,
                           virtual=cand.virtual, partition=format_ranges(cand.ranges), progress=False,
                           timeout=ctx.timeout, recompute=cand.recompute, data_parallel=cand.replicas)
        return build_pipeline(tcfg)[0]
    devices = resolve_devices(ctx.device, None, cand.num_stages)
    microbatches = cand.microbatches if one_replica else cand.local_microbatches
    pcfg = PipelineConfig(spec=spec, ranges=cand.ranges, schedule=cand.schedule, microbatches=microbatches,
                          devices=devices, dtype=ctx.torch_dtype, seed=ctx.seed, virtual=cand.virtual,
                          recompute=cand.recompute, ready=cand.ready)
    make = optimizer_factory(TrainConfig(lr=cand.lr, optimizer=ctx.optimizer, momentum=ctx.momentum))
    return Pipeline(pcfg, make, LocalTransport())


def step_inputs(pipe: Pipeline, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The rows and targets moved to the devices of the first and last stage (None where this process lacks them)."""
    xs = x.to(pipe.first.device, pipe.cfg.dtype) if pipe.first is not None else None
    ys = y.to(pipe.last.device) if pipe.last is not None else None
    return xs, ys


def share(values: Sequence[float], have: bool, distributed: bool) -> list[float]:
    """Values known on one process (``have``; zeros elsewhere) made known to all under torchrun, by a sum."""
    if not distributed:
        return list(values)
    mine = [float(v) for v in values] if have else [0.0] * len(values)
    return all_reduce_sum(torch.tensor(mine, dtype=torch.float64)).tolist()


def epoch_order(n: int, batch: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample indices of one epoch: the first floor(n / batch) * batch of the (seed, epoch) permutation."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[: (n // batch) * batch]


def train_candidate(
    ctx: RunContext,
    spec: MLPSpec,
    data: Dataset,
    cand: Candidate,
    batch: int,
    epochs: int,
    target_loss: float | None = None,
    tick: Callable[[str], None] | None = None,
) -> dict:
    """Train ``cand`` for ``epochs`` epochs (or until an epoch's mean loss reaches ``target_loss``); its figures."""
    pipe = build(ctx, spec, cand)
    distributed = ctx.spans_processes(cand)
    reporter = pipe.last is not None
    n, b = data.x_train.shape[0], cand.minibatch
    step_losses: list[float] = []
    step_seconds: list[float] = []
    history = []
    recent: deque = deque(maxlen=RECENT_STEPS)  # the action records of the latest steps
    for epoch in range(epochs):
        order = epoch_order(n, batch, ctx.seed, epoch)
        first_step = len(step_losses)
        correct = 0
        for k in range(len(order) // b):
            idx = order[k * b : (k + 1) * b]
            t0 = time.perf_counter()
            xs, ys = step_inputs(pipe, data.x_train[idx], data.y_train[idx])
            out = pipe.step(xs, ys, b, len(step_seconds))
            step_seconds.append(time.perf_counter() - t0)
            recent.append(out.records)
            step_losses.append(out.loss if reporter else 0.0)
            correct += out.correct if reporter else 0
            if tick is not None:
                tick(f"{cand.id} epoch {epoch + 1} loss {step_losses[-1]:.4f}" if reporter else cand.id)
        losses = share(step_losses[first_step:], reporter, distributed)
        seconds = sum(step_seconds[first_step:])
        entry = {"epoch": epoch + 1, "train_loss": statistics.fmean(losses),
                 "train_accuracy": share([correct / len(order)], reporter, distributed)[0],
                 "test_accuracy": evaluate(pipe, data, distributed), "seconds": seconds,
                 "samples_per_second": len(order) / seconds, "samples_seen": (epoch + 1) * len(order)}
        history.append(entry)
        if target_loss is not None and entry["train_loss"] <= target_loss:
            break
    step_losses = share(step_losses, reporter, distributed)
    last_step = [[r.rank, str(r.action) if r.fused == 1 else f"{r.action}x{r.fused}", r.action.op.is_comm, r.start, r.end]
                 for r in gather_records(recent[-1], distributed)]  # the last step's actions on every rank
    costs = costs_from_records([r for rs in recent for r in rs], cand.num_stages)  # medians of the latest steps
    if distributed:  # every rank timed only its own stages
        costs = [StageCost(*row) for row in all_reduce_sum(torch.tensor([[c.f, c.b, c.w] for c in costs])).tolist()]
    total = sum(step_seconds)
    samples = history[-1]["samples_seen"]
    timing = spread_json(step_seconds[1:] or step_seconds)  # the first step allocates gradients and optimizer state
    return {
        "epochs": history,
        "step_losses": step_losses,
        "step_seconds": step_seconds,
        "optimizer_steps": len(step_seconds),
        "samples_seen": samples,
        "train_seconds": total,
        "samples_per_second": b / timing["median"],
        "step_time": timing,
        "test_accuracy": history[-1]["test_accuracy"],
        "final_loss": history[-1]["train_loss"],
        "last_step": last_step,
        "measured_stage_costs": [{"f": c.f, "b": c.b, "w": c.w} for c in costs],
    }


def time_to_target(history: Sequence[dict], target: float) -> tuple[float | None, int | None]:
    """(training seconds, samples seen) at the end of the first epoch whose mean loss is <= ``target``, or None."""
    elapsed = 0.0
    for entry in history:
        elapsed += entry["seconds"]
        if entry["train_loss"] is not None and entry["train_loss"] <= target:
            return elapsed, entry["samples_seen"]
    return None, None
