"""Benchmarks under torchrun: joining the world, steps timed on every rank at once, the link, shared figures."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from partition.timing import LinkModel
from runtime.bench.timing import Measured, Variant, measure
from runtime.comm import Backend, DistTransport, Message, WorldInfo, all_reduce_sum, barrier, init_world

Checksums = dict[tuple[int, str], tuple[float, float, float]]


def join_world(device: str, timeout: float) -> tuple[WorldInfo, torch.device, Backend]:
    """Join torchrun's process group: NCCL with one GPU per rank for ``cuda``, gloo for ``cpu``."""
    backend = Backend.NCCL if device.startswith("cuda") else Backend.GLOO
    world = init_world(backend, timeout)
    dev = torch.device(f"cuda:{world.local_rank}") if backend is Backend.NCCL else torch.device("cpu")
    return world, dev, backend


def loss_all_reduce(loss: object) -> float:
    """The step's loss on every rank: one all-reduce of one float64 (ranks without the loss add 0)."""
    value = torch.zeros(1, dtype=torch.float64)
    if loss is not None:
        value[0] = float(loss)
    return float(all_reduce_sum(value)[0])


def share_checksums(keys: Sequence[tuple[int, str]]) -> Callable[[Checksums], Checksums]:
    """Complete one rank's gradient checksums with the other ranks' (every key of ``keys`` held by exactly one).

    A key held by no rank is left out (the check names it); held by two ranks, it is summed twice and fails.
    """

    def share(mine: Checksums) -> Checksums:
        table = torch.zeros(len(keys), 4, dtype=torch.float64)
        for i, key in enumerate(keys):
            if key in mine:
                table[i, :3] = torch.tensor(mine[key], dtype=torch.float64)
                table[i, 3] = 1.0
        table = all_reduce_sum(table)
        return {key: tuple(float(v) for v in table[i, :3]) for i, key in enumerate(keys) if table[i, 3] > 0}

    return share


def measure_world(variants: Sequence[Variant], device: torch.device, warmup: int, repeats: int,
                  world: WorldInfo) -> dict[str, Measured]:
    """``measure`` on every rank, steps aligned by a barrier; each step's time is the slowest rank's.

    Losses come from the last rank (the one holding the loss), shared with the others.
    """
    aligned = [Variant(v.name, v.step, _then_barrier(v.clear), v.group, v.grads) for v in variants]
    barrier()
    local = measure(aligned, device, warmup, repeats)
    names = [v.name for v in variants]
    times = torch.zeros(world.world_size, len(names), repeats, dtype=torch.float64)
    losses = torch.zeros(len(names), dtype=torch.float64)
    for i, name in enumerate(names):
        rec = local[name]
        for r, t in zip(rec.rounds, rec.times):
            times[world.rank, i, r - warmup] = t
        if world.rank == world.world_size - 1 and rec.losses:
            losses[i] = rec.losses[0]
    times, losses = all_reduce_sum(times), all_reduce_sum(losses)
    out = {}
    for i, name in enumerate(names):
        rec = local[name]
        slowest = times[:, i, :].max(dim=0).values
        ok = (times[:, i, :] > 0).all(dim=0)
        rounds = [warmup + r for r in range(repeats) if ok[r]]
        out[name] = Measured(name, rec.group, [float(slowest[r - warmup]) for r in rounds], rounds,
                             [float(losses[i])] if rounds else [], rec.error)
    return out


def _then_barrier(clear: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        clear()
        barrier()

    return run


def measure_link(world: WorldInfo, backend: Backend, device: torch.device, nbytes: int, timeout: float,
                 repeats: int = 20) -> LinkModel:
    """Latency and bandwidth between ranks 0 and 1 from ping-pongs of 4 bytes and of ``nbytes`` (DistTransport)."""
    transport = DistTransport(backend, timeout)
    found = torch.zeros(2, dtype=torch.float64)
    for k, size in enumerate((4, max(nbytes, 8))):
        buf = torch.zeros(size // 4, dtype=torch.float32, device=device)
        trips = []
        for i in range(repeats + 3):
            tag = 1_000_000 + 4 * (k * (repeats + 3) + i)
            other = 1 - world.rank  # the peer of ranks 0 and 1 (others only wait in the all-reduce below)
            there, back = Message(("link", k, i, 0), tag, other), Message(("link", k, i, 1), tag + 1, other)
            start = time.perf_counter()
            if world.rank == 0:
                transport.send(there, buf, device)
                transport.recv(back, buf.shape, buf.dtype, device)
            elif world.rank == 1:
                got = transport.recv(there, buf.shape, buf.dtype, device)
                transport.send(back, got, device)
            transport.flush()
            trips.append(time.perf_counter() - start)
        if world.rank == 0:
            found[k] = statistics.median(trips[3:]) / 2
    t_small, t_big = (float(v) for v in all_reduce_sum(found))
    extra = max(nbytes, 8) - 4
    bandwidth = extra / (t_big - t_small) if t_big > t_small else float("inf")
    return LinkModel(latency=max(t_small, 0.0), bandwidth=bandwidth, rendezvous=True)  # a transfer waits for its receive
