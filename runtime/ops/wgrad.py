"""Deferred weight gradients: the W half of a linear layer's backward, run later and fused across microbatches."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeferredGrad:
    """dJ/dW = g^T x and dJ/db = sum_rows g for one layer and one microbatch, not yet computed."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    g: torch.Tensor
    x: torch.Tensor

    def run(self) -> None:
        """Compute this weight gradient and accumulate it into ``weight.grad`` (and ``bias.grad``)."""
        _accumulate(self.weight, self.bias, self.g, self.x)


def _accumulate(weight: torch.Tensor, bias: torch.Tensor | None, g: torch.Tensor, x: torch.Tensor) -> None:
    """Add g^T x to weight.grad and sum_rows g to bias.grad, allocating them on first use."""
    with torch.no_grad():
        if weight.grad is None:
            weight.grad = g.t().matmul(x)
        else:
            weight.grad.addmm_(g.t(), x)
        if bias is not None:
            gb = g.sum(0)
            if bias.grad is None:
                bias.grad = gb
            else:
                bias.grad.add_(gb)


class WeightGradStore:
    """Collects the deferred weight gradients that LinearFn's backward leaves behind.

    One store per (stage, microbatch) in a pipeline: the B action fills it, the W action drains it.
    ``flush_fused`` drains several stores at once and computes each layer's gradient as a single GEMM
    over the concatenated rows of all their microbatches, which runs at the full-batch GEMM rate.
    """

    def __init__(self) -> None:
        self._pending: list[DeferredGrad] = []
        self.immediate = False

    def defer(self, weight: torch.Tensor, bias: torch.Tensor | None, g: torch.Tensor, x: torch.Tensor) -> None:
        """Record one layer's pending weight gradient (called from LinearFn.backward).

        With ``immediate`` set (a fused BW backward) the gradient is computed at once instead, layer by
        layer as the backward reaches it, so no layer's g outlives its own backward step.
        """
        if self.immediate:
            _accumulate(weight, bias, g, x)
        else:
            self._pending.append(DeferredGrad(weight, bias, g, x))

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def pending(self) -> tuple[DeferredGrad, ...]:
        """The recorded, not yet computed gradients, in the order the backward produced them."""
        return tuple(self._pending)

    def flush(self) -> None:
        """Compute every pending gradient (one GEMM per layer) and forget them."""
        pending, self._pending = self._pending, []
        for item in pending:
            item.run()

    @staticmethod
    def flush_fused(stores: list[WeightGradStore]) -> None:
        """Drain ``stores`` together: per layer, dJ/dW = cat(g)^T cat(x) in one GEMM."""
        groups: dict[int, list[DeferredGrad]] = {}
        for store in stores:
            pending, store._pending = store._pending, []
            for item in pending:
                groups.setdefault(id(item.weight), []).append(item)
        while groups:  # pop each layer's group so its g and x are freed right after its GEMM
            _, items = groups.popitem()
            if len(items) == 1:
                items[0].run()
                continue
            g = torch.cat([it.g for it in items])
            x = torch.cat([it.x for it in items])
            _accumulate(items[0].weight, items[0].bias, g, x)
