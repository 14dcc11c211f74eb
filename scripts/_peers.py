"""The peer we compare against: torch.distributed.pipelining schedules, wrapped as benchmark contenders.

Kept under scripts/ because it imports torch.distributed (only runtime/comm.py may, in the library).
One-rank builders (several stages in this process; a world of size 1 must exist, see ``local_world``) and
per-rank builders (one stage per torchrun process) share one shape: given the stage module(s), the microbatch
count, a per-microbatch loss and the device, return ``run(x, y)`` doing one forward + backward of the batch.
The loss is already scaled by 1/microbatches, so ``scale_grads=False``: no extra pass over the gradients.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MappingProxyType

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import pipelining

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# torch.distributed.pipelining schedules that hold several stages on one rank, by the name the bench prints.
ONE_RANK = MappingProxyType({"looped-bfs": "ScheduleLoopedBFS", "interleaved-1f1b": "ScheduleInterleaved1F1B",
                             "interleaved-zb": "ScheduleInterleavedZeroBubble"})
# One stage per rank (torchrun): the schedules `bench.py dist` pairs with ours.
PER_RANK = MappingProxyType({"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B"})


@contextmanager
def local_world(device: torch.device) -> Iterator[None]:
    """A process group of size 1 (gloo on the CPU, NCCL on a GPU) through a FileStore, destroyed on exit."""
    if dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory(prefix="pipegraph-peers-") as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        dist.init_process_group(backend, store=store, rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def _losses_sum(losses: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack([loss.detach() for loss in losses]).sum() if losses else None


def one_rank_builder(name: str) -> Callable[[list[nn.Module], int, LossFn, torch.device], Callable]:
    """Builder of the one-rank schedule ``name`` (a key of ONE_RANK) over all stage modules in this process."""
    cls = getattr(pipelining, ONE_RANK[name])

    def build(modules: list[nn.Module], microbatches: int, loss_fn: LossFn, device: torch.device) -> Callable:
        stages = [pipelining.PipelineStage(mod, i, len(modules), device) for i, mod in enumerate(modules)]
        schedule = cls(stages, microbatches, loss_fn=loss_fn, scale_grads=False)

        def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
            losses: list[torch.Tensor] = []
            schedule.step(x, target=y, losses=losses)
            return _losses_sum(losses)

        return run

    return build


def one_rank_builders(names: list[str] | None = None) -> dict[str, Callable]:
    """Builders of the one-rank peers (all of ONE_RANK when ``names`` is None)."""
    return {n: one_rank_builder(n) for n in (names if names is not None else ONE_RANK)}


def per_rank_builder(name: str) -> Callable:
    """Builder of the per-rank schedule ``name`` (a key of PER_RANK) for this torchrun process's stage."""
    cls = getattr(pipelining, PER_RANK[name])

    def build(module: nn.Module, rank: int, world: int, microbatches: int, loss_fn: LossFn,
              device: torch.device) -> Callable:
        stage = pipelining.PipelineStage(module, rank, world, device)
        schedule = cls(stage, microbatches, loss_fn=loss_fn, scale_grads=False)

        def run(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
            losses: list[torch.Tensor] = []
            if rank == 0:
                schedule.step(x)
            elif rank == world - 1:
                schedule.step(target=y, losses=losses)
            else:
                schedule.step()
            return _losses_sum(losses)

        return run

    return build


def per_rank_builders() -> dict[str, Callable]:
    """Builders of the per-rank peers, by name."""
    return {n: per_rank_builder(n) for n in PER_RANK}
