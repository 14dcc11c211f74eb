"""Training configuration: one frozen dataclass, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from partition.recompute import Recompute, per_stage
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.engine.stage import Engine
from runtime.ops.gemm import Gemm, gemm_problem


class OptimizerKind(Enum):
    """Per-stage optimizer."""

    SGD = "sgd"
    ADAM = "adam"


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    """``float32`` etc. to a torch dtype; ValueError names the field."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype: unknown {name!r}; choose one of {', '.join(DTYPES)}") from None


@dataclass(frozen=True)
class TrainConfig:
    """A training run: the model, data, optimizer, and the pipeline that runs it."""

    spec: MLPSpec = field(default_factory=lambda: MLPSpec((64, 128, 128, 128, 10)))
    dataset: str = "digits"
    samples: int = 4096
    batch_size: int = 64
    lr: float = 0.1
    optimizer: OptimizerKind = OptimizerKind.SGD
    momentum: float = 0.9
    epochs: int = 20
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    stages: int = 1
    schedule: ScheduleKind = ScheduleKind.ONE_F_ONE_B
    microbatches: int = 1
    virtual: int = 1
    partition: str = "uniform"
    devices: str | None = None
    trace: str | None = None
    gantt: str | None = None  # PNG: the traced step measured above its prediction, per rank
    link: str = "measured"  # the link of the K-device prediction (see runtime.calibrate.run.LINK_HELP)
    checkpoint_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    json: str | None = None
    progress: bool = True
    timeout: float = 60.0
    data_parallel: int = 1
    clip_grad_norm: float | None = None
    fuse_w: bool = True
    defer_w: bool = False
    engine: Engine = Engine.AUTOGRAD
    gemm: Gemm = Gemm.TORCH  # the kernel of F and B (oneDNN: direct engine, float32, CPU)
    recompute: tuple[Recompute, ...] = ()  # none, one choice for every stage, or one per stage
    threads: int | None = None  # torch CPU threads; None: auto (runtime.threads)
    memory_cap: float | None = None  # bytes per device the auto schedule keeps within (activations: cap - static)
    max_inflight: int | None = None  # the auto schedule's cap on microbatches in flight per stage

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, "batch-size", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.stages >= 1, "stages", "must be >= 1"),
            (self.microbatches >= 1, "microbatches", "must be >= 1"),
            (self.virtual >= 1, "virtual", "must be >= 1"),
            (self.timeout > 0, "timeout", "must be > 0 seconds"),
            (self.data_parallel >= 1, "data-parallel", "must be >= 1"),
            (self.threads is None or self.threads >= 1, "threads", "must be >= 1 (None: auto)"),
            (self.clip_grad_norm is None or self.clip_grad_norm > 0, "clip-grad-norm", "must be > 0"),
            (self.samples >= 2, "samples", "must be >= 2"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"{name}: {why}, got {getattr(self, name.replace('-', '_'))!r}")
        if self.batch_size % self.microbatches:
            raise ValueError(f"microbatches: {self.microbatches} microbatches do not divide --batch-size {self.batch_size}")
        if self.batch_size % (self.data_parallel * self.microbatches):
            raise ValueError(f"data-parallel: {self.data_parallel} replicas x {self.microbatches} microbatches do not "
                             f"divide --batch-size {self.batch_size}")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("resume: needs --checkpoint-dir")
        if self.overwrite and not self.checkpoint_dir:
            raise ValueError("overwrite: needs --checkpoint-dir")
        if self.overwrite and self.resume:
            raise ValueError("overwrite: replaces the checkpoint that --resume would continue; choose one")
        per_stage(self.recompute, self.stages)
        devices = [d for d in self.devices.split(",") if d.strip()] if self.devices else [self.device]
        problem = gemm_problem(self.gemm, devices, parse_dtype(self.dtype),
                               self.engine is Engine.DIRECT)
        if problem is not None:
            raise ValueError(problem)
        if self.schedule is ScheduleKind.AUTO and (self.virtual != 1 or (self.memory_cap, self.max_inflight) == (None, None)):
            raise ValueError("schedule: auto needs --memory-cap and/or --max-inflight, and one stage per device")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The compute dtype."""
        return parse_dtype(self.dtype)
