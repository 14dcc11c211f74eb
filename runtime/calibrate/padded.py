"""A skeleton's messages at the real model's size: what a cross-rank message costs the host, without the arithmetic.

The skeleton (``runtime.calibrate.overhead``) has every hidden width 1, so its activations and gradients between
ranks are a few bytes. Under gloo, a message of the real size costs both ranks host time the tiny one does not: the
send yields to gloo's thread, which copies the tensor into the socket, and the receiver's gloo thread copies it out,
each taking a core from the compute of a rank (on this 2-core CPU, at 256 KiB: about 0.2 ms a send beyond a tiny
one, 12 of them a step on each rank of an interleaved 2-rank pipeline). ``PaddedTransport`` sends each skeleton
message inside a buffer as wide as the real model's boundary and hands the receiver the skeleton's columns back,
so the skeleton's steps pay what the real messages cost the host while its layers still do next to no arithmetic.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from partition.schedule.actions import Op
from runtime.transport import Message, Transport


class PaddedTransport:
    """``inner`` with every message widened to ``widths[b]`` columns, b the boundary it crosses (``ranges``: the
    stages' layer ranges; a message to stage s's F crosses its first boundary, to its backward its last)."""

    def __init__(self, inner: Transport, ranges: Sequence[tuple[int, int]], widths: Sequence[int]) -> None:
        self.inner = inner
        self._ranges, self._widths = list(ranges), list(widths)
        self._buffers: dict[Hashable, torch.Tensor] = {}  # one per message: a send is complete by the step's end

    def real_width(self, msg: Message) -> int:
        """Columns of the real model's tensor for ``msg`` (whose key is (op, stage, microbatch))."""
        op, stage, _ = msg.key
        start, stop = self._ranges[stage]
        return self._widths[start if op is Op.F else stop]

    def _shape(self, msg: Message, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 2:
            raise ValueError(f"padded transport: expected a (rows, features) tensor for {msg.key}, got shape {shape}")
        return (shape[0], max(shape[1], self.real_width(msg)))

    def send(self, msg: Message, tensor: torch.Tensor, dst_device: torch.device) -> None:
        """Send ``tensor`` in the first columns of this message's buffer, as wide as the real model's."""
        shape = self._shape(msg, tuple(tensor.shape))
        buf = self._buffers.get(msg.key)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != tensor.dtype:
            buf = self._buffers[msg.key] = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
        buf[:, : tensor.shape[1]].copy_(tensor)
        self.inner.send(msg, buf, dst_device)

    def ready(self, msg: Message) -> bool:
        """As ``inner``."""
        return self.inner.ready(msg)

    def prepost(self, msg: Message, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        """Post the receive at the real width."""
        self.inner.prepost(msg, self._shape(msg, shape), dtype, device)

    def recv(self, msg: Message, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Receive at the real width; the skeleton's columns."""
        return self.inner.recv(msg, self._shape(msg, shape), dtype, device)[:, : shape[1]].contiguous()

    def flush(self) -> None:
        """As ``inner``."""
        self.inner.flush()
