"""A pipeline: the stages a process holds, their optimizers and the executor; one step = one schedule flush."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from partition.recompute import Recompute, per_stage
from partition.schedule.actions import Schedule, ScheduleKind
from partition.schedule.generators import generate
from partition.schedule.transforms import defer_all_w
from partition.spec import MLPSpec
from runtime.engine.executor import ActionRecord, Executor
from runtime.engine.stage import Engine, Stage
from runtime.ops.clip import clip_grad_norm
from runtime.ops.gemm import Gemm
from runtime.ops.model import forward_layers, init_parameters
from runtime.transport import Transport

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


class NonFiniteLoss(RuntimeError):
    """The loss of a step was NaN or infinite; names the step and the first stage whose outputs were."""

    def __init__(self, step: int, stage: int) -> None:
        super().__init__(f"non-finite loss at step {step}, first seen on stage {stage}; parameters were not updated")
        self.step = step
        self.stage = stage


class Collectives(Protocol):
    """What a step needs from the other processes of its grid (see :class:`LocalCollectives` for one process)."""

    spans_ranks: bool  # False: this process is the whole run, the sums below are the identity

    def grads_ready(self, stage: Stage) -> None:
        """``stage``'s gradients of this step are final: start reducing them over the replicas."""

    def wait_grads(self) -> None:
        """Every reduction started by :meth:`grads_ready` is done and written back into the gradients."""

    def sum_all(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over every rank of the run."""

    def sum_pipeline(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks of this process's pipeline (one replica)."""


class LocalCollectives:
    """One process (or ranks that share nothing but activations): nothing to reduce, sums are the identity."""

    spans_ranks = False

    def grads_ready(self, stage: Stage) -> None:
        """Nothing to reduce."""

    def wait_grads(self) -> None:
        """Nothing in flight."""

    def sum_all(self, values: torch.Tensor) -> torch.Tensor:
        """The values themselves."""
        return values

    def sum_pipeline(self, values: torch.Tensor) -> torch.Tensor:
        """The values themselves."""
        return values


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that fixes the math and the placement of a pipeline."""

    spec: MLPSpec
    ranges: tuple[tuple[int, int], ...]
    schedule: ScheduleKind
    microbatches: int
    devices: tuple[str, ...]
    dtype: torch.dtype = torch.float32
    seed: int = 0
    virtual: int = 1
    fuse_w: bool = True
    defer_w: bool = False
    engine: Engine = Engine.AUTOGRAD
    recompute: tuple[Recompute, ...] = ()  # none, one choice for every stage, or one per stage
    clip_grad_norm: float | None = None  # cap on the global 2-norm of the gradients (over every stage)
    ready: Schedule | None = None  # a schedule built elsewhere (auto's: partition.schedule.capped), used as given
    gemm: Gemm = Gemm.TORCH  # the kernel of the F and B GEMMs (oneDNN: direct engine, float32 CPU)

    @property
    def num_stages(self) -> int:
        """Number of stages (layer ranges)."""
        return len(self.ranges)

    @property
    def stages_per_rank(self) -> int:
        """How many stages each rank holds: v for interleaving, 2 for the V-shaped zero-bubble schedule."""
        if self.ready is not None:
            return self.ready.num_stages // self.ready.num_ranks
        return self.schedule.stages_per_rank(self.virtual)

    @property
    def num_ranks(self) -> int:
        """Number of pipeline ranks the schedule runs on."""
        return self.num_stages // self.stages_per_rank

    def stage_recompute(self) -> tuple[Recompute, ...]:
        """Each stage's recomputation choice."""
        return per_stage(self.recompute, self.num_stages)

    def build_schedule(self) -> Schedule:
        """The compute schedule, checked against the stage count."""
        if self.ready is not None:
            if (self.ready.num_stages, self.ready.num_microbatches) != (self.num_stages, self.microbatches):
                raise ValueError(f"schedule: the given one has {self.ready.num_stages} stages and {self.ready.num_microbatches} "
                                 f"microbatches, the plan {self.num_stages} and {self.microbatches}")
            return defer_all_w(self.ready) if self.defer_w else self.ready
        per = self.stages_per_rank
        if self.num_stages % per:
            raise ValueError(f"stages: {self.schedule.value} puts {per} stages on each rank; {self.num_stages} is not a multiple")
        sched = generate(self.schedule, self.num_ranks, self.microbatches, self.virtual)
        if sched.num_stages != self.num_stages:
            raise ValueError(f"stages: {self.schedule.value} on {self.num_ranks} ranks has {sched.num_stages} stages, "
                             f"the plan has {self.num_stages}")
        return defer_all_w(sched) if self.defer_w else sched


@dataclass(frozen=True)
class StepOutput:
    """A step's loss sum over microbatches (J's data term L), correct predictions and timings (this process).

    With collectives that span ranks, loss and correct are the whole grid's, on every rank; ``grad_norm`` is
    the global gradient norm before clipping (when clipping). ``closing`` and ``optimizer``: seconds of the step's
    closing checks (the all-reduce of loss, correct count and finite flags) and of its optimizer steps (on a GPU
    only with ``sync_timing``; without it, of their launches).
    """

    loss: float | None
    correct: int | None
    records: list[ActionRecord]
    grad_norm: float | None = None
    closing: float = 0.0
    optimizer: float = 0.0


class Pipeline:
    """Builds the stages of ``ranks`` (all ranks: single-process emulation), their optimizers and the executor."""

    def __init__(
        self, cfg: PipelineConfig, make_optimizer: OptimizerFactory, transport: Transport, ranks: Sequence[int] | None = None,
        init: Sequence[tuple[torch.Tensor, torch.Tensor | None]] | None = None, collectives: Collectives | None = None,
    ) -> None:
        """``init``: every layer's (W, b) to start from (default: ``init_parameters(spec, seed)``, drawn here);
        ``collectives``: the grid this pipeline is one replica of (default :class:`LocalCollectives`: none)."""
        if len(cfg.devices) != cfg.num_stages:
            raise ValueError(f"devices: need one device per stage ({cfg.num_stages}), got {len(cfg.devices)}")
        self.cfg = cfg
        self.schedule = cfg.build_schedule()
        self.ranks = list(range(self.schedule.num_ranks)) if ranks is None else list(ranks)
        if init is None:
            init = init_parameters(cfg.spec, cfg.seed)
        elif len(init) != cfg.spec.num_layers:
            raise ValueError(f"init: expected {cfg.spec.num_layers} layers of parameters, got {len(init)}")
        self.stages: dict[int, Stage] = {}
        recompute = cfg.stage_recompute()
        for s, (start, stop) in enumerate(cfg.ranges):
            if self.schedule.placement[s] not in self.ranks:
                continue
            dev = torch.device(cfg.devices[s])
            params = [
                (
                    torch.nn.Parameter(w.to(dev, cfg.dtype)),
                    None if b is None else torch.nn.Parameter(b.to(dev, cfg.dtype)),
                )
                for w, b in init[start:stop]
            ]
            self.stages[s] = Stage(cfg.spec, s, start, stop, params, dev, cfg.engine, recompute[s], cfg.gemm)
        self.optimizers = {s: make_optimizer(st.parameters()) for s, st in self.stages.items()}
        self._gpus = {st.device for st in self.stages.values() if st.device.type == "cuda"}  # synced around closing
        self.collectives = collectives if collectives is not None else LocalCollectives()
        hook = self.collectives.grads_ready if self.collectives.spans_ranks else None
        self.executor = Executor(self.schedule, self.stages, transport, self.ranks, fuse_w=cfg.fuse_w,
                                 on_grads_ready=hook)
        self.first = self.stages.get(0)
        self.last = self.stages.get(cfg.num_stages - 1)

    def step(self, x: torch.Tensor | None, y: torch.Tensor | None, batch: int, step_index: int = 0,
             sync_timing: bool = False, denom: float | None = None) -> StepOutput:
        """One optimizer step over ``batch`` rows split into the configured microbatches.

        ``x`` is needed where this process holds stage 0, ``y`` where it holds the last stage. The loss is
        divided by ``denom`` (default ``batch``; the global batch when this pipeline is one of several replicas).
        """
        m = self.cfg.microbatches
        if batch % m:
            raise ValueError(f"microbatches: {m} microbatches do not divide a batch of {batch} rows")
        rows = batch // m
        for name, t in (("x", x), ("y", y)):
            if t is not None and t.shape[0] != batch:
                raise ValueError(f"batch: {name} has {t.shape[0]} rows, the step was asked for {batch}")
        inputs = {}
        targets = {}
        if self.first is not None:
            inputs = dict(enumerate(x.to(self.first.device, self.cfg.dtype).split(rows)))
        if self.last is not None:
            y = y.to(self.last.device)
            if y.is_floating_point():
                y = y.to(self.cfg.dtype)
            targets = dict(enumerate(y.split(rows)))
        for st in self.stages.values():
            st.zero_grad()
        result = self.executor.run_step(inputs, targets, float(batch if denom is None else denom), rows, sync_timing)
        self.collectives.wait_grads()
        for st in self.stages.values():
            st.add_regularizer()
        for dev in self._gpus:  # the metrics wait for the device anyway: what it still runs is not the closing's
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        loss, correct = self._metrics(result.loss, step_index)
        closing = time.perf_counter() - t0
        norm = None
        if self.cfg.clip_grad_norm is not None:
            grads = [p.grad for st in self.stages.values() for p in st.parameters() if p.grad is not None]
            norm = clip_grad_norm(grads, self.cfg.clip_grad_norm, self.collectives.sum_pipeline)
        t0 = time.perf_counter()
        for opt in self.optimizers.values():
            opt.step()
        for dev in self._gpus if sync_timing else ():  # else on a GPU ``optimizer`` counts the launches only
            torch.cuda.synchronize(dev)
        return StepOutput(loss, correct, result.records, norm, closing, time.perf_counter() - t0)

    def _metrics(self, loss: torch.Tensor | None, step_index: int) -> tuple[float | None, int | None]:
        """Loss and correct predictions (the grid's, when the collectives span ranks); NonFiniteLoss first."""
        values = torch.zeros(2 + self.cfg.num_stages, dtype=torch.float64)
        if self.last is not None:
            values[0] = float(loss)
            values[1] = float(self.last.correct)
        for s, st in self.stages.items():
            values[2 + s] = 0.0 if bool(st.finite) else 1.0
        values = self.collectives.sum_all(values)
        bad = [s for s in range(self.cfg.num_stages) if values[2 + s] > 0]
        if bad:
            raise NonFiniteLoss(step_index, bad[0])
        if self.last is None and not self.collectives.spans_ranks:
            return None, None
        return float(values[0]), int(values[1])

    def layer_parameters(self) -> dict[int, list[torch.Tensor]]:
        """Stage index -> its parameters (weights and biases in layer order)."""
        return {s: st.parameters() for s, st in self.stages.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs o for ``x`` through every stage (single-process only: needs all stages)."""
        if len(self.stages) != self.cfg.num_stages:
            raise RuntimeError("predict: needs every stage in this process")
        h = x
        for s in range(self.cfg.num_stages):
            st = self.stages[s]
            h = forward_layers(self.cfg.spec, st.params, h.to(st.device, self.cfg.dtype), st.start)
        return h
