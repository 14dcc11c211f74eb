"""The peer we compare against: every torch.distributed.pipelining schedule, wrapped as benchmark contenders.

Kept under scripts/ because it imports torch.distributed (only runtime/comm.py may, in the library).
``peers()`` gives each schedule as a ``runtime.bench.contenders.Peer``: its placement (one stage a rank,
looped, or V-shaped with 2 stages a rank) and a builder that gets this rank's stage modules by stage index and
returns ``run(x, y)`` doing one forward + backward of the batch. The loss is already scaled by 1/microbatches,
so ``scale_grads=False``: no extra pass over the gradients. For one process, ``local_world`` makes the world of
size 1 that the schedules need.
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

from runtime.bench.contenders import Peer, Placement

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Every schedule torch.distributed.pipelining offers, by the name the bench prints.
SCHEDULES = MappingProxyType({
    "gpipe": ("ScheduleGPipe", Placement.ONE),
    "1f1b": ("Schedule1F1B", Placement.ONE),
    "looped-bfs": ("ScheduleLoopedBFS", Placement.LOOP),
    "interleaved-1f1b": ("ScheduleInterleaved1F1B", Placement.LOOP),
    "interleaved-zb": ("ScheduleInterleavedZeroBubble", Placement.LOOP),
    "zbv": ("ScheduleZBVZeroBubble", Placement.V),
    "dualpipev": ("ScheduleDualPipeV", Placement.V),
})


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


def _builder(cls_name: str, placement: Placement) -> Callable:
    cls = getattr(pipelining, cls_name)

    def build(modules: dict[int, nn.Module], num_stages: int, microbatches: int, loss_fn: LossFn,
              device: torch.device) -> Callable:
        stages = [pipelining.PipelineStage(modules[s], s, num_stages, device) for s in sorted(modules)]
        held = stages[0] if placement is Placement.ONE else stages
        schedule = cls(held, microbatches, loss_fn=loss_fn, scale_grads=False)
        first, last = 0 in modules, num_stages - 1 in modules

        def run(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
            losses: list[torch.Tensor] = []
            kwargs = {"target": y, "losses": losses} if last else {}
            schedule.step(*((x,) if first else ()), **kwargs)
            return torch.stack([loss.detach() for loss in losses]).sum() if losses else None

        return run

    return build


def peers(names: list[str] | None = None, one_rank: bool = False) -> dict[str, Peer]:
    """The peers by name (all of SCHEDULES when ``names`` is None; with ``one_rank``, those that can hold several
    stages on one rank); ValueError names an unknown one."""
    chosen = list(SCHEDULES) if names is None else names
    unknown = [n for n in chosen if n not in SCHEDULES]
    if unknown:
        raise ValueError(f"peers: unknown {unknown[0]!r}; choose from {', '.join(SCHEDULES)}")
    out = {n: Peer(SCHEDULES[n][0], SCHEDULES[n][1], _builder(*SCHEDULES[n])) for n in chosen}
    return {n: p for n, p in out.items() if not (one_rank and p.placement is Placement.ONE)}
