"""A pipeline stage: a contiguous range of layers on one device, with per-microbatch saved state; no communication."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from partition.spec import MLPSpec
from runtime.engine import direct as direct_engine
from runtime.ops.functions import l2_term
from runtime.ops.model import forward_layers, loss_target, loss_term
from runtime.ops.wgrad import WeightGradStore


class Engine(Enum):
    """How a stage drives the hand-derived backward: through autograd's engine, or by calling it directly."""

    AUTOGRAD = "autograd"
    DIRECT = "direct"


@dataclass
class _Saved:
    """What one microbatch keeps between its F, B and W on this stage."""

    inp: torch.Tensor | None
    out: torch.Tensor | None
    store: WeightGradStore
    direct: direct_engine.DirectSaved | None = None
    b_done: bool = False


class Stage:
    """Layers [start, stop) of ``spec`` on ``device``; F, B and W per microbatch, the l2 share once per step.

    ``forward`` keeps what the chapter's backward needs (each layer's input, each activation's output);
    ``backward_input`` runs the input-gradient half and leaves the weight-gradient half in a store;
    ``backward_weight`` runs that half and frees the microbatch. The last stage computes the loss L.
    """

    def __init__(
        self,
        spec: MLPSpec,
        index: int,
        start: int,
        stop: int,
        params: Sequence[tuple[torch.nn.Parameter, torch.nn.Parameter | None]],
        device: torch.device | str,
        engine: Engine = Engine.AUTOGRAD,
    ) -> None:
        if not 0 <= start < stop <= spec.num_layers or len(params) != stop - start:
            raise ValueError(f"partition: stage {index} layers [{start}, {stop}) do not fit {spec.num_layers} layers")
        self.spec = spec
        self.index = index
        self.start = start
        self.stop = stop
        self.device = torch.device(device)
        self.params = list(params)
        self.engine = engine
        self.is_first = start == 0
        self.is_last = stop == spec.num_layers
        self._saved: dict[int, _Saved] = {}
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)

    def parameters(self) -> list[torch.nn.Parameter]:
        """This stage's weights and biases, in layer order."""
        return [p for pair in self.params for p in pair if p is not None]

    @property
    def in_flight(self) -> int:
        """Microbatches whose saved tensors this stage still holds."""
        return len(self._saved)

    @property
    def input_width(self) -> int:
        """Features of the activation this stage receives."""
        return self.spec.widths[self.start]

    @property
    def output_width(self) -> int:
        """Features of the activation this stage sends on."""
        return self.spec.widths[self.stop]

    def forward(self, mb: int, x: torch.Tensor, y: torch.Tensor | None = None, denom: float = 1.0) -> torch.Tensor:
        """F: run the layers on ``x``; the last stage returns L(mb) (divided by ``denom``), others the activation."""
        if mb in self._saved:
            raise RuntimeError(f"stage {self.index}: microbatch {mb} already has a forward pending")
        if self.is_last and y is None:
            raise ValueError(f"stage {self.index}: the last stage needs targets")
        store = WeightGradStore()
        if self.engine is Engine.DIRECT:
            out, dsaved = direct_engine.forward(self.spec, self.params, x, self.start)
            saved = _Saved(None, None, store, dsaved)
            if self.is_last:
                self._count_correct(out, y)
                out = direct_engine.loss(self.spec, dsaved, out, loss_target(self.spec, out, y), denom)
        else:
            inp = None
            if not self.is_first:
                inp = x.detach().requires_grad_(True)
                x = inp
            out = forward_layers(self.spec, self.params, x, self.start, store)
            if self.is_last:
                self._count_correct(out, y)
                out = loss_term(self.spec, out, y, denom)
            saved = _Saved(inp, out, store)
        with torch.no_grad():
            self.finite &= torch.isfinite(out).all()
        self._saved[mb] = saved
        return out.detach()

    @torch.no_grad()
    def _count_correct(self, o: torch.Tensor, y: torch.Tensor) -> None:
        self.correct += (o.argmax(1) == (y if y.dim() == 1 else y.argmax(1))).sum()

    def backward_input(self, mb: int, grad: torch.Tensor | None = None, with_weights: bool = False) -> torch.Tensor | None:
        """B: dJ/d(input) for microbatch ``mb`` given dJ/d(output) (None on the last stage: dJ/dL = 1).

        ``with_weights`` makes it the fused BW: each layer's weight gradient is computed as the backward
        passes it (then :meth:`backward_weight` only frees the microbatch).
        """
        saved = self._saved.get(mb)
        if saved is None or saved.b_done:
            raise RuntimeError(f"stage {self.index}: backward for microbatch {mb} without a pending forward")
        saved.store.immediate = with_weights
        saved.b_done = True
        if saved.direct is not None:
            if not self.is_last and grad is None:
                raise ValueError(f"stage {self.index}: backward of microbatch {mb} needs the output gradient")
            grad_in = direct_engine.backward(self.spec, self.params, saved.direct, grad, self.start, saved.store,
                                             not self.is_first)
            saved.direct = None
            return grad_in
        if self.is_last:
            saved.out.backward()
        else:
            if grad is None:
                raise ValueError(f"stage {self.index}: backward of microbatch {mb} needs the output gradient")
            saved.out.backward(grad)
        saved.out = None
        if saved.inp is None:
            return None
        grad_in = saved.inp.grad
        saved.inp = None
        return grad_in

    def backward_weight(self, mb: int) -> None:
        """W: accumulate dJ/dW and dJ/db of microbatch ``mb`` and free what it saved."""
        self.backward_weight_fused([mb])

    def backward_weight_fused(self, mbs: Sequence[int]) -> None:
        """W for several microbatches at once: one GEMM per layer over their concatenated rows."""
        stores = []
        for mb in mbs:
            saved = self._saved.pop(mb, None)
            if saved is None or not saved.b_done:
                raise RuntimeError(f"stage {self.index}: weight gradient of microbatch {mb} before its input gradient")
            stores.append(saved.store)
        WeightGradStore.flush_fused(stores)

    def add_regularizer(self) -> torch.Tensor:
        """Add ds/dW = lambda W for this stage's weights to their gradients; returns this stage's share of s."""
        if self.spec.l2 == 0.0:
            return torch.zeros((), dtype=self.params[0][0].dtype, device=self.device)
        s = l2_term(self.spec.l2, [w for w, _ in self.params])
        s.backward()
        return s.detach()

    def zero_grad(self) -> None:
        """Forget gradients and per-step counters (start of an optimizer step)."""
        for p in self.parameters():
            p.grad = None
        self.correct.zero_()
        self.finite.fill_(True)
        self._saved.clear()
