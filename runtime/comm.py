"""Transports that move activations and gradients between stages; the only module importing torch.distributed."""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

import torch
import torch.distributed as dist


class Backend(Enum):
    """torch.distributed backend: NCCL between GPUs (one per process), gloo through host memory otherwise."""

    NCCL = "nccl"
    GLOO = "gloo"


class PeerLost(RuntimeError):
    """A peer rank failed, was killed, or did not answer in time."""


@dataclass(frozen=True)
class Message:
    """One tensor addressed to a receive: ``key`` names the receiving action, ``tag`` numbers it for gloo."""

    key: Hashable
    tag: int
    peer: int


class LocalTransport:
    """In-process mailbox for stages held by one process: a send is a device copy, a receive a lookup."""

    def __init__(self) -> None:
        self._box: dict[Hashable, torch.Tensor] = {}

    def send(self, msg: Message, tensor: torch.Tensor, dst_device: torch.device) -> None:
        """Deliver ``tensor`` (moved to the receiver's device) under ``msg.key``."""
        if msg.key in self._box:
            raise RuntimeError(f"transport: a message for {msg.key} is already waiting")
        self._box[msg.key] = tensor.to(dst_device)

    def ready(self, msg: Message) -> bool:
        """Whether the receive named by ``msg`` can complete now."""
        return msg.key in self._box

    def recv(self, msg: Message, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Take the tensor sent to ``msg.key``."""
        try:
            return self._box.pop(msg.key)
        except KeyError:
            raise RuntimeError(f"transport: nothing was sent to {msg.key}") from None

    def flush(self) -> None:
        """Nothing is ever in flight; checks that no message was left unreceived."""
        if self._box:
            raise RuntimeError(f"transport: {len(self._box)} messages were never received: {sorted(map(str, self._box))[:4]}")

    def pending(self) -> int:
        """Messages waiting to be received."""
        return len(self._box)


class DistTransport:
    """Point-to-point over torch.distributed: isend/irecv with tags, every wait bounded by ``timeout``.

    Under gloo, CUDA tensors are staged through host memory (gloo cannot send device memory).
    Tensor shapes come from the partition plan, so receives need no shape handshake.
    """

    def __init__(self, backend: Backend, timeout: float) -> None:
        self.backend = backend
        self.timeout = timedelta(seconds=timeout)
        self.rank = dist.get_rank()
        self._sends: list[tuple[dist.Work, torch.Tensor, Message]] = []

    def send(self, msg: Message, tensor: torch.Tensor, dst_device: torch.device) -> None:
        """Post a non-blocking send; completion is awaited in :meth:`flush`."""
        if self.backend is Backend.GLOO and tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        work = dist.isend(tensor, msg.peer, tag=msg.tag)
        # forget sends that have completed, so a rank holds only the tensors still in flight
        self._sends = [s for s in self._sends if not s[0].is_completed()]
        self._sends.append((work, tensor, msg))

    def ready(self, msg: Message) -> bool:
        """A receive can always be posted; it blocks until the message arrives or the timeout passes."""
        return True

    def recv(self, msg: Message, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Receive the tensor for ``msg`` from ``msg.peer`` into a fresh buffer on ``device``."""
        staged = self.backend is Backend.GLOO and device.type != "cpu"
        buf = torch.empty(shape, dtype=dtype, device="cpu" if staged else device)
        self._wait(dist.irecv(buf, msg.peer, tag=msg.tag), msg, "receiving")
        return buf.to(device) if staged else buf

    def flush(self) -> None:
        """Wait for every posted send (end of a step)."""
        sends, self._sends = self._sends, []
        for work, _tensor, msg in sends:
            self._wait(work, msg, "sending")

    def _wait(self, work: dist.Work, msg: Message, what: str) -> None:
        try:
            ok = work.wait(self.timeout)
        except Exception as exc:  # gloo raises on a closed connection or a timeout
            cause = "timed out" if "imeout" in str(exc) else "connection lost"
            raise PeerLost(f"lost rank {msg.peer} (it failed, was killed or hangs: {cause}) while {what} "
                           f"{describe(msg.key)}") from exc
        if ok is False:
            raise PeerLost(f"rank {msg.peer} did not answer within {self.timeout} while {what} {describe(msg.key)}")


def describe(key: Hashable) -> str:
    """``(Op.F, 2, 5)`` as 'the activation for stage 2, microbatch 5' (other keys as they print)."""
    if isinstance(key, tuple) and len(key) == 3 and isinstance(key[0], Enum):
        what = "activation" if key[0].name == "F" else "gradient"
        return f"the {what} for stage {key[1]}, microbatch {key[2]}"
    return str(key)


@dataclass(frozen=True)
class WorldInfo:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int


def launched_by_torchrun() -> bool:
    """True when torchrun (or an equivalent launcher) set RANK and WORLD_SIZE."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_world(backend: Backend, timeout: float) -> WorldInfo:
    """Join the process group torchrun describes in the environment (env:// rendezvous, multi-node capable)."""
    if not dist.is_initialized():
        kwargs = {"timeout": timedelta(seconds=timeout)}
        if backend is Backend.NCCL:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend.value, **kwargs)
    return WorldInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all ranks (host tensor for gloo); a no-op without a process group."""
    if not dist.is_initialized():
        return values
    dev = values.device
    if dist.get_backend() == "gloo":
        buf = values.cpu()
    else:  # NCCL reduces device memory only
        buf = values.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(buf)
    return buf.to(dev)


def gather_to_all(obj: object) -> list[object]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
