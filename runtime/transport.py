"""Moving a tensor between stages, as the executor sees it: the ``Transport`` protocol and the in-process mailbox.

The distributed transport that implements the same protocol over torch.distributed lives in ``runtime.comm``
(the only module that imports torch.distributed); compute code depends on this module only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

import torch


class PeerLost(RuntimeError):
    """A peer rank failed, was killed, or did not answer in time."""


# Turns a failed wait on global rank ``peer`` (None: a collective) into the error naming who is gone.
FailureNamer = Callable[[int | None, BaseException], PeerLost]


@dataclass(frozen=True)
class Message:
    """One tensor addressed to a receive: ``key`` names the receiving action, ``tag`` numbers it for gloo."""

    key: Hashable
    tag: int
    peer: int


class Transport(Protocol):
    """What the executor needs to move a tensor between ranks: post a send, post a receive ahead, test or take a
    receive, flush."""

    def send(self, msg: Message, tensor: torch.Tensor, dst_device: torch.device) -> None:
        """Hand ``tensor`` to the receive ``msg`` names (may return before it arrives)."""

    def ready(self, msg: Message) -> bool:
        """Whether the receive named by ``msg`` can be taken now without waiting on this process."""

    def prepost(self, msg: Message, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        """Post the receive ``msg`` names ahead of the action that takes it, so that its transfer can run meanwhile."""

    def recv(self, msg: Message, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The tensor sent to ``msg`` (``shape`` and ``dtype`` come from the plan)."""

    def flush(self) -> None:
        """Complete every posted send (end of a step)."""


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

    def prepost(self, msg: Message, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        """Nothing to post: the mailbox takes a send whenever it comes."""

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


