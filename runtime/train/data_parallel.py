"""Collectives of one pipeline replica in a dp x pp grid: bucketed gradient all-reduce, grid-wide sums.

Each stage's gradients are summed over its ``dp`` group (the same stage in every replica) in buckets of at
most ``bucket_bytes``: a bucket is the stage's gradients copied into one flat buffer, reduced with one
asynchronous all-reduce and copied back. A reduction starts as soon as the executor reports the stage's last
weight gradient of the step, so with deferred weight gradients (zb-h1, --defer-w) or a rank that holds two
stages (interleaved-1f1b) it runs while this rank still computes other actions; it is awaited just before the
optimizer step. Under gloo the reduction runs on gloo's own thread, so it overlaps the Python-side schedule
but competes for the same CPU cores (on a 2-core machine little is gained); under NCCL it runs on its own
CUDA stream. Nothing overlaps the loss/metric sum and the norm for clipping: they are small and synchronous.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from runtime.comm import Dim, Grid, PeerLost, wait
from runtime.engine.stage import Stage

BUCKET_BYTES = 25 * 2**20
# Names the rank that is gone after a failed collective (the watchdog's verdict), or None: say what gloo said.
Namer = Callable[[int | None, BaseException], PeerLost] | None


def buckets(params: Sequence[torch.Tensor], limit: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of ``params`` of at most ``limit`` bytes each (a larger tensor goes alone)."""
    out: list[list[torch.Tensor]] = []
    size = limit
    for p in params:
        nbytes = p.numel() * p.element_size()
        if size + nbytes > limit:
            out.append([])
            size = 0
        out[-1].append(p)
        size += nbytes
    return out


class GridCollectives:
    """Implements the pipeline's collectives over a :class:`~runtime.comm.Grid` (any D, including 1)."""

    spans_ranks = True

    def __init__(self, grid: Grid, name_failure: Namer = None, bucket_bytes: int = BUCKET_BYTES) -> None:
        self.grid = grid
        self.name_failure = name_failure
        self.bucket_bytes = bucket_bytes
        self._pending: list[tuple[object, torch.Tensor, list[torch.Tensor]]] = []

    def grads_ready(self, stage: Stage) -> None:
        """Start the dp all-reduce of ``stage``'s gradients, one flat buffer per bucket."""
        if self.grid.dp_size == 1:
            return
        params = [p for p in stage.parameters() if p.grad is not None]
        for bucket in buckets(params, self.bucket_bytes):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            work, summed = self._guard(lambda flat=flat: self.grid.all_reduce_async(flat, Dim.DP))
            self._pending.append((work, summed, bucket))

    def wait_grads(self) -> None:
        """Wait for every started reduction and copy the sums back into the gradients."""
        pending, self._pending = self._pending, []
        for work, flat, bucket in pending:
            self._guard(lambda work=work: wait(work, self.grid.timeout))
            offset = 0
            for p in bucket:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def sum_all(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over every rank of the grid."""
        buf = values.clone()
        self._guard(lambda: self.grid.all_reduce(buf))
        return buf

    def sum_pipeline(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over this replica's pipeline ranks (the pp group)."""
        buf = values.clone()
        self._guard(lambda: self.grid.all_reduce(buf, Dim.PP))
        return buf

    def _guard(self, call: Callable[[], object]) -> object:
        """Run a collective; a failure becomes the error naming the lost rank."""
        try:
            return call()
        except PeerLost:
            raise
        except Exception as exc:  # noqa: BLE001 - gloo reports lost peers as plain RuntimeErrors
            if self.name_failure is None:
                raise
            raise self.name_failure(None, exc) from exc
