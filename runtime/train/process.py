"""This process's part of a run: every stage in one process, or one rank of a dp x pp grid under torchrun."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from partition.choose import auto_for_ranges
from partition.schedule.actions import ScheduleKind
from partition.units import count
from runtime.comm import (
    Backend,
    DistTransport,
    Grid,
    LocalTransport,
    PeerLost,
    barrier,
    init_grid,
    is_joined,
    launched_by_torchrun,
    open_store,
    shutdown,
)
from runtime.engine.pipeline import NonFiniteLoss, Pipeline, PipelineConfig
from runtime.engine.watchdog import Watchdog
from runtime.ops.model import forward_layers
from runtime.train.config import OptimizerKind, TrainConfig
from runtime.train.data_parallel import GridCollectives
from runtime.train.datasets import Dataset
from runtime.train.layout import check_device, resolve_devices, resolve_ranges


def optimizer_factory(cfg: TrainConfig) -> Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]:
    """Build the per-stage optimizer the config names."""
    if cfg.optimizer is OptimizerKind.ADAM:
        return lambda params: torch.optim.Adam(params, lr=cfg.lr)
    return lambda params: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)


def pipeline_config(cfg: TrainConfig, devices: tuple[str, ...]) -> PipelineConfig:
    """The pipeline the training config describes, on ``devices`` (one per stage), its schedule checked."""
    replica_batch = cfg.batch_size // cfg.data_parallel
    ranges = resolve_ranges(cfg.spec, cfg.stages, cfg.partition, replica_batch // cfg.microbatches)
    ready = None
    if cfg.schedule is ScheduleKind.AUTO:
        state = "adam" if cfg.optimizer is OptimizerKind.ADAM else "momentum" if cfg.momentum else "sgd"
        ready = auto_for_ranges(cfg.spec, ranges, replica_batch // cfg.microbatches, cfg.microbatches, cfg.memory_cap,
                                cfg.max_inflight, cfg.recompute, cfg.dtype, state)
    pcfg = PipelineConfig(spec=cfg.spec, ranges=ranges, schedule=cfg.schedule, microbatches=cfg.microbatches,
                          devices=devices, dtype=cfg.torch_dtype, seed=cfg.seed, virtual=cfg.virtual,
                          fuse_w=cfg.fuse_w, defer_w=cfg.defer_w, engine=cfg.engine, gemm=cfg.gemm,
                          clip_grad_norm=cfg.clip_grad_norm, recompute=cfg.recompute, ready=ready)
    pcfg.build_schedule()
    return pcfg


@dataclass
class Process:
    """The pipeline this process runs, and under torchrun its grid and watchdog."""

    pipe: Pipeline
    grid: Grid | None = None
    watchdog: Watchdog | None = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """Whether this process is one rank of a torchrun launch."""
        return self.grid is not None

    @property
    def rank(self) -> int:
        """Global rank (0 in a single process)."""
        return 0 if self.grid is None else self.grid.rank

    def replica_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """This replica's disjoint slice of a global batch's row indices (all of them when D = 1)."""
        if self.grid is None or self.grid.dp_size == 1:
            return idx
        share = idx.shape[0] // self.grid.dp_size
        return idx[self.grid.dp_rank * share : (self.grid.dp_rank + 1) * share]

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Around the work: a rank failing with its own error tells the others, so they name it."""
        try:
            yield
        except (PeerLost, NonFiniteLoss):
            raise  # a lost peer is already named; a non-finite loss is seen by every rank at once
        except Exception as exc:
            if self.watchdog is not None:
                self.watchdog.announce(exc)
            raise

    def close(self) -> None:
        """Finished: stop the heartbeat and leave the process group together (when this run joined it)."""
        if self.grid is None:
            return
        if self.watchdog is not None:
            self.watchdog.stop()
        barrier()  # tearing gloo down at interpreter exit can abort the process: leave together
        if self.owns_group:
            shutdown()


def start(cfg: TrainConfig, watch: bool = True) -> Process:
    """This process's pipeline: every stage (single process), or its rank's stages of its replica (torchrun)."""
    if not launched_by_torchrun():
        if cfg.data_parallel > 1:
            raise ValueError(f"data-parallel: {cfg.data_parallel} replicas need torchrun with "
                             f"{cfg.data_parallel} x (ranks per pipeline) processes; one process holds one pipeline")
        pcfg = pipeline_config(cfg, resolve_devices(cfg.device, cfg.devices, cfg.stages))
        return Process(Pipeline(pcfg, optimizer_factory(cfg), LocalTransport()))
    backend = Backend.NCCL if cfg.device.startswith("cuda") else Backend.GLOO
    if cfg.devices or cfg.device not in ("cpu", "cuda"):
        raise ValueError("device: under torchrun each process takes cuda:LOCAL_RANK (--device cuda) or the CPU "
                         "(--device cpu); --devices and explicit indices are for single-process runs")
    if backend is Backend.NCCL:
        check_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    probe = pipeline_config(cfg, ("cpu",) * cfg.stages)
    world = int(os.environ["WORLD_SIZE"])
    if world != probe.num_ranks * cfg.data_parallel:
        raise ValueError(f"stages: {count(cfg.data_parallel, 'replica')} of {count(cfg.stages, 'stage')} of "
                         f"{cfg.schedule.value} need {count(probe.num_ranks * cfg.data_parallel, 'process')}, "
                         f"torchrun started {world}")
    owns = not is_joined()
    grid = init_grid(backend, cfg.timeout, probe.num_ranks, cfg.data_parallel)
    watchdog = None
    if watch:
        label = f"{Path(sys.argv[0]).name} [rank {grid.rank}]"
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # else rank 0 serves the store
        watchdog = Watchdog(open_store(3.0), grid.rank, grid.world.world_size, cfg.timeout, label,
                            store_host=None if agent_store else 0).start()
    namer = None if watchdog is None else (lambda peer, exc: PeerLost(watchdog.name_failure(peer, exc)))
    dev = f"cuda:{grid.world.local_rank}" if backend is Backend.NCCL else "cpu"
    pcfg = replace(probe, devices=(dev,) * cfg.stages)
    transport = DistTransport(backend, cfg.timeout, grid.pipeline_peers(), namer)
    pipe = Pipeline(pcfg, optimizer_factory(cfg), transport, [grid.pp_rank],
                    collectives=GridCollectives(grid, namer))
    return Process(pipe, grid, watchdog, owns)


def build_pipeline(cfg: TrainConfig) -> tuple[Pipeline, bool]:
    """The pipeline for this process and whether it is one rank of a torchrun launch (no watchdog)."""
    proc = start(cfg, watch=False)
    return proc.pipe, proc.distributed


def gather_layers(pipe: Pipeline, distributed: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Every layer's (W, b) on the CPU (float64), summed in from the ranks of this pipeline that own them."""
    spec = pipe.cfg.spec
    out = []
    for layer in range(spec.num_layers):
        rows, cols = spec.layer_shape(layer)
        w = torch.zeros(rows, cols, dtype=torch.float64)
        b = torch.zeros(rows, dtype=torch.float64) if spec.layer_has_bias(layer) else None
        out.append((w, b))
    for st in pipe.stages.values():
        for offset, (w, b) in enumerate(st.params):
            out[st.start + offset][0].copy_(w.detach())
            if b is not None:
                out[st.start + offset][1].copy_(b.detach())
    if distributed:  # each layer lives on one rank of the pipeline: the others add zeros, exactly
        flat = pipe.collectives.sum_pipeline(torch.cat([t.reshape(-1) for pair in out for t in pair if t is not None]))
        offset = 0
        for pair in out:
            for t in pair:
                if t is not None:
                    t.copy_(flat[offset : offset + t.numel()].view_as(t))
                    offset += t.numel()
    return out


def evaluate(pipe: Pipeline, data: Dataset, distributed: bool) -> float:
    """Test accuracy of the current parameters (the whole model, float64, on the CPU)."""
    layers = gather_layers(pipe, distributed)
    with torch.no_grad():
        o = forward_layers(pipe.cfg.spec, layers, data.x_test, 0)
    return float((o.argmax(1) == data.y_test).double().mean())
