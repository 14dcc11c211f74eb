"""Running one candidate: its pipeline (in one process, or one stage per torchrun process) and a seeded training loop.

Every candidate sees the same samples in the same order: each epoch takes the first floor(N/B)*B indices of the
permutation seeded by (seed, epoch), as ``runtime.train.trainer`` does, cut into steps of the candidate's minibatch.
A step's time covers gathering its rows, moving them to the device and the pipeline step (optimizer included);
the per-epoch test accuracy is evaluated outside the timed steps. Samples per second are the minibatch over the
median step time (the steady state); ``train_seconds`` is the sum of every step's time.

Under torchrun a candidate spanning the processes runs as a dp x pp grid (``runtime.train.process``): each of its D
replicas takes its disjoint B/D rows of every step, the loss divided by B; the loss and correct count of a step are
then the grid's on every rank, the measured stage costs the mean over the replicas, the last-step records replica 0's.
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
from runtime.comm import LocalTransport
from runtime.compare.types import Candidate
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.stats import spread_json
from runtime.train.config import OptimizerKind, TrainConfig, parse_dtype
from runtime.train.data_parallel import GridCollectives
from runtime.train.datasets import Dataset
from runtime.train.layout import resolve_devices
from runtime.train.measure import RECENT_STEPS, costs_from_records, gather_records, replica_mean
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
    """The candidate's pipeline: every stage here, or this rank's stages when it spans the torchrun processes (a PP x DP
    candidate: this rank's stages of its replica, in a dp x pp grid whose collectives sum the replicas' gradients).

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


def replica_of(pipe: Pipeline) -> tuple[int, int]:
    """(this process's replica, replicas) of a pipeline built as one replica of a dp x pp grid; (0, 1) otherwise."""
    if isinstance(pipe.collectives, GridCollectives):
        return pipe.collectives.grid.dp_rank, pipe.collectives.grid.dp_size
    return 0, 1


def replica_rows(idx: torch.Tensor, replica: int, replicas: int) -> torch.Tensor:
    """Replica ``replica``'s disjoint slice of a step's row indices (as ``runtime.train.process.Process.replica_rows``)."""
    share = idx.shape[0] // replicas
    return idx[replica * share : (replica + 1) * share]


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
    """Train ``cand`` for ``epochs`` epochs (or until an epoch's mean loss reaches ``target_loss``); its figures.

    Spanning the torchrun processes, every rank knows each step's loss (the grid's sum, see the module docstring).
    """
    pipe = build(ctx, spec, cand)
    distributed = ctx.spans_processes(cand)
    reporter = distributed or pipe.last is not None
    replica, replicas = replica_of(pipe)
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
            idx = replica_rows(order[k * b : (k + 1) * b], replica, replicas)
            t0 = time.perf_counter()
            xs, ys = step_inputs(pipe, data.x_train[idx], data.y_train[idx])
            out = pipe.step(xs, ys, idx.shape[0], len(step_seconds), denom=float(b))
            step_seconds.append(time.perf_counter() - t0)
            recent.append(out.records)
            step_losses.append(out.loss if reporter else 0.0)
            correct += out.correct if reporter else 0
            if tick is not None:
                tick(f"{cand.id} epoch {epoch + 1} loss {step_losses[-1]:.4f}" if reporter else cand.id)
        seconds = sum(step_seconds[first_step:])
        entry = {"epoch": epoch + 1, "train_loss": statistics.fmean(step_losses[first_step:]),
                 "train_accuracy": correct / len(order), "test_accuracy": evaluate(pipe, data, distributed),
                 "seconds": seconds, "samples_per_second": len(order) / seconds,
                 "samples_seen": (epoch + 1) * len(order)}
        history.append(entry)
        if target_loss is not None and entry["train_loss"] <= target_loss:
            break
    mine = recent[-1] if replica == 0 else []  # replica 0's ranks stand for every replica
    last_step = [[r.rank, str(r.action) if r.fused == 1 else f"{r.action}x{r.fused}", r.action.op.is_comm, r.start, r.end]
                 for r in gather_records(mine, distributed)]  # the last step's actions on every rank of one replica
    costs = costs_from_records([r for rs in recent for r in rs], cand.num_stages)  # from the latest steps
    if distributed:  # every rank timed only its own stages, and each stage runs once in every replica
        table = torch.tensor([[c.f, c.b, c.w] for c in costs], dtype=torch.float64)
        costs = [StageCost(*map(float, row)) for row in replica_mean(table, pipe.schedule.num_ranks)]
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
